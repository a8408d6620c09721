// SPDX-License-Identifier: GPL-3.0-or-later
#include "core/event-names.hpp"

#include <algorithm>
#include <array>

namespace loopabull {

namespace {

constexpr std::string_view kAnsibleReserved[] = {
#include "core/ansible-reserved.inc"
};

// Python's keywords cannot be Jinja2 variables either ("{{ class }}" does not parse).
constexpr std::string_view kKeywords[] = {
    "False",   "None",     "True",     "and",    "as",    "assert", "async",  "await",
    "break",   "class",    "continue", "def",    "del",   "elif",   "else",   "except",
    "finally", "for",      "from",     "global", "if",    "import", "in",     "is",
    "lambda",  "nonlocal", "not",      "or",     "pass",  "raise",  "return", "try",
    "while",   "with",     "yield",    "true",   "false", "none"};

} // namespace

std::optional<std::string> top_level_key_error(std::string_view key) {
    std::string quoted = "'" + std::string(key) + "'";
    if (key.starts_with("ansible_") || key.starts_with("_ansible_"))
        return "body key " + quoted + " is an Ansible variable (every ansible_* name is refused)";
    if (std::find(std::begin(kAnsibleReserved), std::end(kAnsibleReserved), key) !=
        std::end(kAnsibleReserved))
        return "body key " + quoted + " is a name Ansible gives meaning to";
    if (std::find(std::begin(kOwnVariables), std::end(kOwnVariables), key) !=
        std::end(kOwnVariables))
        return "body key " + quoted + " is a variable loopabull sets itself";
    return std::nullopt;
}

std::optional<std::string> event_variable_error(std::string_view name) {
    auto word = [](char c, bool first) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
               (!first && c >= '0' && c <= '9');
    };
    if (name.empty()) return "must not be empty";
    for (std::size_t i = 0; i < name.size(); ++i)
        if (!word(name[i], i == 0))
            return "'" + std::string(name) +
                   "' is not a variable name (letters, digits and '_', not starting with a digit)";
    if (std::find(std::begin(kKeywords), std::end(kKeywords), name) != std::end(kKeywords))
        return "'" + std::string(name) + "' is a keyword of Jinja2's expressions";
    if (auto err = top_level_key_error(name))
        return "'" + std::string(name) + "' is taken: " + err->substr(err->find(" is ") + 4);
    return std::nullopt;
}

} // namespace loopabull
