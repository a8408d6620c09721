// SPDX-License-Identifier: GPL-3.0-or-later
#include "supervisor/looper.hpp"
#include "supervisor/proc-tree.hpp"

#include "core/log-safe.hpp"
#include "supervisor/log.hpp"
#include "supervisor/process.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace loopabull {

namespace {

constexpr std::size_t kReadChunk = 64 * 1024;
// Answers a looper does not read are not kept without bound: past this, the looper's events are
// no longer read until it drains its stdin (back-pressure on the looper itself).
constexpr std::size_t kOutboxLimit = 1 << 20;
// Answers held back while a read's lines are dispatched, at most: one pipe's worth.
constexpr std::size_t kBatchFlush = 64 * 1024;
constexpr usec kStopStep = std::chrono::seconds(2);

// Shared by every looper so that a looper replaced on reload, with the same name, can never
// receive answers meant for the one it replaced.
std::uint64_t g_next_generation = 1;

std::uint64_t now_usec() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1000000 +
           static_cast<std::uint64_t>(ts.tv_nsec) / 1000;
}

void describe(sd_event_source* s, const std::string& looper, const char* what) {
    sd_event_source_set_description(s, ("looper-" + looper + "-" + what).c_str());
}

std::string exit_description(const siginfo_t& si) {
    if (si.si_code == CLD_EXITED) return "exited with status " + std::to_string(si.si_status);
    return std::string("was killed by SIG") + sigabbrev_np(si.si_status);
}

// Every C callback: an exception is logged once, here, and never crosses into sd-event.
template <typename F> int guarded(const Looper& looper, const char* what, F&& f) noexcept {
    try {
        f();
    } catch (const std::exception& e) {
        spdlog::error("looper {}: {}: {}", looper.name(), what, e.what());
    }
    return 0;
}

// The sockets systemd passed to loopabull, by FileDescriptorName=; close-on-exec (set by
// sd_listen_fds), so only a looper that names one receives it.
std::vector<std::pair<std::string, UniqueFd>> g_listen_fds;

// (name, descriptor) of each passed socket the looper's config names as "fd:NAME" in its
// "listen" list, in the order named.
std::vector<std::pair<std::string, int>> requested_sockets(const nlohmann::json& config) {
    std::vector<std::pair<std::string, int>> out;
    auto listen = config.is_object() ? config.find("listen") : config.end();
    if (!config.is_object() || listen == config.end() || !listen->is_array()) return out;
    for (const auto& item : *listen) {
        if (!item.is_string()) continue;
        std::string_view text = item.get_ref<const std::string&>();
        if (!text.starts_with("fd:")) continue;
        for (const auto& [name, fd] : g_listen_fds)
            if (name == text.substr(3)) out.emplace_back(name, fd.get());
    }
    return out;
}

} // namespace

void adopt_listen_fds() {
    char** names = nullptr;
    int n = sd_listen_fds_with_names(1, &names);
    if (n < 0) spdlog::warn("cannot take the sockets passed by systemd: {}", std::strerror(-n));
    for (int i = 0; i < std::max(n, 0); ++i) {
        g_listen_fds.emplace_back(names[i], UniqueFd(SD_LISTEN_FDS_START + i));
        spdlog::info("socket {} (descriptor {}) passed by systemd", names[i],
                     SD_LISTEN_FDS_START + i);
        free(names[i]);
    }
    free(names);
}

std::string_view to_string(LooperState s) noexcept {
    switch (s) {
    case LooperState::starting:
        return "starting";
    case LooperState::running:
        return "running";
    case LooperState::backoff:
        return "backoff";
    case LooperState::failed:
        return "failed";
    case LooperState::stopping:
        return "stopping";
    case LooperState::stopped:
        return "stopped";
    }
    return "stopped";
}

