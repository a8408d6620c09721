// SPDX-License-Identifier: GPL-3.0-or-later
#include "journal/journal.hpp"

#include "core/routing.hpp"

#include <set>

namespace loopabull::journal {

namespace {

std::string base64(std::string_view in) {
    static constexpr char table[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    out.reserve((in.size() + 2) / 3 * 4);
    std::size_t i = 0;
    for (; i + 2 < in.size(); i += 3) {
        unsigned v = (static_cast<unsigned char>(in[i]) << 16) |
                     (static_cast<unsigned char>(in[i + 1]) << 8) |
                     static_cast<unsigned char>(in[i + 2]);
        out += table[v >> 18];
        out += table[(v >> 12) & 63];
        out += table[(v >> 6) & 63];
        out += table[v & 63];
    }
    if (i < in.size()) {
        unsigned v = static_cast<unsigned char>(in[i]) << 16;
        if (i + 1 < in.size()) v |= static_cast<unsigned char>(in[i + 1]) << 8;
        out += table[v >> 18];
        out += table[(v >> 12) & 63];
        out += i + 1 < in.size() ? table[(v >> 6) & 63] : '=';
        out += '=';
    }
    return out;
}

// Length of the valid UTF-8 prefix of s that holds only whole characters; s.size() when valid.
std::size_t utf8_valid_prefix(std::string_view s, bool& control) {
    control = false;
    std::size_t i = 0;
    while (i < s.size()) {
        auto c = static_cast<unsigned char>(s[i]);
        std::size_t n = c < 0x80         ? 1
                        : (c >> 5) == 6  ? 2
                        : (c >> 4) == 14 ? 3
                        : (c >> 3) == 30 ? 4
                                         : 0;
        if (n == 0 || i + n > s.size()) return i;
        if (n == 2 && c < 0xc2) return i;
        for (std::size_t k = 1; k < n; ++k)
            if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return i;
        if (n == 1 && (c < 0x20 || c == 0x7f) && c != '\t' && c != '\n') control = true;
        i += n;
    }
    return i;
}

bool valid_field_name(std::string_view f) {
    if (f.empty() || f.size() > 64 || (f[0] >= '0' && f[0] <= '9')) return false;
    for (char c : f)
        if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')) return false;
    return true;
}

} // namespace

std::optional<std::string> match_error(std::string_view m) {
    if (m == "+") return std::nullopt;
    auto eq = m.find('=');
    if (eq == std::string_view::npos) return "'" + std::string(m) + "' is not FIELD=value or +";
    if (!valid_field_name(m.substr(0, eq)))
        return "'" + std::string(m.substr(0, eq)) + "' is not a journal field name";
    return std::nullopt;
}

std::string sanitize(std::string_view value) {
    if (value.empty()) return "unknown";
    std::string out;
    for (char c : value.substr(0, 64)) {
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-';
        out += ok ? c : '-';
    }
    if (out[0] == '-') out[0] = '_';
    return out;
}

KeyTemplate KeyTemplate::parse(std::string_view text) {
    KeyTemplate t;
    std::string probe;
    std::size_t i = 0;
    while (i < text.size()) {
        auto open = text.find('{', i);
        if (text.substr(i, open - i).find('}') != std::string_view::npos)
            throw OptionError("routing_key: a '}' without '{'");
        if (open == std::string_view::npos) {
            t.parts_.emplace_back(false, std::string(text.substr(i)));
            probe += text.substr(i);
            break;
        }
        if (open > i) {
            t.parts_.emplace_back(false, std::string(text.substr(i, open - i)));
            probe += text.substr(i, open - i);
        }
        auto close = text.find('}', open);
        if (close == std::string_view::npos) throw OptionError("routing_key: a '{' without '}'");
        auto field = text.substr(open + 1, close - open - 1);
        if (!valid_field_name(field))
            throw OptionError("routing_key: '{" + std::string(field) + "}' is not a journal field");
        t.parts_.emplace_back(true, std::string(field));
        probe += "x";
        i = close + 1;
    }
    // Every field expands to one valid word: the literal parts decide whether the key is valid.
    if (auto error = routing_key_error(probe)) throw OptionError("routing_key: " + *error);
    return t;
}

std::string KeyTemplate::expand(const std::map<std::string, std::string>& fields) const {
    std::string key;
    for (const auto& [is_field, text] : parts_) {
        if (!is_field) {
            key += text;
            continue;
        }
        auto it = fields.find(text);
        key += sanitize(it == fields.end() ? "" : it->second);
    }
    return key;
}

json entry_body(const std::vector<std::pair<std::string, std::string>>& fields,
                std::size_t max_size) {
    json text = json::object(), binary = json::object(), truncated = json::array();
    for (const auto& [name, value] : fields) {
        if (text.contains(name) || binary.contains(name)) continue; // the first of repeated fields
        std::string_view v = value;
        bool control = false;
        std::size_t valid = utf8_valid_prefix(v, control);
        bool is_text = valid == v.size() && !control;
        if (v.size() > max_size) {
            truncated.push_back(name);
            v = v.substr(0, max_size);
            if (is_text) v = v.substr(0, utf8_valid_prefix(v, control));
        }
        if (is_text)
            text[name] = std::string(v);
        else
            binary[name] = base64(v);
    }
    json body = {{"fields", std::move(text)}};
    if (!binary.empty()) body["binary"] = std::move(binary);
    if (!truncated.empty()) body["truncated"] = std::move(truncated);
    return body;
}

Options parse_options(const json& config, const std::string& default_state) {
    static const std::set<std::string> known = {"journal",        "matches",        "routing_key",
                                                "start",          "max_field_size", "max_in_flight",
                                                "state_directory"};
    for (const auto& item : config.items())
        if (!known.contains(item.key())) throw OptionError("unknown key '" + item.key() + "'");
    Options o;
    auto str = [&](const char* key, std::string fallback) {
        auto it = config.find(key);
        if (it == config.end()) return fallback;
        if (!it->is_string()) throw OptionError(std::string(key) + " must be a string");
        return it->get<std::string>();
    };
    auto journal = str("journal", "system");
    if (journal != "system" && journal != "user")
        throw OptionError("journal must be system or user");
    o.user = journal == "user";
    auto start = str("start", "now");
    if (start != "now" && start != "head") throw OptionError("start must be now or head");
    o.from_head = start == "head";
    if (auto it = config.find("matches"); it != config.end()) {
        if (!it->is_array()) throw OptionError("matches must be a list of FIELD=value or +");
        for (const auto& m : *it) {
            if (!m.is_string()) throw OptionError("matches must be a list of strings");
            if (auto error = match_error(m.get<std::string>()))
                throw OptionError("matches: " + *error);
            o.matches.push_back(m.get<std::string>());
        }
    }
    o.routing_key = str("routing_key", "");
    if (o.routing_key.empty()) throw OptionError("routing_key is missing");
    KeyTemplate::parse(o.routing_key);
    auto number = [&](const char* key, std::size_t fallback, std::size_t min) {
        auto it = config.find(key);
        if (it == config.end()) return fallback;
        if (!it->is_number_unsigned() || it->get<std::size_t>() < min ||
            it->get<std::size_t>() > (1u << 20))
            throw OptionError(std::string(key) + " must be a whole number from " +
                              std::to_string(min));
        return it->get<std::size_t>();
    };
    o.max_field_size = number("max_field_size", o.max_field_size, 64);
    o.max_in_flight = number("max_in_flight", o.max_in_flight, 1);
    o.state_directory = str("state_directory", default_state);
    if (o.state_directory.empty())
        throw OptionError("state_directory is missing (and $STATE_DIRECTORY is not set)");
    return o;
}

} // namespace loopabull::journal
