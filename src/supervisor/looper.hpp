// SPDX-License-Identifier: GPL-3.0-or-later
// One looper: its process, its pipes, its restarts.
#pragma once

#include "core/config.hpp"
#include "core/protocol.hpp"
#include "core/unique-fd.hpp"
#include "supervisor/sd-ptr.hpp"

#include <sys/types.h>

#include <cstdint>
#include <string>

namespace loopabull {

class Looper;

// What a looper needs from its owner.
class LooperHost {
  public:
    virtual ~LooperHost() = default;
    // One complete line from the looper. When the queue fills, the host pauses the loopers,
    // which stops this one dispatching lines until resume().
    virtual void looper_line(Looper& looper, const LineReader::Line& line) = 0;
    virtual void looper_stopped(Looper& looper) = 0;
};

// Takes the listening sockets systemd passed to loopabull (sd_listen_fds_with_names(3), from a
// .socket unit's FileDescriptorName=), to hand each to the looper whose config names it in
// "listen" as "fd:NAME" (man/loopabull-looper.7). Call once, at start.
void adopt_listen_fds();

enum class LooperState { starting, running, backoff, failed, stopping, stopped };
std::string_view to_string(LooperState s) noexcept;

class Looper {
  public:
    Looper(sd_event* event, LooperHost& host, LooperConfig config, std::string instance,
           unsigned max_parallel, usec job_timeout = usec(0));
    ~Looper();
    Looper(const Looper&) = delete;
    Looper& operator=(const Looper&) = delete;

    void start();
    // Graceful stop: stdin closed (EOF), then SIGTERM, then SIGKILL.
    void stop();
    // Back-pressure: stop or restart reading events.
    void pause();
    void resume();

    // Answers go to the incarnation that sent the event; a restarted looper never sees answers
    // meant for its predecessor.
    void answer(std::uint64_t generation, const std::string& line);

    const LooperConfig& config() const noexcept { return config_; }
    const std::string& name() const noexcept { return config_.name; }
    LooperState state() const noexcept { return state_; }
    pid_t pid() const noexcept { return pid_; }
    std::uint64_t generation() const noexcept { return generation_; }
    unsigned restarts() const noexcept { return restarts_; }
    std::uint64_t events() const noexcept { return events_; }
    void count_event() noexcept { ++events_; }

  private:
    static int on_stdout(sd_event_source*, int, uint32_t, void*) noexcept;
    static int on_stderr(sd_event_source*, int, uint32_t, void*) noexcept;
    static int on_stdin(sd_event_source*, int, uint32_t, void*) noexcept;
    static int on_exit(sd_event_source*, const siginfo_t*, void*) noexcept;
    static int on_timer(sd_event_source*, uint64_t, void*) noexcept;
    static int on_deferred(sd_event_source*, void*) noexcept;

    void spawn();
    UniqueFd config_memfd() const;
    std::vector<std::string> environment(const std::vector<std::string>& socket_names) const;
    void read_stdout();
    void dispatch_lines();
    void warn_partial_line();
    void read_stderr();
    void flush_answers();
    void process_exited(const siginfo_t& si);
    void maybe_finished();
    void schedule_restart();
    void timer_fired();
    void arm_timer(usec delay);
    void set_reading(bool on);
    void close_pipes();

    sd_event* event_;
    LooperHost& host_;
    LooperConfig config_;
    std::string instance_;
    unsigned max_parallel_;
    usec job_timeout_; // for loopers whose source redelivers unacknowledged work after a while

    LooperState state_ = LooperState::stopped;
    pid_t pid_ = -1;
    std::uint64_t generation_ = 0;
    unsigned restarts_ = 0;
    unsigned quick_failures_ = 0;
    std::uint64_t events_ = 0;
    std::uint64_t started_at_ = 0; // CLOCK_MONOTONIC usec
    bool paused_ = false;
    bool exited_ = true;
    int stop_phase_ = 0; // 0: stdin closed, 1: SIGTERM sent, 2: SIGKILL sent

    UniqueFd stdin_, stdout_, stderr_;
    SourcePtr stdin_source_, stdout_source_, stderr_source_, child_source_, timer_, defer_;
    LineReader events_reader_;
    LineReader log_reader_{16 * 1024};
    // Its last line on stderr: the reason it gives, logged with an unexpected exit.
    std::string last_words_;
    void drain_stderr();
    void log_stderr_line(const LineReader::Line& line); // escaped; remembered as last words
    std::string outbox_;
    bool outbox_warned_ = false;
    bool batching_ = false; // dispatching a read's lines: answers wait for its end
    bool held_ = false;     // answers wait in outbox_ for the end of the batch
};

} // namespace loopabull
