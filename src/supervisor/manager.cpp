// SPDX-License-Identifier: GPL-3.0-or-later
#include "supervisor/manager.hpp"

#include "core/config-describe.hpp"
#include "core/event-names.hpp"
#include "core/exact-json.hpp"
#include "core/job-vars.hpp"
#include "core/varsfile.hpp"
#include "supervisor/bus-api.hpp"
#include "supervisor/bus.hpp"
#include "supervisor/log.hpp"
#include "supervisor/process.hpp"
#include "supervisor/warm.hpp"

#include "build-config.h"

#include <systemd/sd-daemon.h>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <stdexcept>
#include <system_error>

namespace loopabull {

namespace {

constexpr auto kStatusInterval = std::chrono::seconds(1);

[[noreturn]] void fail(int err, const std::string& what) {
    throw std::system_error(err < 0 ? -err : err, std::generic_category(), what);
}

void check(int r, const std::string& what) {
    if (r < 0) fail(r, what);
}

// The playbook sees the supervisor's locale, home and path, nothing else it did not ask for;
// ansible.environment may override any of these.
std::vector<std::string> playbook_environment(const AnsibleConfig& a) {
    static constexpr const char* keep[] = {"PATH",     "HOME",         "LANG", "LC_ALL",
                                           "LC_CTYPE", "LANGUAGE",     "USER", "LOGNAME",
                                           "TZ",       "SSH_AUTH_SOCK"};
    std::map<std::string, std::string> vars;
    for (auto name : keep)
        if (const char* v = std::getenv(name)) vars[name] = v;
    vars.try_emplace("PATH", "/usr/local/bin:/usr/bin:/bin");
    if (a.cfg_file_path) vars["ANSIBLE_CONFIG"] = *a.cfg_file_path;
    for (auto& [k, v] : a.environment)
        vars[k] = v;
    std::vector<std::string> env;
    for (auto& [k, v] : vars)
        env.push_back(k + "=" + v);
    return env;
}

// A directory that only this user can enter: the vars files in it hold event data.
void make_private_dir(const std::string& path) {
    std::error_code ec;
    std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
    if (mkdir(path.c_str(), 0700) < 0 && errno != EEXIST) fail(errno, "creating " + path);
    struct stat st {};
    if (lstat(path.c_str(), &st) < 0) fail(errno, path);
    if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid())
        throw std::runtime_error(path +
                                 " is not a directory owned by this user; refusing to use it");
    if ((st.st_mode & 0077) != 0 && chmod(path.c_str(), 0700) < 0) fail(errno, "chmod " + path);
}

std::string default_runtime_dir(const std::string& instance) {
    if (const char* rd = std::getenv("RUNTIME_DIRECTORY")) {
        std::string dirs(rd);
        return dirs.substr(0, dirs.find(':'));
    }
    if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"))
        return std::string(xdg) + "/loopabull/" + instance;
    auto base = "/tmp/loopabull-" + std::to_string(geteuid());
    make_private_dir(base);
    return base + "/" + instance;
}

// Vars files of a supervisor that was killed: nothing else will ever delete them.
void remove_stale_vars(const std::string& dir) {
    struct Closedir {
        void operator()(DIR* d) const noexcept { closedir(d); }
    };
    std::unique_ptr<DIR, Closedir> d(opendir(dir.c_str()));
    if (!d) return;
    int removed = 0;
    while (auto entry = readdir(d.get())) {
        std::string_view name(entry->d_name);
        if (name.starts_with("job-") && name.ends_with(".yml") &&
            unlinkat(dirfd(d.get()), entry->d_name, 0) == 0)
            ++removed;
    }
    if (removed) spdlog::warn("removed {} vars files left by a previous run in {}", removed, dir);
}

UniqueFd open_playbooks_dir(const std::string& dir) {
    UniqueFd fd(open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!fd) fail(errno, "opening playbooks_dir " + dir);
    return fd;
}

std::uint64_t now_realtime_usec() {
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1000000 +
           static_cast<std::uint64_t>(ts.tv_nsec) / 1000;
}

std::uint64_t now_monotonic_usec() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1000000 +
           static_cast<std::uint64_t>(ts.tv_nsec) / 1000;
}

// GetJob answers for this many finished jobs.
constexpr std::size_t kHistory = 1000;

std::string result_message(const Outcome& o) {
    std::string s(to_string(o.result));
    if (o.exit_code && o.result != Result::succeeded)
        s += " (exit code " + std::to_string(*o.exit_code) + ")";
    if (!o.error.empty()) s += ": " + o.error;
    return s;
}

// The reason of a job that did not succeed, for GetJob and loopabullctl job: the log's words.
std::string error_text(const Outcome& o) {
    if (o.result == Result::succeeded) return {};
    std::string s = o.error;
    if (o.exit_code && o.result == Result::failed)
        s = s.empty() ? "exit code " + std::to_string(*o.exit_code)
                      : s + " (exit code " + std::to_string(*o.exit_code) + ")";
    return s;
}

} // namespace

std::string_view to_string(ManagerState s) noexcept {
    switch (s) {
    case ManagerState::starting:
        return "starting";
    case ManagerState::running:
        return "running";
    case ManagerState::paused:
        return "paused";
    case ManagerState::stopping:
        return "stopping";
    case ManagerState::failed:
        return "failed";
    }
    return "running";
}

Manager::Manager(ManagerOptions options, Config config)
    : options_(std::move(options)), config_(std::move(config)) {}

Manager::~Manager() {
    for (auto& [id, job] : jobs_)
        if (!job.vars_path.empty()) unlink(job.vars_path.c_str());
}

void Manager::setup_event_loop() {
    sigset_t mask;
    sigemptyset(&mask);
    for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGCHLD})
        sigaddset(&mask, sig);
    check(sigprocmask(SIG_BLOCK, &mask, nullptr) < 0 ? -errno : 0, "sigprocmask");
    // A looper that closes its stdin must not kill the supervisor with SIGPIPE.
    signal(SIGPIPE, SIG_IGN);

    sd_event* e = nullptr;
    check(sd_event_new(&e), "sd_event_new");
    event_.reset(e);
    sd_event_source* s = nullptr;
    for (auto [sig, slot, name] :
         {std::tuple{SIGTERM, &sigterm_, "signal-term"}, std::tuple{SIGINT, &sigint_, "signal-int"},
          std::tuple{SIGHUP, &sighup_, "signal-hup"}}) {
        check(sd_event_add_signal(e, &s, sig, on_signal, this), "sd_event_add_signal");
        slot->reset(s);
        sd_event_source_set_description(s, name);
    }
    check(sd_event_add_time(e, &s, CLOCK_MONOTONIC, UINT64_MAX, 0, on_stop_timeout, this),
          "stop timer");
    stop_timer_.reset(s);
    sd_event_source_set_description(s, "stop-timeout");
    sd_event_source_set_enabled(s, SD_EVENT_OFF);
    check(sd_event_add_time(e, &s, CLOCK_MONOTONIC, UINT64_MAX, 0, on_status_timer, this),
          "status timer");
    status_timer_.reset(s);
    sd_event_source_set_description(s, "status");
    sd_event_source_set_enabled(s, SD_EVENT_OFF);
    check(sd_event_add_time(e, &s, CLOCK_MONOTONIC, UINT64_MAX, 0, on_no_looper_timeout, this),
          "no-looper timer");
    no_looper_timer_.reset(s);
    sd_event_source_set_description(s, "exit-without-loopers");
    sd_event_source_set_enabled(s, SD_EVENT_OFF);
    check(sd_event_add_defer(e, &s, on_reap, this), "reaper");
    reaper_.reset(s);
    sd_event_source_set_description(s, "looper-reaper");
    sd_event_source_set_enabled(s, SD_EVENT_OFF);
    // Fed by the loop itself: a hung loop stops the pings and systemd restarts us.
    check(sd_event_set_watchdog(e, true), "sd_event_set_watchdog");
    executor_ = std::make_unique<Executor>(e, *this);
    warm_ = std::make_unique<WarmRunner>(
        e, [this](JobId id, const siginfo_t& si, const std::string& failure) {
            executor_->warm_exited(id, si, failure);
        });
    executor_->set_warm(warm_.get());
}

