// SPDX-License-Identifier: GPL-3.0-or-later
#include "supervisor/warm.hpp"

#include "build-config.h"
#include "supervisor/log.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <sstream>

namespace loopabull {

namespace {

// The runner forks a process of some 60 MB and answers: milliseconds, seconds on a loaded
// machine. Beyond this it is hung (or stopped): jobs go cold and it is replaced.
constexpr auto kWarmAnswerTimeout = std::chrono::seconds(15);
// Importing ansible takes about 0.4 s (FIELD-NOTES 9); a runner not ready after this is hung.
constexpr auto kReadyTimeout = std::chrono::seconds(60);
constexpr usec kBackoffMin = std::chrono::seconds(1);
constexpr usec kBackoffMax = std::chrono::minutes(5);
constexpr std::size_t kMaxMessage = 64 * 1024;

std::uint64_t now_monotonic() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return std::uint64_t(ts.tv_sec) * 1000000 + std::uint64_t(ts.tv_nsec) / 1000;
}

std::vector<std::string> split_fields(const char* data, std::size_t n) {
    std::vector<std::string> out;
    std::string_view all(data, n);
    std::size_t start = 0;
    while (true) {
        auto end = all.find('\0', start);
        out.emplace_back(all.substr(start, end == std::string_view::npos ? end : end - start));
        if (end == std::string_view::npos) break;
        start = end + 1;
    }
    return out;
}

template <typename T> std::optional<T> number(const std::string& s) {
    T v{};
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
    return v;
}

siginfo_t siginfo_of(pid_t pid, int status) {
    siginfo_t si{};
    si.si_signo = SIGCHLD;
    si.si_pid = pid;
    if (WIFEXITED(status)) {
        si.si_code = CLD_EXITED;
        si.si_status = WEXITSTATUS(status);
    } else {
        si.si_code = WCOREDUMP(status) ? CLD_DUMPED : CLD_KILLED;
        si.si_status = WTERMSIG(status);
    }
    return si;
}

std::string lookup_path(const std::string& name, const std::vector<std::string>& env) {
    if (name.find('/') != std::string::npos) return name;
    std::string path = "/usr/local/bin:/usr/bin:/bin";
    for (auto& e : env)
        if (e.starts_with("PATH=")) path = e.substr(5);
    std::stringstream dirs(path);
    for (std::string dir; std::getline(dirs, dir, ':');) {
        auto candidate = (dir.empty() ? "." : dir) + "/" + name;
        if (access(candidate.c_str(), X_OK) == 0) return candidate;
    }
    return {};
}

} // namespace

WarmPlan plan_warm(const std::vector<std::string>& cmd, const std::string& runner,
                   const std::vector<std::string>& env) {
    if (cmd.empty()) return {{}, "playbook_cmd is empty"};
    // Arguments after ansible-playbook (--check, --diff, -v) are its own options: they reach its
    // CLI in every job's argv, warm or cold, and are parsed there the same way.
    const std::string& script = cmd[0];
    auto slash = script.rfind('/');
    auto base = slash == std::string::npos ? script : script.substr(slash + 1);
    if (base != "ansible-playbook")
        return {{}, "playbook_cmd is " + script + ", not ansible-playbook"};
    std::ifstream in(script, std::ios::binary);
    std::string head(4096, '\0');
    in.read(head.data(), static_cast<std::streamsize>(head.size()));
    head.resize(static_cast<std::size_t>(in.gcount()));
    if (!in.eof() && !in.good()) return {{}, "cannot read " + script};
    if (!head.starts_with("#!") || head.find("from ansible.cli.playbook import main") == head.npos)
        return {{}, script + " is not ansible's own ansible-playbook script"};
    // binfmt_script(5): the interpreter, then at most one argument (the rest of the line).
    std::string line = head.substr(2, head.find('\n') - 2);
    auto first = line.find_first_not_of(" \t");
    if (first == line.npos) return {{}, script + " has an empty #! line"};
    auto end = line.find_first_of(" \t", first);
    std::string interpreter = line.substr(first, end == line.npos ? line.npos : end - first);
    std::string arg;
    if (end != line.npos) {
        auto a = line.find_first_not_of(" \t", end);
        if (a != line.npos) arg = line.substr(a, line.find_last_not_of(" \t\r") + 1 - a);
    }
    std::vector<std::string> command;
    if (interpreter.ends_with("/env")) {
        if (arg.empty() || arg.find(' ') != arg.npos || arg.starts_with("-"))
            return {{}, script + ": cannot follow its #! line '" + line + "'"};
        interpreter = lookup_path(arg, env);
        if (interpreter.empty()) return {{}, script + ": " + arg + " not found in PATH"};
        arg.clear();
    }
    command.push_back(interpreter);
    if (!arg.empty()) command.push_back(arg);
    if (access(interpreter.c_str(), X_OK) < 0)
        return {{}, "the interpreter " + interpreter + " is not executable"};
    if (access(runner.c_str(), R_OK) < 0)
        return {{}, "the warm runner " + runner + " is missing: " + std::strerror(errno)};
    command.push_back(runner);
    command.push_back(script);
    return {std::move(command), {}};
}

