// SPDX-License-Identifier: GPL-3.0-or-later
// The configuration file: the current dialect and both dialects of the original loopabull.
// Every problem is collected with its position, so one run of --check-config lists them all.
#pragma once

#include "core/config-error.hpp"
#include "core/log-level.hpp"
#include "core/route.hpp"
#include "core/routing.hpp"
#include "core/sandbox.hpp"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace loopabull {

using usec = std::chrono::microseconds;

// How a looper's program was found (loopabull --check-config -v and the log say it).
enum class LooperOrigin {
    bundled,     // a bare name of a looper in the looper directory
    path_lookup, // a bare name found in PATH, as systemd's ExecStart= finds one
    path,        // a name with a '/': a path, relative ones against the config's directory
};

struct LooperConfig {
    std::string name;
    std::vector<std::string> command; // command[0] resolved to an absolute path
    std::string command_as_written;   // command[0] as the configuration gave it
    LooperOrigin origin = LooperOrigin::path;
    nlohmann::json config = nlohmann::json::object();
    usec restart_delay = std::chrono::seconds(1);
    usec restart_delay_max = std::chrono::minutes(1);
    unsigned restart_limit = 5;
    std::size_t max_line_length = 1 << 20;
    // The routing keys this looper may send (patterns as routing_keys); others are rejected.
    std::optional<std::vector<std::string>> routing_keys;
    // dedup: {window: W} (issue 17, added in 0.2): an event whose dedup id (the event's
    // "dedup_id", else its "id") already succeeded within W is answered `succeeded` with
    // "duplicate_of" instead of running again. Looked up in the ledger, so it needs history.
    std::optional<usec> dedup_window;

    bool operator==(const LooperConfig&) const = default;
};

struct AnsibleConfig {
    std::string playbooks_dir;
    Layout layout = Layout::name;
    std::vector<std::string> playbook_cmd{"/usr/bin/ansible-playbook"};
    std::optional<std::string> cfg_file_path;
    std::optional<std::string> inventory;
    bool trusted_payloads = false;
    // The one variable that holds the event body; nullopt: the top-level form (the legacy
    // dialects' default), where bodies with a key Ansible gives meaning to are rejected.
    std::optional<std::string> event_variable = "event";
    std::vector<std::pair<std::string, std::string>> environment;
};

struct ExecutorConfig {
    // direct | cgroup | scope | auto (cgroup when our cgroup is delegated to us, else direct)
    std::string type = "auto";
    // Scope executor: every job in a transient scope of the system or the user's manager.
    // memory_max, tasks_max and cpu_quota also limit the cgroup executor's job cgroups.
    bool user_manager = false;
    std::string slice = "loopabull.slice";
    std::optional<std::uint64_t> memory_max = std::uint64_t(2) << 30; // nullopt: infinity
    std::optional<std::uint64_t> tasks_max = 1024;
    std::optional<std::uint64_t> cpu_quota_per_sec_usec = 2000000; // 200%
    bool fallback_direct = false; // when a scope cannot be made: run unconfined, or fail
    unsigned max_parallel = 4;
    std::size_t queue_size = 1000;
    // Below RabbitMQ's default consumer_timeout (30 min): at equal values the broker takes a
    // long job's message back while it still runs, and the amqp looper warns at every start.
    usec timeout = std::chrono::minutes(25);
    usec kill_grace = std::chrono::seconds(10);
    usec stop_timeout = std::chrono::minutes(5);
    // Sandbox of every playbook run (both executors).
    std::string seccomp = "default"; // off | default | PATH of a profile
    std::optional<SeccompPolicy> seccomp_policy = default_seccomp_policy(); // nullopt: off
    bool allow_root = false;
    std::uint64_t limit_nofile = 4096;
    // No process loopabull starts may create or join a namespace (systemd's
    // RestrictNamespaces=yes, loaded by loopabull itself: supervisor/process.hpp). Read at start
    // only: a filter cannot be taken back.
    bool restrict_namespaces = true;
    // The warm runner (supervisor/warm.hpp): on unless turned off, used only when playbook_cmd
    // is ansible's own ansible-playbook; replaced after so many jobs (0: never) or so long.
    bool warm = true;
    std::uint64_t warm_max_jobs = 1000;
    usec warm_max_age = std::chrono::hours(1);
};

// The durable job ledger (issue 17; loopabull.yml(5) "history").
struct HistoryConfig {
    bool enabled = true;
    std::optional<std::string> path; // nullopt: $STATE_DIRECTORY/history.sqlite, else off
    usec flush_interval = std::chrono::seconds(1);
    std::size_t batch_size = 1000; // a batch this big is written at once, not at the timer
    usec max_age = std::chrono::hours(24 * 90);
    std::uint64_t max_jobs = 1000000;
    bool record_unrouted = false;
    // Event bodies (issue 17): kept beside their job's record for GetJobBody and ReplayJob only
    // when store_bodies is true; a body longer than max_body_size (bytes, as compact JSON) is
    // not kept, and its record says so (supervisor/ledger.hpp).
    bool store_bodies = false;
    std::uint64_t max_body_size = 64 * 1024;

    bool operator==(const HistoryConfig&) const = default;
};

// Metrics in the Prometheus text format (issue 17; loopabull.yml(5) "metrics",
// core/metrics.hpp). GetMetrics() answers whatever textfile says.
struct MetricsConfig {
    std::optional<std::string> textfile;      // nullopt: no file is written (the default)
    usec interval = std::chrono::seconds(15); // how often textfile is rewritten
    std::size_t max_keys = 100; // routing keys with series of their own; others: "other"

    bool operator==(const MetricsConfig&) const = default;
};

struct Config {
    std::string path;
    std::string dialect; // "loopabull", "legacy-readme" or "legacy-0.0.7"
    LogLevel loglevel = LogLevel::info;
    std::vector<std::string> routing_keys{"all"};
    std::optional<std::string> runtime_dir;
    std::vector<LooperConfig> loopers;
    std::vector<Route> routes; // empty: the routing key alone picks the playbook
    AnsibleConfig ansible;
    ExecutorConfig executor;
    HistoryConfig history;
    MetricsConfig metrics;
    // With every looper failed this long, loopabull exits with status 1; nullopt: never.
    std::optional<usec> exit_without_loopers = std::chrono::minutes(5);
};

struct LoadOptions {
    std::string looper_dir;  // where bundled loopers live
    bool check_files = true; // check that paths exist (off for fuzzing)
};

struct ConfigLoad {
    std::optional<Config> config;
    std::vector<ConfigError> errors;
};

ConfigLoad load_config(const std::string& path, const LoadOptions& options);
ConfigLoad parse_config(const std::string& text, const std::string& path,
                        const LoadOptions& options);

// Strict value grammars shared by every duration and size key.
std::optional<usec> parse_duration(std::string_view text, std::string* error);
std::optional<std::uint64_t> parse_size(std::string_view text, std::string* error);

// The bundled loopers present in dir, sorted.
std::vector<std::string> bundled_loopers(const std::string& dir);

} // namespace loopabull