Looper::Looper(sd_event* event, LooperHost& host, LooperConfig config, std::string instance,
               unsigned max_parallel, usec job_timeout)
    : event_(event), host_(host), config_(std::move(config)), instance_(std::move(instance)),
      max_parallel_(max_parallel), job_timeout_(job_timeout),
      events_reader_(config_.max_line_length) {
    sd_event_source* s = nullptr;
    if (sd_event_add_defer(event_, &s, on_deferred, this) >= 0) {
        defer_.reset(s);
        sd_event_source_set_enabled(s, SD_EVENT_OFF);
        describe(s, config_.name, "resume");
    }
    // Accuracy 1 ms: sd-event's default (0) lets a timer fire up to 250 ms late, which would
    // more than triple a 100 ms restart_delay.
    if (sd_event_add_time(event_, &s, CLOCK_MONOTONIC, UINT64_MAX, 1000, on_timer, this) >= 0) {
        timer_.reset(s);
        sd_event_source_set_enabled(s, SD_EVENT_OFF);
        describe(s, config_.name, "timer");
    }
    if (!defer_ || !timer_)
        throw std::runtime_error("cannot create event sources for looper " + config_.name);
}

Looper::~Looper() {
    // A looper destroyed while its process lives (supervisor exiting on a fatal error) must not
    // be left behind.
    if (!exited_ && pid_ > 0) kill(-pid_, SIGKILL);
}

void Looper::start() {
    quick_failures_ = 0;
    state_ = LooperState::starting;
    spawn();
}

UniqueFd Looper::config_memfd() const {
    UniqueFd fd(memfd_create("loopabull-looper-config", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!fd) throw std::system_error(errno, std::generic_category(), "memfd_create");
    std::string text = config_.config.dump();
    if (write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()))
        throw std::system_error(errno, std::generic_category(), "writing looper config");
    // At the start, so that a looper may read descriptor 3 itself as well as open it by name.
    lseek(fd.get(), 0, SEEK_SET);
    // Sealed, so that the looper cannot change what a later restart will read.
    fcntl(fd.get(), F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL);
    return fd;
}

std::vector<std::string> Looper::environment(const std::vector<std::string>& socket_names) const {
    auto env = inherited_environment();
    env.push_back("LOOPABULL_PROTOCOL=1");
    env.push_back("LOOPABULL_INSTANCE=" + instance_);
    env.push_back("LOOPABULL_LOOPER=" + config_.name);
    // The config follows the passed sockets, which sd_listen_fds(3) wants from descriptor 3 on.
    env.push_back("LOOPABULL_CONFIG_FILE=/proc/self/fd/" + std::to_string(3 + socket_names.size()));
    if (!socket_names.empty()) {
        std::string names;
        for (const auto& n : socket_names)
            names += (names.empty() ? "" : ":") + n;
        env.push_back("LISTEN_FDS=" + std::to_string(socket_names.size()));
        env.push_back("LISTEN_FDNAMES=" + names);
        env.push_back("LISTEN_PID=" + std::string(20, ' ')); // filled in by the child
    }
    env.push_back("LOOPABULL_MAX_PARALLEL=" + std::to_string(max_parallel_));
    auto timeout_s = std::chrono::duration_cast<std::chrono::seconds>(job_timeout_).count();
    if (timeout_s > 0) env.push_back("LOOPABULL_JOB_TIMEOUT=" + std::to_string(timeout_s));
    return env;
}

