// SPDX-License-Identifier: GPL-3.0-or-later
// The vtable of org.loopabull.Loopabull1.Manager: properties, and the handlers of its methods.
#include "supervisor/bus-api-object.hpp"
#include "supervisor/bus-routes.hpp"

#include "build-config.h"

#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstring>
#include <system_error>
#include <vector>

namespace loopabull::bus_detail {

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
    SD_BUS_PROPERTY("EventsSuperseded", "t", get_property, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_PROPERTY("EventsThrottled", "t", get_property, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_PROPERTY("EventsDuplicate", "t", get_property, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    // The warm runner (supervisor/warm.hpp): read when wanted, no change signal.
    SD_BUS_PROPERTY("WarmRunner", "s", get_property, 0, 0),
    SD_BUS_PROPERTY("WarmRunnerMemory", "t", get_property, 0, 0),
    SD_BUS_METHOD_WITH_NAMES("ListLoopers", "", "", "a(ssuut)", SD_BUS_PARAM(loopers),
                             list_loopers, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_NAMES("ListJobs", "", "", "a(tsssts)", SD_BUS_PARAM(jobs),
                             list_jobs, SD_BUS_VTABLE_UNPRIVILEGED),
    // error (the last field) was added in 0.2: clients that read ten fields still work.
    SD_BUS_METHOD_WITH_NAMES("GetJob", "t", SD_BUS_PARAM(id), "tsssstttsis",
                             SD_BUS_PARAM(id) SD_BUS_PARAM(routing_key) SD_BUS_PARAM(state)
                                 SD_BUS_PARAM(unit) SD_BUS_PARAM(looper) SD_BUS_PARAM(queued_usec)
                                     SD_BUS_PARAM(started_usec) SD_BUS_PARAM(finished_usec)
                                         SD_BUS_PARAM(result) SD_BUS_PARAM(exit_code)
                                             SD_BUS_PARAM(error),
                             get_job, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_NAMES("ListHistory", "sstu",
                             SD_BUS_PARAM(key_pattern) SD_BUS_PARAM(result)
                                 SD_BUS_PARAM(since_usec) SD_BUS_PARAM(limit),
                             "s", SD_BUS_PARAM(records), list_history,
                             SD_BUS_VTABLE_UNPRIVILEGED),
    // Issue 17: one job's ledger record (ListHistory's form): what GetJob cannot add, such as
    // replay_of and whether a body was kept. Open to readers; the body itself is not in it.
    SD_BUS_METHOD_WITH_NAMES("GetJobRecord", "t", SD_BUS_PARAM(id), "s", SD_BUS_PARAM(record),
                             get_job_record, SD_BUS_VTABLE_UNPRIVILEGED),
    // Issue 17: the Prometheus text, as metrics.textfile holds it; open to readers.
    SD_BUS_METHOD_WITH_NAMES("GetMetrics", "", "", "s", SD_BUS_PARAM(text), get_metrics,
                             SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_NAMES("GetJobRouting", "t", SD_BUS_PARAM(id), "sst",
                             SD_BUS_PARAM(route) SD_BUS_PARAM(serialize_value)
                                 SD_BUS_PARAM(superseded_by),
                             get_job_routing, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_NAMES("Explain", "sss",
                             SD_BUS_PARAM(routing_key) SD_BUS_PARAM(body) SD_BUS_PARAM(looper),
                             "bss", SD_BUS_PARAM(would_run) SD_BUS_PARAM(text) SD_BUS_PARAM(json),
                             explain, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_NAMES("CancelJob", "t", SD_BUS_PARAM(id), "", "", cancel_job,
                             SD_BUS_VTABLE_UNPRIVILEGED),
    // Issue 17: a recorded body (manage action) and its replay (replay action).
    SD_BUS_METHOD_WITH_NAMES("GetJobBody", "t", SD_BUS_PARAM(id), "s", SD_BUS_PARAM(body),
                             get_job_body, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_NAMES("ReplayJob", "t", SD_BUS_PARAM(id), "t", SD_BUS_PARAM(new_id),
                             replay_job, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("Pause", "", "", pause, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("Resume", "", "", resume, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("Reload", "", "", reload, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_SIGNAL_WITH_NAMES("JobNew", "ts", SD_BUS_PARAM(id) SD_BUS_PARAM(routing_key), 0),
    SD_BUS_SIGNAL_WITH_NAMES("JobRemoved", "tsi",
                             SD_BUS_PARAM(id) SD_BUS_PARAM(result) SD_BUS_PARAM(exit_code), 0),
    SD_BUS_VTABLE_END,
};

int BusApi::get_property(sd_bus*, const char*, const char*, const char* property,
                         sd_bus_message* reply, void* userdata, sd_bus_error* error) noexcept {
    auto* self = static_cast<BusApi*>(userdata);
    return guarded(error, [&] {
        std::string_view p(property);
        if (p == "Instance") return sd_bus_message_append(reply, "s", self->manager_.instance().c_str());
        if (p == "Version") return sd_bus_message_append(reply, "s", LOOPABULL_VERSION);
        if (p == "WarmRunner")
            return sd_bus_message_append(reply, "s", self->manager_.warm_state().c_str());
        if (p == "WarmRunnerMemory")
            return sd_bus_message_append(reply, "t", self->manager_.warm_rss_bytes());
        auto s = self->snapshot();
        if (p == "State") return sd_bus_message_append(reply, "s", s.state.c_str());
        if (p == "EventsReceived") return sd_bus_message_append(reply, "t", s.events_received);
        if (p == "EventsRejected") return sd_bus_message_append(reply, "t", s.events_rejected);
        if (p == "JobsQueued") return sd_bus_message_append(reply, "u", s.jobs_queued);
        if (p == "JobsRunning") return sd_bus_message_append(reply, "u", s.jobs_running);
        if (p == "JobsSucceeded") return sd_bus_message_append(reply, "t", s.jobs_succeeded);
        if (p == "JobsFailed") return sd_bus_message_append(reply, "t", s.jobs_failed);
        if (p == "EventsSuperseded") return sd_bus_message_append(reply, "t", s.events_superseded);
        if (p == "EventsThrottled") return sd_bus_message_append(reply, "t", s.events_throttled);
        if (p == "EventsDuplicate") return sd_bus_message_append(reply, "t", s.events_duplicate);
        return sd_bus_error_setf(error, SD_BUS_ERROR_UNKNOWN_PROPERTY, "Unknown property %s", property);
    });
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

namespace {

// A job that finished before the last restart, or too long ago for the memory's 1,000.
std::optional<JobInfo> from_ledger(Ledger* ledger, JobId id) {
    if (!ledger) return std::nullopt;
    auto rows = ledger->query({.limit = 1, .job_id = id});
    if (rows.empty()) return std::nullopt;
    auto& r = rows.front();
    JobInfo j{.id = r.job_id,
              .routing_key = r.routing_key,
              .state = "finished",
              .unit = r.unit,
              .looper = r.looper,
              .queued_usec = r.queued_usec,
              .started_usec = r.started_usec,
              .finished_usec = r.finished_usec,
              .result = std::nullopt,
              .exit_code = r.exit_code,
              .error = r.error,
              .route = r.route,
              .serial_value = {},
              .superseded_by = std::nullopt};
    for (auto res : {Result::succeeded, Result::failed, Result::unrouted, Result::rejected,
                     Result::timeout, Result::cancelled, Result::aborted, Result::superseded,
                     Result::throttled})
        if (to_string(res) == r.result) j.result = res;
    return j;
}

nlohmann::json to_json(const LedgerRecord& r) {
    auto or_null = [](bool none, nlohmann::json v) { return none ? nlohmann::json() : v; };
    nlohmann::json event_id;
    if (!r.event_id.empty()) event_id = nlohmann::json::parse(r.event_id, nullptr, false);
    return {{"id", or_null(r.job_id == 0, r.job_id)},
            {"event_id", event_id.is_discarded() ? nlohmann::json() : event_id},
            {"looper", r.looper},
            {"routing_key", r.routing_key},
            {"route", or_null(r.route.empty(), r.route)},
            {"playbook", or_null(r.playbook.empty(), r.playbook)},
            {"playbook_sha256", or_null(r.playbook_sha256.empty(), r.playbook_sha256)},
            {"user", r.user},
            {"queued_usec", or_null(r.queued_usec == 0, r.queued_usec)},
            {"started_usec", or_null(r.started_usec == 0, r.started_usec)},
            {"finished_usec", r.finished_usec},
            {"result", r.result},
            {"exit_code", or_null(!r.exit_code, r.exit_code.value_or(0))},
            {"unit", or_null(r.unit.empty(), r.unit)},
            {"error", or_null(r.error.empty(), r.error)},
            {"replay_of", or_null(!r.replay_of, r.replay_of.value_or(0))},
            {"body", !r.body_size ? nlohmann::json() : r.body_stored ? "stored" : "too_large"},
            {"body_size", or_null(!r.body_size, r.body_size.value_or(0))}};
}

} // namespace

// The ledger's records as a JSON array (documented in org.loopabull.Loopabull1(5)): a JSON
// string rather than a D-Bus struct, so that fields can be added (routes, bodies) without
// breaking callers' signatures.
int BusApi::list_history(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept {
    auto* self = static_cast<BusApi*>(userdata);
    return guarded(error, [&] {
        const char* key = nullptr;
        const char* result = nullptr;
        std::uint64_t since = 0;
        std::uint32_t limit = 0;
        int r = sd_bus_message_read(m, "sstu", &key, &result, &since, &limit);
        if (r < 0) return r;
        auto* ledger = self->manager_.ledger();
        if (!ledger) return self->history_off(error);
        auto rows = ledger->query(
            {.key_pattern = key, .result = result, .since_usec = since, .limit = limit});
        auto out = nlohmann::json::array();
        for (auto& row : rows)
            out.push_back(to_json(row));
        return sd_bus_reply_method_return(m, "s", out.dump().c_str());
    });
}


int BusApi::history_off(sd_bus_error* error) const {
    return sd_bus_error_setf(error, kErrorHistoryOff,
                             "Instance %s keeps no history (history.enabled is false, or "
                             "neither history.path nor $STATE_DIRECTORY is set)",
                             manager_.instance().c_str());
}

int BusApi::get_job_record(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept {
    auto* self = static_cast<BusApi*>(userdata);
    return guarded(error, [&] {
        std::uint64_t id = 0;
        int r = sd_bus_message_read(m, "t", &id);
        if (r < 0) return r;
        auto* ledger = self->manager_.ledger();
        if (!ledger) return self->history_off(error);
        auto rows = ledger->query({.limit = 1, .job_id = id});
        if (id == 0 || rows.empty()) return self->no_such_job(id, error);
        return sd_bus_reply_method_return(m, "s", to_json(rows.front()).dump().c_str());
    });
}

int BusApi::get_job(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept {
    auto* self = static_cast<BusApi*>(userdata);
    return guarded(error, [&] {
        std::uint64_t id = 0;
        int r = sd_bus_message_read(m, "t", &id);
        if (r < 0) return r;
        auto job = self->manager_.job(id);
        if (!job) job = from_ledger(self->manager_.ledger(), id);
        if (!job) return self->no_such_job(id, error);
        std::string result = job->result ? std::string(to_string(*job->result)) : std::string();
        return sd_bus_reply_method_return(
            m, "tsssstttsis", static_cast<std::uint64_t>(job->id), job->routing_key.c_str(),
            job->state.c_str(), job->unit.c_str(), job->looper.c_str(),
            static_cast<std::uint64_t>(job->queued_usec), static_cast<std::uint64_t>(job->started_usec),
            static_cast<std::uint64_t>(job->finished_usec), result.c_str(),
            static_cast<std::int32_t>(job->exit_code.value_or(-1)), job->error.c_str());
    });
}

int BusApi::get_metrics(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept {
    auto* self = static_cast<BusApi*>(userdata);
    return guarded(error, [&] {
        return sd_bus_reply_method_return(m, "s", self->manager_.metrics_text().c_str());
    });
}

// Routes (issue 14): read-only, open to every caller like the reads above.
int BusApi::explain(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept {
    auto* self = static_cast<BusApi*>(userdata);
    return guarded(error, [&] { return bus_explain(m, self->manager_, error); });
}

int BusApi::get_job_routing(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept {
    auto* self = static_cast<BusApi*>(userdata);
    return guarded(error, [&] {
        return bus_get_job_routing(m, self->manager_, kErrorNoSuchJob, error);
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

int BusApi::refused(const ReplayRefusal& why, sd_bus_error* error) const {
    using W = ReplayRefusal::Why;
    const char* name = kErrorReplayRefused;
    switch (why.why) {
    case W::history_off: name = kErrorHistoryOff; break;
    case W::no_job: name = kErrorNoSuchJob; break;
    case W::no_body: name = kErrorNoBody; break;
    case W::stopping: name = kErrorStopping; break;
    case W::not_finished:
    case W::not_run: break;
    }
    return sd_bus_error_set(error, name, why.message.c_str());
}

// Issue 17. Both are checked before polkit is asked, so that nobody is asked for a password to
// read or replay what is not there, and again once allowed (perform()).
int BusApi::body_call(sd_bus_message* m, Verb verb, sd_bus_error* error) {
    std::uint64_t id = 0;
    int r = sd_bus_message_read(m, "t", &id);
    if (r < 0) return r;
    auto found = manager_.job_body(id);
    if (auto* why = std::get_if<ReplayRefusal>(&found)) return refused(*why, error);
    return authorize(m, verb, id, error);
}

int BusApi::get_job_body(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept {
    auto* self = static_cast<BusApi*>(userdata);
    return guarded(error, [&] { return self->body_call(m, Verb::body, error); });
}

int BusApi::replay_job(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept {
    auto* self = static_cast<BusApi*>(userdata);
    return guarded(error, [&] { return self->body_call(m, Verb::replay, error); });
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

} // namespace loopabull::bus_detail
