// SPDX-License-Identifier: GPL-3.0-or-later
#include "supervisor/proc-tree.hpp"

#include "core/unique-fd.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <sstream>
#include <system_error>
#include <unordered_set>

namespace loopabull {

namespace {

std::string read_small(const std::string& path) {
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return {};
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = read(fd.get(), buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
        if (n > 0) out.append(buf, static_cast<std::size_t>(n));
    return out;
}

// The fields of /proc/PID/stat after the command name (which may contain spaces and ')').
std::vector<std::string> stat_fields(pid_t pid) {
    auto text = read_small("/proc/" + std::to_string(pid) + "/stat");
    auto close = text.rfind(')');
    std::vector<std::string> out;
    if (close == std::string::npos) return out;
    std::istringstream in(text.substr(close + 1));
    std::string f;
    while (in >> f)
        out.push_back(f);
    return out; // out[0] is field 3 (state)
}

std::vector<pid_t> children_of(pid_t pid) {
    std::vector<pid_t> out;
    std::string task = "/proc/" + std::to_string(pid) + "/task";
    DIR* d = opendir(task.c_str());
    if (!d) return out;
    while (auto* e = readdir(d)) {
        if (e->d_name[0] == '.') continue;
        std::istringstream in(read_small(task + "/" + e->d_name + "/children"));
        pid_t c;
        while (in >> c)
            out.push_back(c);
    }
    closedir(d);
    return out;
}

std::unordered_set<pid_t>& registered() {
    static std::unordered_set<pid_t> pids;
    return pids;
}

} // namespace

std::uint64_t process_start_time(pid_t pid) {
    auto f = stat_fields(pid);
    if (f.size() < 20 || f[0] == "Z" || f[0] == "X") return 0;
    return std::strtoull(f[19].c_str(), nullptr, 10); // field 22
}

std::vector<pid_t> process_descendants(pid_t pid) {
    std::vector<pid_t> out;
    std::set<pid_t> seen{pid};
    std::vector<pid_t> frontier{pid};
    while (!frontier.empty()) {
        std::vector<pid_t> next;
        for (pid_t p : frontier)
            for (pid_t c : children_of(p))
                if (seen.insert(c).second) {
                    out.push_back(c);
                    next.push_back(c);
                }
        frontier = std::move(next);
    }
    return out;
}

void signal_tree(pid_t root, int sig, bool with_root) {
    if (sig != SIGKILL) {
        for (pid_t p : process_descendants(root))
            kill(p, sig);
        if (with_root) kill(root, sig);
        return;
    }
    // Stopped processes cannot fork: stop until a pass finds nothing new, then kill them all.
    std::set<pid_t> stopped;
    if (with_root) {
        kill(root, SIGSTOP);
        stopped.insert(root);
    }
    for (int round = 0; round < 100; ++round) {
        bool more = false;
        for (pid_t p : process_descendants(root))
            if (stopped.insert(p).second) {
                kill(p, SIGSTOP);
                more = true;
            }
        if (!more) break;
    }
    for (pid_t p : stopped)
        kill(p, SIGKILL);
}

void register_child(pid_t pid) {
    registered().insert(pid);
}
void forget_child(pid_t pid) {
    registered().erase(pid);
}

std::size_t kill_orphans() {
    std::size_t left = 0;
    for (pid_t c : children_of(getpid())) {
        if (registered().count(c)) continue;
        siginfo_t si{};
        if (waitid(P_PID, static_cast<id_t>(c), &si, WEXITED | WNOHANG) == 0 && si.si_pid == c)
            continue; // an orphan that had exited: reaped
        signal_tree(c, SIGKILL, true);
        ++left;
    }
    return left;
}

std::size_t ProcessRecords::kill_leftovers() {
    if (mkdir(dir_.c_str(), 0700) < 0 && errno != EEXIST)
        throw std::system_error(errno, std::generic_category(), "creating " + dir_);
    std::size_t killed = 0;
    DIR* d = opendir(dir_.c_str());
    if (!d) throw std::system_error(errno, std::generic_category(), "reading " + dir_);
    std::vector<std::string> names;
    std::vector<std::pair<pid_t, std::uint64_t>> victims;
    while (auto* e = readdir(d))
        if (e->d_name[0] != '.') names.emplace_back(e->d_name);
    closedir(d);
    for (auto& name : names) {
        std::string path = dir_ + "/" + name;
        std::istringstream in(read_small(path));
        pid_t pid = 0;
        std::uint64_t start = 0;
        if (in >> pid >> start && pid > 1 && process_start_time(pid) == start) {
            auto tree = process_descendants(pid);
            tree.push_back(pid);
            for (pid_t p : tree)
                victims.emplace_back(p, process_start_time(p));
            signal_tree(pid, SIGKILL, true);
            killed += tree.size();
        }
        unlink(path.c_str());
    }
    // They are not our children: wait (5 s at most) until each has died, so that no event is
    // taken while they still run. A zombie counts as dead.
    for (int i = 0; i < 1000; ++i) {
        std::erase_if(victims, [](auto& v) {
            return v.second == 0 || process_start_time(v.first) != v.second;
        });
        if (victims.empty()) break;
        timespec ts{0, 5000000};
        nanosleep(&ts, nullptr);
    }
    return killed;
}

void ProcessRecords::add(std::uint64_t job, pid_t pid) {
    std::string path = dir_ + "/job-" + std::to_string(job);
    std::string text = std::to_string(pid) + " " + std::to_string(process_start_time(pid)) + "\n";
    UniqueFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (fd) (void)!write(fd.get(), text.data(), text.size());
}

void ProcessRecords::remove(std::uint64_t job) {
    unlink((dir_ + "/job-" + std::to_string(job)).c_str());
}

} // namespace loopabull