void Manager::setup_runtime_dir() {
    runtime_dir_ = config_.runtime_dir.value_or(default_runtime_dir(options_.instance));
    make_private_dir(runtime_dir_);
    lock_runtime_dir();
    vars_dir_ = runtime_dir_ + "/vars";
    make_private_dir(vars_dir_);
    remove_stale_vars(vars_dir_);
    // Before any event is taken: what jobs of a killed predecessor left running (direct
    // executor) would otherwise go on beside the same events run again.
    records_ = std::make_unique<ProcessRecords>(runtime_dir_ + "/procs");
    if (auto killed = records_->kill_leftovers())
        spdlog::warn("killed {} process(es) that jobs of a previous run left behind", killed);
    executor_->set_records(records_.get());
}

// The supervisor is a child subreaper, so that what a job's processes orphan comes back to it
// (to be killed and reaped), not to init; and, when systemd delegated our cgroup to us, it
// moves itself into a leaf of it, before anything else starts, as delegation requires.
void Manager::setup_containment() {
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0) fail(-errno, "PR_SET_CHILD_SUBREAPER");
    // Jobs run as our user: were we dumpable, one allowed ptrace (seccomp: off, or a profile
    // that allows it) could attach to us and act with what only we may (clone3, our bus
    // connection, the ledger). Not dumpable, only CAP_SYS_PTRACE may (ptrace(2), "Ptrace access
    // mode checking"); no core dump of ours either, which could hold event data. Children are
    // dumpable again after execve.
    if (prctl(PR_SET_DUMPABLE, 0) < 0) fail(-errno, "PR_SET_DUMPABLE");
    namespaces_restricted_at_start_ = config_.executor.restrict_namespaces;
    if (!config_.executor.restrict_namespaces)
        spdlog::info("executor.restrict_namespaces is false: loopabull's jobs and loopers may "
                     "create namespaces");
    else if (auto why = restrict_namespaces())
        spdlog::warn("namespaces: not restricted ({}): loopabull runs without no_new_privs or "
                     "CAP_SYS_ADMIN, so executor.restrict_namespaces is not in force",
                     *why);
    else
        spdlog::debug("namespaces: their creation is refused to loopabull (clone3 excepted) "
                      "and to every process it starts");
    auto found = CgroupTree::find_delegated();
    if (auto* reason = std::get_if<std::string>(&found)) {
        no_cgroup_reason_ = *reason;
        spdlog::debug("no delegated cgroup: {}", *reason);
        return;
    }
    cgroup_tree_.emplace(std::move(std::get<CgroupTree>(found)));
    cgroup_tree_->setup();
    auto& c = cgroup_tree_->controllers();
    std::string list;
    for (auto& name : c)
        list += (list.empty() ? "" : ", ") + name;
    spdlog::info("cgroup {} is delegated to us: loopabull runs in {}/supervisor; controllers for "
                 "jobs: {}",
                 cgroup_tree_->path(), cgroup_tree_->path(), list.empty() ? "none" : list);
}

