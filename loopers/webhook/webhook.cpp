// SPDX-License-Identifier: GPL-3.0-or-later
#include "webhook/webhook.hpp"

#include "core/routing.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <set>

namespace loopabull::webhook {

namespace {

std::string lower(std::string_view s) {
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
}

std::string hex(const unsigned char* data, std::size_t size) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string out;
    out.reserve(size * 2);
    for (std::size_t i = 0; i < size; ++i) {
        out += digits[data[i] >> 4];
        out += digits[data[i] & 15];
    }
    return out;
}

std::string base64(const unsigned char* data, std::size_t size) {
    std::string out(4 * ((size + 2) / 3) + 1, '\0');
    int n =
        EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), data, static_cast<int>(size));
    out.resize(static_cast<std::size_t>(n));
    return out;
}

// SHA-256 of both, then CRYPTO_memcmp: equal-length inputs, so the time taken says nothing about
// where a guess differs, nor about the secret's length.
bool equal_in_constant_time(std::string_view a, std::string_view b) {
    unsigned char da[SHA256_DIGEST_LENGTH], db[SHA256_DIGEST_LENGTH];
    SHA256(reinterpret_cast<const unsigned char*>(a.data()), a.size(), da);
    SHA256(reinterpret_cast<const unsigned char*>(b.data()), b.size(), db);
    return CRYPTO_memcmp(da, db, sizeof da) == 0;
}

std::string trim(std::string_view s) {
    auto b = s.find_first_not_of(" \t");
    if (b == std::string_view::npos) return {};
    auto e = s.find_last_not_of(" \t");
    return std::string(s.substr(b, e - b + 1));
}

std::string get_string(const json& object, const char* key, const std::string& where,
                       std::string fallback = {}) {
    auto it = object.find(key);
    if (it == object.end() || it->is_null()) return fallback;
    if (!it->is_string()) throw OptionError(where + key + " must be a string");
    return it->get<std::string>();
}

bool get_bool(const json& object, const char* key, const std::string& where, bool fallback) {
    auto it = object.find(key);
    if (it == object.end() || it->is_null()) return fallback;
    if (!it->is_boolean()) throw OptionError(where + key + " must be true or false");
    return it->get<bool>();
}

// 30, "30s", "500ms", "5min", "2h": a duration in milliseconds.
std::chrono::milliseconds get_duration(const json& object, const char* key,
                                       const std::string& where,
                                       std::chrono::milliseconds fallback) {
    auto it = object.find(key);
    if (it == object.end() || it->is_null()) return fallback;
    if (it->is_number_unsigned()) return std::chrono::seconds(it->get<std::uint64_t>());
    if (!it->is_string()) throw OptionError(where + key + " must be a duration such as 30s");
    auto text = it->get<std::string>();
    std::uint64_t value = 0;
    auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    std::string_view unit(end, static_cast<std::size_t>(text.data() + text.size() - end));
    if (error != std::errc() || value > 1000000000) unit = "?";
    if (unit == "ms") return std::chrono::milliseconds(value);
    if (unit == "" || unit == "s") return std::chrono::seconds(value);
    if (unit == "min") return std::chrono::minutes(value);
    if (unit == "h") return std::chrono::hours(value);
    throw OptionError(where + key + ": '" + text + "' is not a duration such as 30s, 500ms, 5min");
}

template <typename T>
T get_number(const json& object, const char* key, const std::string& where, T fallback, T min) {
    auto it = object.find(key);
    if (it == object.end() || it->is_null()) return fallback;
    if (!it->is_number() || it->get<double>() < static_cast<double>(min) ||
        it->get<double>() > 1e12)
        throw OptionError(where + key + " must be a number of at least " + std::to_string(min));
    return it->get<T>();
}

void check_keys(const json& object, const std::set<std::string>& known, const std::string& where) {
    for (const auto& item : object.items())
        if (!known.contains(item.key()))
            throw OptionError(where + "unknown key '" + item.key() + "'");
}

