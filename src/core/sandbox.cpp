// SPDX-License-Identifier: GPL-3.0-or-later
#include "core/sandbox.hpp"

#include "core/unique-fd.hpp"

#include <seccomp.h>
#include <yaml-cpp/yaml.h>

#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <system_error>

namespace loopabull {

namespace {

constexpr const char* kAllowlist[] = {
#include "syscall-allowlist.inc"
};

// Syscall numbers up to here that libseccomp cannot name are newer than it: ENOSYS for them.
constexpr int kMaxSyscallNr = 1024;

constexpr std::uint64_t kNamespaceFlags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC |
                                          CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET |
                                          CLONE_NEWCGROUP | CLONE_NEWTIME;

struct SeccompRelease {
    void operator()(scmp_filter_ctx c) const noexcept { seccomp_release(c); }
};
using SeccompCtx = std::unique_ptr<void, SeccompRelease>;

void check(int r, const char* what) {
    if (r < 0) throw std::system_error(-r, std::generic_category(), what);
}

int native_nr(const std::string& name) {
    return seccomp_syscall_resolve_name_arch(SCMP_ARCH_NATIVE, name.c_str());
}

// Each namespace flag gets a rule of its own (libseccomp compares masked arguments for equality).
void refuse_namespace_flags(scmp_filter_ctx ctx, int nr, const char* what) {
    for (std::uint64_t bit = 1; bit; bit <<= 1)
        if (kNamespaceFlags & bit)
            check(seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 1,
                                   SCMP_A0(SCMP_CMP_MASKED_EQ, bit, bit)),
                  what);
}

// The filter's default is ENOSYS (numbers this libseccomp does not know: newer system calls, so
// that glibc's fallbacks work); known calls that are not allowed get an EPERM rule each. That is
// ~360 rules instead of one per unknown number up to kMaxSyscallNr, a filter a third the size,
// and every job loads it (docs/PERFORMANCE.md).
void add_rules(scmp_filter_ctx ctx, const SeccompPolicy& policy) {
    for (auto& name : policy.allow) {
        int nr = native_nr(name);
        if (nr < 0) continue; // another architecture's name
        if (name == "clone") {
            check(seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1,
                                   SCMP_A0(SCMP_CMP_MASKED_EQ, kNamespaceFlags, 0)),
                  "seccomp rule for clone");
            // Any namespace flag: EPERM, not the default ENOSYS.
            refuse_namespace_flags(ctx, nr, "seccomp rule for clone with namespace flags");
        } else {
            check(seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0), "seccomp rule");
        }
    }
    int clone3 = native_nr("clone3");
    for (int nr = 0; nr < kMaxSyscallNr; ++nr) {
        std::unique_ptr<char, decltype(&free)> name(
            seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr), free);
        if (name && nr != clone3 && !policy.allow.count(name.get()))
            check(seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 0), "seccomp EPERM rule");
    }
}

std::vector<sock_filter> export_bpf(scmp_filter_ctx ctx) {
    UniqueFd fd(memfd_create("loopabull-seccomp", MFD_CLOEXEC));
    if (!fd) throw std::system_error(errno, std::generic_category(), "memfd_create");
    check(seccomp_export_bpf(ctx, fd.get()), "seccomp_export_bpf");
    off_t size = lseek(fd.get(), 0, SEEK_END);
    std::vector<sock_filter> code(static_cast<std::size_t>(size) / sizeof(sock_filter));
    if (pread(fd.get(), code.data(), code.size() * sizeof(sock_filter), 0) != size)
        throw std::runtime_error("reading the exported seccomp filter");
    return code;
}

bool read_names(const YAML::Node& node, const std::string& file, const char* key,
                std::set<std::string>& out, std::vector<ConfigError>& errors) {
    if (!node) return true;
    auto at = [&](const YAML::Node& n) {
        return ConfigError{file, n.Mark().line + 1, n.Mark().column + 1, ""};
    };
    if (!node.IsSequence()) {
        auto e = at(node);
        e.message = std::string("'") + key + "' must be a list of system call names";
        errors.push_back(e);
        return false;
    }
    bool ok = true;
    for (auto item : node) {
        if (item.IsScalar() && known_syscall(item.Scalar())) {
            out.insert(item.Scalar());
            continue;
        }
        auto e = at(item);
        e.message = "unknown system call '" + (item.IsScalar() ? item.Scalar() : std::string("?")) +
                    "' in '" + key + "'";
        errors.push_back(e);
        ok = false;
    }
    return ok;
}

} // namespace