// Two supervisors sharing a runtime directory (the same instance name, a copied runtime_dir) would
// delete each other's live vars files as stale and run jobs with the other's event data. The
// lock is flock(2) on the directory itself, released by the kernel however we die; the pid file
// only names the holder in the message.
void Manager::lock_runtime_dir() {
    UniqueFd fd(open(runtime_dir_.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd) fail(errno, "opening runtime directory " + runtime_dir_);
    std::string pid_path = runtime_dir_ + "/loopabull.pid";
    if (flock(fd.get(), LOCK_EX | LOCK_NB) < 0) {
        if (errno != EWOULDBLOCK) fail(errno, "locking runtime directory " + runtime_dir_);
        std::string holder = "another process";
        if (UniqueFd pf(open(pid_path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC)); pf) {
            char buf[32] = {};
            ssize_t n = read(pf.get(), buf, sizeof buf - 1);
            if (n > 0) {
                std::string text(buf, static_cast<std::size_t>(n));
                text.erase(text.find_last_not_of("\n") + 1);
                if (!text.empty() && text.find_first_not_of("0123456789") == std::string::npos)
                    holder = "another loopabull (pid " + text + ")";
            }
        }
        throw std::runtime_error("runtime directory " + runtime_dir_ + " is in use by " + holder +
                                 "; one runtime directory serves one supervisor: give this one "
                                 "another --instance or runtime_dir (nothing was changed)");
    }
    UniqueFd pf(
        open(pid_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!pf) fail(errno, "writing " + pid_path);
    auto text = std::to_string(getpid()) + "\n";
    if (write(pf.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()))
        fail(errno, "writing " + pid_path);
    runtime_lock_ = std::move(fd);
}

int Manager::run() {
    notify_ = std::getenv("NOTIFY_SOCKET") != nullptr;
    setup_containment();
    setup_event_loop();
    setup_runtime_dir();
    if (auto path = ledger_path(config_.history)) {
        ledger_ = std::make_unique<Ledger>(event_.get(), config_.history, *path);
        // Job ids go on from the last recorded one, so that `loopabullctl job ID` names one job.
        next_job_ = std::max(next_job_, ledger_->max_job_id() + 1);
    }
    for (const auto& l : config_.loopers)
        if (l.dedup_window && !ledger_)
            spdlog::warn("looper {}: dedup knows only the jobs in flight: there is no history "
                         "ledger (set history.path, or run with StateDirectory=)",
                         l.name);
    metrics_file_ = std::make_unique<MetricsFile>(event_.get(), [this] { return metrics_text(); });
    if (options_.bus != BusKind::none) {
        bus_api_ = make_bus_api(*this, options_.bus);
        observer_ = bus_api_.get();
    }
    auto initial = std::move(config_);
    apply(std::move(initial));
    spdlog::info("loopabull {} instance {} running with {} looper(s), max_parallel {}",
                 LOOPABULL_VERSION, options_.instance, loopers_.size(),
                 config_.executor.max_parallel);
    started_ = true;
    status_changed();
    if (notify_) sd_notify(0, "READY=1\nSTATUS=Running");
    int r = sd_event_loop(event_.get());
    flush_rate_limits();
    if (r < 0) fail(r, "event loop");
    return r;
}

namespace {

// Playbooks run as the supervisor's user: that must be a dedicated one, never root by accident.
void check_user(const ExecutorConfig& e) {
    if (geteuid() != 0) return;
    if (!e.allow_root)
        throw std::runtime_error("refusing to run playbooks as root (uid 0): run loopabull as a "
                                 "dedicated user, or set executor.allow_root: true");
    spdlog::warn("RUNNING PLAYBOOKS AS ROOT (executor.allow_root is true): every event can act "
                 "with full privileges on this machine");
}

Sandbox make_sandbox(const ExecutorConfig& e) {
    Sandbox sb;
    // A job cannot get more descriptors than the supervisor may: capped at its hard limit.
    rlimit rl{};
    getrlimit(RLIMIT_NOFILE, &rl);
    sb.limit_nofile = std::min<std::uint64_t>(e.limit_nofile, rl.rlim_max);
    if (e.seccomp_policy)
        sb.seccomp = compile_seccomp(*e.seccomp_policy);
    else
        spdlog::warn("seccomp is off: playbooks run without a system call filter");
    return sb;
}

} // namespace

void Manager::apply(Config config) {
    // Everything that can fail comes first, so that a failed reload changes nothing.
    check_user(config.executor);
    auto sandbox = make_sandbox(config.executor);
    auto dirfd = open_playbooks_dir(config.ansible.playbooks_dir);
    auto mode = scope_mode(config.executor);
    auto cgroups = cgroup_mode(config.executor);
    log::set_level(options_.log_level.value_or(config.loglevel));
    if (started_ && config.executor.restrict_namespaces != namespaces_restricted_at_start_)
        spdlog::warn("executor.restrict_namespaces is {} now, {} since the start: a filter cannot "
                     "be taken back, so it takes effect at the next start",
                     config.executor.restrict_namespaces, namespaces_restricted_at_start_);
    executor_->set_scope_mode(std::move(mode));
    executor_->set_cgroup_mode(std::move(cgroups));
    playbooks_dirfd_ = std::move(dirfd);
    filter_ = RoutingFilter(config.routing_keys);
    job_env_ = playbook_environment(config.ansible);
    sandbox_ = std::move(sandbox);
    scheduler_.set_limits(config.executor.max_parallel, config.executor.queue_size);
    auto wanted = config.loopers;
    configure_warm(config);
    config_ = std::move(config);
    metrics_.set_max_keys(config_.metrics.max_keys);
    apply_loopers(wanted);
    start_jobs();
    update_intake();
    check_loopers_failed();
    if (metrics_file_) metrics_file_->configure(config_.metrics); // after the loopers: listed
}

// Replaced on every apply (reload): the new configuration, sandbox or environment is the one its
// jobs must see.
void Manager::configure_warm(const Config& config) {
    if (!config.executor.warm) return warm_->configure(std::nullopt, "executor.warm is false");
    auto plan = plan_warm(config.ansible.playbook_cmd, warm_runner_path(), job_env_);
    if (plan.command.empty()) return warm_->configure(std::nullopt, plan.reason);
    WarmSettings settings;
    settings.command = std::move(plan.command);
    settings.env = job_env_;
    settings.sandbox = &sandbox_;
    settings.max_jobs = config.executor.warm_max_jobs;
    settings.max_age = config.executor.warm_max_age;
    warm_->configure(std::move(settings), {});
}

std::string Manager::warm_state() const {
    return warm_ ? warm_->state() : "off";
}

std::uint64_t Manager::warm_rss_bytes() const {
    return warm_ ? warm_->rss_bytes() : 0;
}

// The scope executor's connection is made once, to one manager: at start, the scopes a killed
// predecessor left are stopped before any job can take their names.
std::optional<ScopeMode> Manager::scope_mode(const ExecutorConfig& e) {
    if (e.type != "scope") return std::nullopt;
    if (scope_user_manager_ && *scope_user_manager_ != e.user_manager)
        throw std::runtime_error("executor.manager cannot change while running; restart instead");
    if (!scopes_) connect_scopes(e);
    if (!scopes_) return std::nullopt; // on_scope_failure: direct, until the manager is back
    ScopeMode mode;
    mode.scopes = scopes_.get();
    mode.instance = options_.instance;
    mode.fallback_direct = e.fallback_direct;
    mode.user_manager = e.user_manager;
    auto& p = mode.properties;
    p.slice = e.slice;
    p.memory_max = e.memory_max;
    p.tasks_max = e.tasks_max;
    p.cpu_quota_per_sec_usec = e.cpu_quota_per_sec_usec;
    p.binds_to = ScopeManager::own_unit(e.user_manager);
    return mode;
}

// Connects to the manager that makes our scopes. When it cannot be reached and on_scope_failure is
// direct, jobs run without a scope meanwhile (loopabull(8)), the error is in the log and the
// status, and retry_scopes() tries again before jobs start; otherwise the error propagates (a
// failed start or reload).
void Manager::connect_scopes(const ExecutorConfig& e) {
    auto which = std::string(e.user_manager ? "user" : "system");
    try {
        auto kind = e.user_manager ? BusKind::user : BusKind::system;
        auto bus = open_bus(kind, event_.get(), "scopes");
        auto scopes = std::make_unique<ScopeManager>(bus.get());
        scopes->stop_stale(options_.instance, std::chrono::seconds(30));
        scope_bus_ = std::move(bus);
        scopes_ = std::move(scopes);
        scope_user_manager_ = e.user_manager;
        if (!scope_error_.empty())
            spdlog::info("the {} manager is reachable again: jobs run in scopes", which);
        scope_error_.clear();
    } catch (const std::exception& ex) {
        if (!e.fallback_direct) throw;
        if (scope_error_.empty())
            spdlog::error("cannot reach the {} manager for scopes: {}; RUNNING JOBS WITHOUT A "
                          "SCOPE (executor.on_scope_failure: direct) until it is back",
                          which, ex.what());
        scope_error_ = "no scopes (" + which + " manager unreachable: " + ex.what() + ")";
        scope_retry_at_ = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    }
}

// At most every 10 s, and only when a job is about to start: an unreachable manager costs
// nothing while idle.
void Manager::retry_scopes() {
    if (scope_error_.empty() || config_.executor.type != "scope") return;
    if (std::chrono::steady_clock::now() < scope_retry_at_) return;
    connect_scopes(config_.executor);
    if (scopes_) executor_->set_scope_mode(scope_mode(config_.executor));
    status_changed();
}

// cgroup, or auto where our cgroup is delegated: each job in a cgroup of its own below ours.
std::optional<CgroupMode> Manager::cgroup_mode(const ExecutorConfig& e) {
    if (e.type != "cgroup" && e.type != "auto") return std::nullopt;
    if (!cgroup_tree_) {
        if (e.type == "cgroup")
            throw std::runtime_error("executor.type is cgroup, but " + no_cgroup_reason_ +
                                     "; use type auto or direct");
        spdlog::info("executor.type auto: running jobs directly ({})", no_cgroup_reason_);
        return std::nullopt;
    }
    CgroupMode mode{&*cgroup_tree_, {e.memory_max, e.tasks_max, e.cpu_quota_per_sec_usec}};
    auto& c = cgroup_tree_->controllers();
    std::string lifted;
    for (auto [limit, controller, name] :
         {std::tuple{e.memory_max.has_value(), "memory", "memory_max"},
          std::tuple{e.tasks_max.has_value(), "pids", "tasks_max"},
          std::tuple{e.cpu_quota_per_sec_usec.has_value(), "cpu", "cpu_quota"}})
        if (limit && std::find(c.begin(), c.end(), controller) == c.end())
            lifted += std::string(lifted.empty() ? "" : ", ") + name + " (no " + controller +
                      " controller)";
    spdlog::info("executor.type {}: each job in a cgroup of its own below {}", e.type,
                 cgroup_tree_->path());
    if (!lifted.empty())
        spdlog::warn("cgroup executor: NOT ENFORCED in {}{}: {}; the limits are written "
                     "where the kernel offers the controllers only",
                     cgroup_tree_->path(),
                     cgroup_tree_->hybrid() ? " (hybrid cgroup layout: the controllers are on "
                                              "cgroup v1)"
                                            : "",
                     lifted);
    return mode;
}

// Out of loopers_ before it stops: a looper that has exited already reports at once
// (looper_stopped), and what that looks at must not meet an emptied entry.
Manager::LooperMap::iterator Manager::retire_looper(LooperMap::iterator it) {
    auto looper = std::move(it->second);
    auto next = loopers_.erase(it);
    retiring_.push_back(std::move(looper));
    retiring_.back()->stop();
    return next;
}

void Manager::apply_loopers(const std::vector<LooperConfig>& wanted) {
    std::set<std::string> names;
    for (auto& lc : wanted) {
        names.insert(lc.name);
        auto it = loopers_.find(lc.name);
        if (it != loopers_.end() && it->second->config() == lc) {
            if (it->second->state() == LooperState::failed) it->second->start();
            continue;
        }
        if (it != loopers_.end()) {
            spdlog::info("looper {} changed; restarting it", lc.name);
            retire_looper(it);
        }
        auto looper =
            std::make_unique<Looper>(event_.get(), *this, lc, options_.instance,
                                     config_.executor.max_parallel, config_.executor.timeout);
        auto& ref = *looper;
        spdlog::info("looper {}: {}", lc.name, describe_looper_program(lc));
        loopers_.emplace(lc.name, std::move(looper));
        if (!intake_open_) ref.pause();
        ref.start();
    }
    for (auto it = loopers_.begin(); it != loopers_.end();) {
        if (names.count(it->first)) {
            ++it;
            continue;
        }
        spdlog::info("looper {} is no longer configured; stopping it", it->first);
        it = retire_looper(it);
    }
}

std::vector<std::string> Manager::reload() {
    if (stopping_) {
        spdlog::warn("not reloading: the supervisor is stopping");
        return {"the supervisor is stopping"};
    }
    spdlog::info("reloading {}", options_.config_path);
    if (notify_) {
        timespec ts{};
        clock_gettime(CLOCK_MONOTONIC, &ts);
        auto usec = static_cast<unsigned long long>(ts.tv_sec) * 1000000ULL + ts.tv_nsec / 1000;
        // MONOTONIC_USEC lets Type=notify-reload units match this reload to its request.
        sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu", usec);
    }
    auto problems = load_and_apply();
    for (auto& p : problems)
        spdlog::error("{}", p);
    if (problems.empty())
        spdlog::info("configuration reloaded");
    else
        spdlog::error("reload failed with {} problem(s); keeping the current configuration",
                      problems.size());
    if (notify_) sd_notify(0, "READY=1");
    status_changed();
    return problems;
}

std::vector<std::string> Manager::load_and_apply() {
    auto load = load_config(options_.config_path, {options_.looper_dir, true});
    std::vector<std::string> problems;
    for (auto& e : load.errors)
        problems.push_back(e.str());
    if (!load.config) return problems;
    if (load.config->runtime_dir != config_.runtime_dir)
        return {"runtime_dir cannot change while running; restart instead"};
    try {
        apply(std::move(*load.config));
    } catch (const std::exception& e) {
        return {e.what()};
    }
    return {};
}

int Manager::on_signal(sd_event_source*, const signalfd_siginfo* si, void* userdata) noexcept {
    auto self = static_cast<Manager*>(userdata);
    try {
        if (si->ssi_signo == SIGHUP)
            self->reload();
        else
            self->begin_stop();
    } catch (const std::exception& e) {
        spdlog::critical("{}", e.what());
        return sd_event_exit(self->event_.get(), 1);
    }
    return 0;
}

void Manager::begin_stop() {
    if (stopping_) {
        spdlog::info("already stopping: {} job(s) still running", scheduler_.running());
        return;
    }
    stopping_ = true;
    if (notify_) sd_notify(0, "STOPPING=1");
    spdlog::info("stopping: no new events; {} running job(s) may finish, {} queued are cancelled",
                 scheduler_.running(), scheduler_.queued());
    update_intake();
    warm_->retire(); // it exits once its running jobs are reported
    for (auto id : scheduler_.take_queued())
        complete(id, {Result::cancelled, std::nullopt, {}, {}});
    if (scheduler_.running() == 0) return stop_loopers();
    sd_event_source_set_time_relative(stop_timer_.get(),
                                      static_cast<uint64_t>(config_.executor.stop_timeout.count()));
    sd_event_source_set_enabled(stop_timer_.get(), SD_EVENT_ONESHOT);
}

int Manager::on_stop_timeout(sd_event_source*, uint64_t, void* userdata) noexcept {
    auto self = static_cast<Manager*>(userdata);
    spdlog::warn("stop_timeout reached: cancelling {} running job(s)", self->scheduler_.running());
    for (auto& [id, job] : self->jobs_)
        self->executor_->cancel(id);
    return 0;
}

void Manager::stop_loopers() {
    sd_event_source_set_enabled(stop_timer_.get(), SD_EVENT_OFF);
    if (loopers_.empty() && retiring_.empty()) {
        sd_event_exit(event_.get(), exit_status_);
        return;
    }
    // Copy: stop() may report back synchronously.
    std::vector<Looper*> all;
    for (auto& [name, l] : loopers_)
        all.push_back(l.get());
    for (auto* l : all)
        l->stop();
}

void Manager::looper_stopped(Looper&) {
    sd_event_source_set_enabled(reaper_.get(), SD_EVENT_ONESHOT);
    check_loopers_failed();
    status_changed();
}

bool Manager::all_loopers_failed() const {
    if (loopers_.empty()) return false;
    return std::all_of(loopers_.begin(), loopers_.end(),
                       [](auto& l) { return l.second->state() == LooperState::failed; });
}

// With every looper failed nothing comes in, yet the process looks alive: the state, STATUS=
// and an error say so, and after exit_without_loopers loopabull exits with status 1, so that a
// Type=simple unit (the original's) and Restart= see the failure as well as Type=notify ones.
void Manager::check_loopers_failed() {
    if (stopping_) return;
    bool failed = all_loopers_failed();
    if (failed == loopers_failed_) return;
    loopers_failed_ = failed;
    if (!failed) {
        sd_event_source_set_enabled(no_looper_timer_.get(), SD_EVENT_OFF);
        spdlog::info("a looper runs again");
        return;
    }
    auto& after = config_.exit_without_loopers;
    if (after) {
        spdlog::error("every looper has failed: no events come in; loopabull exits in {} s "
                      "unless a reload starts them again (exit_without_loopers)",
                      after->count() / 1000000.0);
        sd_event_source_set_time_relative(no_looper_timer_.get(),
                                          static_cast<uint64_t>(after->count()));
        sd_event_source_set_enabled(no_looper_timer_.get(), SD_EVENT_ONESHOT);
    } else {
        spdlog::error("every looper has failed: no events come in until a reload starts them "
                      "again");
    }
}

int Manager::on_no_looper_timeout(sd_event_source*, uint64_t, void* userdata) noexcept {
    auto self = static_cast<Manager*>(userdata);
    if (!self->all_loopers_failed()) return 0;
    spdlog::critical("every looper has been failed for exit_without_loopers: exiting with "
                     "status 1");
    self->exit_status_ = 1;
    try {
        self->begin_stop();
    } catch (const std::exception& e) {
        spdlog::critical("{}", e.what());
        return sd_event_exit(self->event_.get(), 1);
    }
    return 0;
}

// Stopped loopers are freed here, outside their own callbacks.
int Manager::on_reap(sd_event_source*, void* userdata) noexcept {
    auto self = static_cast<Manager*>(userdata);
    std::erase_if(self->retiring_, [](auto& l) { return l->state() == LooperState::stopped; });
    if (!self->stopping_ || self->scheduler_.running() > 0 || !self->retiring_.empty()) return 0;
    for (auto& [name, l] : self->loopers_)
        if (l->state() != LooperState::stopped && l->state() != LooperState::failed) return 0;
    spdlog::info("stopped");
    return sd_event_exit(self->event_.get(), self->exit_status_);
}

void Manager::looper_line(Looper& looper, const LineReader::Line& line) {
    ++counters_.events_received;
    looper.count_event();
    if (line.overlong) {
        reject(looper, std::nullopt,
               "line longer than max_line_length (" +
                   std::to_string(looper.config().max_line_length) +
                   " bytes); discarded up to the next newline");
        return;
    }
    auto parsed = parse_event(line.text);
    if (auto* r = std::get_if<Rejection>(&parsed))
        reject(looper, r->id, r->reason);
    else
        route(looper, std::move(std::get<Event>(parsed)));
}

void Manager::flush_rate_limits() {
    if (auto n = rejected_log_.flush())
        spdlog::warn("suppressed {} similar messages (rejected events) in the last seconds", n);
    if (auto n = unrouted_log_.flush())
        spdlog::warn("suppressed {} similar messages (unrouted events) in the last seconds", n);
    if (auto n = throttled_log_.flush())
        spdlog::warn("suppressed {} similar messages (throttled events) in the last seconds", n);
    if (auto n = duplicate_log_.flush())
        spdlog::info("suppressed {} similar messages (duplicate events) in the last seconds", n);
    if (auto n = refused_log_.flush())
        spdlog::warn("suppressed {} similar messages (refused D-Bus calls) in the last seconds", n);
}

void Manager::reject(Looper& looper, const std::optional<json>& id, const std::string& reason) {
    ++counters_.events_rejected;
    // A looper relays what anyone sends it: these lines are the outsiders', limited and escaped.
    if (log::may_log(rejected_log_, "rejected events"))
        spdlog::warn("looper {}: rejected an event: {}{}", looper.name(), loggable(reason),
                     id ? "" : " (no readable id, so no answer)");
    ledger_event(looper, id, {}, Result::rejected, reason);
    answer(looper.name(), looper.generation(), id, Result::rejected, std::nullopt, reason);
}

template <class Reason>
void Manager::ledger_unrouted(const Looper& looper, const std::optional<json>& id,
                              const std::string& key, const Reason& reason) {
    if (ledger_ && ledger_->count_unrouted())
        ledger_event(looper, id, key, Result::unrouted, reason());
}

void Manager::route(Looper& looper, Event ev) {
    log::Fields f{.looper = looper.name(), .routing_key = ev.routing_key};
    log::Scope scope(f);
    metrics_.key_seen(ev.routing_key, static_cast<double>(now_realtime_usec() / 1000000));
    std::string dedup_key;
    if (deduplicate(looper, ev, dedup_key)) return status_changed();
    auto d =
        dispatch(config_, ev.routing_key, looper.name(), ev.body, [this](const std::string& rel) {
            return find_playbook_at(playbooks_dirfd_.get(), config_.ansible.playbooks_dir, rel);
        });
    using V = Dispatch::Verdict;
    switch (d.verdict) {
    case V::run:
        break;
    case V::not_selected:
        ++counters_.events_unrouted;
        spdlog::debug("{}: not selected by routing_keys", ev.routing_key);
        ledger_unrouted(looper, ev.id, ev.routing_key,
                        [] { return "not selected by routing_keys"; });
        return answer(looper.name(), looper.generation(), ev.id, Result::unrouted, std::nullopt);
    case V::no_route:
    case V::no_playbook:
        ++counters_.events_unrouted;
        // Anyone who can send events can send keys without a playbook: limited too. The reason
        // (for no_route, naming the closest route) is written only for a line that is logged.
        if (spdlog::should_log(spdlog::level::info) &&
            log::may_log(unrouted_log_, "unrouted events"))
            spdlog::info("{}: {}; unrouted", ev.routing_key,
                         loggable(d.reason(ev.routing_key, looper.name())));
        ledger_unrouted(looper, ev.id, ev.routing_key,
                        [&] { return d.reason(ev.routing_key, looper.name()); });
        return answer(looper.name(), looper.generation(), ev.id, Result::unrouted, std::nullopt);
    case V::lookup_failed: {
        // Our environment's fault (playbooks_dir unreadable, say), not the event's: retryable.
        ++counters_.jobs_failed;
        auto reason = d.reason(ev.routing_key, looper.name());
        spdlog::error("{}: {}", ev.routing_key, reason);
        return answer(looper.name(), looper.generation(), ev.id, Result::failed, std::nullopt,
                      reason);
    }
    case V::not_allowed:
    case V::bad_body: {
        ++counters_.events_rejected;
        auto reason = d.reason(ev.routing_key, looper.name());
        if (log::may_log(rejected_log_, "rejected events"))
            spdlog::warn("looper {}: rejected an event: {}", looper.name(), loggable(reason));
        ledger_event(looper, ev.id, ev.routing_key, Result::rejected, reason);
        return answer(looper.name(), looper.generation(), ev.id, Result::rejected, std::nullopt,
                      reason);
    }
    case V::bad_playbook:
        ++counters_.events_rejected;
        spdlog::error("{}: refusing playbook {}: {}", ev.routing_key, d.playbook.path,
                      d.playbook.detail);
        ledger_event(looper, ev.id, ev.routing_key, Result::rejected,
                     d.reason(ev.routing_key, looper.name()));
        return answer(looper.name(), looper.generation(), ev.id, Result::rejected, std::nullopt,
                      "playbook " + d.playbook.detail);
    }
    if (!admit_throttled(d, ev.routing_key)) {
        answer(looper.name(), looper.generation(), ev.id, Result::throttled, std::nullopt);
        return status_changed();
    }
    Job job;
    job.routing_key = std::move(ev.routing_key);
    job.body = std::move(ev.body);
    job.event_id = std::move(ev.id);
    job.looper = looper.name();
    job.generation = looper.generation();
    job.dedup_key = std::move(dedup_key);
    enqueue(std::move(job), d);
}

bool Manager::admit_throttled(const Dispatch& d, const std::string& routing_key) {
    const Route* r = d.choice.route;
    if (!d.throttle_key ||
        throttler_.admit(*d.throttle_key, now_monotonic_usec(),
                         static_cast<std::uint64_t>(r->throttle->once_within.count())))
        return true;
    ++counters_.events_throttled;
    // A throttled key is a chatty one by definition: its lines are limited like unrouted ones.
    if (spdlog::should_log(spdlog::level::info) && log::may_log(throttled_log_, "throttled events"))
        spdlog::info("{}: throttled by route '{}' ({} = {} ran within {}s)", routing_key, r->name,
                     r->throttle->per.text(), display_value(d.throttle_value),
                     r->throttle->once_within.count() / 1000000);
    return false;
}

JobId Manager::enqueue(Job job, Dispatch& d) {
    const Route* r = d.choice.route;
    job.id = next_job_++;
    job.playbook = std::move(d.playbook.path);
    if (r) {
        job.route = r->name;
        if (d.serial) job.serial_value = display_value(d.serial_value);
    }
    spdlog::debug("job {} queued: {} -> {}", job.id, job.routing_key, job.playbook);
    job.queued_usec = now_realtime_usec();
    JobId id = job.id;
    auto& stored = jobs_.emplace(id, std::move(job)).first->second;
    dedup_started(stored);
    if (observer_) observer_->job_new(info(stored));
    if (d.serial) {
        if (auto replaced = scheduler_.enqueue(id, std::move(*d.serial), r->coalesce))
            complete(*replaced, {Result::superseded, std::nullopt, {}, {}}, id);
    } else {
        scheduler_.enqueue(id);
    }
    start_jobs();
    update_intake();
    status_changed();
    return id;
}

Explanation Manager::explain(const std::string& routing_key, const std::string& looper,
                             const json& body) const {
    LiveState live{&scheduler_, &throttler_, now_monotonic_usec(), options_.instance};
    return loopabull::explain(
        config_, routing_key, looper, body,
        [this](const std::string& rel) {
            return find_playbook_at(playbooks_dirfd_.get(), config_.ansible.playbooks_dir, rel);
        },
        &live);
}

void Manager::answer(const std::string& looper, std::uint64_t generation,
                     const std::optional<json>& id, Result result, std::optional<int> exit_code,
                     std::string_view error, std::optional<JobId> duplicate_of) {
    metrics_.event(looper, result); // every event ends here once, with its final result
    if (!id) return;
    auto it = loopers_.find(looper);
    if (it == loopers_.end()) return;
    it->second->answer(generation, format_answer(*id, result, exit_code, error, duplicate_of));
}

void Manager::start_jobs() {
    if (stopping_) return;
    if (scheduler_.queued() > 0) retry_scopes();
    while (auto id = scheduler_.next()) {
        auto& job = jobs_.at(*id);
        job.admitted = true;
        if (auto err = launch(job)) complete(*id, {Result::failed, std::nullopt, *err, {}});
    }
}

std::optional<std::string> Manager::write_vars(Job& job) {
    // The variables are built in one place (core/job-vars), which explain shows as well.
    std::string text = job_vars_text(
        job.body,
        {job.routing_key, std::to_string(job.id), options_.instance, job.looper, job.event_id,
         job.route, job.replay_of ? std::to_string(*job.replay_of) : ""},
        config_.ansible.trusted_payloads, config_.ansible.event_variable);
    std::string path = vars_dir_ + "/job-" + std::to_string(job.id) + ".yml";
    UniqueFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!fd) return "cannot create vars file " + path + ": " + std::strerror(errno);
    job.vars_path = path;
    std::size_t done = 0;
    while (done < text.size()) {
        ssize_t n = write(fd.get(), text.data() + done, text.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0)
            return "cannot write vars file " + path + ": " + std::strerror(n < 0 ? errno : ENOSPC);
        done += static_cast<std::size_t>(n);
    }
    if (close(fd.release()) < 0)
        return "cannot write vars file " + path + ": " + std::strerror(errno);
    return std::nullopt;
}

JobSpec Manager::job_spec(const Job& job) const {
    JobSpec spec;
    spec.id = job.id;
    spec.routing_key = job.routing_key;
    spec.argv = config_.ansible.playbook_cmd;
    spec.argv.push_back(job.playbook);
    if (config_.ansible.inventory) {
        spec.argv.push_back("-i");
        spec.argv.push_back(*config_.ansible.inventory);
    }
    spec.argv.push_back("-e");
    spec.argv.push_back("@" + job.vars_path);
    spec.env = job_env_;
    spec.timeout = config_.executor.timeout;
    spec.kill_grace = config_.executor.kill_grace;
    spec.sandbox = &sandbox_;
    return spec;
}

std::optional<std::string> Manager::launch(Job& job) {
    // Fields holds views: the id's text must outlive the scope (clang's -Wdangling-gsl).
    const std::string job_id = std::to_string(job.id);
    log::Fields f{.looper = job.looper, .job = job_id, .routing_key = job.routing_key};
    log::Scope scope(f);
    if (auto err = write_vars(job)) return err;
    if (ledger_) job.playbook_sha256 = sha256_file(job.playbook);
    job.started_usec = now_realtime_usec();
    if (auto err = executor_->start(job_spec(job))) return err;
    f.message_id = log::kJobStarted; // this line only: catalog/loopabull.catalog explains it
    spdlog::info("job {} started: {} (playbook {})", job.id, job.routing_key, job.playbook);
    return std::nullopt;
}

void Manager::complete(JobId id, const Outcome& given, std::optional<JobId> superseded_by) {
    auto node = jobs_.extract(id);
    if (node.empty()) return;
    Job& job = node.mapped();
    Outcome outcome = given;
    if (!job.aborted_by.empty() && outcome.result == Result::cancelled) {
        outcome.result = Result::aborted;
        outcome.error = "cancelled by " + job.aborted_by;
    }
    // Named in the answer's reason, GetJob's error and the ledger: once the job has left the
    // in-memory history, the ledger is what says which job replaced it.
    if (superseded_by)
        outcome.error = "superseded by job " + std::to_string(*superseded_by) + " (route '" +
                        job.route + "', value " + job.serial_value + ")";
    if (!job.vars_path.empty() && unlink(job.vars_path.c_str()) < 0)
        spdlog::error("job {}: cannot remove vars file {}: {}", id, job.vars_path,
                      std::strerror(errno));
    std::string name = std::to_string(id);
    log::Fields f{.looper = job.looper, .job = name, .routing_key = job.routing_key};
    log::Scope scope(f);
    // The end message below has a catalog entry; the lines after it are not that message.
    f.result = to_string(outcome.result);
    f.message_id = log::kJobEnded;
    if (outcome.result == Result::succeeded)
        ++counters_.jobs_succeeded;
    else if (outcome.result == Result::superseded)
        ++counters_.events_superseded;
    else
        ++counters_.jobs_failed;
    if (superseded_by)
        spdlog::info("job {} ({}) superseded by job {} (route '{}', value {})", id, job.routing_key,
                     *superseded_by, job.route, job.serial_value);
    else if (outcome.result == Result::succeeded || outcome.result == Result::cancelled ||
             outcome.result == Result::aborted)
        spdlog::info("job {} ({}) {}", id, job.routing_key, result_message(outcome));
    else
        spdlog::error("job {} ({}) {}", id, job.routing_key, result_message(outcome));
    f.message_id = {};
    if (job.admitted) scheduler_.finished(id);
    auto done = info(job);
    done.state = "finished";
    done.finished_usec = now_realtime_usec();
    done.result = outcome.result;
    done.exit_code = outcome.exit_code;
    done.unit = outcome.unit;
    done.error = error_text(outcome);
    done.superseded_by = superseded_by;
    metrics_.job_done(job.routing_key, job.route, outcome.result,
                      job.started_usec
                          ? static_cast<double>(done.finished_usec - job.started_usec) / 1e6
                          : -1.0); // never started: no duration
    remember(done);
    if (ledger_ && ledger_->stores_bodies())
        ledger_->record_body(id, job.replay_of, dump_exact_json(job.body));
    if (ledger_)
        ledger_->record({.job_id = id,
                         .event_id = job.event_id ? job.event_id->dump() : std::string(),
                         .looper = job.looper,
                         .routing_key = job.routing_key,
                         .route = job.route,
                         .playbook = job.playbook,
                         .playbook_sha256 = job.playbook_sha256,
                         .user = ledger_->user(),
                         .queued_usec = job.queued_usec,
                         .started_usec = job.started_usec,
                         .finished_usec = done.finished_usec,
                         .result = std::string(to_string(outcome.result)),
                         .exit_code = outcome.exit_code,
                         .unit = outcome.unit,
                         .error = done.error,
                         .dedup_key = job.dedup_key});
    dedup_finishing(job, outcome.result);
    // A timeout's text ("timed out after 30min") is for the log and GetJob: the answer's
    // result already says it, and the protocol carries an error only for other results.
    // A replay answers nobody: its event was settled when it first ran.
    if (!job.replay_of)
        answer(job.looper, job.generation, job.event_id, outcome.result, outcome.exit_code,
               outcome.result == Result::timeout ? std::string() : outcome.error);
    dedup_finished(job, outcome);
    if (observer_) observer_->job_removed(done);
    status_changed();
}

JobInfo Manager::info(const Job& job) const {
    JobInfo i;
    i.id = job.id;
    i.routing_key = job.routing_key;
    i.state = job.admitted ? "running" : "queued";
    i.unit = executor_ ? executor_->unit(job.id) : std::string();
    i.looper = job.looper;
    i.queued_usec = job.queued_usec;
    i.started_usec = job.started_usec;
    i.route = job.route;
    i.serial_value = job.serial_value;
    return i;
}

void Manager::remember(JobInfo finished) {
    history_.push_back(std::move(finished));
    if (history_.size() > kHistory) history_.pop_front();
}

void Manager::ledger_event(const Looper& looper, const std::optional<json>& id,
                           const std::string& key, Result result, const std::string& reason) {
    if (!ledger_) return;
    auto now = now_realtime_usec();
    LedgerRecord r{.event_id = id ? id->dump() : std::string(),
                   .looper = looper.name(),
                   .routing_key = key,
                   .user = ledger_->user(),
                   .queued_usec = now,
                   .finished_usec = now,
                   .result = std::string(to_string(result)),
                   .error = reason};
    ledger_->record(std::move(r));
}

ManagerState Manager::state() const noexcept {
    if (stopping_) return ManagerState::stopping;
    if (!started_) return ManagerState::starting;
    if (loopers_failed_) return ManagerState::failed;
    return paused_ ? ManagerState::paused : ManagerState::running;
}

std::string Manager::metrics_text() const {
    MetricsSnapshot s;
    s.queue_length = scheduler_.queued();
    s.jobs_running = scheduler_.running();
    for (auto& [name, l] : loopers_)
        s.loopers.push_back({name, l->restarts()});
    if (ledger_) {
        auto& st = ledger_->stats();
        s.ledger = true;
        s.ledger_written = st.written;
        s.ledger_dropped = st.dropped;
        s.ledger_errors = st.errors;
        s.ledger_rotations = st.rotations;
    }
    return metrics_.render(s);
}

std::vector<LooperInfo> Manager::loopers() const {
    std::vector<LooperInfo> out;
    for (auto& [name, l] : loopers_)
        out.push_back(
            {name, std::string(to_string(l->state())), l->pid(), l->restarts(), l->events()});
    return out;
}

std::vector<JobInfo> Manager::jobs() const {
    std::vector<JobInfo> out;
    for (auto& [id, job] : jobs_)
        out.push_back(info(job));
    std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.id < b.id; });
    return out;
}

