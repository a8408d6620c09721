// SPDX-License-Identifier: GPL-3.0-or-later
// Runs jobs: each in a process group of its own (direct), in a cgroup of its own in the subtree
// systemd delegated to us (cgroup), or in a transient systemd scope of its own (scope); killed
// whole on timeout, cancel, and at its end.
#pragma once

#include "core/config.hpp"
#include "core/protocol.hpp"
#include "core/sandbox.hpp"
#include "core/scheduler.hpp"
#include "supervisor/cgroup.hpp"
#include "supervisor/proc-tree.hpp"
#include "supervisor/scope.hpp"
#include "supervisor/sd-ptr.hpp"

#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace loopabull {

class WarmRunner;

struct JobSpec {
    JobId id = 0;
    std::string routing_key;
    std::vector<std::string> argv;
    std::vector<std::string> env;
    usec timeout{};
    usec kill_grace{};
    const Sandbox* sandbox = nullptr;
};

struct Outcome {
    Result result = Result::failed;
    std::optional<int> exit_code;
    std::string error; // why the job could not run, for the log and the answer
    std::string unit;  // the scope it ran in, if any
};

class ExecutorHost {
  public:
    virtual ~ExecutorHost() = default;
    virtual void job_finished(JobId id, const Outcome& outcome) = 0;
};

// What the scope executor needs besides the scope manager.
struct ScopeMode {
    ScopeManager* scopes = nullptr;
    std::string instance;
    ScopeProperties properties; // description, runtime and stop timeout are set per job
    bool fallback_direct = false;
    bool user_manager = false; // for the journalctl hint in the log
};

// What the cgroup executor needs: the delegated tree (set up) and each job cgroup's limits.
struct CgroupMode {
    CgroupTree* tree = nullptr;
    CgroupLimits limits;
};

class Executor {
  public:
    Executor(sd_event* event, ExecutorHost& host);
    ~Executor();
    Executor(const Executor&) = delete;
    Executor& operator=(const Executor&) = delete;

    // nullopt: the direct executor. Applies to jobs started from now on.
    void set_scope_mode(std::optional<ScopeMode> mode) { scope_ = std::move(mode); }
    // nullopt: not the cgroup executor. Applies to jobs started from now on.
    void set_cgroup_mode(std::optional<CgroupMode> mode) { cgroup_ = std::move(mode); }
    // Where the direct executor records its running jobs' first processes (see ProcessRecords).
    void set_records(ProcessRecords* records) { records_ = records; }

    // Jobs start in a child of this warm runner when it can take them (supervisor/warm.hpp),
    // else cold. nullptr: always cold. The runner must outlive the executor's jobs.
    void set_warm(WarmRunner* warm) { warm_ = warm; }
    // The warm runner's report that a job's process ended (failure: the runner died with it).
    void warm_exited(JobId id, const siginfo_t& si, const std::string& failure);

    // Starts the job, or says why it could not be started.
    std::optional<std::string> start(const JobSpec& spec);
    // Stops every process of the job (SIGTERM, SIGKILL after its grace); result "cancelled".
    bool cancel(JobId id);
    // The unit a running job is contained in ("" when it runs directly).
    std::string unit(JobId id) const;

  private:
    struct Run;
    static int on_output(sd_event_source*, int, uint32_t, void*) noexcept;
    static int on_exit(sd_event_source*, const siginfo_t*, void*) noexcept;
    static int on_timeout(sd_event_source*, uint64_t, void*) noexcept;
    static int on_kill(sd_event_source*, uint64_t, void*) noexcept;
    static int on_sweep(sd_event_source*, uint64_t, void*) noexcept;

    void add_sources(Run& run, usec timeout);
    void create_scope(Run& run, const JobSpec& spec);
    void scope_ready(JobId id, std::optional<std::string> error);
    void finish(Run& run, const siginfo_t& si);
    void terminate(Run& run);
    void sweep_soon();

    sd_event* event_;
    ExecutorHost& host_;
    std::optional<ScopeMode> scope_;
    std::optional<CgroupMode> cgroup_;
    ProcessRecords* records_ = nullptr;
    // Left behind by finished jobs: cgroups to remove once empty, orphans to reap.
    std::vector<std::string> dead_cgroups_;
    SourcePtr sweep_timer_;
    unsigned sweeps_ = 0;
    WarmRunner* warm_ = nullptr;
    std::unordered_map<JobId, std::unique_ptr<Run>> runs_;
};

} // namespace loopabull
