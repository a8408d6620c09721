// SPDX-License-Identifier: GPL-3.0-or-later
#include "options.hpp"

#include "core/config.hpp"

#include <amqp.h>

#include <algorithm>
#include <set>

namespace loopabull::amqp {

namespace {

using nlohmann::json;

std::string type_error(const std::string& field, const char* expected) {
    return "'" + field + "' must be " + expected;
}

// Every unknown key is an error, so a typo never silently leaves a safe default in place.
void known_keys(const json& object, const std::string& where, const std::set<std::string>& keys) {
    for (const auto& item : object.items())
        if (!keys.contains(item.key()))
            throw ConfigError("unknown option '" + (where.empty() ? "" : where + ".") + item.key() +
                              "'");
}

const json& mapping(const json& value, const std::string& field) {
    if (!value.is_object()) throw ConfigError(type_error(field, "a mapping"));
    return value;
}

std::string text(const json& value, const std::string& field, bool allow_empty = false) {
    if (!value.is_string()) throw ConfigError(type_error(field, "a string"));
    auto s = value.get<std::string>();
    if (s.empty() && !allow_empty) throw ConfigError("'" + field + "' must not be empty");
    return s;
}

bool boolean(const json& value, const std::string& field) {
    if (!value.is_boolean()) throw ConfigError(type_error(field, "true or false"));
    return value.get<bool>();
}

long long integer(const json& value, const std::string& field, long long min, long long max) {
    if (!value.is_number_integer()) throw ConfigError(type_error(field, "an integer"));
    auto n = value.get<long long>();
    if (n < min || n > max)
        throw ConfigError("'" + field + "' must be between " + std::to_string(min) + " and " +
                          std::to_string(max));
    return n;
}

// A number of seconds, or a duration with a unit as in loopabull.yml ("30min", "2h").
seconds duration(const json& value, const std::string& field) {
    if (value.is_number_integer()) return seconds(integer(value, field, 0, 365LL * 86400));
    if (!value.is_string())
        throw ConfigError(type_error(field, "a duration (seconds, or e.g. \"30min\")"));
    std::string error;
    auto d = parse_duration(value.get<std::string>(), &error);
    if (!d) throw ConfigError("'" + field + "': " + error);
    return std::chrono::duration_cast<seconds>(*d);
}

std::vector<std::string> strings(const json& value, const std::string& field) {
    if (value.is_string()) return {text(value, field)};
    if (!value.is_array() || value.empty())
        throw ConfigError(type_error(field, "a string or a non-empty list of strings"));
    std::vector<std::string> out;
    for (const auto& item : value)
        out.push_back(text(item, field));
    return out;
}

// ---- connection -------------------------------------------------------------------------------

// legacy: the 0.0.7 dialect (a `rabbitmq` section), where pika took an empty or null password.
void read_credentials(const json& value, bool legacy, bool uses_tls, Options& o) {
    known_keys(mapping(value, "credentials"), "credentials", {"username", "password"});
    bool null_password = legacy && value.contains("password") && value["password"].is_null();
    for (auto& e : o.endpoints) {
        if (value.contains("username"))
            e.username = text(value["username"], "credentials.username");
        if (null_password)
            e.password.clear();
        else if (value.contains("password"))
            e.password = text(value["password"], "credentials.password", true);
    }
    if (legacy && !uses_tls && value.contains("password") &&
        (null_password || o.endpoints[0].password.empty()))
        o.warnings.push_back("'credentials.password' is empty, as loopabull 0.0.7 accepted it; "
                             "a broker that checks passwords (PLAIN) refuses the login unless "
                             "'tls' makes the certificate the credential (EXTERNAL)");
}

void read_tls(const json& value, Options& o) {
    known_keys(mapping(value, "tls"), "tls", {"ca_cert", "certfile", "keyfile", "verify_hostname"});
    TlsOptions t;
    if (value.contains("ca_cert")) t.ca_cert = text(value["ca_cert"], "tls.ca_cert");
    if (value.contains("certfile")) t.certfile = text(value["certfile"], "tls.certfile");
    if (value.contains("keyfile")) t.keyfile = text(value["keyfile"], "tls.keyfile");
    if (value.contains("verify_hostname"))
        t.verify_hostname = boolean(value["verify_hostname"], "tls.verify_hostname");
    if (t.certfile.empty() != t.keyfile.empty())
        throw ConfigError("'tls.certfile' and 'tls.keyfile' go together: give both or neither");
    o.tls = t;
    for (auto& e : o.endpoints)
        e.tls = true;
}

// The 0.0.7 looper passed `rabbitmq` to pika.ConnectionParameters: host, port and
// virtual_host matter here; pika's tuning knobs have no meaning for rabbitmq-c.
void read_legacy_rabbitmq(const json& value, Options& o) {
    static const std::set<std::string> ignored = {"connection_attempts",
                                                  "retry_delay",
                                                  "socket_timeout",
                                                  "blocked_connection_timeout",
                                                  "locale",
                                                  "channel_max",
                                                  "frame_max",
                                                  "stack_timeout",
                                                  "tcp_options",
                                                  "client_properties"};
    mapping(value, "rabbitmq");
    Endpoint e;
    for (const auto& [key, v] : value.items()) {
        std::string field = "rabbitmq." + key;
        if (key == "host")
            e.host = text(v, field);
        else if (key == "port")
            e.port = static_cast<int>(integer(v, field, 1, 65535));
        else if (key == "virtual_host")
            e.vhost = text(v, field);
        else if (key == "heartbeat")
            o.heartbeat = duration(v, field);
        else if (ignored.contains(key))
            o.warnings.push_back("ignoring '" + field + "' (a pika setting with no equivalent)");
        else
            throw ConfigError("unknown option '" + field + "'");
    }
    o.endpoints = {e};
}

void read_endpoints(const json& c, Options& o) {
    bool has_url = c.contains("url") || c.contains("urls");
    bool has_parts = c.contains("host") || c.contains("port") || c.contains("vhost");
    if (c.contains("url") && c.contains("urls"))
        throw ConfigError("give 'url' or 'urls', not both");
    if (has_url + has_parts + c.contains("rabbitmq") > 1)
        throw ConfigError("give the broker as 'url', as 'host'/'port'/'vhost', or as 'rabbitmq'; "
                          "not several of them");
    if (c.contains("rabbitmq")) return read_legacy_rabbitmq(c["rabbitmq"], o);
    if (has_url) {
        const char* field = c.contains("url") ? "url" : "urls";
        for (const auto& url : strings(c[field], field))
            o.endpoints.push_back(parse_url(url, field));
        return;
    }
    Endpoint e;
    if (c.contains("host")) e.host = text(c["host"], "host");
    if (c.contains("port")) e.port = static_cast<int>(integer(c["port"], "port", 1, 65535));
    if (c.contains("vhost")) e.vhost = text(c["vhost"], "vhost");
    o.endpoints = {e};
}

void read_sasl(const json& c, bool legacy, Options& o) {
    // 0.0.7 gave pika ExternalCredentials whenever `tls` was set, and credentials only otherwise.
    if (legacy && o.tls && !c.contains("sasl")) {
        if (o.tls->certfile.empty())
            throw ConfigError("'tls' in the 0.0.7 dialect authenticates by a client certificate "
                              "(SASL EXTERNAL): give 'tls.certfile' and 'tls.keyfile'");
        o.sasl = Sasl::external;
        if (c.contains("credentials"))
            o.warnings.push_back("'credentials' are not used: with 'tls', loopabull 0.0.7 (and "
                                 "this looper in its dialect) logs in by the client certificate "
                                 "(SASL EXTERNAL)");
        return;
    }
    if (!c.contains("sasl")) {
        // As fedora-messaging and the 0.0.7 looper do: a client certificate without a password
        // authenticates by the certificate (EXTERNAL).
        bool cert = o.tls && !o.tls->certfile.empty();
        if (cert && !c.contains("credentials")) o.sasl = Sasl::external;
        return;
    }
    auto s = text(c["sasl"], "sasl");
    if (s == "plain" || s == "PLAIN")
        o.sasl = Sasl::plain;
    else if (s == "external" || s == "EXTERNAL")
        o.sasl = Sasl::external;
    else
        throw ConfigError("'sasl' must be 'plain' or 'external', not '" + s + "'");
    if (o.sasl == Sasl::external && !(o.tls && !o.tls->certfile.empty()))
        throw ConfigError(
            "'sasl: external' needs a client certificate (tls.certfile, tls.keyfile)");
}

// ---- queue and bindings -----------------------------------------------------------------------

void read_queue_arguments(const json& value, const std::string& field, QueueOptions& q) {
    for (const auto& [key, v] : mapping(value, field).items()) {
        if (!v.is_string() && !v.is_number_integer() && !v.is_boolean())
            throw ConfigError("'" + field + "." + key + "' must be a string, integer or boolean");
        q.arguments[key] = v;
    }
}

void read_queue_mapping(const json& value, const std::string& field, QueueOptions& q) {
    known_keys(value, field, {"name", "durable", "exclusive", "auto_delete", "arguments"});
    if (!value.contains("name")) throw ConfigError("'" + field + "' has no 'name'");
    q.name = text(value["name"], field + ".name");
    if (value.contains("durable")) q.durable = boolean(value["durable"], field + ".durable");
    if (value.contains("exclusive"))
        q.exclusive = boolean(value["exclusive"], field + ".exclusive");
    if (value.contains("auto_delete"))
        q.auto_delete = boolean(value["auto_delete"], field + ".auto_delete");
    if (value.contains("arguments"))
        read_queue_arguments(value["arguments"], field + ".arguments", q);
}

void read_queue(const json& c, Options& o) {
    if (c.contains("queue") && c.contains("channel_queue"))
        throw ConfigError("give 'queue' or 'channel_queue', not both");
    const char* field = c.contains("channel_queue") ? "channel_queue" : "queue";
    if (!c.contains(field))
        throw ConfigError("'queue' is required (the name of the queue to consume)");
    const json& v = c[field];
    if (v.is_string())
        o.queue.name = text(v, field);
    else
        read_queue_mapping(mapping(v, field), field, o.queue);
    if (o.queue.exclusive || o.queue.auto_delete || !o.queue.durable)
        o.warnings.push_back("queue '" + o.queue.name + "' is " +
                             (o.queue.durable ? "" : "not durable, ") +
                             (o.queue.exclusive ? "exclusive, " : "") +
                             (o.queue.auto_delete ? "auto-delete, " : "") +
                             "so messages are lost when the broker restarts or this looper "
                             "disconnects");
}

void read_dead_letter(const json& c, Options& o) {
    if (c.contains("dead_letter_exchange"))
        o.queue.arguments["x-dead-letter-exchange"] =
            text(c["dead_letter_exchange"], "dead_letter_exchange", true);
    if (c.contains("dead_letter_routing_key")) {
        if (!c.contains("dead_letter_exchange"))
            throw ConfigError("'dead_letter_routing_key' needs 'dead_letter_exchange'");
        o.queue.arguments["x-dead-letter-routing-key"] =
            text(c["dead_letter_routing_key"], "dead_letter_routing_key");
    }
}

void read_bindings(const json& c, Options& o) {
    bool legacy = c.contains("routing_keys") || c.contains("exchange");
    if (legacy && c.contains("bindings"))
        throw ConfigError("give 'bindings' or 'routing_keys'/'exchange', not both");
    if (legacy) {
        Binding b;
        if (c.contains("exchange")) {
            known_keys(mapping(c["exchange"], "exchange"), "exchange", {"name"});
            if (c["exchange"].contains("name"))
                b.exchange = text(c["exchange"]["name"], "exchange.name");
        }
        if (c.contains("routing_keys")) b.routing_keys = strings(c["routing_keys"], "routing_keys");
        if (!b.routing_keys.empty()) o.bindings.push_back(b);
        return;
    }
    if (!c.contains("bindings")) return;
    if (!c["bindings"].is_array()) throw ConfigError(type_error("bindings", "a list"));
    for (std::size_t i = 0; i < c["bindings"].size(); ++i) {
        std::string field = "bindings[" + std::to_string(i) + "]";
        const json& v = mapping(c["bindings"][i], field);
        known_keys(v, field, {"exchange", "routing_keys"});
        Binding b;
        if (v.contains("exchange")) b.exchange = text(v["exchange"], field + ".exchange");
        if (!v.contains("routing_keys")) throw ConfigError("'" + field + "' has no 'routing_keys'");
        b.routing_keys = strings(v["routing_keys"], field + ".routing_keys");
        o.bindings.push_back(b);
    }
}

// ---- failure policy and timing ----------------------------------------------------------------

void read_policy(const json& c, Options& o) {
    if (c.contains("on_failure")) {
        auto p = text(c["on_failure"], "on_failure");
        if (p == "retry")
            o.on_failure = OnFailure::retry;
        else if (p == "reject")
            o.on_failure = OnFailure::reject;
        else if (p == "ack")
            o.on_failure = OnFailure::ack;
        else
            throw ConfigError("'on_failure' must be 'retry', 'reject' or 'ack', not '" + p + "'");
    }
    if (c.contains("legacy_retry_copies")) {
        auto v = text(c["legacy_retry_copies"], "legacy_retry_copies");
        if (v != "reject" && v != "run")
            throw ConfigError("'legacy_retry_copies' must be 'reject' or 'run', not '" + v + "'");
        o.run_legacy_copies = v == "run";
    }
    if (c.contains("max_attempts"))
        o.max_attempts = static_cast<int>(integer(c["max_attempts"], "max_attempts", 1, 1000));
    if (c.contains("requeue_cancelled"))
        o.requeue_cancelled = boolean(c["requeue_cancelled"], "requeue_cancelled");
    if (c.contains("retry_delays")) {
        const json& v = c["retry_delays"];
        if (!v.is_array()) throw ConfigError(type_error("retry_delays", "a list of durations"));
        for (std::size_t i = 0; i < v.size(); ++i) {
            auto d = duration(v[i], "retry_delays[" + std::to_string(i) + "]");
            // RabbitMQ's x-message-ttl is at most 2^32-1 ms; a zero TTL would mean "now".
            if (d.count() < 1 || d.count() > 4294967)
                throw ConfigError("'retry_delays[" + std::to_string(i) +
                                  "]' must be between 1s and 4294967s (RabbitMQ's largest "
                                  "message TTL)");
            o.retry_delays.push_back(d);
        }
    }
    if (c.contains("retry_secret_file"))
        o.retry_secret_file = text(c["retry_secret_file"], "retry_secret_file");
}

void read_envelope(const json& c, Options& o) {
    if (!c.contains("envelope")) return;
    const json& v = c["envelope"];
    if (v.is_boolean()) {
        if (v.get<bool>()) o.envelope = Envelope{};
        return;
    }
    known_keys(mapping(v, "envelope"), "envelope", {"routing_key", "body"});
    Envelope e;
    if (v.contains("routing_key")) e.routing_key = text(v["routing_key"], "envelope.routing_key");
    if (v.contains("body")) e.body = text(v["body"], "envelope.body");
    o.envelope = e;
}

void read_timing(const json& c, const Environment& env, Options& o) {
    o.prefetch = static_cast<std::uint16_t>(std::clamp(env.max_parallel, 1u, 65535u));
    if (c.contains("prefetch"))
        o.prefetch = static_cast<std::uint16_t>(integer(c["prefetch"], "prefetch", 1, 65535));
    if (c.contains("heartbeat")) o.heartbeat = duration(c["heartbeat"], "heartbeat");
    if (o.heartbeat.count() > 65535) throw ConfigError("'heartbeat' must be at most 65535 seconds");
    if (c.contains("connect_timeout"))
        o.connect_timeout = duration(c["connect_timeout"], "connect_timeout");
    if (c.contains("consumer_timeout"))
        o.consumer_timeout = duration(c["consumer_timeout"], "consumer_timeout");
    if (c.contains("reconnect_delay"))
        o.reconnect_delay = duration(c["reconnect_delay"], "reconnect_delay");
    if (c.contains("reconnect_delay_max"))
        o.reconnect_delay_max = duration(c["reconnect_delay_max"], "reconnect_delay_max");
    if (o.reconnect_delay.count() < 1) o.reconnect_delay = seconds(1);
    o.reconnect_delay_max = std::max(o.reconnect_delay_max, o.reconnect_delay);
    if (env.job_timeout && *env.job_timeout >= o.consumer_timeout)
        o.warnings.push_back(
            "the job timeout (" + std::to_string(env.job_timeout->count()) +
            "s) is not below the broker's consumer_timeout (" +
            std::to_string(o.consumer_timeout.count()) +
            "s): the broker closes the channel of a message whose playbook runs that long and "
            "delivers it again, so it runs twice; lower executor.timeout or raise the broker's "
            "consumer_timeout (and this looper's consumer_timeout option with it)");
}

const std::set<std::string> kKeys = {
    "url", "urls", "host", "port", "vhost", "credentials", "tls", "sasl", "queue", "bindings",
    "prefetch", "heartbeat", "connect_timeout", "on_failure", "max_attempts", "requeue_cancelled",
    "dead_letter_exchange", "dead_letter_routing_key", "consumer_timeout", "reconnect_delay",
    "reconnect_delay_max", "retry_delays", "retry_secret_file", "envelope", "legacy_retry_copies",
    // the 0.0.7 fedmsgrabbitmq looper's names
    "rabbitmq", "channel_queue", "routing_keys", "exchange"};

} // namespace

std::string redact(std::string_view text) {
    std::string out;
    std::size_t pos = 0;
    for (;;) {
        auto scheme = text.find("://", pos);
        if (scheme == std::string_view::npos) break;
        auto start = scheme + 3;
        auto next = text.find("://", start);
        auto end = next == std::string_view::npos ? text.size() : next;
        auto url = text.substr(start, end - start);
        auto at = url.rfind('@');
        auto colon = url.find(':');
        out.append(text.substr(pos, start - pos));
        if (at != std::string_view::npos && colon != std::string_view::npos && colon < at) {
            out.append(url.substr(0, colon + 1));
            out.append("***");
            out.append(url.substr(at));
        } else {
            out.append(url);
        }
        pos = end;
    }
    out.append(text.substr(pos));
    return out;
}

Endpoint parse_url(const std::string& url, const std::string& field) {
    std::vector<char> buffer(url.begin(), url.end());
    buffer.push_back('\0');
    amqp_connection_info info{};
    if (amqp_parse_url(buffer.data(), &info) != AMQP_STATUS_OK)
        throw ConfigError("'" + field + "': '" + redact(url) +
                          "' is not an amqp:// or amqps:// URL (amqp[s]://user:password@host"
                          "[:port]/vhost, port 1-65535)");
    Endpoint e;
    e.host = info.host;
    e.port = info.port;
    e.vhost = info.vhost;
    e.username = info.user;
    e.password = info.password;
    e.tls = info.ssl != 0;
    // amqp_parse_url keeps the path's leading '/' out, so "amqp://h" and "amqp://h/" both give
    // "": the default vhost is "/", spelled %2F in a URL.
    if (e.vhost.empty()) e.vhost = "/";
    return e;
}

Options parse_options(const json& config, const Environment& env) {
    if (!config.is_object()) throw ConfigError("the config must be a mapping");
    known_keys(config, "", kKeys);
    Options o;
    // The 0.0.7 fedmsgrabbitmq looper's own section: its meanings apply (see read_sasl).
    bool legacy = config.contains("rabbitmq");
    read_endpoints(config, o);
    if (config.contains("credentials"))
        read_credentials(config["credentials"], legacy, config.contains("tls"), o);
    if (config.contains("tls")) read_tls(config["tls"], o);
    // pika's default port follows its ssl_options: 5671 (AMQPS, IANA) with TLS.
    if (legacy && o.tls && !config["rabbitmq"].contains("port")) o.endpoints[0].port = 5671;
    // rabbitmq-c verifies the broker only against the CA it is given.
    for (const auto& e : o.endpoints)
        if (e.tls && (!o.tls || o.tls->ca_cert.empty()))
            throw ConfigError("TLS (amqps://, or a 'tls' section) needs 'tls.ca_cert', the CA "
                              "that signed the broker's certificate");
    read_sasl(config, legacy, o);
    read_queue(config, o);
    read_dead_letter(config, o);
    read_bindings(config, o);
    read_policy(config, o);
    read_envelope(config, o);
    read_timing(config, env, o);
    // The longest name the looper derives from the queue's (retry.hpp) must stay a short string.
    if (o.queue.name.size() + 40 > 255)
        throw ConfigError("the queue's name is longer than 215 bytes; the looper names its retry "
                          "exchange and delay queues after it, and AMQP names end at 255");
    return o;
}

} // namespace loopabull::amqp