std::optional<JobInfo> Manager::job(JobId id) const {
    if (auto it = jobs_.find(id); it != jobs_.end()) return info(it->second);
    for (auto it = history_.rbegin(); it != history_.rend(); ++it)
        if (it->id == id) return *it;
    return std::nullopt;
}

bool Manager::cancel_job(JobId id, std::string_view by) {
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return false;
    it->second.aborted_by = std::string(by);
    spdlog::info("job {} ({}): cancel requested by {}", id, it->second.routing_key,
                 it->second.aborted_by);
    if (it->second.admitted) return executor_->cancel(id);
    scheduler_.remove_queued(id);
    complete(id, {Result::cancelled, std::nullopt, {}, {}});
    update_intake();
    return true;
}

namespace {

std::string body_refusal(JobId id, const StoredBody& b, const HistoryConfig& h) {
    using S = StoredBody::Status;
    auto job = "job " + std::to_string(id);
    switch (b.status) {
    case S::no_job:
        return "no " + job + " in the history";
    case S::pruned:
        return job + " is no longer in the history (removed by retention: history.max_age, "
                     "history.max_jobs)";
    case S::too_large:
        return "the body of " + job + " was not stored: its " + std::to_string(b.size) +
               " bytes are over history.max_body_size (" + std::to_string(h.max_body_size) + ")";
    case S::not_stored:
        return h.store_bodies ? "the body of " + job +
                                    " was not stored (history.store_bodies was false when it ran)"
                              : "event bodies are not stored (history.store_bodies is false)";
    case S::stored:
        break;
    }
    return {};
}

} // namespace

