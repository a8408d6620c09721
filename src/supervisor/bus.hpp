// SPDX-License-Identifier: GPL-3.0-or-later
// D-Bus connections of the supervisor, attached to its event loop.
#pragma once

#include "supervisor/sd-ptr.hpp"

#include <string>

namespace loopabull {

// Where a connection goes (none: no D-Bus API at all, for a run by hand without a bus).
enum class BusKind { none, system, user };

// The system bus, or the user's bus: $DBUS_SESSION_BUS_ADDRESS, else /run/user/UID/bus (a
// system service running as the automation user has no session environment).
BusPtr open_bus(BusKind kind, sd_event* event, const char* description);

// "Message: name" of a failed call, for logs and answers.
std::string bus_error_text(const sd_bus_error* error, int r);

} // namespace loopabull
