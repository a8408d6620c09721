// SPDX-License-Identifier: GPL-3.0-or-later
// The warm runner: a Python process (src/supervisor/warm-runner.py) that has imported ansible
// once and forks one child per job, which runs ansible-playbook's own entry point. A trivial
// playbook then costs about a quarter of a cold `ansible-playbook` (FIELD-NOTES 9).
//
// The runner is started per instance with the jobs' environment and under the jobs' sandbox
// (rlimits, no_new_privs and the seccomp filter are applied once, before its execve, and every
// job inherits them). Its children are not the supervisor's: the runner reports each one's pid
// (with a pidfd) once it leads a session of its own, and its wait status when it has reaped it,
// over a SOCK_SEQPACKET socket. The supervisor keeps signalling the process group itself
// (timeouts, cancel) and moving the pid into a scope before releasing it, as for a cold job.
#pragma once

#include "core/config.hpp"
#include "core/protocol.hpp"
#include "core/sandbox.hpp"
#include "core/scheduler.hpp"
#include "core/unique-fd.hpp"
#include "supervisor/process.hpp"
#include "supervisor/sd-ptr.hpp"

#include <signal.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace loopabull {

// How to start the runner for a playbook_cmd, or why jobs must start cold.
struct WarmPlan {
    std::vector<std::string> command; // interpreter, its #! argument if any, runner, script
    std::string reason;               // set when command is empty
};

// playbook_cmd[0] must be a path whose file name is ansible-playbook and whose content is
// ansible's own entry point (`from ansible.cli.playbook import main`): for anything else
// (rbac-playbook, a wrapper script) loopabull cannot know what the command does. Further
// elements are ansible-playbook's own options (--check): each job passes them to its CLI. The
// interpreter is the one its `#!` line names (through env(1) looked up in env's PATH), as the
// kernel would run it (binfmt_script: one optional argument). runner: the warm-runner program.
WarmPlan plan_warm(const std::vector<std::string>& playbook_cmd, const std::string& runner,
                   const std::vector<std::string>& env);

// LOOPABULL_WARM_RUNNER when set (tests, the build tree), else the installed
// $libexecdir/loopabull/warm-runner.
std::string warm_runner_path();

struct WarmSettings {
    std::vector<std::string> command; // from plan_warm
    std::vector<std::string> env;     // the jobs' environment: a job with another starts cold
    const Sandbox* sandbox = nullptr; // must outlive the runner started with it
    std::uint64_t max_jobs = 1000;    // then the runner is replaced (0: never)
    usec max_age = std::chrono::hours(1);
};

class WarmRunner {
  public:
    // exited(job, status, failure): a warm job's process has ended; si_code/si_status as
    // waitid(2) gives them. failure is set when the runner itself died while the job ran (the
    // job's process group is killed first): the job failed for a fault of ours.
    using Exited = std::function<void(JobId, const siginfo_t&, const std::string& failure)>;

    WarmRunner(sd_event* event, Exited exited);
    ~WarmRunner();
    WarmRunner(const WarmRunner&) = delete;
    WarmRunner& operator=(const WarmRunner&) = delete;

    // Replaces the runner (reload): the old one takes no more jobs and exits once its running
    // jobs have been reported. nullopt: off, with the reason (logged once, shown in status).
    void configure(std::optional<WarmSettings> settings, const std::string& off_reason);
    // Stops taking jobs (drain); running jobs are still reported.
    void retire();

    // Starts the job in a child of the runner: spec's argv, env, standard streams, wait_fd
    // (the gate: the child waits for one byte on it before running anything), journal_header
    // and death_signal (the child's parent-death signal: 0 lets it outlive the runner and the
    // supervisor, as a cold direct job does) are honoured; spec.sandbox is the runner's, and
    // the child is always a child subreaper (spec.subreaper). Blocks until the runner has
    // answered (a few milliseconds; kWarmAnswerTimeout at most, after which the runner is
    // considered hung, killed and restarted with backoff). nullopt: start the job cold (the
    // runner is off, starting, down, stale, or the job's environment differs); the reason is
    // logged once per change of the runner's state.
    std::optional<Spawned> spawn(const SpawnSpec& spec, JobId id);

    // For status: "off: REASON", "starting", "ready", "down: REASON".
    std::string state() const;
    // The current runner's resident set in bytes (/proc/PID/status VmRSS); 0 when none runs.
    std::uint64_t rss_bytes() const;
    pid_t pid() const;
    std::uint64_t jobs_started() const noexcept { return jobs_started_; }

  private:
    struct Zygote;
    struct Message;
    static int on_io(sd_event_source*, int, uint32_t, void*) noexcept;
    static int on_child(sd_event_source*, const siginfo_t*, void*) noexcept;
    static int on_dispatch(sd_event_source*, void*) noexcept;
    static int on_restart(sd_event_source*, uint64_t, void*) noexcept;
    static int on_ready_timeout(sd_event_source*, uint64_t, void*) noexcept;

    void start();
    void down(Zygote& z, const std::string& why);
    void retire(std::unique_ptr<Zygote> z);
    // Reads every message waiting on z's socket; "started" ones for `awaiting` are returned.
    bool pump(Zygote& z, std::optional<JobId> awaiting, std::optional<Spawned>* started);
    void handle(Zygote& z, const Message& m, std::optional<JobId> awaiting,
                std::optional<Spawned>* started);
    void dead(Zygote& z);
    void set_state(std::string state);
    void schedule_dispatch();

    sd_event* event_;
    Exited exited_;
    std::optional<WarmSettings> settings_;
    std::unique_ptr<Zygote> current_;
    std::vector<std::unique_ptr<Zygote>> retiring_;
    struct Exit {
        JobId id;
        siginfo_t si;
        std::string failure;
    };
    std::deque<Exit> pending_;
    SourcePtr dispatch_, restart_timer_;
    std::string state_ = "off: not configured";
    usec backoff_{};
    std::uint64_t jobs_started_ = 0;
    UniqueFd devnull_;
};

} // namespace loopabull
