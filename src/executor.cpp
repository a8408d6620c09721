// SPDX-License-Identifier: GPL-3.0-or-later
#include "loopabull/executor.hpp"

#include "loopabull/log.hpp"
#include "loopabull/process.hpp"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace loopabull {

struct DirectExecutor::Run {
    DirectExecutor* owner = nullptr;
    JobId id = 0;
    std::string name; // job id as text, for log fields
    std::string routing_key;
    pid_t pid = -1;
    usec kill_grace{};
    bool timed_out = false;
    bool cancelled = false;
    UniqueFd output;
    LineReader lines{16 * 1024};
    SourcePtr output_source, child_source, timeout_timer, kill_timer;

    void log_output();
};

namespace {

constexpr std::size_t kReadChunk = 16 * 1024;

void describe(sd_event_source* s, JobId id, const char* what) {
    sd_event_source_set_description(s, ("job-" + std::to_string(id) + "-" + what).c_str());
}

Outcome outcome_of(const siginfo_t& si, bool timed_out, bool cancelled) {
    int code = si.si_code == CLD_EXITED ? si.si_status : 128 + si.si_status;
    if (timed_out) return {Result::timeout, code, {}};
    if (cancelled) return {Result::cancelled, code, {}};
    return {code == 0 ? Result::succeeded : Result::failed, code, {}};
}

} // namespace

void DirectExecutor::Run::log_output() {
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

DirectExecutor::DirectExecutor(sd_event* event, ExecutorHost& host) : event_(event), host_(host) {}

DirectExecutor::~DirectExecutor() {
    // Only reached on a fatal error: playbooks must not outlive the supervisor.
    for (auto& [id, run] : runs_) kill(-run->pid, SIGKILL);
}

std::optional<std::string> DirectExecutor::start(const JobSpec& spec) {
    auto out = make_pipe(true, false);
    SpawnSpec s{spec.argv, spec.env, -1, out.write.get(), out.write.get(), -1, true, SIGKILL, spec.sandbox};
    auto child = spawn(s);
    if (child.pid < 0)
        return std::string(child.stage) + " " + spec.argv[0] + " failed: " + std::strerror(child.error);
    auto run = std::make_unique<Run>();
    run->owner = this;
    run->id = spec.id;
    run->name = std::to_string(spec.id);
    run->routing_key = spec.routing_key;
    run->pid = child.pid;
    run->kill_grace = spec.kill_grace;
    run->output = std::move(out.read);
    auto& r = *run;
    runs_.emplace(spec.id, std::move(run));
    add_sources(r, r.output.get());
    sd_event_source_set_time_relative(r.timeout_timer.get(), static_cast<uint64_t>(spec.timeout.count()));
    sd_event_source_set_enabled(r.timeout_timer.get(), SD_EVENT_ONESHOT);
    return std::nullopt;
}

void DirectExecutor::add_sources(Run& r, int output_fd) {
    sd_event_source* s = nullptr;
    auto check = [&](int rc, SourcePtr& slot, const char* what) {
        if (rc < 0) throw std::system_error(-rc, std::generic_category(), "adding job event source");
        slot.reset(s);
        describe(s, r.id, what);
    };
    check(sd_event_add_io(event_, &s, output_fd, EPOLLIN, on_output, &r), r.output_source, "output");
    check(sd_event_add_child(event_, &s, r.pid, WEXITED, on_exit, &r), r.child_source, "process");
    check(sd_event_add_time(event_, &s, CLOCK_MONOTONIC, UINT64_MAX, 0, on_timeout, &r),
          r.timeout_timer, "timeout");
    check(sd_event_add_time(event_, &s, CLOCK_MONOTONIC, UINT64_MAX, 0, on_kill, &r),
          r.kill_timer, "kill");
    sd_event_source_set_enabled(r.kill_timer.get(), SD_EVENT_OFF);
}

int DirectExecutor::on_output(sd_event_source*, int, uint32_t, void* userdata) noexcept {
    try {
        static_cast<Run*>(userdata)->log_output();
    } catch (const std::exception& e) {
        spdlog::error("reading job output: {}", e.what());
    }
    return 0;
}

int DirectExecutor::on_exit(sd_event_source*, const siginfo_t* si, void* userdata) noexcept {
    auto run = static_cast<Run*>(userdata);
    try {
        run->owner->finish(*run, *si);
    } catch (const std::exception& e) {
        spdlog::error("job {}: {}", run->id, e.what());
    }
    return 0;
}

void DirectExecutor::finish(Run& run, const siginfo_t& si) {
    // A background process of the playbook may keep the pipe open: take what is there, no more.
    run.log_output();
    if (run.timed_out || run.cancelled) kill(-run.pid, SIGKILL);
    auto outcome = outcome_of(si, run.timed_out, run.cancelled);
    JobId id = run.id;
    runs_.erase(id);
    host_.job_finished(id, outcome);
}

void DirectExecutor::terminate(Run& run) {
    if (kill(-run.pid, SIGTERM) < 0 && errno != ESRCH)
        spdlog::error("job {}: cannot signal process group {}: {}", run.id, run.pid, std::strerror(errno));
    sd_event_source_set_time_relative(run.kill_timer.get(), static_cast<uint64_t>(run.kill_grace.count()));
    sd_event_source_set_enabled(run.kill_timer.get(), SD_EVENT_ONESHOT);
}

int DirectExecutor::on_timeout(sd_event_source*, uint64_t, void* userdata) noexcept {
    auto run = static_cast<Run*>(userdata);
    log::Fields f{.job = run->name, .routing_key = run->routing_key};
    log::Scope scope(f);
    spdlog::warn("job {} ({}) reached its timeout; stopping its processes", run->id, run->routing_key);
    run->timed_out = true;
    run->owner->terminate(*run);
    return 0;
}

int DirectExecutor::on_kill(sd_event_source*, uint64_t, void* userdata) noexcept {
    auto run = static_cast<Run*>(userdata);
    spdlog::warn("job {} ignored SIGTERM; sending SIGKILL to its process group", run->id);
    kill(-run->pid, SIGKILL);
    return 0;
}

std::string DirectExecutor::unit(JobId) const { return {}; }

bool DirectExecutor::cancel(JobId id) {
    auto it = runs_.find(id);
    if (it == runs_.end() || it->second->cancelled || it->second->timed_out) return false;
    it->second->cancelled = true;
    terminate(*it->second);
    return true;
}

} // namespace loopabull
