// SPDX-License-Identifier: GPL-3.0-or-later
#include "supervisor/cgroup.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <system_error>

namespace loopabull {

namespace {

constexpr const char* kSupervisor = "supervisor";
constexpr const char* kJobPrefix = "job-";

bool is_cgroup2(const char* path) {
    struct statfs fs {};
    return statfs(path, &fs) == 0 && fs.f_type == CGROUP2_SUPER_MAGIC;
}

std::optional<std::string> read_text(const std::string& path) {
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return std::nullopt;
    std::string out;
    char buf[4096];
    for (;;) {
        ssize_t n = read(fd.get(), buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return std::nullopt;
        if (n == 0) break;
        out.append(buf, static_cast<std::size_t>(n));
    }
    return out;
}

// One write(2) of the whole text: cgroup files take one value a write. Returns errno, 0 on success.
int write_text(const std::string& path, const std::string& text) {
    UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd) return errno;
    ssize_t n;
    do
        n = write(fd.get(), text.data(), text.size());
    while (n < 0 && errno == EINTR);
    return n == static_cast<ssize_t>(text.size()) ? 0 : (n < 0 ? errno : EIO);
}

std::vector<pid_t> procs(const std::string& dir) {
    std::vector<pid_t> out;
    auto text = read_text(dir + "/cgroup.procs");
    if (!text) return out;
    std::istringstream in(*text);
    pid_t pid;
    while (in >> pid)
        out.push_back(pid);
    return out;
}

// Child cgroups of dir (directories), by name.
std::vector<std::string> children(const std::string& dir) {
    std::vector<std::string> out;
    DIR* d = opendir(dir.c_str());
    if (!d) return out;
    while (auto* e = readdir(d)) {
        if (e->d_type != DT_DIR || e->d_name[0] == '.') continue;
        out.emplace_back(e->d_name);
    }
    closedir(d);
    return out;
}

void sleep_ms(long ms) {
    timespec ts{ms / 1000, (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

std::string error_text(int err) {
    return std::strerror(err);
}

bool delegated_xattr(const std::string& dir) {
    for (const char* name : {"user.delegate", "trusted.delegate"}) {
        char value[8] = {};
        ssize_t n = getxattr(dir.c_str(), name, value, sizeof value - 1);
        if (n > 0 && value[0] == '1') return true;
    }
    return false;
}

} // namespace

std::variant<CgroupTree, std::string> CgroupTree::find_delegated() {
    std::string mount;
    bool hybrid = false;
    if (is_cgroup2("/sys/fs/cgroup")) {
        mount = "/sys/fs/cgroup";
    } else if (is_cgroup2("/sys/fs/cgroup/unified")) {
        mount = "/sys/fs/cgroup/unified";
        hybrid = true;
    } else {
        return std::string("no cgroup v2 hierarchy is mounted (neither /sys/fs/cgroup nor "
                           "/sys/fs/cgroup/unified is cgroup2)");
    }
    auto self = read_text("/proc/self/cgroup");
    std::string path;
    if (self) {
        std::istringstream in(*self);
        std::string line;
        while (std::getline(in, line))
            if (line.starts_with("0::")) path = line.substr(3);
    }
    if (path.empty() || path.find("/..") != std::string::npos)
        return "our cgroup v2 path is unknown (/proc/self/cgroup has no usable \"0::\" line)";
    if (path == "/") return std::string("we run in the root cgroup, which is never delegated");
    std::string dir = mount + path;
    struct stat st {};
    if (stat(dir.c_str(), &st) < 0)
        return "our cgroup " + dir + " is not visible: " + error_text(errno);
    bool mine = st.st_uid == geteuid() && geteuid() != 0;
    if (!delegated_xattr(dir) && !mine)
        return "our cgroup " + path +
               " is not delegated to us (run loopabull as a service with Delegate=yes, as "
               "loopabull@.service does)";
    if (access((dir + "/cgroup.procs").c_str(), W_OK) < 0 ||
        access((dir + "/cgroup.subtree_control").c_str(), W_OK) < 0 ||
        access(dir.c_str(), W_OK) < 0)
        return "our cgroup " + dir +
               " is delegated but not writable here (ProtectControlGroups= without "
               "ReadWritePaths= for it?)";
    return CgroupTree(dir, path, hybrid);
}

void CgroupTree::setup() {
    std::string sup = dir_ + "/" + kSupervisor;
    if (mkdir(sup.c_str(), 0755) < 0 && errno != EEXIST)
        throw std::system_error(errno, std::generic_category(), "creating cgroup " + sup);
    // Every process of our cgroup into the leaf: loopabull itself ("0" is the writer) and any
    // process already started. A few rounds, in case one of them forks meanwhile.
    if (int err = write_text(sup + "/cgroup.procs", "0"))
        throw std::system_error(err, std::generic_category(),
                                "moving loopabull into cgroup " + sup);
    for (int round = 0; round < 10; ++round) {
        auto left = procs(dir_);
        if (left.empty()) break;
        for (pid_t pid : left)
            write_text(sup + "/cgroup.procs", std::to_string(pid));
    }
    // What a killed predecessor left: its jobs' cgroups.
    for (auto& name : children(dir_)) {
        if (name == kSupervisor) continue;
        std::string d = dir_ + "/" + name;
        kill_all(d);
        for (int i = 0; i < 500 && !remove(d); ++i)
            sleep_ms(10);
    }
    controllers_.clear();
    auto available = read_text(dir_ + "/cgroup.controllers").value_or("");
    std::istringstream in(available);
    std::string c;
    std::vector<std::string> have;
    while (in >> c)
        have.push_back(c);
    for (const char* want : {"memory", "pids", "cpu"}) {
        if (std::find(have.begin(), have.end(), want) == have.end()) continue;
        if (write_text(dir_ + "/cgroup.subtree_control", std::string("+") + want) == 0)
            controllers_.emplace_back(want);
    }
}

std::variant<JobCgroup, std::string> CgroupTree::create_job(std::uint64_t id,
                                                            const CgroupLimits& limits) {
    JobCgroup job;
    job.dir = dir_ + "/" + kJobPrefix + std::to_string(id);
    if (mkdir(job.dir.c_str(), 0755) < 0) {
        if (errno != EEXIST) return "cannot create cgroup " + job.dir + ": " + error_text(errno);
        kill_all(job.dir);
        if (!remove(job.dir) || mkdir(job.dir.c_str(), 0755) < 0)
            return "cannot replace the stale cgroup " + job.dir + ": " + error_text(errno);
    }
    auto has = [&](const char* c) {
        return std::find(controllers_.begin(), controllers_.end(), c) != controllers_.end();
    };
    auto set = [&](const char* controller, const char* file, const std::string& value,
                   const char* what) -> std::optional<std::string> {
        if (!has(controller)) {
            job.not_enforced.push_back(std::string(what) + " (the " + controller +
                                       " controller is not available in " + path_ + ")");
            return std::nullopt;
        }
        if (int err = write_text(job.dir + "/" + file, value))
            return "cannot write " + value + " to " + job.dir + "/" + file + ": " + error_text(err);
        return std::nullopt;
    };
    // cpu.max is "QUOTA PERIOD" in microseconds: a period of 100 ms, as systemd uses.
    std::optional<std::string> err;
    if (!err)
        err = set("memory", "memory.max",
                  limits.memory_max ? std::to_string(*limits.memory_max) : "max", "memory_max");
    if (!err)
        err = set("pids", "pids.max", limits.tasks_max ? std::to_string(*limits.tasks_max) : "max",
                  "tasks_max");
    if (!err)
        err = set("cpu", "cpu.max",
                  limits.cpu_quota_per_sec_usec
                      ? std::to_string(*limits.cpu_quota_per_sec_usec / 10) + " 100000"
                      : "max 100000",
                  "cpu_quota");
    if (!err) {
        job.fd.reset(open(job.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (!job.fd) err = "cannot open cgroup " + job.dir + ": " + error_text(errno);
    }
    if (err) {
        remove(job.dir);
        return *err;
    }
    return job;
}

int CgroupTree::kill_all(const std::string& dir) {
    int err = write_text(dir + "/cgroup.kill", "1");
    if (err != ENOENT) return err;
    // Before Linux 5.14: frozen processes cannot fork, so that the list read is complete.
    int frozen = write_text(dir + "/cgroup.freeze", "1");
    for (int round = 0; round < 100; ++round) {
        bool any = false;
        auto kill_in = [&](const std::string& d, auto& self) -> void {
            for (pid_t pid : procs(d))
                any = kill(pid, SIGKILL) == 0 || any;
            for (auto& c : children(d))
                self(d + "/" + c, self);
        };
        kill_in(dir, kill_in);
        if (!any) break;
        sleep_ms(1);
    }
    if (frozen == 0) write_text(dir + "/cgroup.freeze", "0");
    return 0;
}

void CgroupTree::signal_all(const std::string& dir, int sig) {
    for (pid_t pid : procs(dir))
        kill(pid, sig);
    for (auto& c : children(dir))
        signal_all(dir + "/" + c, sig);
}

std::optional<std::string> CgroupTree::enter(int cgroup_fd, pid_t pid) {
    UniqueFd fd(openat(cgroup_fd, "cgroup.procs", O_WRONLY | O_CLOEXEC));
    auto text = std::to_string(pid);
    if (!fd || write(fd.get(), text.data(), text.size()) < 0)
        return std::string("cgroup.procs: ") + std::strerror(errno);
    return std::nullopt;
}

// rmdir first: a job rarely makes cgroups of its own, and listing its directory (which holds
// every control file) would be most of the system calls of a job's end.
bool CgroupTree::remove(const std::string& dir) {
    if (rmdir(dir.c_str()) == 0 || errno == ENOENT) return true;
    if (errno != ENOTEMPTY && errno != EBUSY) return false;
    for (auto& c : children(dir))
        if (!remove(dir + "/" + c)) return false;
    return rmdir(dir.c_str()) == 0 || errno == ENOENT;
}

bool CgroupTree::populated(const std::string& dir) {
    auto events = read_text(dir + "/cgroup.events");
    return events && events->find("populated 1") != std::string::npos;
}

} // namespace loopabull
