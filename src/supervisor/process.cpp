// SPDX-License-Identifier: GPL-3.0-or-later
#include "supervisor/process.hpp"

#include "supervisor/proc-tree.hpp"

#include <fcntl.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <system_error>

extern char** environ;

namespace loopabull {

namespace {

void set_nonblock(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        throw std::system_error(errno, std::generic_category(), "fcntl(O_NONBLOCK)");
}

// dup2 clears close-on-exec, except when source and target are the same descriptor.
bool place(int src, int target) {
    if (src == target) return fcntl(target, F_SETFD, 0) == 0;
    return dup2(src, target) == target;
}

// What the child was doing when it failed, reported to the parent with errno.
enum Stage : int { kSetup, kCgroup, kNamespaces, kLimits, kNoNewPrivs, kSeccomp, kExec };

struct ChildError {
    int stage;
    int error;
};

// Set once by restrict_namespaces(), before the first child; loaded by every child.
std::optional<SeccompProgram> children_namespace_filter;

bool load_filter(const SeccompProgram& program, unsigned flags = 0) {
    auto prog = program.fprog();
    return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog) == 0;
}

// rlimits, then no_new_privs, then the filter: the documented order, so that nothing after the
// filter needs a system call it forbids (execve is allowed).
Stage apply_sandbox(const Sandbox& sb) {
    rlimit core{0, 0};
    rlimit nofile{sb.limit_nofile, sb.limit_nofile};
    if (setrlimit(RLIMIT_CORE, &core) < 0 || setrlimit(RLIMIT_NOFILE, &nofile) < 0) return kLimits;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) return kNoNewPrivs;
    if (!sb.seccomp) return kExec;
    return load_filter(*sb.seccomp) ? kExec : kSeccomp;
}

// stdout and stderr to a journald stream connected from here, so that journald sees the
// child's cgroup (its scope) as the sender.
void connect_journal(const std::string& header) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return;
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    static constexpr char path[] = "/run/systemd/journal/stdout";
    std::memcpy(sa.sun_path, path, sizeof path);
    if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0 ||
        write(fd, header.data(), header.size()) != static_cast<ssize_t>(header.size()) ||
        shutdown(fd, SHUT_RD) < 0) {
        close(fd);
        return;
    }
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    close(fd);
}

// Decimal digits of pid into out (room for 20 and a NUL), without allocating: runs in the child.
void write_pid(char* out, pid_t pid) {
    char digits[20];
    int n = 0;
    auto v = static_cast<unsigned long>(pid);
    do {
        digits[n++] = static_cast<char>('0' + v % 10);
        v /= 10;
    } while (v && n < 20);
    while (n)
        *out++ = digits[--n];
    *out = '\0';
}

bool wait_for_release(int fd) {
    char byte = 0;
    ssize_t n;
    do
        n = read(fd, &byte, 1);
    while (n < 0 && errno == EINTR);
    close(fd);
    return n == 1;
}

const char* stage_name(int stage) {
    switch (stage) {
    case kCgroup:
        return "entering its cgroup";
    case kNamespaces:
        return "loading the namespace filter";
    case kLimits:
        return "setting resource limits";
    case kNoNewPrivs:
        return "setting no_new_privs";
    case kSeccomp:
        return "loading the seccomp filter";
    case kExec:
        return "executing";
    default:
        return "setting up the process";
    }
}

// AddressSanitizer cannot follow instrumented code into a child that shares our memory on a stack
// of its own (the child aborts before execve), so sanitized builds fork every child.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

struct ChildArgs {
    const SpawnSpec* spec;
    char* const* argv;
    char* const* envp;
    int devnull;
    int err_fd; // fork(): the failure goes to the parent through this pipe
    pid_t parent;
    ChildError* shared;      // clone(CLONE_VM): straight into the parent's memory
    int move_to_cgroup = -1; // not created in its cgroup: it moves itself there first
};

// Writing 0 to cgroup.procs moves the writer (cgroups(7), "Control Group v2": cgroup.procs).
bool enter_cgroup(int cgroup_fd) {
    int fd = openat(cgroup_fd, "cgroup.procs", O_WRONLY | O_CLOEXEC);
    if (fd < 0) return false;
    bool ok = write(fd, "0", 1) == 1;
    int err = errno;
    close(fd);
    errno = err;
    return ok;
}

