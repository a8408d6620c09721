// SPDX-License-Identifier: GPL-3.0-or-later
// The D-Bus API of the manager: the object on the bus, its name, the signals, and
// PropertiesChanged (rate-limited). The vtable is in bus-vtable.cpp, the callers' rights in
// bus-polkit.cpp.
#include "supervisor/bus-api-object.hpp"

#include "supervisor/bus.hpp"

#include "build-config.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstring>
#include <system_error>
#include <vector>

namespace loopabull {

namespace bus_detail {

BusApi::BusApi(Manager& m, BusKind kind) : manager_(m), kind_(kind) {
    auto check = [](int r, const std::string& what) {
        if (r < 0) throw std::system_error(-r, std::generic_category(), what);
    };
    bus_ = open_bus(kind, m.event(), "api");
    name_ = bus_name_for(m.instance());
    sent_ = snapshot();

    sd_event_source* s = nullptr;
    check(sd_event_add_time(m.event(), &s, CLOCK_MONOTONIC, UINT64_MAX, 0, on_properties_timer, this),
          "properties timer");
    properties_timer_.reset(s);
    sd_event_source_set_description(s, "bus-properties-changed");
    sd_event_source_set_enabled(s, SD_EVENT_OFF);

    sd_bus_slot* slot = nullptr;
    check(sd_bus_match_signal(bus_.get(), &slot, "org.freedesktop.DBus.Local", nullptr,
                              "org.freedesktop.DBus.Local", "Disconnected", on_disconnected, this),
          "watching the bus connection");
    disconnect_slot_.reset(slot);
    // The object first: once the name is ours, calls may arrive.
    check(sd_bus_add_object_vtable(bus_.get(), &slot, kBusObjectPath, kBusInterface, kVtable, this),
          "exporting " + std::string(kBusObjectPath));
    object_slot_.reset(slot);

    int r = sd_bus_request_name(bus_.get(), name_.c_str(), 0);
    if (r == -EEXIST || r == -EALREADY)
        throw std::runtime_error("the bus name " + name_ + " is taken: is instance " + m.instance() +
                                 " already running?");
    if (r < 0)
        throw std::system_error(-r, std::generic_category(),
                                "taking the bus name " + name_ +
                                    (r == -EACCES ? " (does the D-Bus policy let this user own it?)" : ""));
    spdlog::info("D-Bus API on {} as {} {}", kind == BusKind::system ? "the system bus" : "the user bus",
                 name_, kBusObjectPath);
}

Snapshot BusApi::snapshot() const {
    Snapshot s;
    s.state = std::string(to_string(manager_.state()));
    const auto& c = manager_.counters();
    s.events_received = c.events_received;
    s.events_rejected = c.events_rejected;
    s.jobs_succeeded = c.jobs_succeeded;
    s.jobs_failed = c.jobs_failed;
    s.events_superseded = c.events_superseded;
    s.events_throttled = c.events_throttled;
    s.events_duplicate = c.events_duplicate;
    s.jobs_queued = static_cast<std::uint32_t>(manager_.jobs_queued());
    s.jobs_running = static_cast<std::uint32_t>(manager_.jobs_running());
    return s;
}

// ---- properties -------------------------------------------------------------------------------

void BusApi::properties_changed() {
    if (timer_armed_) return; // coalesced into the emission already scheduled
    std::uint64_t now = 0;
    sd_event_now(manager_.event(), CLOCK_MONOTONIC, &now);
    std::uint64_t when = std::max(now, last_emit_ + kPropertiesIntervalUsec);
    if (sd_event_source_set_time(properties_timer_.get(), when) < 0 ||
        sd_event_source_set_enabled(properties_timer_.get(), SD_EVENT_ONESHOT) < 0)
        return;
    timer_armed_ = true;
}

int BusApi::on_properties_timer(sd_event_source*, uint64_t usec, void* userdata) noexcept {
    auto* self = static_cast<BusApi*>(userdata);
    self->timer_armed_ = false;
    self->last_emit_ = usec;
    try {
        self->emit_properties();
    } catch (const std::exception& e) {
        spdlog::warn("D-Bus API: PropertiesChanged not sent: {}", e.what());
    }
    return 0;
}

void BusApi::emit_properties() {
    auto now = snapshot();
    std::vector<char*> names;
    auto add = [&](bool changed, const char* name) {
        if (changed) names.push_back(const_cast<char*>(name));
    };
    add(now.state != sent_.state, "State");
    add(now.events_received != sent_.events_received, "EventsReceived");
    add(now.events_rejected != sent_.events_rejected, "EventsRejected");
    add(now.jobs_queued != sent_.jobs_queued, "JobsQueued");
    add(now.jobs_running != sent_.jobs_running, "JobsRunning");
    add(now.jobs_succeeded != sent_.jobs_succeeded, "JobsSucceeded");
    add(now.jobs_failed != sent_.jobs_failed, "JobsFailed");
    add(now.events_superseded != sent_.events_superseded, "EventsSuperseded");
    add(now.events_throttled != sent_.events_throttled, "EventsThrottled");
    add(now.events_duplicate != sent_.events_duplicate, "EventsDuplicate");
    if (names.empty()) return;
    names.push_back(nullptr);
    int r = sd_bus_emit_properties_changed_strv(bus_.get(), kBusObjectPath, kBusInterface, names.data());
    if (r < 0) spdlog::debug("D-Bus API: PropertiesChanged: {}", std::strerror(-r));
    sent_ = std::move(now);
}

// ---- signals ----------------------------------------------------------------------------------

void BusApi::job_new(const JobInfo& job) {
    int r = sd_bus_emit_signal(bus_.get(), kBusObjectPath, kBusInterface, "JobNew", "ts",
                               static_cast<std::uint64_t>(job.id), job.routing_key.c_str());
    if (r < 0) spdlog::debug("D-Bus API: JobNew: {}", std::strerror(-r));
}

void BusApi::job_removed(const JobInfo& job) {
    std::string result = job.result ? std::string(to_string(*job.result)) : std::string("cancelled");
    int r = sd_bus_emit_signal(bus_.get(), kBusObjectPath, kBusInterface, "JobRemoved", "tsi",
                               static_cast<std::uint64_t>(job.id), result.c_str(),
                               static_cast<std::int32_t>(job.exit_code.value_or(-1)));
    if (r < 0) spdlog::debug("D-Bus API: JobRemoved: {}", std::strerror(-r));
}

int BusApi::on_disconnected(sd_bus_message*, void* userdata, sd_bus_error*) noexcept {
    auto* self = static_cast<BusApi*>(userdata);
    spdlog::error("lost the connection to the D-Bus {} bus: the API of instance {} is gone until "
                  "loopabull is restarted; events and jobs go on",
                  self->kind_ == BusKind::system ? "system" : "user", self->manager_.instance());
    return 0;
}

} // namespace bus_detail

std::unique_ptr<ManagerObserver> make_bus_api(Manager& manager, BusKind kind) {
    using bus_detail::BusApi;
    return std::make_unique<BusApi>(manager, kind);
}

} // namespace loopabull