std::string warm_runner_path() {
    if (const char* p = std::getenv("LOOPABULL_WARM_RUNNER")) return p;
    return LOOPABULL_WARM_RUNNER;
}

struct WarmRunner::Message {
    std::vector<std::string> fields;
    UniqueFd fd;
};

struct WarmRunner::Zygote {
    WarmRunner* owner = nullptr;
    pid_t pid = -1;
    UniqueFd sock;
    SourcePtr io, child, ready_timer;
    bool ready = false;
    bool accepting = true;
    bool hung = false;
    std::uint64_t started_usec = 0; // CLOCK_MONOTONIC
    std::uint64_t jobs = 0;
    std::map<JobId, UniqueFd> running; // job -> its pidfd
};

WarmRunner::WarmRunner(sd_event* event, Exited exited)
    : event_(event), exited_(std::move(exited)), devnull_(open("/dev/null", O_RDWR | O_CLOEXEC)) {
    sd_event_source* s = nullptr;
    if (int r = sd_event_add_defer(event_, &s, on_dispatch, this); r < 0)
        throw std::system_error(-r, std::generic_category(), "adding warm dispatch source");
    dispatch_.reset(s);
    sd_event_source_set_description(s, "warm-dispatch");
    sd_event_source_set_enabled(s, SD_EVENT_OFF);
    if (int r = sd_event_add_time(event_, &s, CLOCK_MONOTONIC, UINT64_MAX, 0, on_restart, this);
        r < 0)
        throw std::system_error(-r, std::generic_category(), "adding warm restart timer");
    restart_timer_.reset(s);
    sd_event_source_set_description(s, "warm-restart");
    sd_event_source_set_enabled(s, SD_EVENT_OFF);
}

WarmRunner::~WarmRunner() {
    // Only at exit: the runner and its jobs (their death signal) go with us.
    if (current_) kill(current_->pid, SIGKILL);
    for (auto& z : retiring_)
        kill(z->pid, SIGKILL);
}

void WarmRunner::set_state(std::string state) {
    if (state == state_) return;
    state_ = std::move(state);
    if (state_ == "off: stopping")
        spdlog::info("warm runner stops taking jobs");
    else if (state_.starts_with("off") || state_.starts_with("down"))
        spdlog::warn("warm runner {}; jobs start cold", state_);
    else
        spdlog::info("warm runner {}", state_);
}

std::string WarmRunner::state() const {
    return state_;
}

pid_t WarmRunner::pid() const {
    return current_ ? current_->pid : -1;
}

std::uint64_t WarmRunner::rss_bytes() const {
    if (!current_) return 0;
    std::ifstream in("/proc/" + std::to_string(current_->pid) + "/status");
    for (std::string line; std::getline(in, line);)
        if (line.starts_with("VmRSS:"))
            return std::strtoull(line.c_str() + 6, nullptr, 10) * 1024; // "VmRSS:  N kB"
    return 0;
}