// RFC 6901: "" or "/" followed by reference tokens, where '~' is only ever "~0" or "~1".
bool valid_pointer(std::string_view p) {
    if (p.empty()) return true;
    if (p.front() != '/') return false;
    for (std::size_t i = 0; i < p.size(); ++i)
        if (p[i] == '~' && (i + 1 == p.size() || (p[i + 1] != '0' && p[i + 1] != '1')))
            return false;
    return true;
}

bool valid_header_name(std::string_view name) {
    // RFC 9110 token characters.
    static constexpr std::string_view extra = "!#$%&'*+-.^_`|~";
    return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || extra.find(c) != extra.npos;
    });
}

struct Preset {
    const char* name;
    Auth auth;
    const char* routing_key;
    const char* delivery_header;
    bool split_alerts;
};

// What each sender documents: the header it signs or authenticates with, and the header naming
// its event type and delivery.
const Preset kPresets[] = {
    {"github",
     {AuthKind::hmac, "X-Hub-Signature-256", "sha256", Encoding::hex, "sha256=", {}},
     "github.{header:X-GitHub-Event}",
     "X-GitHub-Delivery",
     false},
    {"gitlab",
     {AuthKind::token, "X-Gitlab-Token", "sha256", Encoding::hex, "", {}},
     "gitlab.{body:/object_kind}",
     "X-Gitlab-Event-UUID",
     false},
    {"forgejo",
     {AuthKind::hmac, "X-Forgejo-Signature", "sha256", Encoding::hex, "", {}},
     "forgejo.{header:X-Forgejo-Event}",
     "X-Forgejo-Delivery",
     false},
    {"gitea",
     {AuthKind::hmac, "X-Gitea-Signature", "sha256", Encoding::hex, "", {}},
     "gitea.{header:X-Gitea-Event}",
     "X-Gitea-Delivery",
     false},
    {"pagure",
     {AuthKind::hmac, "X-Pagure-Signature-256", "sha256", Encoding::hex, "", {}},
     "pagure.{header:X-Pagure-Topic}",
     "",
     false},
    {"alertmanager",
     {AuthKind::bearer, "Authorization", "sha256", Encoding::hex, "", {}},
     "alertmanager.{body:/status}.{body:/labels/alertname}",
     "",
     true},
};

Auth parse_auth(const json& spec, Auth auth, const std::string& where) {
    if (spec.is_string()) {
        if (spec != "none")
            throw OptionError(where +
                              "auth: a string must be 'none'; else {type: hmac|token|bearer, ...}");
        return Auth{};
    }
    if (!spec.is_object()) throw OptionError(where + "auth must be a mapping or 'none'");
    std::string w = where + "auth.";
    check_keys(spec, {"type", "header", "algorithm", "encoding", "prefix"}, w);
    std::string type = get_string(spec, "type", w,
                                  auth.kind == AuthKind::hmac     ? "hmac"
                                  : auth.kind == AuthKind::token  ? "token"
                                  : auth.kind == AuthKind::bearer ? "bearer"
                                                                  : "");
    if (type == "hmac") {
        if (auth.kind != AuthKind::hmac)
            auth = Auth{AuthKind::hmac, "", "sha256", Encoding::hex, "", {}};
    } else if (type == "token") {
        if (auth.kind != AuthKind::token)
            auth = Auth{AuthKind::token, "", "", Encoding::hex, "", {}};
    } else if (type == "bearer") {
        auth = Auth{AuthKind::bearer, "Authorization", "", Encoding::hex, "", {}};
    } else if (type == "none") {
        return Auth{};
    } else {
        throw OptionError(w + "type must be hmac, token, bearer or none");
    }
    auth.header = get_string(spec, "header", w, auth.header);
    auth.prefix = get_string(spec, "prefix", w, auth.prefix);
    if (auth.kind == AuthKind::hmac) {
        auth.algorithm = get_string(spec, "algorithm", w, auth.algorithm);
        if (auth.algorithm != "sha256" && auth.algorithm != "sha512")
            throw OptionError(w + "algorithm must be sha256 or sha512");
        std::string enc =
            get_string(spec, "encoding", w, auth.encoding == Encoding::hex ? "hex" : "base64");
        if (enc != "hex" && enc != "base64")
            throw OptionError(w + "encoding must be hex or base64");
        auth.encoding = enc == "hex" ? Encoding::hex : Encoding::base64;
    }
    if (!valid_header_name(auth.header)) throw OptionError(w + "header must name an HTTP header");
    return auth;
}