std::variant<StoredBody, ReplayRefusal> Manager::stored_body(JobId id) {
    using W = ReplayRefusal::Why;
    if (!ledger_)
        return ReplayRefusal{W::history_off,
                             "instance " + options_.instance + " keeps no history, so no bodies"};
    if (!ledger_->stores_bodies())
        return ReplayRefusal{W::no_body,
                             "event bodies are not stored (history.store_bodies is false)"};
    if (jobs_.count(id))
        return ReplayRefusal{W::not_finished, "job " + std::to_string(id) +
                                                  " has not finished: its body is recorded "
                                                  "when it ends"};
    auto b = ledger_->body(id);
    using S = StoredBody::Status;
    if (b.status == S::stored) return b;
    auto why = b.status == S::no_job || b.status == S::pruned ? W::no_job : W::no_body;
    return ReplayRefusal{why, body_refusal(id, b, config_.history)};
}

std::variant<std::string, ReplayRefusal> Manager::job_body(JobId id) {
    auto found = stored_body(id);
    if (auto* refused = std::get_if<ReplayRefusal>(&found)) return std::move(*refused);
    return std::move(std::get<StoredBody>(found).body);
}

std::variant<JobId, ReplayRefusal> Manager::replay_job(JobId of, std::string_view by) {
    using W = ReplayRefusal::Why;
    if (stopping_)
        return ReplayRefusal{W::stopping, "instance " + options_.instance + " is stopping"};
    auto found = stored_body(of);
    if (auto* refused = std::get_if<ReplayRefusal>(&found)) return std::move(*refused);
    auto& record = std::get<StoredBody>(found);
    auto parsed = parse_exact_json(record.body, nullptr);
    json body = parsed ? std::move(*parsed) : json();
    if (!body.is_object())
        return ReplayRefusal{W::no_body, "the stored body of job " + std::to_string(of) +
                                             " is not a JSON object"};
    auto of_text = std::to_string(of);
    log::Fields f{.looper = record.looper, .routing_key = record.routing_key};
    log::Scope scope(f);
    if (scheduler_.full())
        return ReplayRefusal{W::not_run, "the queue is full (executor.queue_size); try again"};
    auto d =
        dispatch(config_, record.routing_key, record.looper, body, [this](const std::string& rel) {
            return find_playbook_at(playbooks_dirfd_.get(), config_.ansible.playbooks_dir, rel);
        });
    if (!d.runs())
        return ReplayRefusal{W::not_run, "today's routing does not run job " + of_text +
                                             "'s event (" + std::string(to_string(d.result)) +
                                             "): " + d.reason(record.routing_key, record.looper)};
    if (!admit_throttled(d, record.routing_key))
        return ReplayRefusal{W::not_run, "throttled by route '" + d.route_name() +
                                             "': its value ran within the route's once_within"};
    Job job;
    job.routing_key = record.routing_key;
    job.body = std::move(body);
    if (!record.event_id.empty()) {
        auto id = json::parse(record.event_id, nullptr, false);
        if (!id.is_discarded()) job.event_id = std::move(id);
    }
    job.looper = record.looper;
    job.replay_of = of;
    JobId id = next_job_; // enqueue() takes it
    spdlog::info("job {} ({}) queued: a replay of job {}, asked by {}", id, job.routing_key, of,
                 by);
    return enqueue(std::move(job), d);
}

