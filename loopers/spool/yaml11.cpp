// SPDX-License-Identifier: GPL-3.0-or-later
#include "spool/yaml11.hpp"

#include <nlohmann/json.hpp>
#include <re2/re2.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <utility>
#include <vector>

namespace loopabull::spool {

namespace {

using nlohmann::json;

// PyYAML 6.0, yaml/resolver.py: the implicit resolvers of Resolver, in the order they are
// added (the first that matches wins), with the re.X whitespace taken out by hand. Spaces
// inside character classes are significant under re.X and are kept.
const RE2& bool_re() {
    static const RE2 re("^(?:yes|Yes|YES|no|No|NO"
                        "|true|True|TRUE|false|False|FALSE"
                        "|on|On|ON|off|Off|OFF)$");
    return re;
}
const RE2& float_re() {
    static const RE2 re(R"(^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?)"
                        R"(|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?)"
                        R"(|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*)"
                        R"(|[-+]?\.(?:inf|Inf|INF))"
                        R"(|\.(?:nan|NaN|NAN))$)");
    return re;
}
const RE2& int_re() {
    static const RE2 re(R"(^(?:[-+]?0b[0-1_]+)"
                        R"(|[-+]?0[0-7_]+)"
                        R"(|[-+]?(?:0|[1-9][0-9_]*))"
                        R"(|[-+]?0x[0-9a-fA-F_]+)"
                        R"(|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$)");
    return re;
}
const RE2& timestamp_re() {
    static const RE2 re(R"(^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9])"
                        R"(|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?)"
                        R"((?:[Tt]|[ \t]+)[0-9][0-9]?)"
                        R"(:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?)"
                        R"((?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$)");
    return re;
}
// yaml/constructor.py, SafeConstructor.timestamp_regexp: splits a timestamp into its fields.
const RE2& timestamp_fields_re() {
    static const RE2 re(R"(^([0-9][0-9][0-9][0-9])-([0-9][0-9]?)-([0-9][0-9]?))"
                        R"((?:(?:[Tt]|[ \t]+)([0-9][0-9]?):([0-9][0-9]):([0-9][0-9]))"
                        R"((?:\.([0-9]*))?)"
                        R"((?:[ \t]*(Z|([-+])([0-9][0-9]?)(?::([0-9][0-9]))?))?)?$)");
    return re;
}

std::string quote(std::string_view s) {
    try {
        return json(std::string(s)).dump(-1, ' ', false, json::error_handler_t::strict);
    } catch (const json::exception&) {
        throw Unrepresentable("a string is not valid UTF-8");
    }
}

std::string shown(std::string_view s) {
    std::string text(s.substr(0, 60));
    if (s.size() > 60) text += "...";
    return quote(text);
}

// ---- Integers of any size, as Python's int() makes them ---------------------------------------

// Little-endian limbs of base 1e9: enough for the multiply-add that base conversion needs.
class BigUnsigned {
  public:
    void mul_add(std::uint32_t factor, std::uint32_t addend) {
        std::uint64_t carry = addend;
        for (auto& limb : limbs_) {
            std::uint64_t v = std::uint64_t(limb) * factor + carry;
            limb = static_cast<std::uint32_t>(v % kBase);
            carry = v / kBase;
        }
        while (carry) {
            limbs_.push_back(static_cast<std::uint32_t>(carry % kBase));
            carry /= kBase;
        }
    }
    bool zero() const {
        return std::all_of(limbs_.begin(), limbs_.end(), [](auto l) { return l == 0; });
    }
    std::string decimal() const {
        if (zero()) return "0";
        auto top = limbs_.size();
        while (limbs_[top - 1] == 0)
            --top;
        std::string out = std::to_string(limbs_[top - 1]);
        char part[16];
        for (auto i = top - 1; i-- > 0;) {
            std::snprintf(part, sizeof part, "%09u", static_cast<unsigned>(limbs_[i]));
            out += part;
        }
        return out;
    }