void WarmRunner::configure(std::optional<WarmSettings> settings, const std::string& off_reason) {
    if (current_) retire(std::move(current_));
    sd_event_source_set_enabled(restart_timer_.get(), SD_EVENT_OFF);
    backoff_ = {};
    settings_ = std::move(settings);
    if (!settings_) return set_state("off: " + off_reason);
    start();
}

void WarmRunner::retire() {
    settings_.reset();
    sd_event_source_set_enabled(restart_timer_.get(), SD_EVENT_OFF);
    if (current_) retire(std::move(current_));
    set_state("off: stopping");
}

void WarmRunner::retire(std::unique_ptr<Zygote> z) {
    z->accepting = false;
    // End of file: it takes no more jobs, and exits once its running jobs are reported.
    shutdown(z->sock.get(), SHUT_WR);
    retiring_.push_back(std::move(z));
}

void WarmRunner::start() {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        Zygote none;
        return down(none, std::string("socketpair: ") + std::strerror(errno));
    }
    UniqueFd ours(sv[0]), theirs(sv[1]);
    SpawnSpec s;
    s.argv = settings_->command;
    s.env = settings_->env;
    s.stderr_fd = STDERR_FILENO; // an import that fails says why in our log
    s.fd3 = theirs.get();
    s.new_session = true;
    s.death_signal = SIGKILL;
    s.sandbox = settings_->sandbox;
    auto child = loopabull::spawn(s);
    if (child.pid < 0) {
        Zygote none;
        return down(none,
                    std::string(child.stage) + " " + s.argv[0] + ": " + std::strerror(child.error));
    }
    auto z = std::make_unique<Zygote>();
    z->owner = this;
    z->pid = child.pid;
    z->sock = std::move(ours);
    z->started_usec = now_monotonic();
    sd_event_source* src = nullptr;
    auto check = [&](int r, SourcePtr& slot, const char* what) {
        if (r < 0) throw std::system_error(-r, std::generic_category(), what);
        slot.reset(src);
        sd_event_source_set_description(src, what);
    };
    check(sd_event_add_io(event_, &src, z->sock.get(), EPOLLIN, on_io, z.get()), z->io,
          "warm-runner-socket");
    check(sd_event_add_child(event_, &src, z->pid, WEXITED, on_child, z.get()), z->child,
          "warm-runner");
    check(sd_event_add_time_relative(event_, &src, CLOCK_MONOTONIC,
                                     std::chrono::microseconds(kReadyTimeout).count(), 0,
                                     on_ready_timeout, z.get()),
          z->ready_timer, "warm-runner-ready");
    current_ = std::move(z);
    set_state("starting");
}

void WarmRunner::down(Zygote& z, const std::string& why) {
    if (z.pid > 0) {
        kill(z.pid, SIGKILL); // its jobs die with it (their death signal)
        z.accepting = false;
        z.hung = true;
    }
    if (!settings_) return;
    backoff_ = backoff_.count() ? std::min(backoff_ * 2, kBackoffMax) : kBackoffMin;
    set_state("down: " + why + " (restarting in " +
              std::to_string(std::chrono::duration_cast<std::chrono::seconds>(backoff_).count()) +
              " s)");
    sd_event_source_set_time_relative(restart_timer_.get(),
                                      static_cast<std::uint64_t>(backoff_.count()));
    sd_event_source_set_enabled(restart_timer_.get(), SD_EVENT_ONESHOT);
    if (current_.get() == &z) retire(std::move(current_));
}

int WarmRunner::on_restart(sd_event_source*, uint64_t, void* userdata) noexcept {
    auto self = static_cast<WarmRunner*>(userdata);
    try {
        if (self->settings_ && !self->current_) self->start();
    } catch (const std::exception& e) {
        spdlog::error("warm runner: {}", e.what());
    }
    return 0;
}

int WarmRunner::on_ready_timeout(sd_event_source*, uint64_t, void* userdata) noexcept {
    auto z = static_cast<Zygote*>(userdata);
    if (!z->ready)
        z->owner->down(*z, "not ready after " + std::to_string(kReadyTimeout.count()) + " s");
    return 0;
}