void Looper::spawn() {
    auto in = make_pipe(false, true);
    auto out = make_pipe(true, false);
    auto err = make_pipe(true, false);
    auto memfd = config_memfd();
    // Sockets this looper names, moved above the range the child places them in.
    auto sockets = requested_sockets(config_.config);
    std::vector<std::string> names;
    std::vector<UniqueFd> moved;
    int above = static_cast<int>(3 + sockets.size() + 1);
    for (const auto& [name, fd] : sockets) {
        moved.emplace_back(fcntl(fd, F_DUPFD_CLOEXEC, above));
        if (!moved.back())
            throw std::system_error(errno, std::generic_category(), "dup of a socket");
        names.push_back(name);
    }
    if (!sockets.empty()) memfd = UniqueFd(fcntl(memfd.get(), F_DUPFD_CLOEXEC, above));
    SpawnSpec spec{config_.command, environment(names), in.read.get(), out.write.get(),
                   err.write.get(), memfd.get(),        false,         SIGTERM};
    for (const auto& fd : moved)
        spec.listen_fds.push_back(fd.get());
    for (std::size_t i = 0; i < spec.env.size() && !sockets.empty(); ++i)
        if (spec.env[i].starts_with("LISTEN_PID=")) spec.listen_pid_env = static_cast<int>(i);
    auto child = loopabull::spawn(spec);
    log::Fields f{.looper = config_.name};
    log::Scope scope(f);
    if (child.pid < 0) {
        spdlog::error("looper {}: {} {} failed: {}", config_.name, child.stage, config_.command[0],
                      std::strerror(child.error));
        started_at_ = now_usec();
        schedule_restart();
        return;
    }
    pid_ = child.pid;
    generation_ = g_next_generation++;
    started_at_ = now_usec();
    exited_ = false;
    state_ = LooperState::running;
    stdin_ = std::move(in.write);
    stdout_ = std::move(out.read);
    stderr_ = std::move(err.read);
    events_reader_ = LineReader(config_.max_line_length);
    log_reader_ = LineReader(16 * 1024);
    last_words_.clear();
    outbox_.clear();
    outbox_warned_ = false;

    sd_event_source* s = nullptr;
    auto check = [&](int r, SourcePtr& slot, const char* what) {
        if (r < 0)
            throw std::system_error(-r, std::generic_category(), "adding looper event source");
        slot.reset(s);
        describe(s, config_.name, what);
    };
    check(sd_event_add_io(event_, &s, stdout_.get(), EPOLLIN, on_stdout, this), stdout_source_,
          "stdout");
    check(sd_event_add_io(event_, &s, stderr_.get(), EPOLLIN, on_stderr, this), stderr_source_,
          "stderr");
    check(sd_event_add_io(event_, &s, stdin_.get(), EPOLLOUT, on_stdin, this), stdin_source_,
          "stdin");
    sd_event_source_set_enabled(stdin_source_.get(), SD_EVENT_OFF);
    check(sd_event_add_child(event_, &s, pid_, WEXITED, on_exit, this), child_source_, "process");
    set_reading(!paused_);
    spdlog::info("looper {} started (pid {})", config_.name, pid_);
}

void Looper::set_reading(bool on) {
    if (stdout_source_)
        sd_event_source_set_enabled(stdout_source_.get(), on ? SD_EVENT_ON : SD_EVENT_OFF);
}

void Looper::pause() {
    paused_ = true;
    set_reading(false);
}

void Looper::resume() {
    paused_ = false;
    if (outbox_.size() > kOutboxLimit) return;
    set_reading(true);
    // Lines read before the pause wait in the buffer; no new input would wake us for them.
    if (events_reader_.has_line() || (exited_ && !stdout_))
        sd_event_source_set_enabled(defer_.get(), SD_EVENT_ONESHOT);
}

int Looper::on_deferred(sd_event_source*, void* userdata) noexcept {
    auto self = static_cast<Looper*>(userdata);
    return guarded(*self, "resuming", [&] {
        self->dispatch_lines();
        self->maybe_finished();
    });
}

int Looper::on_stdout(sd_event_source*, int, uint32_t, void* userdata) noexcept {
    auto self = static_cast<Looper*>(userdata);
    return guarded(*self, "reading events", [&] { self->read_stdout(); });
}

void Looper::read_stdout() {
    auto area = events_reader_.prepare(kReadChunk);
    ssize_t n = read(stdout_.get(), area.data(), area.size());
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        spdlog::error("looper {}: reading its stdout: {}", name(), std::strerror(errno));
    }
    if (n <= 0) {
        warn_partial_line();
        stdout_source_.reset();
        stdout_.reset();
        dispatch_lines();
        maybe_finished();
        return;
    }
    events_reader_.commit(static_cast<std::size_t>(n));
    dispatch_lines();
}

// A last line without its newline may be cut short: it is never dispatched.
void Looper::warn_partial_line() {
    auto bytes = events_reader_.partial_bytes();
    if (bytes > 0)
        spdlog::warn("looper {}: discarding a partial last line ({} bytes) at end of output",
                     name(), bytes);
}

// The answers to the lines of one read go out in one write at the end, not one write each.
void Looper::dispatch_lines() {
    batching_ = true;
    log::Fields f{.looper = config_.name};
    log::Scope scope(f);
    while (!paused_ && outbox_.size() <= kOutboxLimit) {
        auto line = events_reader_.next();
        if (!line) break;
        host_.looper_line(*this, *line);
    }
    batching_ = false;
    if (held_) flush_answers();
}

