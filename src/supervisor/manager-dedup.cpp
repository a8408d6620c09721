// SPDX-License-Identifier: GPL-3.0-or-later
// De-duplication (issue 17): a looper's `dedup: {window: W}` turns an event that already
// succeeded within W into a `succeeded` answer with "duplicate_of", without running it again.
// This makes a broker's redeliveries (after a crash, a lost connection, a consumer_timeout)
// no-ops. Kept out of manager.cpp so that the event path shows only three calls.
//
// Where a success is looked for, in order:
//   - the jobs queued or running now: the duplicate waits for that job and gets its outcome
//     (a failure is answered as a failure, so the looper retries as it would have);
//   - the ledger (its batch in memory, then the database, which survives restarts).
// A ledger that cannot answer (corrupt, locked, unopenable) never costs an event: the event
// runs, and the log says why (a duplicate run is better than a lost event).
#include "core/log-safe.hpp"
#include "supervisor/manager.hpp"

#include <spdlog/spdlog.h>

#include <time.h>

namespace loopabull {

namespace {

std::uint64_t realtime_usec() {
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1000000 +
           static_cast<std::uint64_t>(ts.tv_nsec) / 1000;
}

std::string inflight_key(const std::string& looper, const std::string& dedup_key) {
    return looper + '\n' + dedup_key;
}

} // namespace

bool Manager::deduplicate(Looper& looper, const Event& ev, std::string& key) {
    const auto& window = looper.config().dedup_window;
    // Without an id the looper could not be answered; it has nothing to be a duplicate of.
    if (!window || !ev.id) return false;
    key = ev.dedup_id ? *ev.dedup_id : ev.id->dump();
    if (auto it = dedup_inflight_.find(inflight_key(looper.name(), key));
        it != dedup_inflight_.end()) {
        if (auto job = jobs_.find(it->second); job != jobs_.end()) {
            job->second.followers.push_back({looper.generation(), *ev.id});
            ++counters_.events_duplicate;
            if (log::may_log(duplicate_log_, "duplicate events"))
                spdlog::info("{}: event {} is a duplicate of job {}, which has not ended; it "
                             "gets that job's outcome",
                             ev.routing_key, loggable(key), it->second);
            key.clear();
            return true;
        }
    }
    if (!ledger_) {
        // history.path unset and no StateDirectory=: only the jobs in flight are known.
        return false;
    }
    auto now = realtime_usec();
    auto span = static_cast<std::uint64_t>(window->count());
    auto found = ledger_->find_success(looper.name(), key, now > span ? now - span : 0);
    switch (found.status) {
    case DedupLookup::Status::none:
        return false;
    case DedupLookup::Status::error:
        spdlog::warn("{}: de-duplication could not ask the ledger ({}); running event {} "
                     "(a duplicate run is better than a lost event)",
                     ev.routing_key, found.error, loggable(key));
        return false;
    case DedupLookup::Status::found:
        break;
    }
    ++counters_.events_duplicate;
    if (log::may_log(duplicate_log_, "duplicate events"))
        spdlog::info("{}: event {} already succeeded as job {} within the dedup window; not run "
                     "again",
                     ev.routing_key, loggable(key), found.job_id);
    ledger_duplicate(looper.name(), ev.routing_key, *ev.id, Result::succeeded,
                     "duplicate of job " + std::to_string(found.job_id) +
                         ", which succeeded within the dedup window: not run again");
    answer(looper.name(), looper.generation(), ev.id, Result::succeeded, std::nullopt, {},
           found.job_id);
    key.clear();
    return true;
}

// Every delivery is in the history, also one that ran nothing: its record has no job id, the
// answer's result and, as its reason, the job it duplicated. Its dedup key stays empty: a
// later delivery must find the job that ran, never this record.
void Manager::ledger_duplicate(const std::string& looper, const std::string& routing_key,
                               const json& id, Result result, std::string reason) {
    if (!ledger_) return;
    auto now = realtime_usec();
    ledger_->record({.event_id = id.dump(),
                     .looper = looper,
                     .routing_key = routing_key,
                     .user = ledger_->user(),
                     .queued_usec = now,
                     .finished_usec = now,
                     .result = std::string(to_string(result)),
                     .error = std::move(reason)});
}

void Manager::dedup_started(const Job& job) {
    if (!job.dedup_key.empty()) dedup_inflight_[inflight_key(job.looper, job.dedup_key)] = job.id;
}

void Manager::dedup_finishing(const Job& job, Result result) {
    // One transaction now rather than at the next batch: after this answer the looper acks,
    // and a redelivery checked against a record still in memory would be run again if we were
    // SIGKILLed in between. WAL keeps a committed transaction across a SIGKILL.
    if (ledger_ && !job.dedup_key.empty() && result == Result::succeeded) ledger_->flush();
}

void Manager::dedup_finished(const Job& job, const Outcome& outcome) {
    if (job.dedup_key.empty()) return;
    if (auto it = dedup_inflight_.find(inflight_key(job.looper, job.dedup_key));
        it != dedup_inflight_.end() && it->second == job.id)
        dedup_inflight_.erase(it);
    for (const auto& f : job.followers) {
        ledger_duplicate(job.looper, job.routing_key, f.id, outcome.result,
                         "duplicate of job " + std::to_string(job.id) +
                             ", which was running: answered with its outcome");
        if (outcome.result == Result::succeeded)
            answer(job.looper, f.generation, f.id, Result::succeeded, std::nullopt, {}, job.id);
        else
            answer(job.looper, f.generation, f.id, outcome.result, outcome.exit_code,
                   outcome.result == Result::timeout ? std::string() : outcome.error);
    }
}

} // namespace loopabull