Endpoint parse_endpoint(const json& spec, std::size_t index, const std::string& credentials_dir,
                        const SecretReader& read_secret) {
    std::string where = "endpoints[" + std::to_string(index) + "].";
    if (!spec.is_object())
        throw OptionError(where.substr(0, where.size() - 1) + " must be a mapping");
    check_keys(spec,
               {"path", "preset", "routing_key", "auth", "secret_file", "secret_credential",
                "delivery_header", "synchronous", "sync_timeout", "replay_protection", "secret"},
               where);
    if (spec.contains("secret"))
        throw OptionError(where + "secret: secrets come from secret_file or secret_credential, "
                                  "never from the configuration");
    Endpoint e;
    e.path = get_string(spec, "path", where);
    if (e.path.empty() || e.path.front() != '/' || e.path.find_first_of("?# ") != std::string::npos)
        throw OptionError(where + "path must start with '/' (no query, no spaces)");
    e.preset = get_string(spec, "preset", where, "none");
    std::string key_text;
    const Preset* preset = nullptr;
    for (const auto& p : kPresets)
        if (e.preset == p.name ||
            (e.preset == "forgejo/gitea" && std::string_view(p.name) == "forgejo"))
            preset = &p;
    if (preset) {
        e.auth = preset->auth;
        key_text = preset->routing_key;
        e.delivery_header = preset->delivery_header;
        e.split_alerts = preset->split_alerts;
    } else if (e.preset != "none") {
        throw OptionError(where + "preset must be github, gitlab, forgejo, gitea, pagure, "
                                  "alertmanager or none");
    }
    bool has_auth = spec.contains("auth");
    if (has_auth) e.auth = parse_auth(spec["auth"], e.auth, where);
    if (!preset && !has_auth)
        throw OptionError(where + "no authentication: give a preset or auth (hmac, token, "
                                  "bearer), or say auth: none to accept anyone");
    key_text = get_string(spec, "routing_key", where, key_text);
    if (key_text.empty()) throw OptionError(where + "routing_key is missing");
    try {
        e.routing_key = KeyTemplate::parse(key_text);
    } catch (const OptionError& err) {
        throw OptionError(where + "routing_key: " + err.what());
    }
    e.delivery_header = get_string(spec, "delivery_header", where, e.delivery_header);
    e.synchronous = get_bool(spec, "synchronous", where, false);
    e.sync_timeout = get_duration(spec, "sync_timeout", where, e.sync_timeout);
    e.replay_protection = get_bool(spec, "replay_protection", where, true);

    std::string file = get_string(spec, "secret_file", where);
    std::string credential = get_string(spec, "secret_credential", where);
    if (e.auth.kind == AuthKind::none) {
        if (!file.empty() || !credential.empty())
            throw OptionError(where + "a secret without authentication: remove auth: none");
        return e;
    }
    if (!file.empty() && !credential.empty())
        throw OptionError(where + "secret_file and secret_credential exclude each other");
    if (!credential.empty()) {
        if (credential.find('/') != std::string::npos || credential == "." || credential == "..")
            throw OptionError(where + "secret_credential must be a credential's name");
        if (credentials_dir.empty())
            throw OptionError(where + "secret_credential: $CREDENTIALS_DIRECTORY is not set "
                                      "(LoadCredential= in the unit, systemd.exec(5))");
        file = credentials_dir + "/" + credential;
    }
    if (file.empty()) throw OptionError(where + "secret_file or secret_credential is missing");
    e.auth.secret = read_secret(file);
    if (e.auth.secret.empty()) throw OptionError(where + "the secret in " + file + " is empty");
    return e;
}

std::optional<std::string> scalar_text(const json& v) {
    if (v.is_string()) return v.get<std::string>();
    if (v.is_number_integer() || v.is_number_unsigned()) return v.dump();
    if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
    return std::nullopt;
}

} // namespace