int Looper::on_stderr(sd_event_source*, int, uint32_t, void* userdata) noexcept {
    auto self = static_cast<Looper*>(userdata);
    return guarded(*self, "reading stderr", [&] { self->read_stderr(); });
}

void Looper::read_stderr() {
    auto area = log_reader_.prepare(kReadChunk);
    ssize_t n = read(stderr_.get(), area.data(), area.size());
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    log::Fields f{.looper = config_.name};
    log::Scope scope(f);
    if (n <= 0) {
        stderr_source_.reset();
        stderr_.reset();
        return;
    }
    log_reader_.commit(static_cast<std::size_t>(n));
    // A looper's stderr quotes what outsiders sent it (file names, message fields): escaped, so
    // that a newline, CR or ESC sequence in them cannot forge or hide a log line.
    while (auto line = log_reader_.next())
        log_stderr_line(*line);
}

// What it wrote before it exited and we have not read yet: its reason is usually the last line.
void Looper::drain_stderr() {
    for (int i = 0; stderr_ && i < 64; ++i) {
        auto area = log_reader_.prepare(kReadChunk);
        ssize_t n = read(stderr_.get(), area.data(), area.size());
        if (n <= 0) return;
        log_reader_.commit(static_cast<std::size_t>(n));
        while (auto line = log_reader_.next())
            log_stderr_line(*line);
    }
}

void Looper::log_stderr_line(const LineReader::Line& line) {
    auto text = escape_for_log(line.text);
    spdlog::info("looper {}: {}{}", name(), text, line.overlong ? " [...]" : "");
    if (!text.empty()) last_words_ = text.substr(0, 512);
}

void Looper::answer(std::uint64_t generation, const std::string& line) {
    if (generation != generation_ || !stdin_) {
        spdlog::debug("looper {}: dropping an answer for a previous run of the looper", name());
        return;
    }
    outbox_ += line;
    held_ = batching_ && outbox_.size() < kBatchFlush;
    if (!held_) flush_answers();
}

int Looper::on_stdin(sd_event_source*, int, uint32_t, void* userdata) noexcept {
    static_cast<Looper*>(userdata)->flush_answers();
    return 0;
}

void Looper::flush_answers() {
    held_ = false;
    while (!outbox_.empty() && stdin_) {
        ssize_t n = write(stdin_.get(), outbox_.data(), outbox_.size());
        if (n > 0) {
            outbox_.erase(0, static_cast<std::size_t>(n));
            continue;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN) break;
        spdlog::warn("looper {}: cannot write answers to it: {}", name(), std::strerror(errno));
        outbox_.clear();
        stdin_source_.reset();
        stdin_.reset();
    }
    bool waiting = !outbox_.empty() && stdin_;
    if (stdin_source_)
        sd_event_source_set_enabled(stdin_source_.get(), waiting ? SD_EVENT_ON : SD_EVENT_OFF);
    // Its events then wait in its own pipe, not in our read buffer.
    if (outbox_.size() > kOutboxLimit) set_reading(false);
    if (outbox_.size() > kOutboxLimit && !outbox_warned_) {
        outbox_warned_ = true;
        spdlog::warn("looper {} does not read its answers ({} bytes waiting); its events are not "
                     "read until it does",
                     name(), outbox_.size());
    }
    if (outbox_.size() <= kOutboxLimit && !paused_) resume();
}

int Looper::on_exit(sd_event_source*, const siginfo_t* si, void* userdata) noexcept {
    auto self = static_cast<Looper*>(userdata);
    return guarded(*self, "handling its exit", [&] { self->process_exited(*si); });
}

