// SPDX-License-Identifier: GPL-3.0-or-later
// The in-process sandbox of a playbook run: resource limits, no_new_privs and a seccomp
// allowlist. A scope cannot do this for us: seccomp and no_new_privs are inherited from the
// process that is moved into it, so they are applied in the child before execve.
#pragma once

#include "core/config-error.hpp"

#include <linux/filter.h>

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace loopabull {

struct SeccompPolicy {
    std::set<std::string> allow; // syscall names, resolved for the native architecture
};

// The default policy (systemd's @system-service less namespaces, io_uring, keyring, ...).
SeccompPolicy default_seccomp_policy();

// A profile (YAML or JSON): {base: default|empty, allow: [names], deny: [names]}. Problems are
// appended as FILE:LINE:COL errors; unknown syscall names are errors.
std::optional<SeccompPolicy> load_seccomp_profile(const std::string& path,
                                                  std::vector<ConfigError>& errors);

// Whether the name is a system call of this architecture.
bool known_syscall(const std::string& name);

// The compiled filter, built in the supervisor so that the child only hands it to the kernel.
// Default action EPERM; ENOSYS for clone3 and for numbers this libseccomp does not know (newer
// system calls), so that glibc's fallbacks keep working; clone only without CLONE_NEW* flags;
// native architecture only.
struct SeccompProgram {
    std::vector<sock_filter> code;
    sock_fprog fprog() const {
        return {static_cast<unsigned short>(code.size()), const_cast<sock_filter*>(code.data())};
    }
};
SeccompProgram compile_seccomp(const SeccompPolicy& policy);

// systemd's RestrictNamespaces=yes (systemd.exec(5)) as a filter of our own: clone(2) and
// unshare(2) with any CLONE_NEW* flag, and setns(2), fail with EPERM; everything else is
// allowed. clone3(2), whose flags a filter cannot read (they are in memory), fails with ENOSYS,
// as under systemd's filter (glibc then falls back to clone), unless allow_clone3: the
// supervisor's own filter allows it, so that it can create jobs in their cgroups
// (CLONE_INTO_CGROUP), and every process it starts gets the filter without it.
// Loading it needs no_new_privs or CAP_SYS_ADMIN (seccomp(2)); it sets neither.
SeccompProgram compile_namespace_filter(bool allow_clone3);

// What the child applies, in this order: rlimits, no_new_privs, seccomp (when set), execve.
struct Sandbox {
    std::uint64_t limit_nofile = 4096;
    std::optional<SeccompProgram> seccomp;
};

} // namespace loopabull
