// SPDX-License-Identifier: GPL-3.0-or-later
#include "supervisor/executor.hpp"

#include "supervisor/log.hpp"
#include "supervisor/proc-tree.hpp"
#include "supervisor/process.hpp"
#include "supervisor/warm.hpp"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace loopabull {

struct Executor::Run {
    Executor* owner = nullptr;
    JobId id = 0;
    std::string name; // job id as text, for log fields
    std::string routing_key;
    pid_t pid = -1;
    bool warm = false; // a child of the warm runner, which reports its exit
    usec kill_grace{};
    bool timed_out = false;
    bool cancelled = false;
    std::string unit;               // its scope, once asked for
    ScopeManager* scopes = nullptr; // kept: a reload may switch the executor to direct
    bool in_scope = false;          // released into its scope
    UniqueFd release;               // write a byte to let the child go on
    std::string cgroup;             // its cgroup (cgroup executor)
    bool recorded = false;          // in the direct executor's process records
    usec timeout{};
    std::string failure;   // why the job could not run (scope creation)
    UniqueFd spawn_report; // a failure before execve, for jobs released later
    std::string program;
    UniqueFd output;
    LineReader lines{16 * 1024};
    SourcePtr output_source, child_source, timeout_timer, kill_timer;

    void log_output();
    void release_child();
};

namespace {

constexpr std::size_t kReadChunk = 16 * 1024;
// The scope's own RuntimeMaxSec is the second line of defence, after the supervisor's timer.
constexpr usec kRuntimeMargin = std::chrono::seconds(5);

void describe(sd_event_source* s, JobId id, const char* what) {
    sd_event_source_set_description(s, ("job-" + std::to_string(id) + "-" + what).c_str());
}

// "30min", "5s", "1500ms": as the configuration would say it.
std::string duration_text(usec d) {
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
    if (ms % 3600000 == 0) return std::to_string(ms / 3600000) + "h";
    if (ms % 60000 == 0) return std::to_string(ms / 60000) + "min";
    if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
    return std::to_string(ms) + "ms";
}

Outcome outcome_of(const siginfo_t& si, bool timed_out, bool cancelled, usec timeout) {
    int code = si.si_code == CLD_EXITED ? si.si_status : 128 + si.si_status;
    if (timed_out) return {Result::timeout, code, "timed out after " + duration_text(timeout), {}};
    if (cancelled) return {Result::cancelled, code, {}, {}};
    return {code == 0 ? Result::succeeded : Result::failed, code, {}, {}};
}

// journald's stream header: identifier, unit, priority, level prefix, forward to syslog, kmsg,
// console.
std::string journal_header(const std::string& identifier) {
    return identifier + "\n\n6\n0\n0\n0\n0\n";
}

} // namespace

void Executor::Run::log_output() {
    log::Fields f{.job = name, .routing_key = routing_key};
    log::Scope scope(f);
    while (output) {
        auto area = lines.prepare(kReadChunk);
        ssize_t n = read(output.get(), area.data(), area.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) break;
        if (n <= 0) {
            output_source.reset();
            output.reset();
            break;
        }
        lines.commit(static_cast<std::size_t>(n));
        while (auto line = lines.next())
            spdlog::info("job {}: {}{}", id, line->text, line->overlong ? " [...]" : "");
    }
}

void Executor::Run::release_child() {
    char go = 1;
    if (write(release.get(), &go, 1) != 1)
        spdlog::error("job {}: cannot release its process: {}", id, std::strerror(errno));
    release.reset();
}

Executor::Executor(sd_event* event, ExecutorHost& host) : event_(event), host_(host) {}

Executor::~Executor() {
    // Only reached on a fatal error: playbooks must not outlive the supervisor.
    for (auto& [id, run] : runs_) {
        kill(-run->pid, SIGKILL);
        if (!run->cgroup.empty()) CgroupTree::kill_all(run->cgroup);
        if (run->recorded) signal_tree(run->pid, SIGKILL, true);
        if (run->in_scope) run->scopes->stop(run->unit);
    }
}

