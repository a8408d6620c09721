// SPDX-License-Identifier: GPL-3.0-or-later
// The value grammars of the configuration: strict durations and sizes, scalars as YAML 1.2's
// core schema types them, and the Reader's typed accessors that report a bad value in place.
#include "core/config-reader.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <regex>
#include <set>

namespace loopabull {

namespace config_detail {

namespace {

struct Unit {
    std::string_view name;
    std::uint64_t factor;
};

constexpr Unit kDurationUnits[] = {
    {"ms", 1000}, {"s", 1000000}, {"min", 60000000}, {"h", 3600000000}, {"d", 86400000000}};
constexpr Unit kSizeUnits[] = {{"B", 1},         {"K", 1 << 10}, {"KiB", 1 << 10}, {"M", 1 << 20},
                               {"MiB", 1 << 20}, {"G", 1 << 30}, {"GiB", 1 << 30}};

// "<digits><unit>" where the unit comes from the table; a bare number takes the default factor.
template <std::size_t N>
std::optional<std::uint64_t> parse_with_units(std::string_view text, const Unit (&units)[N],
                                              std::uint64_t bare, std::string* error,
                                              std::string_view what) {
    std::uint64_t n = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
    std::string_view unit(end, static_cast<std::size_t>(text.data() + text.size() - end));
    std::optional<std::uint64_t> factor;
    if (ec == std::errc() && unit.empty() && bare) factor = bare;
    for (auto& u : units)
        if (ec == std::errc() && unit == u.name) factor = u.factor;
    if (!factor) {
        std::string names;
        for (auto& u : units)
            names += std::string(names.empty() ? "" : ", ") + std::string(u.name);
        if (error)
            *error = "invalid " + std::string(what) + " '" + std::string(text) +
                     "': expected a whole number followed by one of " + names;
        return std::nullopt;
    }
    if (n > UINT64_MAX / *factor) {
        if (error) *error = std::string(what) + " '" + std::string(text) + "' is too large";
        return std::nullopt;
    }
    return n * *factor;
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j)
        row[j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
        std::size_t diag = row[0];
        row[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j) {
            std::size_t up = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1])});
            diag = up;
        }
    }
    return row[b.size()];
}

} // namespace

std::string did_you_mean(std::string_view word, const std::vector<std::string_view>& choices) {
    std::string_view best;
    std::size_t best_d = std::max<std::size_t>(2, word.size() / 3) + 1;
    for (auto c : choices) {
        auto d = edit_distance(word, c);
        if (d < best_d) best = c, best_d = d;
    }
    return best.empty() ? std::string() : "; did you mean '" + std::string(best) + "'?";
}

bool executable_file(const std::string& path) {
    struct stat st {};
    return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(path.c_str(), X_OK) == 0;
}

bool Reader::mapping(const YAML::Node& node, std::string_view where,
             const std::vector<std::string_view>& allowed) {
    if (!node.IsMap()) {
        error(node, std::string(where) + " must be a mapping");
        return false;
    }
    std::set<std::string> seen;
    for (auto it = node.begin(); it != node.end(); ++it) {
        auto key = it->first.Scalar();
        if (!seen.insert(key).second) error(it->first, "duplicate key '" + key + "'");
        if (std::find(allowed.begin(), allowed.end(), key) == allowed.end())
            error(it->first, "unknown key '" + key + "' in " + std::string(where) +
                                 did_you_mean(key, allowed));
    }
    return true;
}

std::optional<std::string> Reader::string(const YAML::Node& node, std::string_view key) {
    if (!node.IsScalar() || node.Tag() == "tag:yaml.org,2002:null" ||
        (node.Tag() == "?" && (node.Scalar() == "~" || node.Scalar() == "null"))) {
        error(node, "'" + std::string(key) + "' must be a string");
        return std::nullopt;
    }
    return node.Scalar();
}

std::optional<std::string> Reader::nonempty(const YAML::Node& node, std::string_view key) {
    auto s = string(node, key);
    if (s && s->empty()) {
        error(node, "'" + std::string(key) + "' must not be empty");
        return std::nullopt;
    }
    return s;
}

std::optional<bool> Reader::boolean(const YAML::Node& node, std::string_view key) {
    auto s = string(node, key);
    if (s == "true") return true;
    if (s == "false") return false;
    if (s) error(node, "'" + std::string(key) + "' must be true or false, not '" + *s + "'");
    return std::nullopt;
}

