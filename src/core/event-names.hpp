// SPDX-License-Identifier: GPL-3.0-or-later
// Which variable names an event may not set: the rules of ansible.event_variable. Pure logic.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace loopabull {

// The variables loopabull sets itself in every job (loopabull(8)).
inline constexpr std::string_view kOwnVariables[] = {"loopabull_routing_key", "loopabull_job_id",
                                                     "loopabull_instance", "loopabull_looper",
                                                     "loopabull_event_id", "loopabull_route",
                                                     "loopabull_replay_of"};

// Why a top-level body key cannot become an extra variable, or nothing. Refused: every name that
// starts with ansible_ or _ansible_ (connection, become, interpreter and fact variables, and
// those of any future plugin), the names without that prefix to which Ansible gives meaning
// (ansible-reserved.inc, generated from the installed ansible-core by tools/gen-ansible-reserved:
// play keywords, special variables such as inventory_hostname, hostvars, playbook_dir, omit,
// environment, loop variables, template globals such as lookup), and loopabull's own variables.
// Other loopabull_* names pass.
std::optional<std::string> top_level_key_error(std::string_view key);

// Why a name cannot be ansible.event_variable, or nothing: it must be an identifier
// ([A-Za-z_][A-Za-z0-9_]*, what Jinja2 reads as a variable), and free under
// top_level_key_error (the variable would otherwise override or be overridden by Ansible's own).
std::optional<std::string> event_variable_error(std::string_view name);

} // namespace loopabull