std::optional<std::string> Executor::start(const JobSpec& spec) {
    auto out = make_pipe(true, false);
    std::optional<JobCgroup> cg;
    if (cgroup_ && !scope_) {
        auto made = cgroup_->tree->create_job(spec.id, cgroup_->limits);
        if (auto* err = std::get_if<std::string>(&made)) return *err;
        cg = std::move(std::get<JobCgroup>(made));
    }
    std::optional<Pipe> gate;
    std::string header;
    SpawnSpec s{spec.argv, spec.env, -1,      out.write.get(), out.write.get(),
                -1,        true,     SIGKILL, spec.sandbox};
    if (scope_) {
        // The child waits until its scope exists, so that everything it forks lands there.
        gate = make_pipe(false, false);
        s.wait_fd = gate->read.get();
        s.wait_peer_fd = gate->write.get();
        header = journal_header("ansible-playbook");
        s.journal_header = &header;
    }
    bool direct = !scope_ && !cg;
    if (direct) {
        // Orphans of the job stay below its first process, which outlives a killed supervisor
        // (no death signal), so that the next start finds the whole tree from its record. A
        // warm job's first process too: with a death signal it would die with its runner,
        // and what it started would leave for init, out of every record's reach.
        s.subreaper = true;
        s.death_signal = 0;
    }
    // The warm runner forks the job (supervisor/warm.hpp). In a cgroup its child waits at a gate
    // until it has been moved there, as a scope's child waits for its scope.
    std::optional<Spawned> warm;
    if (warm_) {
        bool own_gate = cg && !gate;
        if (own_gate) {
            gate = make_pipe(false, false);
            s.wait_fd = gate->read.get();
            s.wait_peer_fd = gate->write.get();
        }
        warm = warm_->spawn(s, spec.id);
        if (!warm && own_gate) {
            gate.reset();
            s.wait_fd = s.wait_peer_fd = -1;
        }
        if (warm && cg) {
            if (auto err = CgroupTree::enter(cg->fd.get(), warm->pid)) {
                kill(-warm->pid, SIGKILL);
                kill(warm->pid, SIGKILL);
                CgroupTree::remove(cg->dir);
                return "cannot move the warm job into its cgroup: " + *err;
            }
        }
    }
    if (!warm && cg) s.cgroup_fd = cg->fd.get();
    auto child = warm ? std::move(*warm) : spawn(s);
    if (child.pid < 0) {
        if (cg) CgroupTree::remove(cg->dir);
        return std::string(child.stage) + " " + spec.argv[0] +
               " failed: " + std::strerror(child.error);
    }
    auto run = std::make_unique<Run>();
    run->owner = this;
    run->id = spec.id;
    run->name = std::to_string(spec.id);
    run->routing_key = spec.routing_key;
    run->pid = child.pid;
    run->warm = warm.has_value();
    run->kill_grace = spec.kill_grace;
    run->output = std::move(out.read);
    run->spawn_report = std::move(child.pending_report);
    run->program = spec.argv[0];
    run->scopes = scope_ ? scope_->scopes : nullptr;
    run->timeout = spec.timeout;
    if (cg) run->cgroup = cg->dir;
    if (direct && records_) {
        records_->add(spec.id, child.pid);
        run->recorded = true;
    }
    auto& r = *run;
    runs_.emplace(spec.id, std::move(run));
    add_sources(r, spec.timeout);
    if (cg) {
        log::Fields f{.job = r.name, .routing_key = r.routing_key};
        log::Scope scope(f);
        spdlog::debug("job {} runs in cgroup {}", spec.id, r.cgroup);
    }
    if (gate) {
        r.release = std::move(gate->write);
        if (scope_)
            create_scope(r, spec);
        else
            r.release_child(); // a warm child, in its cgroup now
    }
    return std::nullopt;
}

void Executor::create_scope(Run& r, const JobSpec& spec) {
    r.unit = scope_unit_name(scope_->instance, spec.id);
    auto props = scope_->properties;
    props.description = "loopabull job " + r.name + ": " + spec.routing_key;
    props.runtime_max = spec.timeout + spec.kill_grace + kRuntimeMargin;
    props.stop_timeout = spec.kill_grace;
    JobId id = spec.id;
    scope_->scopes->start(r.unit, r.pid, props, [this, id](std::optional<std::string> error) {
        scope_ready(id, std::move(error));
    });
}

