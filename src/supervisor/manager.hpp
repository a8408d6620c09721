// SPDX-License-Identifier: GPL-3.0-or-later
// The supervisor: owns the event loop, the loopers, the queue and the executor.
#pragma once

#include "core/dispatch.hpp"
#include "core/config.hpp"
#include "core/metrics.hpp"
#include "core/routing.hpp"
#include "core/scheduler.hpp"
#include "core/unique-fd.hpp"
#include "supervisor/bus.hpp"
#include "supervisor/cgroup.hpp"
#include "supervisor/executor.hpp"
#include "supervisor/ledger.hpp"
#include "supervisor/log.hpp"
#include "supervisor/looper.hpp"
#include "supervisor/metrics-file.hpp"
#include "supervisor/proc-tree.hpp"
#include "supervisor/scope.hpp"
#include "supervisor/sd-ptr.hpp"

#include "core/log-safe.hpp"

#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <variant>
#include <vector>

namespace loopabull {

class WarmRunner;

struct ManagerOptions {
    std::string config_path;
    std::string instance = "default";
    std::optional<LogLevel> log_level; // --log-level wins over the file
    std::string looper_dir;
    BusKind bus = BusKind::none; // where the D-Bus API is offered
};

// failed: every configured looper has failed (no events can come in) until a reload starts
// them again; loopabull exits after exit_without_loopers in that state (since 0.2).
enum class ManagerState { starting, running, paused, stopping, failed };
std::string_view to_string(ManagerState s) noexcept;

// A job as status and control see it: queued, running, or recently finished.
struct JobInfo {
    JobId id = 0;
    std::string routing_key;
    std::string state; // queued, running, finished
    std::string unit;  // its scope, when the scope executor runs it
    std::string looper;
    std::uint64_t queued_usec = 0; // CLOCK_REALTIME
    std::uint64_t started_usec = 0;
    std::uint64_t finished_usec = 0;
    std::optional<Result> result;
    std::optional<int> exit_code;
    // Why a finished job did not succeed, as the log says it: "exit code 2", "timed out after
    // 30min", "cannot create scope ...: ..."; empty otherwise.
    std::string error;
    std::string route;                 // the route that took it; empty without routes
    std::string serial_value;          // its serialization value; empty when not serialized
    std::optional<JobId> superseded_by; // a superseded job: the newer job that replaced it
};

struct LooperInfo {
    std::string name;
    std::string state;
    pid_t pid = -1;
    unsigned restarts = 0;
    std::uint64_t events = 0;
};

// Told of what status readers may want to hear about (the D-Bus API's signals).
class ManagerObserver {
  public:
    virtual ~ManagerObserver() = default;
    virtual void job_new(const JobInfo& job) = 0;
    virtual void job_removed(const JobInfo& job) = 0;
    // Counters or state changed; the observer rate-limits what it sends.
    virtual void properties_changed() = 0;
};

struct Job {
    JobId id = 0;
    std::string routing_key;
    json body;
    std::optional<json> event_id;
    std::string looper;
    std::uint64_t generation = 0;
    std::string playbook;
    std::string vars_path; // set once written
    bool admitted = false; // holds one of the scheduler's running slots
    std::string aborted_by{}; // set when an operator cancelled it: its result is then "aborted"
    std::uint64_t queued_usec = 0;
    std::uint64_t started_usec = 0;
    std::string playbook_sha256{}; // when the ledger is on, as read at launch
    std::string route;        // the route that took it; empty without routes
    std::string serial_value; // shown on D-Bus; empty when the route does not serialize
    std::optional<JobId> superseded_by;
    // De-duplication (issue 17): the key looked up, "" when the looper does not de-duplicate;
    // the same event delivered again while this job was queued or running, answered with its
    // outcome when it ends (manager-dedup.cpp).
    std::string dedup_key;
    struct Follower {
        std::uint64_t generation;
        json id;
    };
    std::vector<Follower> followers;
    // A replay (ReplayJob): the job whose recorded event it runs again. It has no looper to
    // answer: its outcome is in the log, the ledger and on D-Bus only.
    std::optional<JobId> replay_of;
};

// Why GetJobBody or ReplayJob cannot be done (issue 17); the D-Bus API names an error for each.
struct ReplayRefusal {
    enum class Why {
        history_off,  // no ledger
        no_job,       // not in the ledger (never was, or pruned: the message says)
        no_body,      // in the ledger without a body (not stored, or over max_body_size)
        not_finished, // queued or running: its body is not recorded yet
        not_run,      // today's routing does not run it (unrouted, rejected, throttled)
        stopping,
    } why;
    std::string message;
};

struct Counters {
    std::uint64_t events_received = 0;
    std::uint64_t events_rejected = 0;
    std::uint64_t events_unrouted = 0;
    std::uint64_t jobs_succeeded = 0;
    std::uint64_t jobs_failed = 0; // failed, timeout, cancelled and aborted
    std::uint64_t events_superseded = 0; // replaced by a newer event (coalesce)
    std::uint64_t events_throttled = 0;  // not run: their value ran within the window
    std::uint64_t events_duplicate = 0;  // not run: already succeeded (a looper's dedup)
};

class Manager final : public LooperHost, public ExecutorHost {
  public:
    Manager(ManagerOptions options, Config config);
    ~Manager() override;

