// SPDX-License-Identifier: GPL-3.0-or-later
// loopabullctl's commands for routes (issue 14): `explain`, and the routing part of `job`.
// The D-Bus calls are made by the caller's client (loopabullctl.cpp), passed in as functions,
// so that the bus connection and its error handling stay in one place.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace loopabull::ctl {

struct ExplainReply {
    bool would_run = false;
    std::string text, json;
};
// Calls Explain(routing_key, body, looper) on the instance; throws the client's failure.
using ExplainCall = std::function<ExplainReply(const std::string& key, const std::string& body,
                                               const std::string& looper)>;

// `loopabullctl explain ROUTING_KEY [BODY-JSON|@FILE]`: prints the instance's answer. Returns 0
// when the event would run a playbook, 1 when it would not, 2 on a bad key or body.
int cmd_explain(const std::vector<std::string>& args, const std::string& looper, bool json,
                const ExplainCall& call);

struct JobRouting {
    std::string route, serialize_value;
    std::uint64_t superseded_by = 0;
};

// The lines `loopabullctl job` adds for a job that a route took (nothing without routes).
std::string job_routing_lines(const JobRouting& r);

} // namespace loopabull::ctl