KeyTemplate KeyTemplate::parse(std::string_view text) {
    KeyTemplate t;
    t.text_ = std::string(text);
    std::size_t i = 0;
    while (i < text.size()) {
        auto open = text.find('{', i);
        auto close_stray = text.find('}', i);
        if (close_stray < open) throw OptionError("a '}' without '{'");
        if (open == std::string_view::npos) {
            t.parts_.push_back({Part::Kind::literal, std::string(text.substr(i))});
            break;
        }
        if (open > i)
            t.parts_.push_back({Part::Kind::literal, std::string(text.substr(i, open - i))});
        auto close = text.find('}', open);
        if (close == std::string_view::npos) throw OptionError("a '{' without '}'");
        auto inner = text.substr(open + 1, close - open - 1);
        if (inner.starts_with("header:")) {
            auto name = inner.substr(7);
            if (!valid_header_name(name))
                throw OptionError("'{" + std::string(inner) + "}' names no header");
            t.parts_.push_back({Part::Kind::header, std::string(name)});
        } else if (inner.starts_with("body:")) {
            auto pointer = inner.substr(5);
            if (!valid_pointer(pointer))
                throw OptionError("'{" + std::string(inner) +
                                  "}' is not a JSON Pointer (RFC 6901)");
            t.parts_.push_back({Part::Kind::body, std::string(pointer)});
        } else {
            throw OptionError("'{" + std::string(inner) +
                              "}': only {header:NAME} and {body:/POINTER}");
        }
        i = close + 1;
    }
    return t;
}

KeyTemplate::Result KeyTemplate::expand(const Headers& headers, const json& body) const {
    std::string key;
    for (const auto& part : parts_) {
        switch (part.kind) {
        case Part::Kind::literal:
            key += part.value;
            break;
        case Part::Kind::header: {
            auto value = headers(part.value);
            if (!value) return {std::nullopt, "header " + part.value + " is missing"};
            key += *value;
            break;
        }
        case Part::Kind::body: {
            const json* node = nullptr;
            try {
                node = &body.at(json::json_pointer(part.value));
            } catch (const json::exception&) {
                return {std::nullopt, "the body has no " + part.value};
            }
            auto value = scalar_text(*node);
            if (!value)
                return {std::nullopt, "the body's " + part.value + " is not a string or number"};
            key += *value;
            break;
        }
        }
        if (key.size() > 255) return {std::nullopt, "the routing key is longer than 255 bytes"};
    }
    if (auto error = routing_key_error(key)) return {std::nullopt, "routing key: " + *error};
    return {std::move(key), {}};
}

std::string hmac(std::string_view algorithm, std::string_view key, std::string_view data,
                 Encoding encoding) {
    const EVP_MD* md = algorithm == "sha512" ? EVP_sha512() : EVP_sha256();
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int size = 0;
    if (!HMAC(md, key.data(), static_cast<int>(key.size()),
              reinterpret_cast<const unsigned char*>(data.data()), data.size(), out, &size))
        throw std::runtime_error("HMAC failed");
    return encoding == Encoding::hex ? hex(out, size) : base64(out, size);
}

std::optional<std::string> authenticate(const Auth& auth, const KeyTemplate::Headers& headers,
                                        std::string_view body) {
    if (auth.kind == AuthKind::none) return std::nullopt;
    auto value = headers(auth.header);
    if (!value) return "no " + auth.header + " header";
    switch (auth.kind) {
    case AuthKind::hmac: {
        std::string_view given = *value;
        if (!given.starts_with(auth.prefix))
            return auth.header + " does not start with '" + auth.prefix + "'";
        given.remove_prefix(auth.prefix.size());
        std::string presented = auth.encoding == Encoding::hex ? lower(trim(given)) : trim(given);
        std::string expected = hmac(auth.algorithm, auth.secret, body, auth.encoding);
        if (!equal_in_constant_time(presented, expected))
            return "wrong signature in " + auth.header;
        return std::nullopt;
    }
    case AuthKind::token:
        if (!equal_in_constant_time(*value, auth.secret)) return "wrong token in " + auth.header;
        return std::nullopt;
    case AuthKind::bearer: {
        std::string_view v = *value;
        if (v.size() < 7 || lower(v.substr(0, 7)) != "bearer ")
            return "no bearer token in " + auth.header;
        if (!equal_in_constant_time(trim(v.substr(7)), auth.secret)) return "wrong bearer token";
        return std::nullopt;
    }
    case AuthKind::none:
        break;
    }
    return std::nullopt;
}

