// SPDX-License-Identifier: GPL-3.0-or-later
// `loopabull --explain CONFIG ROUTING_KEY [BODY-JSON|@FILE]`: what a configuration file would do
// with an event, without a running instance (so without serialization and throttle state).
#pragma once

#include <string>

namespace loopabull {

struct ExplainRequest {
    std::string config_path, looper_dir;
    std::string routing_key, body; // body: JSON text, @FILE or empty
    std::string looper;            // empty: any looper
    bool json = false;
};

// Prints the explanation on stdout. Returns 0 when the event would run a playbook, 1 when it
// would not, 2 on a bad key, body or configuration (printed on stderr as FILE:LINE:COL).
int explain_offline(const ExplainRequest& request);

} // namespace loopabull
