// SPDX-License-Identifier: GPL-3.0-or-later
#include "core/varsfile.hpp"

#include "core/event-names.hpp"
#include "core/exact-json.hpp"

#include <algorithm>
#include <cstdio>

namespace loopabull {

namespace {

using json = nlohmann::json;

void append_hex(std::string& out, char kind, unsigned value, int digits) {
    char buf[12];
    std::snprintf(buf, sizeof buf, "\\%c%0*X", kind, digits, value);
    out += buf;
}

// Decodes one UTF-8 sequence (the input was validated when the event was parsed).
unsigned decode(const unsigned char*& p, const unsigned char* end) {
    unsigned c = *p++;
    int extra = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC0 ? 1 : 0;
    c &= extra == 3 ? 0x07u : extra == 2 ? 0x0Fu : extra == 1 ? 0x1Fu : 0x7Fu;
    for (; extra > 0 && p < end; --extra)
        c = (c << 6) | (*p++ & 0x3Fu);
    return c;
}

// A double-quoted YAML scalar holding only printable ASCII: PyYAML refuses some non-printable
// code points even in quoted scalars, and escapes cannot be misread by any YAML loader.
void quoted(std::string& out, const std::string& s) {
    out += '"';
    auto p = reinterpret_cast<const unsigned char*>(s.data());
    auto end = p + s.size();
    while (p < end) {
        unsigned c = decode(p, end);
        if (c == '"' || c == '\\')
            out += '\\', out += static_cast<char>(c);
        else if (c >= 0x20 && c < 0x7F)
            out += static_cast<char>(c);
        else if (c < 0x100)
            append_hex(out, 'x', c, 2);
        else if (c < 0x10000)
            append_hex(out, 'u', c, 4);
        else
            append_hex(out, 'U', c, 8);
    }
    out += '"';
}

void string_scalar(std::string& out, const std::string& s, bool trusted) {
    if (!trusted) out += "!unsafe ";
    quoted(out, s);
}

// YAML 1.1 (PyYAML) reads "1e+100" as a string: a float needs a dot before its exponent.
void float_scalar(std::string& out, const json& v) {
    std::string text = v.dump();
    if (text.find_first_of(".eE") == std::string::npos)
        text += ".0";
    else if (text.find('.') == std::string::npos)
        text.insert(text.find_first_of("eE"), ".0");
    out += text;
}

void value(std::string& out, const json& v, bool trusted);

// Keys are explicit ("? key"): YAML loaders refuse simple keys longer than 1024 characters, and
// an event may carry longer ones.
void mapping(std::string& out, const json& obj, bool trusted) {
    out += '{';
    bool first = true;
    for (auto& [k, item] : obj.items()) {
        if (!first) out += ", ";
        first = false;
        out += "? ";
        string_scalar(out, k, trusted);
        out += ": ";
        value(out, item, trusted);
    }
    out += '}';
}

void sequence(std::string& out, const json& arr, bool trusted) {
    out += '[';
    for (std::size_t i = 0; i < arr.size(); ++i) {
        if (i) out += ", ";
        value(out, arr[i], trusted);
    }
    out += ']';
}

void value(std::string& out, const json& v, bool trusted) {
    switch (v.type()) {
    case json::value_t::object:
        mapping(out, v, trusted);
        break;
    case json::value_t::array:
        sequence(out, v, trusted);
        break;
    case json::value_t::string:
        string_scalar(out, v.get_ref<const std::string&>(), trusted);
        break;
    case json::value_t::number_float:
        float_scalar(out, v);
        break;
    case json::value_t::boolean:
        out += v.get<bool>() ? "true" : "false";
        break;
    case json::value_t::null:
        out += "null";
        break;
    case json::value_t::binary: // only big integers: JSON text has no binary values
        out += is_big_integer(v) ? big_integer_text(v) : "null";
        break;
    default:
        out += v.dump();
        break; // integers
    }
}

// In the top-level form an event cannot pose as loopabull (a forged loopabull_event_id in an
// event that has no id, say); the manager has already rejected such an event, this is the second
// line of defence.
bool own_variable(const std::string& key) {
    return std::find(std::begin(kOwnVariables), std::end(kOwnVariables), key) !=
           std::end(kOwnVariables);
}

} // namespace

std::string render_vars(const json& body, const VarsOptions& options) {
    std::string out = "# Extra variables of one loopabull job, deleted when the job ends.\n";
    if (options.event_variable) {
        out += *options.event_variable + ": ";
        value(out, body, options.trusted);
        out += '\n';
    } else {
        for (auto& [k, v] : body.items()) {
            if (own_variable(k)) continue;
            out += "? ";
            string_scalar(out, k, options.trusted);
            out += "\n: ";
            value(out, v, options.trusted);
            out += '\n';
        }
    }
    for (auto& [k, v] : options.own) {
        out += k + ": ";
        string_scalar(out, v, false);
        out += '\n';
    }
    return out;
}

} // namespace loopabull