[[noreturn]] void fail_child(const ChildArgs& a, Stage stage) {
    ChildError report{stage, errno};
    if (a.shared)
        *a.shared = report;
    else
        (void)!write(a.err_fd, &report, sizeof report);
    _exit(127);
}

// Standard descriptors, then the listening sockets and fd3; every other one close-on-exec.
bool place_descriptors(const SpawnSpec& spec, int devnull) {
    int fds[] = {spec.stdin_fd, spec.stdout_fd, spec.stderr_fd};
    for (int i = 0; i < 3; ++i)
        if (!place(fds[i] >= 0 ? fds[i] : devnull, i)) return false;
    int next = 3;
    for (int fd : spec.listen_fds)
        if (!place(fd, next++)) return false;
    if (spec.fd3 >= 0 && !place(spec.fd3, next++)) return false;
    // Close-on-exec covers our own descriptors; this also drops any the supervisor inherited.
    close_range(static_cast<unsigned>(next), ~0U, CLOSE_RANGE_CLOEXEC);
    return true;
}

void reset_signals() {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    for (int sig = 1; sig < NSIG; ++sig)
        signal(sig, SIG_DFL);
}

[[noreturn]] void child(const ChildArgs& a) {
    const SpawnSpec& spec = *a.spec;
    // First, so that nothing it does happens outside its cgroup.
    if (a.move_to_cgroup >= 0 && !enter_cgroup(a.move_to_cgroup)) fail_child(a, kCgroup);
    if (children_namespace_filter && !load_filter(*children_namespace_filter))
        fail_child(a, kNamespaces);
    if (spec.death_signal) {
        prctl(PR_SET_PDEATHSIG, spec.death_signal);
        if (getppid() != a.parent) _exit(127);
    }
    if (spec.wait_peer_fd >= 0) close(spec.wait_peer_fd);
    if (spec.subreaper) prctl(PR_SET_CHILD_SUBREAPER, 1);
    if (spec.new_session)
        setsid();
    else
        setpgid(0, 0);
    reset_signals();
    if (!place_descriptors(spec, a.devnull)) fail_child(a, kSetup);
    if (spec.listen_pid_env >= 0) write_pid(a.envp[spec.listen_pid_env] + 11, getpid());
    if (spec.wait_fd >= 0 && !wait_for_release(spec.wait_fd)) _exit(125);
    if (spec.journal_header) connect_journal(*spec.journal_header);
    Stage stage = spec.sandbox ? apply_sandbox(*spec.sandbox) : kExec;
    if (stage == kExec) execve(a.argv[0], a.argv, a.envp);
    fail_child(a, stage);
}

// The child is gone already; reap it here so that callers only ever track live children.
Spawned reap_failed(pid_t pid, const ChildError& report) {
    while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    return {-1, report.error, stage_name(report.stage), {}};
}

int child_entry(void* args) {
    child(*static_cast<const ChildArgs*>(args));
}

int devnull_fd() {
    static UniqueFd fd(open("/dev/null", O_RDWR | O_CLOEXEC));
    return fd.get();
}

#if defined(__x86_64__)
// clone3 with a function to run in the child, as glibc's internal __clone3 (sysdeps/unix/sysv/
// linux/x86_64/clone3.S): the child starts on the stack given in args, so it cannot return
// from a system call wrapper into frames the suspended parent still owns (vfork(2), NOTES).
// Returns the child's pid or -errno; the child runs fn(arg) and exits with its value.
extern "C" long loopabull_clone3_fn(clone_args* args, std::size_t size, int (*fn)(void*),
                                    void* arg);
