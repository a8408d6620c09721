// SPDX-License-Identifier: GPL-3.0-or-later
// The extra-vars file handed to ansible-playbook with -e @FILE. Pure logic.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <utility>
#include <vector>

namespace loopabull {

struct VarsOptions {
    // false (the default): every string from the event is tagged !unsafe, so Ansible never
    // templates event data ({{ lookup('pipe', ...) }} in a message stays text).
    bool trusted = false;
    // Variables loopabull sets itself. Top-level body keys starting with "loopabull_" are
    // reserved for these and dropped.
    std::vector<std::pair<std::string, std::string>> own;
};

// YAML, pure ASCII (everything else escaped), one top-level key a line.
std::string render_vars(const nlohmann::json& body, const VarsOptions& options);

} // namespace loopabull
