// SPDX-License-Identifier: GPL-3.0-or-later
// The direct executor: each job a process group of its own, killed whole on timeout or cancel.
#pragma once

#include "loopabull/config.hpp"
#include "loopabull/protocol.hpp"
#include "loopabull/sandbox.hpp"
#include "loopabull/scheduler.hpp"
#include "loopabull/sd-ptr.hpp"

#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace loopabull {

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
    std::string error; // why the job could not run, for the log
};

class ExecutorHost {
public:
    virtual ~ExecutorHost() = default;
    virtual void job_finished(JobId id, const Outcome& outcome) = 0;
};

class DirectExecutor {
public:
    DirectExecutor(sd_event* event, ExecutorHost& host);
    ~DirectExecutor();
    DirectExecutor(const DirectExecutor&) = delete;
    DirectExecutor& operator=(const DirectExecutor&) = delete;

    // Starts the job, or says why it could not be started.
    std::optional<std::string> start(const JobSpec& spec);
    // SIGTERM to the job's process group, SIGKILL after its grace period; result "cancelled".
    bool cancel(JobId id);
    std::size_t running() const noexcept { return runs_.size(); }
    // The unit a running job is contained in ("" when it runs directly).
    std::string unit(JobId id) const;

private:
    struct Run;
    static int on_output(sd_event_source*, int, uint32_t, void*) noexcept;
    static int on_exit(sd_event_source*, const siginfo_t*, void*) noexcept;
    static int on_timeout(sd_event_source*, uint64_t, void*) noexcept;
    static int on_kill(sd_event_source*, uint64_t, void*) noexcept;

    void add_sources(Run& run, int output_fd);
    void finish(Run& run, const siginfo_t& si);
    void terminate(Run& run);

    sd_event* event_;
    ExecutorHost& host_;
    std::unordered_map<JobId, std::unique_ptr<Run>> runs_;
};

} // namespace loopabull