void Executor::scope_ready(JobId id, std::optional<std::string> error) {
    auto it = runs_.find(id);
    if (it == runs_.end()) return; // the job ended (was cancelled) while its scope was made
    auto& r = *it->second;
    log::Fields f{.job = r.name, .routing_key = r.routing_key};
    log::Scope scope(f);
    if (!error) {
        r.in_scope = true;
        spdlog::info("job {} runs in {} (journalctl {}-u {})", id, r.unit,
                     scope_ && scope_->user_manager ? "--user " : "", r.unit);
        return r.release_child();
    }
    if (scope_ && scope_->fallback_direct) {
        spdlog::error("job {}: cannot create scope {}: {}; RUNNING IT WITHOUT A SCOPE "
                      "(executor.on_scope_failure: direct)",
                      id, r.unit, *error);
        r.unit.clear();
        return r.release_child();
    }
    r.failure = "cannot create scope " + r.unit + ": " + *error;
    r.unit.clear();
    kill(r.pid, SIGKILL);
}

void Executor::add_sources(Run& r, usec timeout) {
    sd_event_source* s = nullptr;
    auto check = [&](int rc, SourcePtr& slot, const char* what) {
        if (rc < 0)
            throw std::system_error(-rc, std::generic_category(), "adding job event source");
        slot.reset(s);
        describe(s, r.id, what);
    };
    check(sd_event_add_io(event_, &s, r.output.get(), EPOLLIN, on_output, &r), r.output_source,
          "output");
    if (!r.warm)
        check(sd_event_add_child(event_, &s, r.pid, WEXITED, on_exit, &r), r.child_source,
              "process");
    check(sd_event_add_time_relative(event_, &s, CLOCK_MONOTONIC,
                                     static_cast<uint64_t>(timeout.count()), 0, on_timeout, &r),
          r.timeout_timer, "timeout");
    check(sd_event_add_time(event_, &s, CLOCK_MONOTONIC, UINT64_MAX, 0, on_kill, &r), r.kill_timer,
          "kill");
    sd_event_source_set_enabled(r.kill_timer.get(), SD_EVENT_OFF);
}

int Executor::on_output(sd_event_source*, int, uint32_t, void* userdata) noexcept {
    try {
        static_cast<Run*>(userdata)->log_output();
    } catch (const std::exception& e) {
        spdlog::error("reading job output: {}", e.what());
    }
    return 0;
}

int Executor::on_exit(sd_event_source*, const siginfo_t* si, void* userdata) noexcept {
    auto run = static_cast<Run*>(userdata);
    try {
        run->owner->finish(*run, *si);
    } catch (const std::exception& e) {
        spdlog::error("job {}: {}", run->id, e.what());
    }
    return 0;
}

void Executor::warm_exited(JobId id, const siginfo_t& si, const std::string& failure) {
    auto it = runs_.find(id);
    if (it == runs_.end()) return;
    auto& run = *it->second;
    if (!failure.empty()) {
        // The runner died while the job ran. With a death signal the job's first process died
        // with it, what it started did not; without (direct), the first process still runs, a
        // child of ours now (we are a subreaper): its whole tree goes.
        kill(-run.pid, SIGKILL);
        if (run.recorded) signal_tree(run.pid, SIGKILL, true);
        run.failure = failure;
    }
    finish(run, si);
}

void Executor::finish(Run& run, const siginfo_t& si) {
    // A background process of the playbook may keep the pipe open: take what is there, no more.
    run.log_output();
    if (run.timed_out || run.cancelled) kill(-run.pid, SIGKILL);
    // The job is over: whatever it left running in its scope or cgroup goes with it; with the
    // direct executor, its orphans (adopted by us, a subreaper, when its first process exited).
    if (run.in_scope) run.scopes->stop(run.unit);
    if (!run.cgroup.empty()) {
        if (int err = CgroupTree::kill_all(run.cgroup))
            spdlog::error("job {}: cannot kill cgroup {}: {}", run.id, run.cgroup,
                          std::strerror(err));
        if (!CgroupTree::remove(run.cgroup)) dead_cgroups_.push_back(run.cgroup);
    }
    if (kill_orphans() > 0 || !dead_cgroups_.empty()) sweep_soon();
    if (run.recorded && records_) records_->remove(run.id);
    forget_child(run.pid);
    auto outcome = outcome_of(si, run.timed_out, run.cancelled, run.timeout);
    if (run.spawn_report && run.failure.empty())
        run.failure = read_spawn_failure(run.spawn_report.get(), run.program).value_or("");
    if (!run.failure.empty() && !run.cancelled)
        outcome = {Result::failed, std::nullopt, run.failure, {}};
    if (run.in_scope) outcome.unit = run.unit;
    JobId id = run.id;
    runs_.erase(id);
    host_.job_finished(id, outcome);
}

