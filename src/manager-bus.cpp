// SPDX-License-Identifier: GPL-3.0-or-later
// The D-Bus API of the manager: its vtable, the signals, PropertiesChanged (rate-limited), and
// the asynchronous polkit check of the calls that change something. The interface is documented
// in man/org.loopabull.Loopabull1.5; tests/integration/test_dbus.py keeps the two in step.
#include "loopabull/manager-bus.hpp"

#include "loopabull/bus.hpp"
#include "loopabull/manager.hpp"

#include "build-config.h"

#include <spdlog/spdlog.h>
#include <systemd/sd-bus.h>

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstring>
#include <list>
#include <new>
#include <system_error>
#include <vector>

namespace loopabull {

namespace {

// At most one PropertiesChanged every 500 ms, whatever the rate of events: changes in between
// are coalesced into the next one (which names only the properties that changed).
constexpr std::uint64_t kPropertiesIntervalUsec = 500 * 1000;
// CheckAuthorization calls in flight; more are refused (LimitsExceeded), so that callers cannot
// make the supervisor's memory grow. dbus-daemon bounds pending replies per connection as well.
constexpr std::size_t kMaxPendingChecks = 256;
// An interactive check waits for a human at an authentication agent.
constexpr std::uint64_t kInteractiveCheckTimeoutUsec = 5ull * 60 * 1000 * 1000;

constexpr const char* kPolkitName = "org.freedesktop.PolicyKit1";
constexpr const char* kPolkitPath = "/org/freedesktop/PolicyKit1/Authority";
constexpr const char* kPolkitInterface = "org.freedesktop.PolicyKit1.Authority";

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

enum class Verb { cancel, pause, resume, reload };

const char* verb_name(Verb v) noexcept {
    switch (v) {
    case Verb::cancel: return "cancel";
    case Verb::pause: return "pause";
    case Verb::resume: return "resume";
    case Verb::reload: return "reload";
    }
    return "manage";
}

// What the last PropertiesChanged said (or the values at start).
struct Snapshot {
    std::string state;
    std::uint64_t events_received = 0, events_rejected = 0, jobs_succeeded = 0, jobs_failed = 0;
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
    static int cancel_job(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept;
    static int pause(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept;
    static int resume(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept;
    static int reload(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept;
    static int on_polkit_reply(sd_bus_message* reply, void* userdata, sd_bus_error*) noexcept;
    static int on_properties_timer(sd_event_source*, uint64_t, void* userdata) noexcept;
    static int on_disconnected(sd_bus_message*, void* userdata, sd_bus_error*) noexcept;

    int authorize(sd_bus_message* m, Verb verb, JobId job, sd_bus_error* error);
    int ask_polkit(Check& check);
    int perform(sd_bus_message* m, Verb verb, JobId job, const std::string& who, sd_bus_error* error);
    int no_such_job(JobId id, sd_bus_error* error) const;
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

// Property and argument names as documented in org.loopabull.Loopabull1(5). Every method is
// SD_BUS_VTABLE_UNPRIVILEGED: otherwise sd-bus itself would demand CAP_SYS_ADMIN of callers on
// the system bus. Reading is open to all; the methods that change something check their caller
// themselves (authorize()).
const sd_bus_vtable BusApi::kVtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_PROPERTY("Instance", "s", get_property, 0, SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_PROPERTY("Version", "s", get_property, 0, SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_PROPERTY("State", "s", get_property, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_PROPERTY("EventsReceived", "t", get_property, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_PROPERTY("EventsRejected", "t", get_property, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_PROPERTY("JobsQueued", "u", get_property, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_PROPERTY("JobsRunning", "u", get_property, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_PROPERTY("JobsSucceeded", "t", get_property, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_PROPERTY("JobsFailed", "t", get_property, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_METHOD_WITH_NAMES("ListLoopers", "", "", "a(ssuut)", SD_BUS_PARAM(loopers),
                             list_loopers, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_NAMES("ListJobs", "", "", "a(tsssts)", SD_BUS_PARAM(jobs),
                             list_jobs, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_NAMES("GetJob", "t", SD_BUS_PARAM(id), "tsssstttsi",
                             SD_BUS_PARAM(id) SD_BUS_PARAM(routing_key) SD_BUS_PARAM(state)
                                 SD_BUS_PARAM(unit) SD_BUS_PARAM(looper) SD_BUS_PARAM(queued_usec)
                                     SD_BUS_PARAM(started_usec) SD_BUS_PARAM(finished_usec)
                                         SD_BUS_PARAM(result) SD_BUS_PARAM(exit_code),
                             get_job, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_NAMES("CancelJob", "t", SD_BUS_PARAM(id), "", "", cancel_job,
                             SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("Pause", "", "", pause, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("Resume", "", "", resume, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("Reload", "", "", reload, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_SIGNAL_WITH_NAMES("JobNew", "ts", SD_BUS_PARAM(id) SD_BUS_PARAM(routing_key), 0),
    SD_BUS_SIGNAL_WITH_NAMES("JobRemoved", "tsi",
                             SD_BUS_PARAM(id) SD_BUS_PARAM(result) SD_BUS_PARAM(exit_code), 0),
    SD_BUS_VTABLE_END,
};

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
    s.jobs_queued = static_cast<std::uint32_t>(manager_.jobs_queued());
    s.jobs_running = static_cast<std::uint32_t>(manager_.jobs_running());
    return s;
}

// ---- properties -------------------------------------------------------------------------------

int BusApi::get_property(sd_bus*, const char*, const char*, const char* property,
                         sd_bus_message* reply, void* userdata, sd_bus_error* error) noexcept {
    auto* self = static_cast<BusApi*>(userdata);
    return guarded(error, [&] {
        std::string_view p(property);
        if (p == "Instance") return sd_bus_message_append(reply, "s", self->manager_.instance().c_str());
        if (p == "Version") return sd_bus_message_append(reply, "s", LOOPABULL_VERSION);
        auto s = self->snapshot();
        if (p == "State") return sd_bus_message_append(reply, "s", s.state.c_str());
        if (p == "EventsReceived") return sd_bus_message_append(reply, "t", s.events_received);
        if (p == "EventsRejected") return sd_bus_message_append(reply, "t", s.events_rejected);
        if (p == "JobsQueued") return sd_bus_message_append(reply, "u", s.jobs_queued);
        if (p == "JobsRunning") return sd_bus_message_append(reply, "u", s.jobs_running);
        if (p == "JobsSucceeded") return sd_bus_message_append(reply, "t", s.jobs_succeeded);
        if (p == "JobsFailed") return sd_bus_message_append(reply, "t", s.jobs_failed);
        return sd_bus_error_setf(error, SD_BUS_ERROR_UNKNOWN_PROPERTY, "Unknown property %s", property);
    });
}

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

// ---- methods anyone may call ------------------------------------------------------------------

// A method return holding one array, filled item by item.
template <class Items, class Append>
int reply_array(sd_bus_message* m, const char* contents, const Items& items, Append append) {
    sd_bus_message* raw = nullptr;
    int r = sd_bus_message_new_method_return(m, &raw);
    if (r < 0) return r;
    BusMessagePtr reply(raw);
    r = sd_bus_message_open_container(raw, 'a', contents);
    for (auto& item : items) {
        if (r < 0) break;
        r = append(raw, item);
    }
    if (r >= 0) r = sd_bus_message_close_container(raw);
    if (r >= 0) r = sd_bus_send(nullptr, raw, nullptr);
    return r;
}

int BusApi::list_loopers(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept {
    auto* self = static_cast<BusApi*>(userdata);
    return guarded(error, [&] {
        return reply_array(m, "(ssuut)", self->manager_.loopers(), [](sd_bus_message* raw, const LooperInfo& l) {
            return sd_bus_message_append(raw, "(ssuut)", l.name.c_str(), l.state.c_str(),
                                         static_cast<std::uint32_t>(l.pid > 0 ? l.pid : 0),
                                         static_cast<std::uint32_t>(l.restarts),
                                         static_cast<std::uint64_t>(l.events));
        });
    });
}

int BusApi::list_jobs(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept {
    auto* self = static_cast<BusApi*>(userdata);
    return guarded(error, [&] {
        return reply_array(m, "(tsssts)", self->manager_.jobs(), [](sd_bus_message* raw, const JobInfo& j) {
            return sd_bus_message_append(raw, "(tsssts)", static_cast<std::uint64_t>(j.id),
                                         j.routing_key.c_str(), j.state.c_str(), j.unit.c_str(),
                                         static_cast<std::uint64_t>(j.started_usec), j.looper.c_str());
        });
    });
}

int BusApi::no_such_job(JobId id, sd_bus_error* error) const {
    return sd_bus_error_setf(error, kErrorNoSuchJob,
                             "No job %" PRIu64 " in instance %s (never queued, or finished too long ago)",
                             static_cast<std::uint64_t>(id), manager_.instance().c_str());
}

int BusApi::get_job(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept {
    auto* self = static_cast<BusApi*>(userdata);
    return guarded(error, [&] {
        std::uint64_t id = 0;
        int r = sd_bus_message_read(m, "t", &id);
        if (r < 0) return r;
        auto job = self->manager_.job(id);
        if (!job) return self->no_such_job(id, error);
        std::string result = job->result ? std::string(to_string(*job->result)) : std::string();
        return sd_bus_reply_method_return(
            m, "tsssstttsi", static_cast<std::uint64_t>(job->id), job->routing_key.c_str(),
            job->state.c_str(), job->unit.c_str(), job->looper.c_str(),
            static_cast<std::uint64_t>(job->queued_usec), static_cast<std::uint64_t>(job->started_usec),
            static_cast<std::uint64_t>(job->finished_usec), result.c_str(),
            static_cast<std::int32_t>(job->exit_code.value_or(-1)));
    });
}

// ---- methods that change something: root, the owner on the user bus, or polkit ---------------

int BusApi::cancel_job(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept {
    auto* self = static_cast<BusApi*>(userdata);
    return guarded(error, [&] {
        std::uint64_t id = 0;
        int r = sd_bus_message_read(m, "t", &id);
        if (r < 0) return r;
        // Nobody is asked for a password to cancel a job that is not there.
        auto job = self->manager_.job(id);
        if (!job || job->state == "finished") return self->no_such_job(id, error);
        return self->authorize(m, Verb::cancel, id, error);
    });
}

int BusApi::pause(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept {
    auto* self = static_cast<BusApi*>(userdata);
    return guarded(error, [&] { return self->authorize(m, Verb::pause, 0, error); });
}

int BusApi::resume(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept {
    auto* self = static_cast<BusApi*>(userdata);
    return guarded(error, [&] { return self->authorize(m, Verb::resume, 0, error); });
}

int BusApi::reload(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept {
    auto* self = static_cast<BusApi*>(userdata);
    return guarded(error, [&] { return self->authorize(m, Verb::reload, 0, error); });
}

// Decides now (root; the owner on the user bus; anyone else on the user bus is refused) or asks
// polkit and answers the call later. In the systemd way: the caller is identified by its unique
// bus name (polkit subject "system-bus-name"), never by a pid that could be reused.
int BusApi::authorize(sd_bus_message* m, Verb verb, JobId job, sd_bus_error* error) {
    const char* sender = sd_bus_message_get_sender(m);
    sd_bus_creds* raw = nullptr;
    int r = sender ? sd_bus_query_sender_creds(m, SD_BUS_CREDS_EUID, &raw) : -ENXIO;
    CredsPtr creds(raw);
    uid_t uid = 0;
    if (r >= 0) r = sd_bus_creds_get_euid(raw, &uid);
    if (r < 0) {
        spdlog::warn("D-Bus API: {} refused: cannot tell who is calling: {}", verb_name(verb),
                     std::strerror(-r));
        return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED, "Cannot tell who is calling: access denied");
    }
    std::string who = "uid " + std::to_string(uid) + " (" + sender + ")";
    if (uid == 0) return perform(m, verb, job, who, error);
    if (kind_ == BusKind::user) {
        if (uid == geteuid()) return perform(m, verb, job, who, error);
        spdlog::warn("D-Bus API: {} by {} refused: on the user bus only uid {} may", verb_name(verb), who,
                     geteuid());
        return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                 "Access denied: only uid %u (which runs instance %s) may %s it",
                                 static_cast<unsigned>(geteuid()), manager_.instance().c_str(),
                                 verb_name(verb));
    }
    if (checks_.size() >= kMaxPendingChecks)
        return sd_bus_error_set(error, SD_BUS_ERROR_LIMITS_EXCEEDED,
                                "Too many authorization checks in progress; try again");

    auto check = std::make_unique<Check>();
    check->api = this;
    check->call.reset(sd_bus_message_ref(m));
    check->verb = verb;
    check->job = job;
    check->who = std::move(who);
    check->sender = sender;
    check->interactive = sd_bus_message_get_allow_interactive_authorization(m) > 0;
    r = ask_polkit(*check);
    if (r < 0) {
        spdlog::warn("D-Bus API: {} by {} refused: cannot ask polkit: {}", verb_name(verb), check->who,
                     std::strerror(-r));
        return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED, "Cannot ask polkit: access denied");
    }
    checks_.push_back(std::move(check));
    return 1; // answered in on_polkit_reply
}

// Sends CheckAuthorization for `check`; on_polkit_reply gets the answer.
int BusApi::ask_polkit(Check& check) {
    sd_bus_message* q = nullptr;
    int r = sd_bus_message_new_method_call(bus_.get(), &q, kPolkitName, kPolkitPath, kPolkitInterface,
                                           "CheckAuthorization");
    if (r < 0) return r;
    BusMessagePtr query(q);
    std::string job_text = std::to_string(check.job);
    r = sd_bus_message_append(q, "(sa{sv})s", "system-bus-name", 1, "name", "s", check.sender.c_str(),
                              kManageAction);
    // The details let polkit rules tell instances and verbs apart: action.lookup("instance").
    if (r >= 0) r = sd_bus_message_open_container(q, 'a', "{ss}");
    if (r >= 0) {
        r = sd_bus_message_append(q, "{ss}", "instance", manager_.instance().c_str());
        if (r >= 0) r = sd_bus_message_append(q, "{ss}", "verb", verb_name(check.verb));
        if (r >= 0 && check.verb == Verb::cancel) r = sd_bus_message_append(q, "{ss}", "job", job_text.c_str());
    }
    if (r >= 0) r = sd_bus_message_close_container(q);
    // Flags: 1 = AllowUserInteraction, when the caller said it can wait for a password prompt.
    if (r >= 0) r = sd_bus_message_append(q, "us", check.interactive ? 1u : 0u, "");
    if (r < 0) return r;
    sd_bus_slot* slot = nullptr;
    r = sd_bus_call_async(bus_.get(), &slot, q, on_polkit_reply, &check,
                          check.interactive ? kInteractiveCheckTimeoutUsec : 0);
    if (r < 0) return r;
    check.slot.reset(slot);
    return 0;
}

int BusApi::on_polkit_reply(sd_bus_message* reply, void* userdata, sd_bus_error*) noexcept {
    auto* check = static_cast<Check*>(userdata);
    auto* self = check->api;
    // Ours from here on; sd-bus holds its own reference to the slot while this runs.
    std::unique_ptr<Check> own;
    for (auto it = self->checks_.begin(); it != self->checks_.end(); ++it)
        if (it->get() == check) {
            own = std::move(*it);
            self->checks_.erase(it);
            break;
        }
    if (!own) return 0;
    sd_bus_message* call = own->call.get();
    const char* verb = verb_name(own->verb);
    BusError error;
    int r = 0;
    try {
        const sd_bus_error* e = sd_bus_message_get_error(reply);
        if (e) {
            // polkit unreachable, or it failed: nobody can say yes, so it is no. (polkit also
            // refuses to answer a process that is neither root nor the action's owner, the user
            // named by org.freedesktop.policykit.owner in the .policy file.)
            spdlog::warn("D-Bus API: {} by {} refused: polkit did not answer: {} ({})", verb, own->who,
                         e->message ? e->message : "", e->name ? e->name : "");
            sd_bus_error_setf(&error.e, SD_BUS_ERROR_ACCESS_DENIED,
                              "Access denied: the authorization check failed (polkit: %s)",
                              e->message ? e->message : "no answer");
        } else {
            int authorized = 0, challenge = 0;
            r = sd_bus_message_enter_container(reply, 'r', "bba{ss}");
            if (r >= 0) r = sd_bus_message_read(reply, "bb", &authorized, &challenge);
            if (r < 0) {
                spdlog::warn("D-Bus API: {} by {} refused: unreadable answer from polkit", verb, own->who);
                sd_bus_error_set(&error.e, SD_BUS_ERROR_ACCESS_DENIED,
                                 "Access denied: unreadable answer from polkit");
            } else if (authorized) {
                r = self->perform(call, own->verb, own->job, own->who + ", authorized by polkit", &error.e);
                if (r < 0 && !sd_bus_error_is_set(&error.e)) sd_bus_error_set_errno(&error.e, r);
            } else if (challenge) {
                spdlog::warn("D-Bus API: {} by {} refused: polkit wants interactive authentication", verb,
                             own->who);
                sd_bus_error_set(&error.e, SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED,
                                 "Interactive authentication required.");
            } else {
                spdlog::warn("D-Bus API: {} by {} refused by polkit", verb, own->who);
                sd_bus_error_setf(&error.e, SD_BUS_ERROR_ACCESS_DENIED,
                                  "Access denied: not authorized to %s instance %s (polkit action %s)", verb,
                                  self->manager_.instance().c_str(), kManageAction);
            }
        }
    } catch (const std::exception& e) {
        sd_bus_error_set(&error.e, SD_BUS_ERROR_FAILED, e.what());
    }
    if (sd_bus_error_is_set(&error.e)) {
        r = sd_bus_reply_method_error(call, &error.e);
        if (r < 0) spdlog::debug("D-Bus API: cannot answer {}: {}", verb, std::strerror(-r));
    }
    return 0;
}

// Does what was asked and sends the (empty) reply; on failure sets *error and returns < 0.
int BusApi::perform(sd_bus_message* m, Verb verb, JobId job, const std::string& who, sd_bus_error* error) {
    if (verb != Verb::cancel && manager_.state() == ManagerState::stopping)
        return sd_bus_error_setf(error, kErrorStopping, "Instance %s is stopping", manager_.instance().c_str());
    switch (verb) {
    case Verb::cancel: {
        // Checked again: the job may have finished while polkit was asked.
        auto info = manager_.job(job);
        if (!info || info->state == "finished") return no_such_job(job, error);
        spdlog::info("D-Bus API: cancel of job {} by {}", job, who);
        if (!manager_.cancel_job(job))
            return sd_bus_error_setf(error, SD_BUS_ERROR_FAILED, "Job %" PRIu64 " could not be cancelled",
                                     static_cast<std::uint64_t>(job));
        break;
    }
    case Verb::pause:
        spdlog::info("D-Bus API: pause by {}", who);
        manager_.pause();
        break;
    case Verb::resume:
        spdlog::info("D-Bus API: resume by {}", who);
        manager_.resume();
        break;
    case Verb::reload:
        spdlog::info("D-Bus API: reload by {}", who);
        if (auto problems = manager_.reload(); !problems.empty()) {
            std::string text = "The configuration was not reloaded:";
            for (auto& p : problems) text += (&p == &problems.front() ? " " : "; ") + p;
            return sd_bus_error_set(error, kErrorInvalidConfiguration, text.c_str());
        }
        break;
    }
    return sd_bus_reply_method_return(m, "");
}

} // namespace

std::unique_ptr<ManagerObserver> make_bus_api(Manager& manager, BusKind kind) {
    return std::make_unique<BusApi>(manager, kind);
}

} // namespace loopabull
