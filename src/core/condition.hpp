// SPDX-License-Identifier: GPL-3.0-or-later
// Conditions of a route on the event's body (`when:` in loopabull.yml(5)). Pure logic.
//
// A condition names a place in the body with a JSON Pointer (RFC 6901) and tests it with one of
// equals, in, matches, exists; `not` and `any` combine them. Event bodies are untrusted, so
// evaluation never throws, never allocates on the success path, and regular expressions are RE2
// (linear time in the input, no backtracking; https://github.com/google/re2/wiki/WhyRE2), never
// std::regex, whose backtracking is exponential on crafted input.
#pragma once

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace re2 {
class RE2;
}

namespace loopabull {

// A JSON Pointer, split once into its unescaped reference tokens ("~1" -> "/", "~0" -> "~").
struct BodyPath {
    std::string text;                // as written, for messages and explain
    std::vector<std::string> tokens; // empty: the whole body

    // The value the pointer names in doc, or nullptr when it names nothing. Array indexes follow
    // RFC 6901 section 4: decimal digits without a leading zero; "-" (past the end) names nothing.
    const nlohmann::json* resolve(const nlohmann::json& doc) const noexcept;
};

// Parses RFC 6901 syntax: "" or "/"-separated tokens where '~' is followed by '0' or '1'.
// Returns the reason when the text is not a JSON Pointer.
std::optional<std::string> parse_body_path(std::string_view text, BodyPath& out);

struct Condition {
    enum class Kind { equals, in, matches, exists, not_, any };
    Kind kind = Kind::exists;
    BodyPath path;                         // the place tested (inherited by the child of `not`)
    nlohmann::json value;                  // equals: the value; in: an array of values
    std::shared_ptr<const re2::RE2> regex; // matches (shared: Config is copied on reload)
    bool exists = true;                    // exists: true or false
    std::vector<Condition> children;       // not: one; any: one or more

    // Whether the condition holds for body (any JSON value; routes pass the event's object).
    // matches holds only for a string; equals/in compare JSON values (1 equals 1.0, "1" does not).
    bool holds(const nlohmann::json& body) const noexcept;
    // One line for a person: `/msg/owner equals "releng"`, `any of [...]`.
    std::string describe() const;
};

// Where a condition's problem is reported: the YAML node at fault and the message. The
// configuration reader turns it into FILE:LINE:COL.
using ConditionErrorSink = std::function<void(const YAML::Node& at, std::string message)>;

// Reads one condition: a mapping with an optional `path` and exactly one of equals, in, matches,
// exists, not, any. `inherited` is the path of an enclosing `not` (`{path: /a, not: {equals: 1}}`).
// Returns nothing after reporting every problem found through errors.
std::optional<Condition> parse_condition(const YAML::Node& node, const ConditionErrorSink& errors,
                                         const BodyPath* inherited = nullptr);

// A YAML scalar as JSON, the YAML 1.2 core schema (what loopabull.yml(5) promises for values):
// plain null/true/false/integers/floats take their type, quoted scalars are strings.
nlohmann::json yaml_to_json(const YAML::Node& node);

} // namespace loopabull
