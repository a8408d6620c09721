// SPDX-License-Identifier: GPL-3.0-or-later
// The D-Bus API of one instance: org.loopabull.Loopabull1.INSTANCE on the system or user bus.
// Documented in org.loopabull.Loopabull1(5); loopabullctl(1) is its client.
#pragma once

#include "shared/dbus-names.hpp"
#include "supervisor/bus.hpp"

#include <memory>

namespace loopabull {

class Manager;
class ManagerObserver;

// Connects, exports the object and takes the name; throws when the name cannot be had.
std::unique_ptr<ManagerObserver> make_bus_api(Manager& manager, BusKind kind);

} // namespace loopabull