void Executor::terminate(Run& run) {
    if (run.in_scope) {
        run.scopes->stop(run.unit); // every process of the scope, SIGKILL after kill_grace
    } else if (run.release) {
        kill(run.pid, SIGKILL); // still waiting for its scope: nothing has run yet
        return;
    } else if (!run.cgroup.empty()) {
        CgroupTree::signal_all(run.cgroup, SIGTERM);
    } else {
        if (kill(-run.pid, SIGTERM) < 0 && errno != ESRCH)
            spdlog::error("job {}: cannot signal process group {}: {}", run.id, run.pid,
                          std::strerror(errno));
        // Also what left the group (setsid, setpgid): every descendant.
        if (run.recorded) signal_tree(run.pid, SIGTERM, false);
    }
    sd_event_source_set_time_relative(run.kill_timer.get(),
                                      static_cast<uint64_t>(run.kill_grace.count()));
    sd_event_source_set_enabled(run.kill_timer.get(), SD_EVENT_ONESHOT);
}

int Executor::on_timeout(sd_event_source*, uint64_t, void* userdata) noexcept {
    auto run = static_cast<Run*>(userdata);
    log::Fields f{.job = run->name, .routing_key = run->routing_key};
    log::Scope scope(f);
    spdlog::warn("job {} ({}) reached its timeout; stopping its processes", run->id,
                 run->routing_key);
    run->timed_out = true;
    run->owner->terminate(*run);
    return 0;
}

int Executor::on_kill(sd_event_source*, uint64_t, void* userdata) noexcept {
    auto run = static_cast<Run*>(userdata);
    if (!run->cgroup.empty()) {
        spdlog::warn("job {} ignored SIGTERM; killing its cgroup", run->id);
        CgroupTree::kill_all(run->cgroup);
        return 0;
    }
    spdlog::warn("job {} ignored SIGTERM; sending SIGKILL to its processes", run->id);
    kill(-run->pid, SIGKILL);
    if (run->recorded) signal_tree(run->pid, SIGKILL, true);
    return 0;
}

// Killed processes leave their cgroup, and orphans become zombies, a little later: until then,
// every 50 ms (a minute at most).
void Executor::sweep_soon() {
    if (!sweep_timer_) {
        sd_event_source* s = nullptr;
        int rc = sd_event_add_time(event_, &s, CLOCK_MONOTONIC, UINT64_MAX, 0, on_sweep, this);
        if (rc < 0) throw std::system_error(-rc, std::generic_category(), "adding sweep timer");
        sweep_timer_.reset(s);
        sd_event_source_set_description(s, "job-sweep");
    }
    sweeps_ = 0;
    sd_event_source_set_time_relative(sweep_timer_.get(), 50000);
    sd_event_source_set_enabled(sweep_timer_.get(), SD_EVENT_ONESHOT);
}

int Executor::on_sweep(sd_event_source* s, uint64_t, void* userdata) noexcept {
    auto self = static_cast<Executor*>(userdata);
    std::erase_if(self->dead_cgroups_, [](auto& d) { return CgroupTree::remove(d); });
    bool orphans = kill_orphans() > 0;
    if (!orphans && self->dead_cgroups_.empty()) return 0;
    if (++self->sweeps_ >= 1200) {
        for (auto& d : self->dead_cgroups_)
            spdlog::error("cgroup {} is still not empty a minute after its job was killed; "
                          "leaving it",
                          d);
        self->dead_cgroups_.clear();
        return 0;
    }
    sd_event_source_set_time_relative(s, 50000);
    sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
    return 0;
}

std::string Executor::unit(JobId id) const {
    auto it = runs_.find(id);
    return it == runs_.end() ? std::string() : it->second->unit;
}

bool Executor::cancel(JobId id) {
    auto it = runs_.find(id);
    if (it == runs_.end() || it->second->cancelled || it->second->timed_out) return false;
    it->second->cancelled = true;
    terminate(*it->second);
    return true;
}

} // namespace loopabull
