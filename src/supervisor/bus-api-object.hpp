// SPDX-License-Identifier: GPL-3.0-or-later
// Inside the D-Bus API (not used outside bus-*.cpp): the object that serves one instance's
// interface. The interface is documented in man/org.loopabull.Loopabull1.5, and
// tests/integration/test_dbus.py keeps the two in step.
//   bus-api.cpp     the object: connecting, the name, PropertiesChanged (rate-limited), signals
//   bus-vtable.cpp  the vtable: properties and the methods' handlers
//   bus-polkit.cpp  who may call what: root, the owner on the user bus, or polkit (async)
#pragma once

#include "supervisor/bus-api.hpp"
#include "supervisor/manager.hpp"

#include <spdlog/spdlog.h>
#include <systemd/sd-bus.h>

#include <cstdint>
#include <list>
#include <memory>
#include <new>
#include <string>

namespace loopabull::bus_detail {

// At most one PropertiesChanged every 500 ms, whatever the rate of events: changes in between
// are coalesced into the next one (which names only the properties that changed).
inline constexpr std::uint64_t kPropertiesIntervalUsec = 500 * 1000;
// CheckAuthorization calls in flight; more are refused (LimitsExceeded), so that callers cannot
// make the supervisor's memory grow. dbus-daemon bounds pending replies per connection as well.
inline constexpr std::size_t kMaxPendingChecks = 256;
// An interactive check waits for a human at an authentication agent.
inline constexpr std::uint64_t kInteractiveCheckTimeoutUsec = 5ull * 60 * 1000 * 1000;

inline constexpr const char* kPolkitName = "org.freedesktop.PolicyKit1";
inline constexpr const char* kPolkitPath = "/org/freedesktop/PolicyKit1/Authority";
inline constexpr const char* kPolkitInterface = "org.freedesktop.PolicyKit1.Authority";

struct CredsUnref {
    void operator()(sd_bus_creds* c) const noexcept { sd_bus_creds_unref(c); }
};
using CredsPtr = std::unique_ptr<sd_bus_creds, CredsUnref>;

// An sd_bus_error freed on every path.
struct BusError {
    sd_bus_error e = SD_BUS_ERROR_NULL;
    BusError() = default;
    BusError(const BusError&) = delete;
    BusError& operator=(const BusError&) = delete;
    ~BusError() { sd_bus_error_free(&e); }
};

// body: GetJobBody; replay: ReplayJob (issue 17).
enum class Verb { cancel, pause, resume, reload, body, replay };

inline const char* verb_name(Verb v) noexcept {
    switch (v) {
    case Verb::cancel: return "cancel";
    case Verb::pause: return "pause";
    case Verb::resume: return "resume";
    case Verb::reload: return "reload";
    case Verb::body: return "read-body";
    case Verb::replay: return "replay";
    }
    return "manage";
}

// The polkit action a verb is checked against (polkit/org.loopabull.loopabull1.policy).
inline const char* verb_action(Verb v) noexcept {
    return v == Verb::replay ? kReplayAction : kManageAction;
}

// What the last PropertiesChanged said (or the values at start).
struct Snapshot {
    std::string state;
    std::uint64_t events_received = 0, events_rejected = 0, jobs_succeeded = 0, jobs_failed = 0;
    std::uint64_t events_superseded = 0, events_throttled = 0;
    std::uint64_t events_duplicate = 0; // issue 17: dedup
    std::uint32_t jobs_queued = 0, jobs_running = 0;
};

// C callbacks must not throw: std::bad_alloc becomes -ENOMEM, anything else a Failed error.
template <class F>
int guarded(sd_bus_error* error, F&& f) noexcept {
    try {
        return f();
    } catch (const std::bad_alloc&) {
        return -ENOMEM;
    } catch (const std::exception& e) {
        spdlog::error("D-Bus API: {}", e.what());
        return sd_bus_error_set(error, SD_BUS_ERROR_FAILED, e.what());
    }
}

class BusApi final : public ManagerObserver {
public:
    BusApi(Manager& m, BusKind kind);

    void job_new(const JobInfo& job) override;
    void job_removed(const JobInfo& job) override;
    void properties_changed() override;

private:
    // A method call waiting for polkit's answer.
    struct Check {
        BusApi* api = nullptr;
        BusMessagePtr call;
        BusSlotPtr slot;
        Verb verb = Verb::pause;
        JobId job = 0;
        std::string who;
        std::string sender;
        bool interactive = false;
    };

    static const sd_bus_vtable kVtable[];

    static int get_property(sd_bus*, const char*, const char*, const char* property,
                            sd_bus_message* reply, void* userdata, sd_bus_error* error) noexcept;
    static int list_loopers(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept;
    static int list_jobs(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept;
    static int get_job(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept;
    static int list_history(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept;
    static int get_job_record(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept;
    static int get_metrics(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept;
    static int cancel_job(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept;
    static int pause(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept;
    static int resume(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept;
    static int reload(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept;
    static int explain(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept;
    static int get_job_routing(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept;
    static int get_job_body(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept;
    static int replay_job(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept;
    static int on_polkit_reply(sd_bus_message* reply, void* userdata, sd_bus_error*) noexcept;
    static int on_properties_timer(sd_event_source*, uint64_t, void* userdata) noexcept;
    static int on_disconnected(sd_bus_message*, void* userdata, sd_bus_error*) noexcept;

    int authorize(sd_bus_message* m, Verb verb, JobId job, sd_bus_error* error);
    int ask_polkit(Check& check);
    int perform(sd_bus_message* m, Verb verb, JobId job, const std::string& who, sd_bus_error* error);
    int no_such_job(JobId id, sd_bus_error* error) const;
    int history_off(sd_bus_error* error) const;
    int refused(const ReplayRefusal& why, sd_bus_error* error) const;
    // GetJobBody and ReplayJob: the job's body must be there before polkit is asked.
    int body_call(sd_bus_message* m, Verb verb, sd_bus_error* error);
    void emit_properties();
    Snapshot snapshot() const;

    Manager& manager_;
    BusKind kind_;
    BusPtr bus_;
    BusSlotPtr object_slot_, disconnect_slot_;
    SourcePtr properties_timer_;
    std::string name_;
    Snapshot sent_;
    std::uint64_t last_emit_ = 0; // CLOCK_MONOTONIC usec of the last PropertiesChanged
    bool timer_armed_ = false;
    // Declared last: destroyed (and their calls to polkit cancelled) before the bus goes.
    std::list<std::unique_ptr<Check>> checks_;
};

} // namespace loopabull::bus_detail