  private:
    static constexpr std::uint64_t kBase = 1000000000;
    std::vector<std::uint32_t> limbs_;
};

int digit_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return 99;
}

// int(digits, base) of Python, for digits already checked by the resolver's pattern; nullopt
// where Python raises ValueError (no digits, a digit too large for the base).
std::optional<BigUnsigned> parse_unsigned(std::string_view digits, unsigned base) {
    if (digits.empty()) return std::nullopt;
    BigUnsigned value;
    for (char c : digits) {
        int d = digit_value(c);
        if (d >= static_cast<int>(base)) return std::nullopt;
        value.mul_add(base, static_cast<std::uint32_t>(d));
    }
    return value;
}

// SafeConstructor.construct_yaml_int.
std::optional<std::string> construct_int(std::string_view text) {
    std::string value;
    std::copy_if(text.begin(), text.end(), std::back_inserter(value),
                 [](char c) { return c != '_'; });
    if (value.empty()) return std::nullopt;
    bool negative = value[0] == '-';
    if (value[0] == '+' || value[0] == '-') value.erase(0, 1);
    std::optional<BigUnsigned> magnitude;
    std::string_view v = value;
    if (v == "0") {
        return "0";
    } else if (v.starts_with("0b")) {
        magnitude = parse_unsigned(v.substr(2), 2);
    } else if (v.starts_with("0x")) {
        magnitude = parse_unsigned(v.substr(2), 16);
    } else if (!v.empty() && v[0] == '0') {
        magnitude = parse_unsigned(v, 8);
    } else if (v.find(':') != std::string_view::npos) {
        // Sexagesimal: the first part may be any size, the others are below 60 (pattern).
        BigUnsigned total;
        bool first = true;
        std::size_t start = 0;
        for (;;) {
            auto colon = v.find(':', start);
            auto part = v.substr(start, colon == std::string_view::npos ? colon : colon - start);
            if (part.empty()) return std::nullopt;
            if (first) {
                auto head = parse_unsigned(part, 10);
                if (!head) return std::nullopt;
                total = *head;
                first = false;
            } else {
                auto tail = parse_unsigned(part, 10);
                if (!tail || part.size() > 2) return std::nullopt;
                unsigned n = 0;
                for (char c : part)
                    n = n * 10 + static_cast<unsigned>(c - '0');
                total.mul_add(60, n);
            }
            if (colon == std::string_view::npos) break;
            start = colon + 1;
        }
        magnitude = total;
    } else {
        magnitude = parse_unsigned(v, 10);
    }
    if (!magnitude) return std::nullopt;
    std::string digits = magnitude->decimal();
    return negative && digits != "0" ? "-" + digits : digits;
}

// ---- Floats -----------------------------------------------------------------------------------

std::string float_text(double value, std::string_view source) {
    if (!std::isfinite(value))
        throw Unrepresentable("the float " + shown(source) +
                              " is infinite or not a number, which JSON cannot carry; quote it "
                              "to pass it as a string");
    return json(value).dump();
}

std::optional<double> python_float(const std::string& text) {
    // Python's float() takes no hexadecimal form, strtod does.
    if (text.find_first_not_of("0123456789.e+-") != std::string::npos && text != "inf" &&
        text != "infinity" && text != "nan")
        return std::nullopt;
    // Python's float() and glibc's strtod both round correctly: the same double.
    errno = 0;
    char* end = nullptr;
    double value = std::strtod(text.c_str(), &end);
    if (text.empty() || end != text.c_str() + text.size()) return std::nullopt;
    return value;
}

// SafeConstructor.construct_yaml_float, operation for operation (the sexagesimal sum in the same
// order, so the same rounding).
std::optional<double> construct_float(std::string_view text) {
    std::string value;
    for (char c : text)
        if (c != '_') value += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (value.empty()) return std::nullopt;
    double sign = value[0] == '-' ? -1.0 : 1.0;
    if (value[0] == '+' || value[0] == '-') value.erase(0, 1);
    if (value == ".inf") return sign * HUGE_VAL;
    if (value == ".nan") return std::nan("");
    if (value.find(':') != std::string::npos) {
        std::vector<double> digits;
        std::size_t start = 0;
        for (;;) {
            auto colon = value.find(':', start);
            auto part = value.substr(start, colon == std::string::npos ? colon : colon - start);
            if (part.empty()) return std::nullopt;
            auto digit = python_float(part);
            if (!digit) return std::nullopt;
            digits.push_back(*digit);
            if (colon == std::string::npos) break;
            start = colon + 1;
        }
        std::reverse(digits.begin(), digits.end());
        double base = 1, sum = 0.0;
        for (double d : digits) {
            sum += d * base;
            base *= 60;
        }
        return sign * sum;
    }
    if (value.empty()) return std::nullopt;
    auto number = python_float(value);
    if (!number) return std::nullopt;
    return sign * *number;
}

// ---- Timestamps -------------------------------------------------------------------------------

bool leap(int year) {
    return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
}

int days_in_month(int year, int month) {
    static constexpr int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return month == 2 && leap(year) ? 29 : days[month - 1];
}

// SafeConstructor.construct_yaml_timestamp, then Python's date/datetime isoformat(): what
// Ansible's to_json prints for the date and datetime objects that `-e @file` gives playbooks.
std::string construct_timestamp(const std::string& text) {
    std::string year, month, day, hour, minute, second, fraction, tz, tz_sign, tz_hour, tz_minute;
    if (!RE2::FullMatch(text, timestamp_fields_re(), &year, &month, &day, &hour, &minute, &second,
                        &fraction, &tz, &tz_sign, &tz_hour, &tz_minute))
        throw Unrepresentable("the timestamp " + shown(text) + " does not have YAML's form");
    auto bad = [&] {
        return Unrepresentable("the timestamp " + shown(text) +
                               " is not a valid date or time (Ansible refuses it)");
    };
    int y = std::stoi(year), mo = std::stoi(month), d = std::stoi(day);
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo)) throw bad();
    char out[64];
    std::snprintf(out, sizeof out, "%04d-%02d-%02d", y, mo, d);
    std::string iso = out;
    if (hour.empty()) return quote(iso);
    int h = std::stoi(hour), mi = std::stoi(minute), s = std::stoi(second);
    if (h > 23 || mi > 59 || s > 59) throw bad();
    std::snprintf(out, sizeof out, "T%02d:%02d:%02d", h, mi, s);
    iso += out;
    if (!fraction.empty()) {
        std::string micro = fraction.substr(0, 6);
        micro.resize(6, '0');
        if (micro != "000000") iso += "." + micro; // isoformat() leaves out a zero fraction
    }
    if (!tz_sign.empty()) {
        int offset = std::stoi(tz_hour) * 60 + (tz_minute.empty() ? 0 : std::stoi(tz_minute));
        if (offset >= 24 * 60) throw bad(); // datetime.timezone: strictly within a day
        std::snprintf(out, sizeof out, "%c%02d:%02d", offset == 0 ? '+' : tz_sign[0], offset / 60,
                      offset % 60);
        iso += out;
    } else if (!tz.empty()) {
        iso += "+00:00"; // Z: datetime.timezone.utc
    }
    return quote(iso);
}

