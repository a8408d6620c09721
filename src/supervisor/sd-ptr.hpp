// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include <memory>

namespace loopabull {

struct SdEventUnref {
    void operator()(sd_event* e) const noexcept { sd_event_unref(e); }
};
// Sources capture `this` of their owner: disabling before the unref guarantees that no callback
// can run against a half-destroyed owner.
struct SdEventSourceUnref {
    void operator()(sd_event_source* s) const noexcept { sd_event_source_disable_unref(s); }
};
struct SdBusUnref {
    void operator()(sd_bus* b) const noexcept { sd_bus_flush_close_unref(b); }
};
struct SdBusSlotUnref {
    void operator()(sd_bus_slot* s) const noexcept { sd_bus_slot_unref(s); }
};
struct SdBusMessageUnref {
    void operator()(sd_bus_message* m) const noexcept { sd_bus_message_unref(m); }
};

using EventPtr = std::unique_ptr<sd_event, SdEventUnref>;
using SourcePtr = std::unique_ptr<sd_event_source, SdEventSourceUnref>;
using BusPtr = std::unique_ptr<sd_bus, SdBusUnref>;
using BusSlotPtr = std::unique_ptr<sd_bus_slot, SdBusSlotUnref>;
using BusMessagePtr = std::unique_ptr<sd_bus_message, SdBusMessageUnref>;

} // namespace loopabull
