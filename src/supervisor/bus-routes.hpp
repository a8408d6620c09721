// SPDX-License-Identifier: GPL-3.0-or-later
// The routes' part of the D-Bus API (org.loopabull.Loopabull1(5)): Explain and GetJobRouting.
// Both only read: open to every caller, like the other reads; Explain queues nothing.
#pragma once

#include <systemd/sd-bus.h>

namespace loopabull {

class Manager;

// Explain(s routing_key, s body, s looper) -> (b would_run, s text, s json). body: a JSON object
// (empty string: {}); looper: empty for any looper. A bad key or body is InvalidArgs.
int bus_explain(sd_bus_message* m, Manager& manager, sd_bus_error* error);

// GetJobRouting(t id) -> (s route, s serialize_value, t superseded_by): superseded_by is 0
// unless the job was superseded. An unknown id is the NoSuchJob error of GetJob.
int bus_get_job_routing(sd_bus_message* m, Manager& manager, const char* no_such_job_error,
                        sd_bus_error* error);

} // namespace loopabull
