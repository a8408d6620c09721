// SPDX-License-Identifier: GPL-3.0-or-later
// The cgroup subtree systemd delegates to loopabull (Delegate=yes), managed the way systemd's
// "Control Group APIs and Delegation" (docs/CGROUP_DELEGATION.md) asks: only below our own
// cgroup, processes only in leaves. loopabull and its loopers move into the leaf "supervisor/";
// every job gets a sibling leaf "job-ID/" that its first process is created in
// (clone3(CLONE_INTO_CGROUP)), so that nothing the job starts is ever outside it, and that is
// killed whole with cgroup.kill.
//
//   <our cgroup>/                 inner node: no processes; controllers enabled for the children
//   <our cgroup>/supervisor/      loopabull, its loopers
//   <our cgroup>/job-17/          job 17 and everything it started; memory.max, pids.max, cpu.max
//
// Works in systemd's unified layout (cgroup2 at /sys/fs/cgroup) and in the hybrid one (an empty
// cgroup2 at /sys/fs/cgroup/unified, controllers on cgroup v1: limits are then written nowhere
// and reported as not enforced). Measured in a booted Debian 12 container (systemd 252, hybrid):
// a Delegate=yes unit running as its own user owns its cgroup and can move its main process
// into a child cgroup by writing "0" to that child's cgroup.procs.
#pragma once

#include "core/unique-fd.hpp"

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace loopabull {

// What a job's cgroup is limited to; nullopt lifts a limit ("max").
struct CgroupLimits {
    std::optional<std::uint64_t> memory_max;             // bytes: memory.max
    std::optional<std::uint64_t> tasks_max;              // processes and threads: pids.max
    std::optional<std::uint64_t> cpu_quota_per_sec_usec; // CPU time per second: cpu.max
};

// One job's cgroup: created by CgroupTree::create_job, removed by CgroupTree::remove.
struct JobCgroup {
    std::string dir;                       // its directory under the cgroup2 mount
    UniqueFd fd;                           // the directory, for clone3(CLONE_INTO_CGROUP)
    std::vector<std::string> not_enforced; // limits written nowhere, with the reason
};

class CgroupTree {
  public:
    // Our own cgroup when systemd delegated it to us, or why it is not delegated (one sentence,
    // for the log and for the error of executor.type: cgroup). Reads the "0::" line of
    // /proc/self/cgroup and finds the cgroup2 mount with statfs(), as the delegation document
    // says. Delegated means: the xattr user.delegate (or trusted.delegate) is "1", which systemd
    // sets on the cgroup of a Delegate=yes unit (systemd 251 and later), or, for older systemd,
    // that the directory belongs to our (non-root) user, which systemd arranges only when it
    // delegates. Nothing is changed.
    static std::variant<CgroupTree, std::string> find_delegated();

    // Moves every process of our cgroup (loopabull itself, and any looper) into supervisor/,
    // kills and removes what a previous run left (job-* cgroups), and enables the memory, pids
    // and cpu controllers for the children where our cgroup has them. Throws std::system_error
    // when a step that must work fails.
    void setup();

    // The cgroup of a new job, with its limits written where the controllers are enabled (the
    // others listed in not_enforced). An existing directory of that name (left by a killed
    // predecessor) is killed and removed first. Error: the reason, as text.
    std::variant<JobCgroup, std::string> create_job(std::uint64_t id, const CgroupLimits& limits);

    // SIGKILL to every process of the cgroup and its descendants: cgroup.kill (Linux 5.14), or
    // on older kernels cgroup.freeze, SIGKILL to each process, thaw. Returns errno, 0 on success.
    static int kill_all(const std::string& dir);
    // sig to every process of the cgroup and its descendants (the polite first step of a stop).
    static void signal_all(const std::string& dir, int sig);
    // Removes the cgroup and any cgroups below it; false while processes are still in it
    // (EBUSY: killed processes leave asynchronously): try again later.
    static bool remove(const std::string& dir);
    // Moves process pid into the cgroup whose directory descriptor is cgroup_fd (a write of the
    // pid to its cgroup.procs). The reason on failure, as text.
    static std::optional<std::string> enter(int cgroup_fd, pid_t pid);
    // Whether a process is still in the cgroup or below (cgroup.events "populated").
    static bool populated(const std::string& dir);

    const std::string& dir() const noexcept { return dir_; }   // /sys/fs/cgroup[/unified]/PATH
    const std::string& path() const noexcept { return path_; } // PATH, as /proc/self/cgroup says
    // Controllers enabled for the jobs' cgroups ("memory", "pids", "cpu"), after setup().
    const std::vector<std::string>& controllers() const noexcept { return controllers_; }
    bool hybrid() const noexcept { return hybrid_; }

  private:
    CgroupTree(std::string dir, std::string path, bool hybrid)
        : dir_(std::move(dir)), path_(std::move(path)), hybrid_(hybrid) {}

    std::string dir_, path_;
    bool hybrid_ = false;
    std::vector<std::string> controllers_;
};

} // namespace loopabull
