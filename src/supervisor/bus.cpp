// SPDX-License-Identifier: GPL-3.0-or-later
#include "supervisor/bus.hpp"

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <system_error>

namespace loopabull {

namespace {

void check(int r, const std::string& what) {
    if (r < 0) throw std::system_error(-r, std::generic_category(), what);
}

BusPtr new_user_bus() {
    sd_bus* b = nullptr;
    if (std::getenv("DBUS_SESSION_BUS_ADDRESS")) {
        check(sd_bus_open_user(&b), "connecting to the user bus");
        return BusPtr(b);
    }
    check(sd_bus_new(&b), "sd_bus_new");
    BusPtr bus(b);
    std::string address = "unix:path=/run/user/" + std::to_string(getuid()) + "/bus";
    check(sd_bus_set_address(b, address.c_str()), "sd_bus_set_address");
    check(sd_bus_set_bus_client(b, 1), "sd_bus_set_bus_client");
    check(sd_bus_start(b), "connecting to the user bus at " + address);
    return bus;
}

} // namespace

BusPtr open_bus(BusKind kind, sd_event* event, const char* description) {
    BusPtr bus;
    if (kind == BusKind::user) {
        bus = new_user_bus();
    } else {
        sd_bus* b = nullptr;
        check(sd_bus_open_system(&b), "connecting to the system bus");
        bus.reset(b);
    }
    sd_bus_set_description(bus.get(), description);
    check(sd_bus_attach_event(bus.get(), event, SD_EVENT_PRIORITY_NORMAL), "attaching the bus");
    return bus;
}

std::string bus_error_text(const sd_bus_error* error, int r) {
    if (error && sd_bus_error_is_set(error))
        return std::string(error->message ? error->message : "") + " (" + error->name + ")";
    return std::strerror(r < 0 ? -r : r);
}

} // namespace loopabull