std::optional<std::uint64_t> Reader::integer(const YAML::Node& node, std::string_view key,
                                     std::uint64_t min, std::uint64_t max) {
    auto s = string(node, key);
    if (!s) return std::nullopt;
    std::uint64_t n = 0;
    auto [end, ec] = std::from_chars(s->data(), s->data() + s->size(), n);
    if (ec != std::errc() || end != s->data() + s->size() || n < min || n > max) {
        error(node, "'" + std::string(key) + "' must be a whole number from " +
                        std::to_string(min) + " to " + std::to_string(max) + ", not '" + *s +
                        "'");
        return std::nullopt;
    }
    return n;
}

std::optional<usec> Reader::duration(const YAML::Node& node, std::string_view key) {
    auto s = string(node, key);
    if (!s) return std::nullopt;
    std::string err;
    auto d = parse_duration(*s, &err);
    if (!d) error(node, "'" + std::string(key) + "': " + err);
    return d;
}

std::optional<std::uint64_t> Reader::size(const YAML::Node& node, std::string_view key) {
    auto s = string(node, key);
    if (!s) return std::nullopt;
    std::string err;
    auto n = parse_size(*s, &err);
    if (!n) error(node, "'" + std::string(key) + "': " + err);
    return n;
}

std::optional<std::vector<std::string>> Reader::strings(const YAML::Node& node, std::string_view key,
                                                bool single_ok) {
    if (single_ok && node.IsScalar()) {
        auto s = nonempty(node, key);
        if (!s) return std::nullopt;
        return std::vector<std::string>{*s};
    }
    if (!node.IsSequence() || node.size() == 0) {
        error(node, "'" + std::string(key) + "' must be a non-empty list of strings");
        return std::nullopt;
    }
    std::vector<std::string> out;
    for (auto item : node) {
        auto s = nonempty(item, key);
        if (!s) return std::nullopt;
        out.push_back(*s);
    }
    return out;
}

json Reader::to_json(const YAML::Node& node) {
    if (node.IsMap()) {
        json obj = json::object();
        for (auto it = node.begin(); it != node.end(); ++it)
            obj[it->first.Scalar()] = to_json(it->second);
        return obj;
    }
    if (node.IsSequence()) {
        json arr = json::array();
        for (auto item : node)
            arr.push_back(to_json(item));
        return arr;
    }
    if (!node.IsScalar()) return nullptr;
    return scalar_to_json(node);
}

json Reader::scalar_to_json(const YAML::Node& node) {
    const std::string& s = node.Scalar();
    if (node.Tag() != "?") return s; // quoted or explicitly tagged: a string
    if (s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL") return nullptr;
    if (s == "true" || s == "True" || s == "TRUE") return true;
    if (s == "false" || s == "False" || s == "FALSE") return false;
    static const std::regex integer("[-+]?[0-9]+");
    static const std::regex real("[-+]?(\\.[0-9]+|[0-9]+(\\.[0-9]*)?)([eE][-+]?[0-9]+)?");
    auto digits = s.front() == '+' ? s.substr(1) : s;
    std::int64_t i = 0;
    if (std::regex_match(s, integer)) {
        auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), i);
        if (ec == std::errc() && end == digits.data() + digits.size()) return i;
        return s; // past 64 bits: JSON would lose it
    }
    double d = 0;
    if (std::regex_match(s, real)) {
        auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), d);
        if (ec == std::errc() && end == digits.data() + digits.size()) return d;
    }
    return s;
}

} // namespace config_detail

using namespace config_detail;

std::string ConfigError::str() const {
    if (line == 0) return file + ": " + message;
    return file + ":" + std::to_string(line) + ":" + std::to_string(column) + ": " + message;
}

std::optional<usec> parse_duration(std::string_view text, std::string* error) {
    auto n = parse_with_units(text, kDurationUnits, 1000000, error, "duration");
    if (!n) return std::nullopt;
    if (*n > static_cast<std::uint64_t>(INT64_MAX)) {
        if (error) *error = "duration '" + std::string(text) + "' is too large";
        return std::nullopt;
    }
    return usec(static_cast<usec::rep>(*n));
}

std::optional<std::uint64_t> parse_size(std::string_view text, std::string* error) {
    return parse_with_units(text, kSizeUnits, 0, error, "size");
}

std::optional<LogLevel> parse_log_level(std::string_view text) {
    std::string s(text);
    std::transform(s.begin(), s.end(), s.begin(),
                   [](unsigned char ch) { return std::tolower(ch); });
    if (s == "debug") return LogLevel::debug;
    if (s == "info") return LogLevel::info;
    if (s == "warning" || s == "warn") return LogLevel::warning;
    if (s == "error") return LogLevel::error;
    return std::nullopt;
}

} // namespace loopabull