    // Runs until stopped; returns the process exit status.
    int run();

    // LooperHost
    void looper_line(Looper& looper, const LineReader::Line& line) override;
    void looper_stopped(Looper& looper) override;
    // ExecutorHost
    void job_finished(JobId id, const Outcome& outcome) override;

    // Status and control (the D-Bus API).
    const std::string& instance() const noexcept { return options_.instance; }
    ManagerState state() const noexcept;
    const Counters& counters() const noexcept { return counters_; }
    const Config& config() const noexcept { return config_; }
    std::size_t jobs_queued() const noexcept { return scheduler_.queued(); }
    std::size_t jobs_running() const noexcept { return scheduler_.running(); }
    std::vector<LooperInfo> loopers() const;
    std::vector<JobInfo> jobs() const;          // queued and running
    std::optional<JobInfo> job(JobId id) const; // also recently finished ones
    // An operator's cancel: a queued job is answered "aborted" at once; a running one is stopped
    // and answered "aborted" when it has ended. `by` names who asked, for the answer's reason and
    // the log: text already safe to log (escape_for_log applied to what came from outside).
    bool cancel_job(JobId id, std::string_view by = "an operator");
    // Whether a line about a refused D-Bus call may be logged now (20 every 10 s; the next line
    // says how many were suppressed): callers are outsiders, who must not flood the journal.
    bool may_log_refused_call() { return log::may_log(refused_log_, "refused D-Bus calls"); }
    // The recorded body of a finished job (JSON text), from the ledger.
    std::variant<std::string, ReplayRefusal> job_body(JobId id);
    // Runs the recorded event of job `of` (routing key, looper, body) again through today's
    // routing (routes, conditions, serialization, throttle) as a new job, whose variables carry
    // loopabull_replay_of. De-duplication is not asked: a replay is asked for, not redelivered.
    // by: who asked, safe to log. Returns the new job's id.
    std::variant<JobId, ReplayRefusal> replay_job(JobId of, std::string_view by);
    void pause(); // no new events are taken; running jobs go on
    void resume();
    // What would happen to this event now (routes, playbook, live serialization and throttle
    // state), without queueing anything. looper: empty for any looper.
    Explanation explain(const std::string& routing_key, const std::string& looper,
                        const json& body) const;
    // The problems that kept the new configuration from being applied; empty on success.
    std::vector<std::string> reload();
    void set_observer(ManagerObserver* o) noexcept { observer_ = o; }
    // The warm runner's state ("ready", "starting", "off: why", "down: why") and resident set.
    std::string warm_state() const;
    std::uint64_t warm_rss_bytes() const;
    sd_event* event() const noexcept { return event_.get(); }
    Ledger* ledger() const noexcept { return ledger_.get(); } // null when history is off
    // The Prometheus text (core/metrics.hpp): GetMetrics() and metrics.textfile.
    std::string metrics_text() const;

  private:
    static int on_signal(sd_event_source*, const signalfd_siginfo*, void*) noexcept;
    static int on_stop_timeout(sd_event_source*, uint64_t, void*) noexcept;
    static int on_status_timer(sd_event_source*, uint64_t, void*) noexcept;
    static int on_reap(sd_event_source*, void*) noexcept;
    static int on_no_looper_timeout(sd_event_source*, uint64_t, void*) noexcept;

    void setup_event_loop();
    void setup_runtime_dir();
    void apply(Config config);
    void configure_warm(const Config& config);
    std::vector<std::string> load_and_apply();
    using LooperMap = std::map<std::string, std::unique_ptr<Looper>>;
    LooperMap::iterator retire_looper(LooperMap::iterator it);
    void apply_loopers(const std::vector<LooperConfig>& wanted);
    std::optional<ScopeMode> scope_mode(const ExecutorConfig& e);
    std::optional<CgroupMode> cgroup_mode(const ExecutorConfig& e);
    void setup_containment();
    void begin_stop();
    bool all_loopers_failed() const;
    void check_loopers_failed();
    void stop_loopers();