std::optional<std::string> replay_key(const Endpoint& endpoint,
                                      const KeyTemplate::Headers& headers) {
    if (!endpoint.replay_protection) return std::nullopt;
    if (!endpoint.delivery_header.empty()) {
        if (auto id = headers(endpoint.delivery_header)) return endpoint.path + "\n" + *id;
    }
    // An HMAC signature is tied to the body, a token or bearer is not: only the former tells a
    // replayed request from a new one that happens to carry the same body.
    if (endpoint.auth.kind == AuthKind::hmac)
        if (auto signature = headers(endpoint.auth.header))
            return endpoint.path + "\n" + *signature;
    return std::nullopt;
}

Events make_events(const Endpoint& endpoint, const KeyTemplate::Headers& headers,
                   std::string_view body) {
    Events out;
    json payload;
    if (body.find_first_not_of(" \t\r\n") == std::string_view::npos) {
        payload = json::object();
    } else {
        int depth_limit = 128;
        auto limit = [depth_limit](int depth, json::parse_event_t, json&) {
            if (depth > depth_limit) throw std::runtime_error("nested too deeply");
            return true;
        };
        try {
            payload = json::parse(body, limit);
        } catch (const std::exception& e) {
            // A body declared JSON must be JSON; any other body is handed over as text.
            auto type = headers("Content-Type");
            if ((type && lower(*type).find("json") != std::string::npos) || endpoint.split_alerts) {
                out.error = std::string("the body is not JSON: ") + e.what();
                return out;
            }
            payload = std::string(body);
        }
    }
    if (!endpoint.split_alerts) {
        auto key = endpoint.routing_key.expand(headers, payload);
        if (!key.key) {
            out.error = key.error;
            return out;
        }
        out.events.push_back({std::move(*key.key), std::move(payload)});
        return out;
    }
    if (!payload.is_object() || !payload.contains("alerts") || !payload["alerts"].is_array()) {
        out.error = "the body has no \"alerts\" array";
        return out;
    }
    json group = payload;
    group.erase("alerts");
    for (auto& alert : payload["alerts"]) {
        if (!alert.is_object()) {
            out.events.clear();
            out.error = "an alert is not an object";
            return out;
        }
        json event = alert;
        event["group"] = group;
        auto key = endpoint.routing_key.expand(headers, event);
        if (!key.key) {
            out.events.clear();
            out.error = key.error;
            return out;
        }
        out.events.push_back({std::move(*key.key), std::move(event)});
    }
    if (out.events.empty()) out.error = "the alerts array is empty";
    return out;
}

ListenAddress parse_listen(std::string_view text) {
    ListenAddress a;
    if (text.starts_with("fd:")) {
        a.fd_name = std::string(text.substr(3));
        // sd_listen_fds_with_names(3): names are at most 255 characters, no ':'.
        if (a.fd_name.empty() || a.fd_name.size() > 255 || a.fd_name.find(':') != std::string::npos)
            throw OptionError("listen: '" + std::string(text) + "' names no socket");
        return a;
    }
    auto colon = text.rfind(':');
    if (colon == std::string_view::npos || colon == 0)
        throw OptionError("listen: '" + std::string(text) + "' is not HOST:PORT or fd:NAME");
    auto host = text.substr(0, colon);
    if (host.front() == '[') {
        if (host.back() != ']')
            throw OptionError("listen: '" + std::string(text) + "': unclosed '['");
        host = host.substr(1, host.size() - 2);
    }
    a.host = std::string(host);
    auto port = text.substr(colon + 1);
    auto [end, error] = std::from_chars(port.data(), port.data() + port.size(), a.port);
    if (error != std::errc() || end != port.data() + port.size() || a.port > 65535)
        throw OptionError("listen: '" + std::string(text) + "': bad port");
    return a;
}