asm(".pushsection .text\n"
    ".globl loopabull_clone3_fn\n"
    ".hidden loopabull_clone3_fn\n"
    ".type loopabull_clone3_fn,@function\n"
    "loopabull_clone3_fn:\n"
    "  endbr64\n"
    "  mov %rcx, %r8\n"  // arg: r8 and rdx survive the system call
    "  mov $435, %eax\n" // __NR_clone3 on x86_64
    "  syscall\n"
    "  test %rax, %rax\n"
    "  jz 1f\n"
    "  ret\n"
    "1:\n"
    "  xor %ebp, %ebp\n"
    "  mov %r8, %rdi\n"
    "  call *%rdx\n"
    "  mov %rax, %rdi\n"
    "  mov $60, %eax\n" // __NR_exit
    "  syscall\n"
    "  hlt\n"
    ".size loopabull_clone3_fn, .-loopabull_clone3_fn\n"
    ".popsection\n");
static_assert(SYS_clone3 == 435 && SYS_exit == 60);
#endif

// Created in its cgroup, sharing our memory until it calls execve (clone3 with CLONE_VM,
// CLONE_VFORK and CLONE_INTO_CGROUP, Linux 5.7): neither a copy of our page tables nor a
// migration between cgroups, which takes the writing side of the kernel's cgroup lock and cost
// more than the job itself here (docs/PERFORMANCE.md). -ENOSYS where it is not available: under
// systemd's RestrictNamespaces= (its filter cannot read clone3's flags), older kernels, other
// architectures.
pid_t clone_into_cgroup(int cgroup_fd, void* stack, std::size_t size, ChildArgs* args) {
#if defined(__x86_64__)
    clone_args ca{};
    ca.flags = CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP;
    ca.exit_signal = SIGCHLD;
    ca.stack = reinterpret_cast<std::uint64_t>(stack);
    ca.stack_size = size;
    ca.cgroup = static_cast<std::uint64_t>(cgroup_fd);
    long r = loopabull_clone3_fn(&ca, sizeof ca, child_entry, args);
    if (r >= 0) return static_cast<pid_t>(r);
    errno = static_cast<int>(-r);
    return -1;
#else
    (void)cgroup_fd, (void)stack, (void)size, (void)args;
    errno = ENOSYS;
    return -1;
#endif
}

// A child that does not wait to be released (everything but scope jobs) is started the way
// posix_spawn does it: sharing our memory (CLONE_VM) while we are suspended until it calls
// execve or exits (CLONE_VFORK). No page tables are copied and no copy-on-write faults follow,
// which made fork() the largest part of a short job's cost (docs/PERFORMANCE.md). The child
// only makes system calls on data prepared here, on a stack of its own. A child for a cgroup is
// created in it, or, where clone3 is refused, moves itself there first.
Spawned spawn_shared(const SpawnSpec& spec, char* const* argv, char* const* envp) {
    static constexpr std::size_t kStack = 256 * 1024;
    static void* stack = mmap(nullptr, kStack, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) return {-1, errno, "allocating a stack", {}};
    ChildError report{-1, 0};
    ChildArgs args{&spec, argv, envp, devnull_fd(), -1, getpid(), &report};
    // No signal handler may run in the child while it shares our memory.
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);
    pid_t pid = -1;
    if (spec.cgroup_fd >= 0) {
        pid = clone_into_cgroup(spec.cgroup_fd, stack, kStack, &args);
        if (pid < 0 && (errno == ENOSYS || errno == E2BIG)) args.move_to_cgroup = spec.cgroup_fd;
    }
    if (pid < 0 && (spec.cgroup_fd < 0 || args.move_to_cgroup >= 0))
        pid = clone(child_entry, static_cast<char*>(stack) + kStack,
                    CLONE_VM | CLONE_VFORK | SIGCHLD, &args);
    int err = errno;
    sigprocmask(SIG_SETMASK, &old, nullptr);
    if (pid < 0) return {-1, err, "forking", {}};
    if (report.stage < 0) return {pid, 0, {}, {}};
    return reap_failed(pid, report);
}

// fork() into a cgroup (sanitized builds): clone3(CLONE_INTO_CGROUP) creates the child in it.
// Where clone3 is refused it returns -1 with ENOSYS, and the caller's child moves itself.
pid_t fork_into_cgroup(int cgroup_fd) {
    clone_args args{};
    args.flags = CLONE_INTO_CGROUP;
    args.exit_signal = SIGCHLD;
    args.cgroup = static_cast<std::uint64_t>(cgroup_fd);
    long pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid < 0 && errno == E2BIG) errno = ENOSYS;
    return static_cast<pid_t>(pid);
}

