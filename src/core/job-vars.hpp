// SPDX-License-Identifier: GPL-3.0-or-later
// The variables a job's playbook receives, in one place: the supervisor writes them to the vars
// file and explain shows them, so both always agree. Pure logic.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>

namespace loopabull {

struct JobIdentity {
    std::string routing_key;
    std::string job_id; // decimal; explain shows "(assigned when queued)"
    std::string instance;
    std::string looper;
    std::optional<nlohmann::json> event_id; // string or integer, as the looper sent it
    std::string route;                      // the route that took it; empty without routes
    std::string replay_of{}; // decimal: the job this one replays (ReplayJob); empty otherwise
};

// The vars file's text (YAML, see render_vars in varsfile.hpp): the body's variables and
// loopabull's own (loopabull_routing_key, loopabull_job_id, loopabull_instance,
// loopabull_looper, loopabull_event_id when the event had one, loopabull_route with routes,
// loopabull_replay_of for a replay).
// trusted: ansible.trusted_payloads; event_variable: ansible.event_variable (nullopt: the
// top-level form).
std::string job_vars_text(const nlohmann::json& body, const JobIdentity& job, bool trusted,
                          const std::optional<std::string>& event_variable);

} // namespace loopabull
