// SPDX-License-Identifier: GPL-3.0-or-later
// The extra-vars file handed to ansible-playbook with -e @FILE. Pure logic.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace loopabull {

struct VarsOptions {
    // false (the default): every string from the event is tagged !unsafe, so Ansible never
    // templates event data ({{ lookup('pipe', ...) }} in a message stays text).
    bool trusted = false;
    // The one variable that holds the body (ansible.event_variable, an identifier that
    // event_variable_error accepts). nullopt: the top-level form, each body key a variable of its
    // own; the caller must have refused the event if top_level_key_error finds a key (keys that
    // name loopabull's own variables are dropped here too, so that its values always win).
    std::optional<std::string> event_variable = "event";
    // Variables loopabull sets itself (kOwnVariables), written after the body.
    std::vector<std::pair<std::string, std::string>> own;
};

// YAML, pure ASCII (everything else escaped), one top-level key a line. Numbers are exact: a big
// integer (exact-json.hpp) is written as its literal, which PyYAML reads as a Python int.
std::string render_vars(const nlohmann::json& body, const VarsOptions& options);

} // namespace loopabull