bool WarmRunner::pump(Zygote& z, std::optional<JobId> awaiting, std::optional<Spawned>* started) {
    while (z.sock) {
        char buf[kMaxMessage];
        iovec iov{buf, sizeof buf};
        alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        ssize_t n = recvmsg(z.sock.get(), &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return true;
        Message m;
        for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                int fd;
                std::memcpy(&fd, CMSG_DATA(c), sizeof fd);
                m.fd.reset(fd);
            }
        if (n <= 0) { // the runner is gone (or closed its end): on_child finishes the rest
            z.io.reset();
            z.accepting = false;
            return false;
        }
        m.fields = split_fields(buf, static_cast<std::size_t>(n));
        handle(z, m, awaiting, started);
    }
    return false;
}

void WarmRunner::handle(Zygote& z, const Message& m, std::optional<JobId> awaiting,
                        std::optional<Spawned>* started) {
    auto& f = m.fields;
    auto id = f.size() > 1 ? number<JobId>(f[1]) : std::nullopt;
    if (f[0] == "ready" && f.size() >= 3) {
        z.ready = true;
        z.ready_timer.reset();
        if (&z == current_.get()) {
            backoff_ = {};
            set_state("ready");
            spdlog::info("warm runner pid {} has imported ansible {} (config {})", z.pid, f[2],
                         f.size() > 3 && !f[3].empty() ? f[3] : "none");
        }
    } else if (f[0] == "exited" && id && f.size() > 2) {
        auto node = z.running.extract(*id);
        auto status = number<int>(f[2]).value_or(0);
        pending_.push_back({*id, siginfo_of(0, status), {}});
        schedule_dispatch();
    } else if (f[0] == "started" && id && f.size() > 2 && id == awaiting && m.fd) {
        auto pid = number<pid_t>(f[2]).value_or(-1);
        z.running[*id] = UniqueFd(dup(m.fd.get()));
        *started = Spawned{pid, 0, nullptr, {}};
    } else if ((f[0] == "failed" || f[0] == "stale") && id == awaiting) {
        spdlog::info("warm runner: job {} starts cold: {}", *id, f.size() > 2 ? f[2] : f[0]);
        if (f[0] == "stale" && &z == current_.get()) {
            // Replaced at once: a package upgrade or a new ansible.cfg is not a fault.
            retire(std::move(current_));
            start();
        }
        *started = Spawned{-1, 0, nullptr, {}};
    } else {
        spdlog::error("warm runner pid {}: unexpected message '{}'", z.pid, f[0]);
    }
}

int WarmRunner::on_io(sd_event_source*, int, uint32_t, void* userdata) noexcept {
    auto z = static_cast<Zygote*>(userdata);
    try {
        z->owner->pump(*z, std::nullopt, nullptr);
    } catch (const std::exception& e) {
        spdlog::error("warm runner: {}", e.what());
    }
    return 0;
}

void WarmRunner::schedule_dispatch() {
    sd_event_source_set_enabled(dispatch_.get(), SD_EVENT_ONESHOT);
}

// Exits are handed on from here, never from inside spawn() or pump(): the executor's handler
// may start the next job, which talks to the runner again.
int WarmRunner::on_dispatch(sd_event_source*, void* userdata) noexcept {
    auto self = static_cast<WarmRunner*>(userdata);
    while (!self->pending_.empty()) {
        auto e = std::move(self->pending_.front());
        self->pending_.pop_front();
        try {
            self->exited_(e.id, e.si, e.failure);
        } catch (const std::exception& ex) {
            spdlog::error("job {}: {}", e.id, ex.what());
        }
    }
    return 0;
}

