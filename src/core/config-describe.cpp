// SPDX-License-Identifier: GPL-3.0-or-later
#include "core/config-describe.hpp"

#include <utility>

namespace loopabull {

namespace {

using json = nlohmann::json;

json hide_passwords(json j) {
    if (j.is_object()) {
        for (auto& [key, value] : j.items()) {
            if (key.find("password") != std::string::npos && !value.is_null())
                value = "(hidden)";
            else
                value = hide_passwords(value);
        }
    } else if (j.is_array()) {
        for (auto& v : j)
            v = hide_passwords(v);
    }
    return j;
}

std::string seconds(usec d) {
    auto us = d.count();
    if (us % 1000000 == 0) return std::to_string(us / 1000000) + "s";
    return std::to_string(us / 1000) + "ms";
}

// A duration in its largest exact unit, as a configuration would write it ("90d", "1s", "50ms").
std::string span(usec d) {
    auto us = d.count();
    for (auto [unit, size] : {std::pair{"d", 86400000000LL},
                              {"h", 3600000000LL},
                              {"min", 60000000LL},
                              {"s", 1000000LL},
                              {"ms", 1000LL}})
        if (us != 0 && us % size == 0) return std::to_string(us / size) + unit;
    return std::to_string(us) + "us";
}

std::string limit(const std::optional<std::uint64_t>& v) {
    return v ? std::to_string(*v) : "infinity";
}

} // namespace

std::string describe_looper_program(const LooperConfig& l) {
    const std::string& first = l.command_as_written;
    std::string how = "a path";
    if (l.origin == LooperOrigin::bundled) how = "the bundled looper '" + first + "'";
    if (l.origin == LooperOrigin::path_lookup) how = "'" + first + "' found in PATH";
    return l.command.front() + " (" + how + ")";
}

std::string describe_config(const Config& c) {
    std::string out;
    auto line = [&](const std::string& key, const std::string& value) {
        out += key + ": " + value + "\n";
    };
    for (const auto& l : c.loopers) {
        line("looper " + l.name, describe_looper_program(l));
        if (l.command.size() > 1)
            line("looper " + l.name + " arguments",
                 json(std::vector<std::string>(l.command.begin() + 1, l.command.end())).dump());
        line("looper " + l.name + " config", hide_passwords(l.config).dump());
    }
    std::string keys;
    for (const auto& k : c.routing_keys)
        keys += (keys.empty() ? "" : ", ") + k;
    line("routing_keys", keys);
    line("playbooks_dir", c.ansible.playbooks_dir);
    line("layout", c.ansible.layout == Layout::directory ? "directory" : "name");
    line("playbook_cmd", json(c.ansible.playbook_cmd).dump());
    line("cfg_file_path", c.ansible.cfg_file_path.value_or("(none)"));
    line("inventory", c.ansible.inventory.value_or("(none)"));
    json env = json::object();
    for (const auto& [k, v] : c.ansible.environment)
        env[k] = v;
    line("environment", env.dump());
    line("trusted_payloads", c.ansible.trusted_payloads ? "true" : "false");
    const auto& e = c.executor;
    line("executor",
         e.type +
             (e.type == "scope" ? (e.user_manager ? " (user manager)" : " (system manager)") : ""));
    line("max_parallel", std::to_string(e.max_parallel));
    line("queue_size", std::to_string(e.queue_size));
    line("timeout", seconds(e.timeout));
    line("kill_grace", seconds(e.kill_grace));
    line("stop_timeout", seconds(e.stop_timeout));
    line("seccomp", e.seccomp);
    line("allow_root", e.allow_root ? "true" : "false");
    line("restrict_namespaces", e.restrict_namespaces ? "true" : "false");
    line("limit_nofile", std::to_string(e.limit_nofile));
    if (e.type == "scope") {
        line("slice", e.slice);
        line("memory_max", limit(e.memory_max));
        line("tasks_max", limit(e.tasks_max));
        line("cpu_quota_per_sec_usec", limit(e.cpu_quota_per_sec_usec));
    }
    const auto& h = c.history;
    if (!h.enabled)
        line("history", "off");
    else {
        // The default path is the service's state directory: known only where it runs.
        line("history", h.path.value_or("$STATE_DIRECTORY/history.sqlite (off where "
                                        "STATE_DIRECTORY is not set: StateDirectory=)"));
        line("history flush", "every " + span(h.flush_interval) + " or " +
                                  std::to_string(h.batch_size) + " records");
        line("history retention",
             span(h.max_age) + ", at most " + std::to_string(h.max_jobs) + " records");
        line("history record_unrouted", h.record_unrouted ? "true" : "false");
        line("history store_bodies",
             h.store_bodies ? "true, at most " + std::to_string(h.max_body_size) + " bytes each"
                            : "false");
    }
    const auto& m = c.metrics;
    line("metrics textfile", m.textfile.value_or("(none)"));
    if (m.textfile) line("metrics interval", span(m.interval));
    line("metrics max_keys", std::to_string(m.max_keys));
    return out;
}

} // namespace loopabull