std::vector<char*> pointers(const std::vector<std::string>& strings) {
    std::vector<char*> out;
    out.reserve(strings.size() + 1);
    for (auto& s : strings)
        out.push_back(const_cast<char*>(s.c_str()));
    out.push_back(nullptr);
    return out;
}

} // namespace

Pipe make_pipe(bool nonblock_read, bool nonblock_write) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0) throw std::system_error(errno, std::generic_category(), "pipe2");
    Pipe p{UniqueFd(fds[0]), UniqueFd(fds[1])};
    if (nonblock_read) set_nonblock(fds[0]);
    if (nonblock_write) set_nonblock(fds[1]);
    return p;
}

static Spawned spawn_child(const SpawnSpec& spec) {
    auto argv = pointers(spec.argv);
    auto envp = pointers(spec.env);
    if (devnull_fd() < 0) return {-1, errno, "opening /dev/null", {}};
    if (spec.wait_fd < 0 && !kSanitized) return spawn_shared(spec, argv.data(), envp.data());
    int err_pipe[2];
    if (pipe2(err_pipe, O_CLOEXEC) < 0) return {-1, errno, "creating pipes", {}};
    UniqueFd err_read(err_pipe[0]), err_write(err_pipe[1]);
    pid_t parent = getpid();
    ChildArgs args{&spec, argv.data(), envp.data(), devnull_fd(), err_write.get(), parent, nullptr};
    pid_t pid = spec.cgroup_fd >= 0 ? fork_into_cgroup(spec.cgroup_fd) : fork();
    if (pid < 0 && errno == ENOSYS && spec.cgroup_fd >= 0) {
        args.move_to_cgroup = spec.cgroup_fd;
        pid = fork();
    }
    if (pid < 0) return {-1, errno, "forking", {}};
    if (pid == 0) child(args);
    err_write.reset();
    // It waits for its scope: its failure, if any, is read once it has exited.
    if (spec.wait_fd >= 0) return {pid, 0, nullptr, std::move(err_read)};
    // Blocks only until execve: the pipe closes on exec, or carries the child's failure.
    ChildError report{};
    ssize_t n;
    do
        n = read(err_read.get(), &report, sizeof report);
    while (n < 0 && errno == EINTR);
    if (n != sizeof report) return {pid, 0, {}, {}};
    return reap_failed(pid, report);
}

std::optional<std::string> restrict_namespaces() {
    auto children = compile_namespace_filter(false);
    // TSYNC: every thread of ours, or none (a library's thread must not keep the freedom).
    auto own = compile_namespace_filter(true);
    auto prog = own.fprog();
    long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog);
    if (r < 0) return std::string("seccomp: ") + std::strerror(errno);
    if (r > 0) return "seccomp: thread " + std::to_string(r) + " has a filter of its own";
    children_namespace_filter = std::move(children);
    return std::nullopt;
}

Spawned spawn(const SpawnSpec& spec) {
    auto child = spawn_child(spec);
    // Known to the orphan sweep (kill_orphans) until its owner has reaped it.
    if (child.pid > 0) register_child(child.pid);
    return child;
}

std::optional<std::string> read_spawn_failure(int fd, const std::string& program) {
    ChildError report{};
    ssize_t n;
    do
        n = read(fd, &report, sizeof report);
    while (n < 0 && errno == EINTR);
    if (n != sizeof report) return std::nullopt;
    return std::string(stage_name(report.stage)) + " " + program +
           " failed: " + std::strerror(report.error);
}

std::vector<std::string> inherited_environment() {
    static constexpr std::string_view drop[] = {
        "NOTIFY_SOCKET=", "WATCHDOG_PID=",   "WATCHDOG_USEC=",  "LISTEN_FDS=",
        "LISTEN_PID=",    "LISTEN_FDNAMES=", "JOURNAL_STREAM=", "LOOPABULL_"};
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e) {
        std::string_view var(*e);
        bool keep = true;
        for (auto prefix : drop)
            keep = keep && !var.starts_with(prefix);
        if (keep) env.emplace_back(var);
    }
    return env;
}

} // namespace loopabull
