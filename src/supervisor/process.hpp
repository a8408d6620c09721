// SPDX-License-Identifier: GPL-3.0-or-later
// Starting child processes (loopers and playbooks) without a shell.
#pragma once

#include "core/sandbox.hpp"
#include "core/unique-fd.hpp"

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

namespace loopabull {

struct SpawnSpec {
    std::vector<std::string> argv;
    std::vector<std::string> env; // "NAME=value"
    int stdin_fd = -1;            // -1: /dev/null
    int stdout_fd = -1;
    int stderr_fd = -1;
    int fd3 = -1;             // handed to the child as descriptor 3 (after listen_fds) when set
    bool new_session = false; // setsid (playbooks) rather than a process group of its own
    int death_signal = 0;     // sent to the child when the supervisor dies
    const Sandbox* sandbox = nullptr; // applied last, just before execve
    // The child waits for one byte on this descriptor before anything else (the scope
    // executor releases it once it is in its scope); EOF without a byte makes it exit.
    int wait_fd = -1;
    int wait_peer_fd = -1; // the parent's end of that pipe, closed in the child
    // When set, the child connects stdout and stderr to the journal itself, from inside its
    // scope, so that journald files its output under the scope's unit. Falls back to the pipe.
    const std::string* journal_header = nullptr;
    // A cgroup v2 directory (an open descriptor): the child is created in it
    // (clone3 with CLONE_INTO_CGROUP, Linux 5.7), so that it never runs anywhere else. Older
    // kernels: the child moves itself there before anything else.
    int cgroup_fd = -1;
    // The child becomes a child subreaper (PR_SET_CHILD_SUBREAPER, kept across execve): what
    // its descendants leave orphaned stays below it instead of leaving for init, so that the
    // whole tree can be found from it (the direct executor's containment).
    bool subreaper = false;
    // Listening sockets handed on as sd_listen_fds(3) expects them: at descriptors 3, 4, ...,
    // with fd3 right after them. No source may lie in [3, 3 + size()] (dup them above first).
    std::vector<int> listen_fds{};
    // Index in env of "LISTEN_PID=" followed by room for 20 digits: the child writes its own pid
    // there (LISTEN_PID must name the process that reads it, unknown before the clone).
    int listen_pid_env = -1;
};

struct Spawned {
    pid_t pid = -1;
    int error = 0;          // errno of the step that failed
    const char* stage = {}; // which step: "executing", "loading the seccomp filter", ...
    // With wait_fd, spawn() cannot wait for execve (the child waits for us): the failure report
    // arrives here instead, to be read with read_spawn_failure() once the child has exited.
    UniqueFd pending_report;
};

// The failure a child reported on pending_report, if it failed before or at execve.
std::optional<std::string> read_spawn_failure(int report_fd, const std::string& program);

// clone(CLONE_VM | CLONE_VFORK) (clone3 with CLONE_INTO_CGROUP too when it starts in a
// cgroup; a fork when the child must wait for wait_fd, and in sanitized builds) + execve; the
// child does nothing but async-signal-safe calls on data prepared here.
Spawned spawn(const SpawnSpec& spec);

// Refuses the creation of namespaces to this process (clone3 excepted: spawn() needs it for
// CLONE_INTO_CGROUP) and to every process spawn() starts from now on (clone3 included), with
// the filters of compile_namespace_filter(): what systemd's RestrictNamespaces=yes did for the
// whole service before the cgroup executor, whose filter makes clone3 fail (systemd.exec(5)).
// Needs no_new_privs (as the service runs) or CAP_SYS_ADMIN: without them it changes nothing
// and returns the reason (errno of seccomp(2), EACCES); nullopt once both filters apply.
std::optional<std::string> restrict_namespaces();

// A pipe with both ends close-on-exec; the parent's end is made non-blocking.
struct Pipe {
    UniqueFd read;
    UniqueFd write;
};
Pipe make_pipe(bool nonblock_read, bool nonblock_write);

// The supervisor's environment without what belongs to it alone (sd_notify socket, watchdog,
// socket activation, journal stream), for loopers.
std::vector<std::string> inherited_environment();

} // namespace loopabull