// ---- Scalars ----------------------------------------------------------------------------------

const char* kYamlTag = "tag:yaml.org,2002:";

std::string bool_text(const std::string& value) {
    std::string lower;
    for (char c : value)
        lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (lower == "yes" || lower == "true" || lower == "on") return "true";
    if (lower == "no" || lower == "false" || lower == "off") return "false";
    throw Unrepresentable("!!bool " + shown(value) + " is not a YAML 1.1 boolean");
}

std::string int_text(const std::string& value) {
    auto text = construct_int(value);
    if (!text) throw Unrepresentable("!!int " + shown(value) + " is not an integer for Ansible");
    return *text;
}

std::string float_value_text(const std::string& value) {
    auto number = construct_float(value);
    if (!number) throw Unrepresentable("!!float " + shown(value) + " is not a float for Ansible");
    return float_text(*number, value);
}

// The scalar with an explicit tag (`!!int "12"`, `!unsafe x`, `! 12`).
std::string tagged_scalar(const std::string& tag, const std::string& value) {
    if (tag == "!" || tag == "!unsafe") return quote(value); // every string is !unsafe anyway
    if (tag.starts_with(kYamlTag)) {
        auto name = tag.substr(std::string_view(kYamlTag).size());
        if (name == "str") return quote(value);
        if (name == "null") return "null";
        if (name == "bool") return bool_text(value);
        if (name == "int") return int_text(value);
        if (name == "float") return float_value_text(value);
        if (name == "timestamp") return construct_timestamp(value);
        if (name == "binary")
            throw Unrepresentable("!!binary data cannot be passed as JSON; use a base64 string");
    }
    throw Unrepresentable("the tag " + shown(tag) +
                          " cannot be passed (only !!str, !!int, !!float, !!bool, !!null, "
                          "!!timestamp and !unsafe)");
}

// ---- Documents --------------------------------------------------------------------------------

bool is_plain(const YAML::Node& node, std::string_view value) {
    return node.IsScalar() && node.Tag() == "?" && node.Scalar() == value;
}

class Converter {
  public:
    explicit Converter(const Limits& limits) : limits_(limits), budget_(limits.max_bytes) {}

