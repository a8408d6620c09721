// SPDX-License-Identifier: GPL-3.0-or-later
// The D-Bus API of one instance: org.loopabull.Loopabull1.INSTANCE on the system or user bus.
#pragma once

#include "loopabull/manager.hpp"

#include <memory>
#include <string>

namespace loopabull {

// "org.loopabull.Loopabull1." + the instance in the bus-name alphabet.
std::string bus_name_for(const std::string& instance);

// Connects, exports the object and takes the name; throws when the name cannot be had.
std::unique_ptr<ManagerObserver> make_bus_api(Manager& manager, BusKind kind);

} // namespace loopabull
