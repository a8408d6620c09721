// SPDX-License-Identifier: GPL-3.0-or-later
// Starting child processes (loopers and playbooks) without a shell.
#pragma once

#include "loopabull/sandbox.hpp"
#include "loopabull/unique-fd.hpp"

#include <sys/types.h>

#include <string>
#include <vector>

namespace loopabull {

struct SpawnSpec {
    std::vector<std::string> argv;
    std::vector<std::string> env; // "NAME=value"
    int stdin_fd = -1;            // -1: /dev/null
    int stdout_fd = -1;
    int stderr_fd = -1;
    int fd3 = -1;                 // handed to the child as descriptor 3 when set
    bool new_session = false;     // setsid (playbooks) rather than a process group of its own
    int death_signal = 0;         // sent to the child when the supervisor dies
    const Sandbox* sandbox = nullptr; // applied last, just before execve
};

struct Spawned {
    pid_t pid = -1;
    int error = 0;           // errno of the step that failed
    const char* stage = {}; // which step: "executing", "loading the seccomp filter", ...
};

// fork + execve; the child does nothing but async-signal-safe calls on data prepared here.
Spawned spawn(const SpawnSpec& spec);

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