int WarmRunner::on_child(sd_event_source*, const siginfo_t* si, void* userdata) noexcept {
    auto z = static_cast<Zygote*>(userdata);
    auto self = z->owner;
    try {
        self->pump(*z, std::nullopt, nullptr); // exits it reported before it went
        bool clean = si->si_code == CLD_EXITED && si->si_status == 0;
        std::string how = si->si_code == CLD_EXITED
                              ? "exited with status " + std::to_string(si->si_status)
                              : std::string("was killed by signal ") + strsignal(si->si_status);
        // Its jobs had its death signal; the executor kills what they started.
        for (auto& [id, pidfd] : z->running) {
            (void)pidfd;
            siginfo_t dead{};
            dead.si_code = CLD_KILLED;
            dead.si_status = SIGKILL;
            self->pending_.push_back({id, dead, "the warm runner " + how + " while the job ran"});
        }
        if (!z->running.empty()) self->schedule_dispatch();
        z->running.clear();
        z->child.reset();
        if (self->current_.get() == z)
            self->down(*z, "pid " + std::to_string(z->pid) + " " + how); // moves it to retiring_
        else if (!clean && !z->hung)
            spdlog::warn("retired warm runner pid {} {}", z->pid, how);
        std::erase_if(self->retiring_, [z](auto& p) { return p.get() == z; });
    } catch (const std::exception& e) {
        spdlog::error("warm runner: {}", e.what());
    }
    return 0;
}

std::optional<Spawned> WarmRunner::spawn(const SpawnSpec& spec, JobId id) {
    if (!settings_ || !current_ || !current_->ready || !current_->accepting) return std::nullopt;
    auto& z = *current_;
    if (spec.env != settings_->env) {
        spdlog::info("job {} starts cold: its environment is not the warm runner's", id);
        return std::nullopt;
    }
    // Replaced after a bounded number of jobs or hours: a slow leak, a cache that only grows,
    // a module changed on disk without touching the package directory cannot last.
    if ((settings_->max_jobs && z.jobs >= settings_->max_jobs) ||
        (settings_->max_age.count() &&
         now_monotonic() - z.started_usec >=
             static_cast<std::uint64_t>(settings_->max_age.count()))) {
        spdlog::info("warm runner pid {} is replaced after {} job(s)", z.pid, z.jobs);
        retire(std::move(current_));
        start();
        return std::nullopt;
    }
    // run ID GATE DEATHSIG JOURNAL_HEADER ARGC ARGV... ENV...
    std::string msg = "run";
    auto add = [&msg](std::string_view field) {
        msg.push_back('\0');
        msg.append(field);
    };
    add(std::to_string(id));
    add(spec.wait_fd >= 0 ? "1" : "0");
    add(std::to_string(spec.death_signal));
    add(spec.journal_header ? *spec.journal_header : std::string());
    add(std::to_string(spec.argv.size()));
    for (auto& a : spec.argv)
        add(a);
    for (auto& e : spec.env)
        add(e);
    int fds[4] = {spec.stdin_fd >= 0 ? spec.stdin_fd : devnull_.get(),
                  spec.stdout_fd >= 0 ? spec.stdout_fd : devnull_.get(),
                  spec.stderr_fd >= 0 ? spec.stderr_fd : devnull_.get(), spec.wait_fd};
    std::size_t nfds = spec.wait_fd >= 0 ? 4 : 3;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof fds)] = {};
    iovec iov{msg.data(), msg.size()};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = control;
    m.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    cmsghdr* c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    std::memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    ssize_t n;
    do
        n = sendmsg(z.sock.get(), &m, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        down(z, std::string("cannot send it a job: ") + std::strerror(errno));
        return std::nullopt;
    }
    // The answer comes within milliseconds; exits of other jobs that come before it are queued.
    std::optional<Spawned> started;
    auto deadline = now_monotonic() + std::chrono::microseconds(kWarmAnswerTimeout).count();
    while (!started) {
        if (!pump(z, id, &started)) {
            if (!started) return std::nullopt; // it died: on_child restarts it
            break;
        }
        if (started) break;
        auto now = now_monotonic();
        if (now >= deadline) {
            down(z, "no answer to job " + std::to_string(id) + " within " +
                        std::to_string(kWarmAnswerTimeout.count()) + " s");
            return std::nullopt;
        }
        pollfd p{z.sock.get(), POLLIN, 0};
        poll(&p, 1, static_cast<int>((deadline - now) / 1000 + 1));
    }
    if (started->pid < 0) return std::nullopt;
    ++z.jobs;
    ++jobs_started_;
    spdlog::debug("job {} runs warm: pid {}, a child of warm runner pid {}", id, started->pid,
                  z.pid);
    return started;
}

} // namespace loopabull