    std::string value(const YAML::Node& node, int depth) {
        if (depth > limits_.max_depth)
            throw Unrepresentable("nested deeper than " + std::to_string(limits_.max_depth));
        charge(1);
        switch (node.Type()) {
        case YAML::NodeType::Map:
            return mapping(node, depth);
        case YAML::NodeType::Sequence:
            return sequence(node, depth);
        case YAML::NodeType::Scalar:
            return scalar(node);
        default:
            // yaml-cpp makes ~, null, Null, NULL and empty plain scalars Null nodes: PyYAML's
            // null too.
            charge(4);
            return "null";
        }
    }

  private:
    // Aliases can make a small file expand enormously; counting the output as it grows stops
    // that long before memory runs out.
    void charge(std::size_t bytes) {
        if (bytes > budget_)
            throw Unrepresentable("the body is larger than " + std::to_string(limits_.max_bytes) +
                                  " bytes as JSON");
        budget_ -= bytes;
    }

    std::string scalar(const YAML::Node& node) {
        const std::string& text = node.Scalar();
        std::string out =
            node.Tag() == "?" ? resolve_plain_scalar(text) : tagged_scalar(node.Tag(), text);
        charge(out.size());
        return out;
    }

    void check_collection_tag(const YAML::Node& node, const char* expected) {
        const std::string& tag = node.Tag();
        if (tag == "?" || tag == "!" || tag == std::string(kYamlTag) + expected) return;
        throw Unrepresentable(
            "the tag " + shown(tag) + " cannot be passed" +
            (tag == std::string(kYamlTag) + "set" ? " (a set has no JSON form)"
             : tag == std::string(kYamlTag) + "omap" || tag == std::string(kYamlTag) + "pairs"
                 ? " (Ansible makes a list of tuples of it)"
                 : ""));
    }

    std::string sequence(const YAML::Node& node, int depth) {
        check_collection_tag(node, "seq");
        std::string out = "[";
        for (const auto& item : node) {
            if (out.size() > 1) out += ',';
            out += value(item, depth + 1);
        }
        return out + "]";
    }

    // SafeConstructor.flatten_mapping: the pairs of a mapping with its merge keys (<<) replaced
    // by the pairs they merge, in front; of a list of mappings the earlier ones win.
    using Pairs = std::vector<std::pair<YAML::Node, YAML::Node>>;
    Pairs flatten(const YAML::Node& node, int depth) {
        if (depth > limits_.max_depth)
            throw Unrepresentable("merge keys nested deeper than " +
                                  std::to_string(limits_.max_depth));
        Pairs merged, own;
        for (const auto& item : node) {
            charge(1);
            if (!is_plain(item.first, "<<")) {
                own.emplace_back(item.first, item.second);
                continue;
            }
            const YAML::Node& source = item.second;
            if (source.IsMap()) {
                auto pairs = flatten(source, depth + 1);
                merged.insert(merged.end(), pairs.begin(), pairs.end());
            } else if (source.IsSequence()) {
                std::vector<Pairs> sub;
                for (const auto& element : source) {
                    if (!element.IsMap())
                        throw Unrepresentable("a merge key (<<) lists something that is not a "
                                              "mapping (Ansible refuses it)");
                    sub.push_back(flatten(element, depth + 1));
                }
                std::reverse(sub.begin(), sub.end());
                for (auto& pairs : sub)
                    merged.insert(merged.end(), pairs.begin(), pairs.end());
            } else {
                throw Unrepresentable("a merge key (<<) needs a mapping or a list of mappings "
                                      "(Ansible refuses anything else)");
            }
        }
        merged.insert(merged.end(), own.begin(), own.end());
        return merged;
    }

    // A mapping key must be a string to Ansible as it is in JSON: `yes:` is the key True in
    // PyYAML, `1:` the key 1; to_json would print "true" and "1", but `event.yes` and `event['1']`
    // would not find them. The author quotes such keys.
    std::string key(const YAML::Node& node) {
        if (node.IsScalar()) {
            const std::string& text = node.Scalar();
            const std::string& tag = node.Tag();
            if (tag == "!" || tag == "!unsafe" || tag == std::string(kYamlTag) + "str") return text;
            if (is_plain(node, "=")) return text; // flatten_mapping makes the value key a string
            std::string resolved =
                tag == "?" ? resolve_plain_scalar(text) : tagged_scalar(tag, text);
            bool timestamp = tag == "?" && RE2::FullMatch(text, timestamp_re());
            if (tag == "?" && resolved[0] == '"' && !timestamp) return text;
            throw Unrepresentable("the mapping key " + shown(text) + " is " +
                                  (timestamp ? "a date" : resolved) +
                                  " to Ansible, not a string; quote it");
        }
        if (node.IsNull())
            throw Unrepresentable("a mapping key is null to Ansible, not a string; quote it");
        throw Unrepresentable("a mapping key is a list or mapping, which Ansible refuses");
    }