void Looper::process_exited(const siginfo_t& si) {
    log::Fields f{.looper = config_.name};
    log::Scope scope(f);
    exited_ = true;
    forget_child(pid_);
    child_source_.reset();
    bool expected = state_ == LooperState::stopping;
    if (expected) {
        spdlog::info("looper {} (pid {}) {}", name(), pid_, exit_description(si));
    } else {
        // Its reason goes with the warning: its own stderr lines are logged at info, which a
        // common "loglevel: warning" hides.
        drain_stderr();
        if (last_words_.empty())
            spdlog::warn("looper {} (pid {}) {}", name(), pid_, exit_description(si));
        else
            spdlog::warn("looper {} (pid {}) {}; its last words: {}", name(), pid_,
                         exit_description(si), last_words_);
    }
    // What it wrote before it died is still taken (within the pipe's capacity); only a
    // descendant could still hold the pipe, and it is not waited for.
    if (stdout_) {
        while (true) {
            auto area = events_reader_.prepare(kReadChunk);
            ssize_t n = read(stdout_.get(), area.data(), area.size());
            if (n <= 0) break;
            events_reader_.commit(static_cast<std::size_t>(n));
        }
        warn_partial_line();
        stdout_source_.reset();
        stdout_.reset();
    }
    stdin_source_.reset();
    stdin_.reset();
    outbox_.clear();
    dispatch_lines();
    maybe_finished();
}

void Looper::maybe_finished() {
    if (!exited_ || stdout_) return;
    // While stopping, lines still buffered are not taken: the looper redelivers them later.
    if (state_ != LooperState::stopping && events_reader_.has_line()) return;
    if (state_ != LooperState::stopping && state_ != LooperState::running) return;
    stderr_source_.reset();
    stderr_.reset();
    if (state_ == LooperState::stopping) {
        state_ = LooperState::stopped;
        sd_event_source_set_enabled(timer_.get(), SD_EVENT_OFF);
        host_.looper_stopped(*this);
        return;
    }
    schedule_restart();
}

void Looper::schedule_restart() {
    if (now_usec() - started_at_ >= static_cast<std::uint64_t>(config_.restart_delay_max.count()))
        quick_failures_ = 0;
    ++quick_failures_;
    if (config_.restart_limit && quick_failures_ >= config_.restart_limit) {
        state_ = LooperState::failed;
        spdlog::error("looper {} failed: it stopped {} times in a row within {} s of starting; "
                      "not restarting it until the configuration is reloaded{}{}",
                      name(), quick_failures_, config_.restart_delay_max.count() / 1000000.0,
                      last_words_.empty() ? "" : "; its last words: ", last_words_);
        host_.looper_stopped(*this);
        return;
    }
    auto delay = config_.restart_delay * (1LL << std::min(quick_failures_ - 1, 30u));
    if (delay > config_.restart_delay_max) delay = config_.restart_delay_max;
    state_ = LooperState::backoff;
    spdlog::info("looper {} restarts in {} ms", name(), delay.count() / 1000);
    arm_timer(delay);
}

void Looper::arm_timer(usec delay) {
    sd_event_source_set_time_relative(timer_.get(), static_cast<uint64_t>(delay.count()));
    sd_event_source_set_enabled(timer_.get(), SD_EVENT_ONESHOT);
}

int Looper::on_timer(sd_event_source*, uint64_t, void* userdata) noexcept {
    auto self = static_cast<Looper*>(userdata);
    return guarded(*self, "timer", [&] { self->timer_fired(); });
}

void Looper::timer_fired() {
    if (state_ == LooperState::backoff) {
        ++restarts_;
        spawn();
        return;
    }
    if (state_ != LooperState::stopping || exited_) return;
    int sig = stop_phase_ == 0 ? SIGTERM : SIGKILL;
    spdlog::warn("looper {} (pid {}) has not exited; sending SIG{}", name(), pid_,
                 sigabbrev_np(sig));
    kill(-pid_, sig);
    if (++stop_phase_ < 2) arm_timer(kStopStep);
}

void Looper::stop() {
    if (state_ == LooperState::stopping || state_ == LooperState::stopped) return;
    sd_event_source_set_enabled(timer_.get(), SD_EVENT_OFF);
    if (exited_) {
        state_ = LooperState::stopped;
        host_.looper_stopped(*this);
        return;
    }
    state_ = LooperState::stopping;
    flush_answers();
    // EOF on stdin is the protocol's request to finish; signals follow only if it does not.
    stdin_source_.reset();
    stdin_.reset();
    stop_phase_ = 0;
    arm_timer(kStopStep);
}

} // namespace loopabull