void Manager::pause() {
    if (paused_ || stopping_) return;
    paused_ = true;
    spdlog::info("paused: no new events are taken; {} running job(s) go on", scheduler_.running());
    update_intake();
    status_changed();
}

void Manager::resume() {
    if (!paused_) return;
    paused_ = false;
    spdlog::info("resumed: taking events again");
    update_intake();
    status_changed();
}

void Manager::job_finished(JobId id, const Outcome& outcome) {
    complete(id, outcome);
    start_jobs();
    update_intake();
    if (stopping_ && scheduler_.running() == 0) stop_loopers();
}

// Back-pressure: loopers are read only while the queue has room.
void Manager::update_intake() {
    bool open = !stopping_ && !paused_ && !scheduler_.full();
    if (open == intake_open_) return;
    intake_open_ = open;
    if (!open && !stopping_)
        spdlog::debug("queue full ({} events): pausing loopers", scheduler_.queued());
    for (auto& [name, l] : loopers_)
        open ? l->resume() : l->pause();
}

void Manager::status_changed() {
    if (observer_) observer_->properties_changed();
    if (!notify_ || status_dirty_) return;
    status_dirty_ = true;
    sd_event_source_set_time_relative(status_timer_.get(), kStatusInterval.count() * 1000000ULL);
    sd_event_source_set_enabled(status_timer_.get(), SD_EVENT_ONESHOT);
}

int Manager::on_status_timer(sd_event_source*, uint64_t, void* userdata) noexcept {
    static_cast<Manager*>(userdata)->send_status();
    return 0;
}

void Manager::send_status() {
    status_dirty_ = false;
    auto status =
        fmt::format("STATUS={}: {} running, {} queued, {} succeeded, {} failed, {} rejected{}{}",
                    to_string(state()), scheduler_.running(), scheduler_.queued(),
                    counters_.jobs_succeeded, counters_.jobs_failed, counters_.events_rejected,
                    scope_error_.empty() ? "" : "; ", scope_error_);
    if (state() == ManagerState::failed)
        status = "STATUS=failed: every looper has failed, no events come in (" +
                 status.substr(std::string_view("STATUS=failed: ").size()) + ")";
    sd_notify(0, status.c_str());
}

} // namespace loopabull