    std::string mapping(const YAML::Node& node, int depth) {
        check_collection_tag(node, "map");
        // Later pairs replace earlier ones in place (a Python dict keeps the first position).
        std::vector<std::pair<std::string, std::string>> items;
        for (auto& [k, v] : flatten(node, depth)) {
            std::string name = key(k);
            charge(name.size() + 4);
            std::string text = value(v, depth + 1);
            auto found = std::find_if(items.begin(), items.end(),
                                      [&](const auto& item) { return item.first == name; });
            if (found != items.end())
                found->second = std::move(text);
            else
                items.emplace_back(std::move(name), std::move(text));
        }
        std::string out = "{";
        for (auto& [name, text] : items) {
            if (out.size() > 1) out += ',';
            out += quote(name);
            out += ':';
            out += text;
        }
        return out + "}";
    }

    Limits limits_;
    std::size_t budget_;
};

} // namespace

std::string resolve_plain_scalar(std::string_view scalar) {
    std::string text(scalar);
    if (RE2::FullMatch(text, bool_re())) return bool_text(text);
    if (RE2::FullMatch(text, float_re())) {
        auto value = construct_float(text);
        if (!value) throw Unrepresentable("the float " + shown(text) + " cannot be read");
        return float_text(*value, text);
    }
    if (RE2::FullMatch(text, int_re())) {
        auto value = construct_int(text);
        // `0b_` and `0x_` match the pattern but make Python's int() fail: Ansible refuses them.
        if (!value)
            throw Unrepresentable("the integer " + shown(text) +
                                  " has no digits (Ansible refuses it); quote it");
        return *value;
    }
    if (text == "<<")
        throw Unrepresentable("'<<' is a merge key and cannot be a value (Ansible refuses it); "
                              "quote it");
    if (text == "~" || text == "null" || text == "Null" || text == "NULL" || text.empty())
        return "null";
    if (RE2::FullMatch(text, timestamp_re())) return construct_timestamp(text);
    if (text == "=")
        throw Unrepresentable("'=' is YAML 1.1's value key and cannot be a value (Ansible "
                              "refuses it); quote it");
    return quote(text);
}

std::string yaml_to_json(const std::string& text, const Limits& limits) {
    std::vector<YAML::Node> documents;
    try {
        documents = YAML::LoadAll(text);
    } catch (const YAML::Exception& e) {
        throw Unrepresentable(std::string("not valid YAML: ") + e.what());
    }
    if (documents.empty()) return "null";
    if (documents.size() > 1)
        throw Unrepresentable("more than one YAML document (Ansible reads exactly one)");
    try {
        return Converter(limits).value(documents.front(), 0);
    } catch (const YAML::Exception& e) {
        throw Unrepresentable(std::string("not valid YAML: ") + e.what());
    }
}

std::string compact_json(std::string_view text, const Limits& limits) {
    if (text.starts_with("\xEF\xBB\xBF")) text.remove_prefix(3); // a UTF-8 byte order mark
    auto limit_depth = [&limits](int depth, json::parse_event_t, json&) {
        if (depth > limits.max_depth)
            throw Unrepresentable("nested deeper than " + std::to_string(limits.max_depth));
        return true;
    };
    try {
        json parsed = json::parse(text, limit_depth); // validates; numbers are taken from text
        (void)parsed;
    } catch (const json::exception& e) {
        throw Unrepresentable(std::string("not valid JSON: ") + e.what());
    }
    std::string out;
    out.reserve(text.size());
    bool in_string = false, escaped = false;
    for (char c : text) {
        if (in_string) {
            if (escaped)
                escaped = false;
            else if (c == '\\')
                escaped = true;
            else if (c == '"')
                in_string = false;
        } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            continue;
        } else if (c == '"') {
            in_string = true;
        }
        out += c;
    }
    if (out.size() > limits.max_bytes)
        throw Unrepresentable("larger than " + std::to_string(limits.max_bytes) + " bytes");
    return out;
}

} // namespace loopabull::spool
