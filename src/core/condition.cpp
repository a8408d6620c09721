// SPDX-License-Identifier: GPL-3.0-or-later
#include "core/condition.hpp"

#include <re2/re2.h>

#include <charconv>
#include <cmath>

namespace loopabull {

using json = nlohmann::json;

namespace {

// RFC 6901 section 4: an array index is "0" or digits without a leading zero.
std::optional<std::size_t> array_index(const std::string& token) {
    if (token.empty() || (token.size() > 1 && token[0] == '0')) return std::nullopt;
    std::size_t n = 0;
    auto [end, ec] = std::from_chars(token.data(), token.data() + token.size(), n);
    if (ec != std::errc() || end != token.data() + token.size()) return std::nullopt;
    return n;
}

const std::vector<std::string_view> kOps = {"equals", "in", "matches", "exists", "not", "any"};

std::string json_text(const json& v) {
    return v.dump(-1, ' ', false, json::error_handler_t::replace);
}

} // namespace

std::optional<std::string> parse_body_path(std::string_view text, BodyPath& out) {
    out.text = std::string(text);
    out.tokens.clear();
    if (text.empty()) return std::nullopt;
    if (text[0] != '/')
        return "'" + std::string(text) +
               "' is not a JSON Pointer: it must be empty or start with '/'";
    std::string token;
    for (std::size_t i = 1; i <= text.size(); ++i) {
        if (i == text.size() || text[i] == '/') {
            out.tokens.push_back(std::move(token));
            token.clear();
            continue;
        }
        if (text[i] != '~') {
            token += text[i];
            continue;
        }
        if (i + 1 >= text.size() || (text[i + 1] != '0' && text[i + 1] != '1'))
            return "'" + std::string(text) +
                   "' is not a JSON Pointer: '~' must be followed by '0' or '1' (RFC 6901)";
        token += text[i + 1] == '0' ? '~' : '/';
        ++i;
    }
    return std::nullopt;
}

const json* BodyPath::resolve(const json& doc) const noexcept {
    const json* at = &doc;
    for (const auto& t : tokens) {
        if (at->is_object()) {
            auto it = at->find(t);
            if (it == at->end()) return nullptr;
            at = &*it;
        } else if (at->is_array()) {
            auto i = array_index(t);
            if (!i || *i >= at->size()) return nullptr;
            at = &(*at)[*i];
        } else {
            return nullptr;
        }
    }
    return at;
}

bool Condition::holds(const json& body) const noexcept {
    switch (kind) {
    case Kind::exists:
        return (path.resolve(body) != nullptr) == exists;
    case Kind::equals: {
        auto* v = path.resolve(body);
        return v && *v == value;
    }
    case Kind::in: {
        auto* v = path.resolve(body);
        if (!v) return false;
        for (const auto& candidate : value)
            if (*v == candidate) return true;
        return false;
    }
    case Kind::matches: {
        auto* v = path.resolve(body);
        if (!v || !v->is_string()) return false;
        const auto& s = v->get_ref<const std::string&>();
        return RE2::PartialMatch(re2::StringPiece(s.data(), s.size()), *regex);
    }
    case Kind::not_:
        return !children.front().holds(body);
    case Kind::any:
        for (const auto& c : children)
            if (c.holds(body)) return true;
        return false;
    }
    return false;
}

std::string Condition::describe() const {
    std::string at = path.text.empty() ? "the body" : path.text;
    switch (kind) {
    case Kind::exists:
        return at + (exists ? " exists" : " does not exist");
    case Kind::equals:
        return at + " equals " + json_text(value);
    case Kind::in:
        return at + " in " + json_text(value);
    case Kind::matches:
        return at + " matches " + json_text(regex->pattern());
    case Kind::not_:
        return "not (" + children.front().describe() + ")";
    case Kind::any: {
        std::string s = "any of (";
        for (std::size_t i = 0; i < children.size(); ++i)
            s += (i ? "; " : "") + children[i].describe();
        return s + ")";
    }
    }
    return {};
}

json yaml_to_json(const YAML::Node& node) {
    if (node.IsMap()) {
        json obj = json::object();
        for (auto it = node.begin(); it != node.end(); ++it)
            obj[it->first.Scalar()] = yaml_to_json(it->second);
        return obj;
    }
    if (node.IsSequence()) {
        json arr = json::array();
        for (auto item : node)
            arr.push_back(yaml_to_json(item));
        return arr;
    }
    if (!node.IsScalar()) return nullptr;
    const std::string& s = node.Scalar();
    if (node.Tag() != "?") return s; // quoted or explicitly tagged: a string
    if (s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL") return nullptr;
    if (s == "true" || s == "True" || s == "TRUE") return true;
    if (s == "false" || s == "False" || s == "FALSE") return false;
    std::string_view digits = s;
    if (digits.front() == '+') digits.remove_prefix(1);
    std::int64_t i = 0;
    auto [iend, iec] = std::from_chars(digits.data(), digits.data() + digits.size(), i);
    if (iec == std::errc() && iend == digits.data() + digits.size()) return i;
    // YAML 1.2 floats: digits with '.', an exponent, or both; never "inf"/"nan" (JSON has none).
    bool numeric = !digits.empty() && digits.find_first_not_of("0123456789.eE+-") == digits.npos &&
                   digits.find_first_of("0123456789") != digits.npos;
    double d = 0;
    auto [dend, dec] = std::from_chars(digits.data(), digits.data() + digits.size(), d);
    if (numeric && dec == std::errc() && dend == digits.data() + digits.size() && std::isfinite(d))
        return d;
    return s;
}

namespace {

// Nesting of not/any is bounded: evaluation recurses, and the supervisor has one stack.
constexpr int kMaxDepth = 16;

std::optional<Condition> parse_at(const YAML::Node& node, const ConditionErrorSink& errors,
                                  const BodyPath* inherited, int depth) {
    if (depth > kMaxDepth) {
        errors(node, "conditions nest deeper than " + std::to_string(kMaxDepth) + " levels");
        return std::nullopt;
    }
    if (!node.IsMap()) {
        errors(node, "a condition must be a mapping such as {path: /msg/owner, equals: releng}");
        return std::nullopt;
    }
    Condition c;
    bool ok = true;
    const char* op = nullptr;
    YAML::Node op_node;
    for (auto it = node.begin(); it != node.end(); ++it) {
        auto key = it->first.Scalar();
        if (key == "path") continue;
        bool known = false;
        for (auto k : kOps)
            if (key == k) known = true;
        if (!known) {
            errors(it->first, "unknown key '" + key +
                                  "' in a condition (path, equals, in, matches, exists, not, any)");
            ok = false;
        } else if (op) {
            errors(it->first, "a condition has one test; '" + key + "' follows '" + op +
                                  "' (combine tests as separate conditions, or with any/not)");
            ok = false;
        } else {
            for (auto k : kOps)
                if (key == k) op = k.data();
            op_node = it->second;
        }
    }
    if (!op) {
        if (ok) errors(node, "a condition needs one of equals, in, matches, exists, not, any");
        return std::nullopt;
    }
    std::string_view o = op;
    if (auto p = node["path"]) {
        if (o == "any") {
            errors(p, "'any' takes no 'path': give each alternative its own");
            ok = false;
        } else if (!p.IsScalar()) {
            errors(p, "'path' must be a JSON Pointer string such as /msg/owner");
            ok = false;
        } else if (auto err = parse_body_path(p.Scalar(), c.path)) {
            errors(p, *err);
            ok = false;
        }
    } else if (inherited) {
        c.path = *inherited;
    } else if (o != "any" && o != "not") {
        errors(node, std::string("'") + op + "' needs a 'path' (a JSON Pointer into the body)");
        ok = false;
    }
    if (o == "equals") {
        c.kind = Condition::Kind::equals;
        c.value = yaml_to_json(op_node);
    } else if (o == "in") {
        c.kind = Condition::Kind::in;
        if (!op_node.IsSequence() || op_node.size() == 0) {
            errors(op_node, "'in' must be a non-empty list of values");
            ok = false;
        } else {
            c.value = yaml_to_json(op_node);
        }
    } else if (o == "matches") {
        c.kind = Condition::Kind::matches;
        if (!op_node.IsScalar()) {
            errors(op_node, "'matches' must be a regular expression (RE2 syntax) in a string");
            ok = false;
        } else {
            RE2::Options options;
            options.set_log_errors(false);
            // Bounds the compiled program of a pattern from the configuration; RE2's default
            // (8 MiB) is already generous for patterns on routing fields.
            options.set_max_mem(int64_t(8) << 20);
            auto re = std::make_shared<RE2>(op_node.Scalar(), options);
            if (!re->ok()) {
                errors(op_node, "bad regular expression '" + op_node.Scalar() +
                                    "': " + re->error() + " (RE2 syntax)");
                ok = false;
            } else {
                c.regex = std::move(re);
            }
        }
    } else if (o == "exists") {
        c.kind = Condition::Kind::exists;
        auto v = yaml_to_json(op_node);
        if (!v.is_boolean()) {
            errors(op_node, "'exists' must be true or false");
            ok = false;
        } else {
            c.exists = v.get<bool>();
        }
    } else if (o == "not") {
        c.kind = Condition::Kind::not_;
        bool has_path = node["path"] || inherited;
        if (auto child = parse_at(op_node, errors, has_path ? &c.path : nullptr, depth + 1))
            c.children.push_back(std::move(*child));
        else
            ok = false;
    } else { // any
        c.kind = Condition::Kind::any;
        if (!op_node.IsSequence() || op_node.size() == 0) {
            errors(op_node, "'any' must be a non-empty list of conditions");
            ok = false;
        } else {
            for (auto item : op_node) {
                if (auto child = parse_at(item, errors, nullptr, depth + 1))
                    c.children.push_back(std::move(*child));
                else
                    ok = false;
            }
        }
    }
    if (!ok) return std::nullopt;
    return c;
}

} // namespace

std::optional<Condition> parse_condition(const YAML::Node& node, const ConditionErrorSink& errors,
                                         const BodyPath* inherited) {
    return parse_at(node, errors, inherited, 0);
}

} // namespace loopabull