bool known_syscall(const std::string& name) {
    return native_nr(name) >= 0;
}

SeccompPolicy default_seccomp_policy() {
    SeccompPolicy p;
    for (auto name : kAllowlist)
        p.allow.insert(name);
    return p;
}

std::optional<SeccompPolicy> load_seccomp_profile(const std::string& path,
                                                  std::vector<ConfigError>& errors) {
    std::size_t before = errors.size();
    YAML::Node root;
    try {
        root = YAML::LoadFile(path);
    } catch (const YAML::BadFile&) {
        errors.push_back(
            {path, 0, 0, std::string("cannot read seccomp profile: ") + std::strerror(errno)});
        return std::nullopt;
    } catch (const YAML::Exception& e) {
        errors.push_back({path, e.mark.line + 1, e.mark.column + 1, "YAML syntax error: " + e.msg});
        return std::nullopt;
    }
    if (!root.IsMap()) {
        errors.push_back(
            {path, 1, 1, "a seccomp profile must be a mapping with base, allow and deny"});
        return std::nullopt;
    }
    SeccompPolicy p;
    for (auto it = root.begin(); it != root.end(); ++it) {
        auto key = it->first.Scalar();
        if (key != "base" && key != "allow" && key != "deny")
            errors.push_back(
                {path, it->first.Mark().line + 1, it->first.Mark().column + 1,
                 "unknown key '" + key + "' in a seccomp profile (base, allow, deny)"});
    }
    auto base = root["base"] ? root["base"].Scalar() : std::string("default");
    if (base == "default")
        p = default_seccomp_policy();
    else if (base != "empty")
        errors.push_back({path, root["base"].Mark().line + 1, root["base"].Mark().column + 1,
                          "'base' must be default or empty, not '" + base + "'"});
    std::set<std::string> allow, deny;
    read_names(root["allow"], path, "allow", allow, errors);
    read_names(root["deny"], path, "deny", deny, errors);
    if (errors.size() != before) return std::nullopt;
    p.allow.insert(allow.begin(), allow.end());
    for (auto& d : deny)
        p.allow.erase(d);
    return p;
}

SeccompProgram compile_seccomp(const SeccompPolicy& policy) {
    SeccompCtx ctx(seccomp_init(SCMP_ACT_ERRNO(ENOSYS)));
    if (!ctx) throw std::runtime_error("seccomp_init failed");
    // The child sets no_new_privs itself, in the documented order.
    check(seccomp_attr_set(ctx.get(), SCMP_FLTATR_CTL_NNP, 0), "seccomp NNP attribute");
    check(seccomp_attr_set(ctx.get(), SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS),
          "seccomp bad-arch action");
    // A binary search over the system call numbers instead of a chain of ~1,000 comparisons:
    // the kernel checks (and caches) the filter against every system call number at each
    // load, once per job, so a linear chain cost about a millisecond per job (docs/PERFORMANCE.md).
    check(seccomp_attr_set(ctx.get(), SCMP_FLTATR_CTL_OPTIMIZE, 2), "seccomp optimize attribute");
    add_rules(ctx.get(), policy);
    return {export_bpf(ctx.get())};
}

SeccompProgram compile_namespace_filter(bool allow_clone3) {
    SeccompCtx ctx(seccomp_init(SCMP_ACT_ALLOW));
    if (!ctx) throw std::runtime_error("seccomp_init failed");
    check(seccomp_attr_set(ctx.get(), SCMP_FLTATR_CTL_NNP, 0), "seccomp NNP attribute");
    refuse_namespace_flags(ctx.get(), native_nr("clone"), "seccomp rule for clone");
    refuse_namespace_flags(ctx.get(), native_nr("unshare"), "seccomp rule for unshare");
    check(seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(EPERM), native_nr("setns"), 0),
          "seccomp rule for setns");
    if (!allow_clone3)
        check(seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(ENOSYS), native_nr("clone3"), 0),
              "seccomp rule for clone3");
    return {export_bpf(ctx.get())};
}

} // namespace loopabull