Options parse_options(const json& config, const std::string& credentials_dir,
                      const std::string& default_state, const SecretReader& read_secret) {
    Options o;
    check_keys(config, {"listen", "tls", "endpoints", "limits", "state_directory"}, "");
    auto listen = config.find("listen");
    if (listen == config.end() || !listen->is_array() || listen->empty())
        throw OptionError("listen must be a list of HOST:PORT or fd:NAME");
    for (const auto& l : *listen) {
        if (!l.is_string()) throw OptionError("listen must be a list of strings");
        parse_listen(l.get<std::string>());
        o.listen.push_back(l.get<std::string>());
    }
    if (auto tls = config.find("tls"); tls != config.end() && !tls->is_null()) {
        if (!tls->is_object()) throw OptionError("tls must be a mapping");
        check_keys(*tls, {"certfile", "keyfile", "client_ca"}, "tls.");
        o.tls.certfile = get_string(*tls, "certfile", "tls.");
        o.tls.keyfile = get_string(*tls, "keyfile", "tls.");
        o.tls.client_ca = get_string(*tls, "client_ca", "tls.");
        if (o.tls.certfile.empty() || o.tls.keyfile.empty())
            throw OptionError("tls needs certfile and keyfile");
    }
    if (auto limits = config.find("limits"); limits != config.end() && !limits->is_null()) {
        if (!limits->is_object()) throw OptionError("limits must be a mapping");
        std::string w = "limits.";
        check_keys(*limits,
                   {"max_body", "max_header", "request_timeout", "idle_timeout", "max_connections",
                    "max_connections_per_client", "rate", "rate_burst", "max_spooled",
                    "replay_window"},
                   w);
        auto& l = o.limits;
        l.max_body = get_number<std::size_t>(*limits, "max_body", w, l.max_body, 1);
        l.max_header = get_number<std::size_t>(*limits, "max_header", w, l.max_header, 1024);
        auto secs = [&](const char* key, std::chrono::seconds fallback) {
            auto ms = get_duration(*limits, key, w, fallback);
            auto s = std::chrono::duration_cast<std::chrono::seconds>(ms);
            if (s.count() < 1) throw OptionError(w + key + " must be at least 1s");
            return s;
        };
        l.request_timeout = secs("request_timeout", l.request_timeout);
        l.idle_timeout = secs("idle_timeout", l.idle_timeout);
        l.max_connections =
            get_number<unsigned>(*limits, "max_connections", w, l.max_connections, 1);
        l.max_connections_per_client = get_number<unsigned>(*limits, "max_connections_per_client",
                                                            w, l.max_connections_per_client, 1);
        l.rate = get_number<double>(*limits, "rate", w, l.rate, 0);
        l.rate_burst = get_number<double>(*limits, "rate_burst", w, l.rate_burst, 1);
        l.max_spooled = get_number<std::size_t>(*limits, "max_spooled", w, l.max_spooled, 1);
        l.replay_window = std::chrono::duration_cast<std::chrono::seconds>(
            get_duration(*limits, "replay_window", w, l.replay_window));
    }
    auto endpoints = config.find("endpoints");
    if (endpoints == config.end() || !endpoints->is_array() || endpoints->empty())
        throw OptionError("endpoints must be a non-empty list");
    std::set<std::string> paths;
    for (std::size_t i = 0; i < endpoints->size(); ++i) {
        auto e = parse_endpoint((*endpoints)[i], i, credentials_dir, read_secret);
        if (!paths.insert(e.path).second)
            throw OptionError("endpoints[" + std::to_string(i) + "].path " + e.path +
                              " is taken twice");
        o.endpoints.push_back(std::move(e));
    }
    o.state_directory = get_string(config, "state_directory", "", default_state);
    if (o.state_directory.empty())
        throw OptionError("state_directory is missing (and $STATE_DIRECTORY is not set)");
    return o;
}

} // namespace loopabull::webhook