    void reject(Looper& looper, const std::optional<json>& id, const std::string& reason);
    void route(Looper& looper, Event event);
    // The end of routing, for events and replays: false when the route's throttle holds it;
    // enqueue() queues a job that dispatch said to run and returns its id.
    bool admit_throttled(const Dispatch& d, const std::string& routing_key);
    std::variant<StoredBody, ReplayRefusal> stored_body(JobId id);
    JobId enqueue(Job job, Dispatch& d);
    void answer(const std::string& looper, std::uint64_t generation, const std::optional<json>& id,
                Result result, std::optional<int> exit_code, std::string_view error = {},
                std::optional<JobId> duplicate_of = std::nullopt);
    // De-duplication (manager-dedup.cpp). deduplicate(): true when the event was a duplicate
    // and has been answered or attached to the job that runs it; sets the key of a new job.
    bool deduplicate(Looper& looper, const Event& ev, std::string& key);
    void dedup_started(const Job& job);
    // Before the job's own answer: makes a success durable (one transaction), so that the
    // looper's ack never precedes the record a redelivery is checked against.
    void dedup_finishing(const Job& job, Result result);
    // After it: answers the followers and forgets the job.
    void dedup_finished(const Job& job, const Outcome& outcome);
    // A duplicate into the ledger, as a record of its own naming the job it duplicated.
    void ledger_duplicate(const std::string& looper, const std::string& routing_key, const json& id,
                          Result result, std::string reason);
    void start_jobs();
    std::optional<std::string> launch(Job& job);
    std::optional<std::string> write_vars(Job& job);
    JobSpec job_spec(const Job& job) const;
    void complete(JobId id, const Outcome& outcome, std::optional<JobId> superseded_by = {});
    void update_intake();
    void status_changed();
    void send_status();
    JobInfo info(const Job& job) const;
    void remember(JobInfo finished);
    void lock_runtime_dir();
    void connect_scopes(const ExecutorConfig& e);
    void retry_scopes();
    // Whether a line an outsider caused may be logged now; says first how many were suppressed.
    void flush_rate_limits();
    // An event that made no job, into the ledger (rejected; unrouted through ledger_unrouted).
    void ledger_event(const Looper& looper, const std::optional<json>& id, const std::string& key,
                      Result result, const std::string& reason);
    // An unrouted event, into the ledger's count; reason() (returning the reason) is called
    // only when the record is kept (history.record_unrouted).
    template <class Reason>
    void ledger_unrouted(const Looper& looper, const std::optional<json>& id,
                         const std::string& key, const Reason& reason);

    ManagerOptions options_;
    Config config_;
    EventPtr event_;
    SourcePtr sigterm_, sigint_, sighup_, stop_timer_, status_timer_, reaper_, no_looper_timer_;
    RoutingFilter filter_{{}};
    UniqueFd playbooks_dirfd_;
    Scheduler scheduler_{1, 1};
    Throttler throttler_; // routes' throttle windows; kept across reloads
    std::unique_ptr<Executor> executor_;
    std::unique_ptr<WarmRunner> warm_; // after executor_: destroyed first
    BusPtr scope_bus_; // to the manager that makes our scopes
    std::unique_ptr<ScopeManager> scopes_;
    std::optional<bool> scope_user_manager_; // which manager scopes_ talks to
    // Why scopes_ could not be made (on_scope_failure: direct runs jobs without one meanwhile).
    std::string scope_error_;
    std::chrono::steady_clock::time_point scope_retry_at_{};
    UniqueFd runtime_lock_; // flock(2)ed: one supervisor per runtime directory
    // Log lines that outsiders cause: bad events (per looper would let one looper hide another's
    // lines; a total is what protects the journal), refused calls and looper stderr.
    LogRateLimit rejected_log_{20, std::chrono::seconds(10)};
    LogRateLimit refused_log_{20, std::chrono::seconds(10)};
    LogRateLimit unrouted_log_{20, std::chrono::seconds(10)};
    LogRateLimit throttled_log_{20, std::chrono::seconds(10)};
    LogRateLimit duplicate_log_{20, std::chrono::seconds(10)};
    std::optional<CgroupTree> cgroup_tree_;  // our delegated cgroup, set up
    std::string no_cgroup_reason_;           // why there is none
    std::unique_ptr<ProcessRecords> records_;
    LooperMap loopers_;
    std::vector<std::unique_ptr<Looper>> retiring_;
    std::unordered_map<JobId, Job> jobs_;
    std::vector<std::string> job_env_;
    Sandbox sandbox_;
    std::string runtime_dir_, vars_dir_;
    JobId next_job_ = 1;
    Counters counters_;
    bool stopping_ = false;
    bool paused_ = false;
    bool started_ = false;
    bool namespaces_restricted_at_start_ = true; // executor.restrict_namespaces, read at start only
    ManagerObserver* observer_ = nullptr;
    std::unique_ptr<ManagerObserver> bus_api_;
    std::unique_ptr<Ledger> ledger_; // after event_: its timer goes first
    std::deque<JobInfo> history_; // recently finished jobs, newest last
    // Queued and running jobs of de-duplicating loopers by "looper\ndedup key".
    std::unordered_map<std::string, JobId> dedup_inflight_;
    Metrics metrics_;
    std::unique_ptr<MetricsFile> metrics_file_; // after what it reads: its timer renders them
    bool intake_open_ = true;
    bool status_dirty_ = false;
    bool notify_ = false;
    bool loopers_failed_ = false; // all_loopers_failed() when last checked
    int exit_status_ = 0;         // 1 after exit_without_loopers ran out
};

} // namespace loopabull
