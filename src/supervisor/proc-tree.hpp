// SPDX-License-Identifier: GPL-3.0-or-later
// The direct executor's containment without systemd: process trees found through
// /proc/PID/task/TID/children, kept whole by child subreapers (PR_SET_CHILD_SUBREAPER: the
// supervisor, and each job's first process, so that an orphan of the job stays below the job),
// and records of running jobs (pid and start time) that let the next start kill what a killed
// supervisor left behind.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace loopabull {

// The start time of a process (field 22 of /proc/PID/stat, in clock ticks since boot), 0 when it
// is gone. A pid with the same start time is the same process.
std::uint64_t process_start_time(pid_t pid);

// Every descendant of pid (children first), found through /proc/PID/task/*/children.
std::vector<pid_t> process_descendants(pid_t pid);

// sig to every descendant of root (root itself too when with_root). For SIGKILL the tree is
// first stopped (SIGSTOP) until no new process appears, so that nothing forks past the kill.
void signal_tree(pid_t root, int sig, bool with_root);

// Orphans adopted by this process (a subreaper): its children that no owner registered with
// register_child(). They are killed with their descendants, and reaped once they are zombies.
// Returns how many are left (alive or not yet reaped).
std::size_t kill_orphans();

// The children this process spawned and waits for itself (jobs, loopers); spawn() registers,
// the owner forgets a child once it has been reaped.
void register_child(pid_t pid);
void forget_child(pid_t pid);

// The records of running jobs' first processes, one file a job in dir ("PID STARTTIME").
class ProcessRecords {
  public:
    explicit ProcessRecords(std::string dir) : dir_(std::move(dir)) {}
    // Creates the directory (0700) and kills every recorded process that still runs with its
    // start time, with its descendants; removes the records. Returns how many processes it
    // killed. Throws std::system_error when the directory cannot be made.
    std::size_t kill_leftovers();
    void add(std::uint64_t job, pid_t pid);
    void remove(std::uint64_t job);
    const std::string& dir() const noexcept { return dir_; }

  private:
    std::string dir_;
};

} // namespace loopabull
