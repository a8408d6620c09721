// SPDX-License-Identifier: GPL-3.0-or-later
#include "supervisor/looper-check.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string_view>

extern char** environ;

namespace loopabull {

namespace {

// The bundled loopers that take --check-config (loopabull-looper(7)).
constexpr std::array<std::string_view, 4> kSelfChecking = {"amqp", "fedmsg", "fedmsgrabbitmq",
                                                           "spool"};

struct Fd {
    int fd = -1;
    explicit Fd(int f = -1) : fd(f) {}
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd() {
        if (fd >= 0) close(fd);
    }
};

std::string run_check(const LooperConfig& l, const Config& config, const std::string& instance,
                      int& status) {
    Fd memfd(memfd_create("looper-config", MFD_CLOEXEC));
    if (memfd.fd < 0) return std::string("cannot create its config file: ") + strerror(errno);
    auto text = l.config.dump();
    if (write(memfd.fd, text.data(), text.size()) != static_cast<ssize_t>(text.size()))
        return std::string("cannot write its config file: ") + strerror(errno);
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0) return std::string("pipe: ") + strerror(errno);
    Fd rd(pipefd[0]), wr(pipefd[1]);
    Fd devnull(open("/dev/null", O_RDWR | O_CLOEXEC));

    // Everything the child needs is made before fork(): nothing is allocated after it.
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e)
        if (!std::string_view(*e).starts_with("LOOPABULL_")) env.emplace_back(*e);
    auto timeout_s =
        std::chrono::duration_cast<std::chrono::seconds>(config.executor.timeout).count();
    for (auto s : {"LOOPABULL_PROTOCOL=1", "LOOPABULL_CONFIG_FILE=/proc/self/fd/3"})
        env.emplace_back(s);
    env.push_back("LOOPABULL_INSTANCE=" + instance);
    env.push_back("LOOPABULL_LOOPER=" + l.name);
    env.push_back("LOOPABULL_MAX_PARALLEL=" + std::to_string(config.executor.max_parallel));
    env.push_back("LOOPABULL_JOB_TIMEOUT=" + std::to_string(timeout_s));
    // PROGRAM --check-config ARGS...: the looper's own arguments follow (spool's directory).
    std::vector<std::string> args = l.command;
    args.insert(args.begin() + 1, "--check-config");
    std::vector<char*> envp, argv;
    for (auto& e : env)
        envp.push_back(e.data());
    envp.push_back(nullptr);
    for (auto& a : args)
        argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string& program = args.front();

    pid_t pid = fork();
    if (pid < 0) return std::string("fork: ") + strerror(errno);
    if (pid == 0) {
        if (dup2(devnull.fd, 0) < 0 || dup2(devnull.fd, 1) < 0 || dup2(wr.fd, 2) < 0) _exit(127);
        // dup2 onto itself would keep FD_CLOEXEC: the memfd may already be descriptor 3.
        if (memfd.fd == 3 ? fcntl(3, F_SETFD, 0) < 0 : dup2(memfd.fd, 3) < 0) _exit(127);
        execve(program.c_str(), argv.data(), envp.data());
        _exit(127);
    }
    close(wr.fd);
    wr.fd = -1;
    std::string out;
    char buf[4096];
    for (;;) {
        ssize_t n = read(rd.fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        if (out.size() < 64 * 1024) out.append(buf, static_cast<std::size_t>(n));
    }
    int ws = 0;
    while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
    }
    status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
    while (!out.empty() && out.back() == '\n')
        out.pop_back();
    if (status != 0 && out.empty())
        out = WIFEXITED(ws)
                  ? "its check exited with status " + std::to_string(status)
                  : std::string("its check was killed by signal ") + strsignal(WTERMSIG(ws));
    return out;
}

} // namespace

bool checks_own_options(const LooperConfig& looper) {
    return looper.origin == LooperOrigin::bundled &&
           std::find(kSelfChecking.begin(), kSelfChecking.end(), looper.command_as_written) !=
               kSelfChecking.end();
}

LooperCheck check_looper_options(const Config& config, const std::string& instance) {
    LooperCheck result;
    for (const auto& l : config.loopers) {
        if (!checks_own_options(l)) continue;
        int status = 0;
        auto text = run_check(l, config, instance, status);
        if (text.empty()) continue;
        auto& into = status ? result.problems : result.warnings;
        std::string::size_type start = 0;
        while (start <= text.size()) {
            auto end = text.find('\n', start);
            if (end == std::string::npos) end = text.size();
            into.push_back(config.path + ": looper " + l.name + ": " +
                           text.substr(start, end - start));
            start = end + 1;
        }
    }
    return result;
}

} // namespace loopabull
