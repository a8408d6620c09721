// SPDX-License-Identifier: GPL-3.0-or-later
// The current dialect of the configuration (loopabull.yml(5)), and the sections of it that the
// legacy dialects read too.
#include "core/config-reader.hpp"
#include "core/event-names.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <map>
#include <sstream>

namespace loopabull::config_detail {

std::string bundled_list(const std::string& dir) {
    auto names = bundled_loopers(dir);
    if (names.empty()) return "none are installed in " + dir;
    std::string out;
    for (auto& n : names)
        out += (out.empty() ? "" : ", ") + n;
    return out;
}

// The directories a bare command name is looked up in: PATH, or the usual ones without it.
std::string search_path() {
    const char* env = std::getenv("PATH");
    return env ? env : "/usr/local/bin:/usr/bin:/bin";
}

// A bare command name is looked up in PATH once, at load, so that a missing program is a
// configuration error rather than a failure at every start.
std::optional<std::string> find_in_path(const std::string& name) {
    std::stringstream ss(search_path());
    for (std::string dir; std::getline(ss, dir, ':');)
        if (!dir.empty() && executable_file(dir + "/" + name)) return dir + "/" + name;
    return std::nullopt;
}

// The first word of a looper command, found as systemd finds ExecStart='s program (a bare
// name in the search path, systemd.service(5)), except that the bundled loopers come first:
// a name with a '/' is a path (relative to the configuration's directory); a bare name is the
// bundled looper of that name if there is one, else the program of that name in PATH.
void resolve_looper_command(Reader& r, const YAML::Node& at, LooperConfig& lc) {
    auto& prog = lc.command.front();
    lc.command_as_written = prog;
    if (prog.find('/') != std::string::npos) {
        lc.origin = LooperOrigin::path;
        prog = r.path(prog);
        if (r.options().check_files && !executable_file(prog))
            r.error(at, "looper command '" + prog + "' is not an executable file");
        return;
    }
    auto bundled = r.options().looper_dir + "/" + prog;
    if (!r.options().check_files || executable_file(bundled)) {
        lc.origin = LooperOrigin::bundled;
        prog = bundled;
        return;
    }
    if (auto found = find_in_path(prog)) {
        lc.origin = LooperOrigin::path_lookup;
        prog = *found;
        return;
    }
    r.error(at, "unknown looper '" + prog + "': not a bundled looper (bundled loopers: " +
                    bundled_list(r.options().looper_dir) + ") and not found in PATH (" +
                    search_path() + ")");
}

const std::vector<std::string_view> kLooperKeys = {
    "name",          "command",         "config",       "restart_delay", "restart_delay_max",
    "restart_limit", "max_line_length", "routing_keys", "dedup"};

bool valid_looper_name(const std::string& n) {
    return !n.empty() && n.size() <= 64 && std::all_of(n.begin(), n.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
    });
}

std::optional<LooperConfig> read_looper(Reader& r, const YAML::Node& node) {
    if (!r.mapping(node, "a looper", kLooperKeys)) return std::nullopt;
    LooperConfig lc;
    if (!node["name"])
        r.error(node, "looper has no 'name'");
    else if (auto n = r.nonempty(node["name"], "name")) {
        if (!valid_looper_name(*n))
            r.error(node["name"],
                    "looper name '" + *n + "' must be 1-64 letters, digits, '_' or '-'");
        lc.name = *n;
    }
    if (!node["command"])
        r.error(node, "looper '" + lc.name + "' has no 'command'");
    else if (auto c = r.strings(node["command"], "command", true)) {
        lc.command = std::move(*c);
        resolve_looper_command(r, node["command"], lc);
    }
    if (auto c = node["config"]) {
        if (!c.IsMap() && !c.IsNull())
            r.error(c, "'config' must be a mapping");
        else if (c.IsMap())
            lc.config = r.to_json(c);
    }
    if (auto v = node["restart_delay"])
        lc.restart_delay = r.duration(v, "restart_delay").value_or(lc.restart_delay);
    if (auto v = node["restart_delay_max"])
        lc.restart_delay_max = r.duration(v, "restart_delay_max").value_or(lc.restart_delay_max);
    if (auto v = node["restart_limit"])
        lc.restart_limit = static_cast<unsigned>(
            r.integer(v, "restart_limit", 0, 1000000).value_or(lc.restart_limit));
    if (auto v = node["max_line_length"]) {
        auto n = r.size(v, "max_line_length");
        if (n && (*n < 64 || *n > (std::uint64_t(1) << 30)))
            r.error(v, "'max_line_length' must be between 64B and 1GiB");
        else if (n)
            lc.max_line_length = *n;
    }
    if (auto v = node["routing_keys"]) // issue 14: what this looper may send
        lc.routing_keys = parse_looper_allowlist(v, [&](const YAML::Node& at, std::string m) {
            r.error(at, std::move(m));
        });
    if (auto v = node["dedup"]) read_dedup(r, v, lc);
    if (lc.restart_delay.count() == 0) r.error(node, "'restart_delay' must be more than 0");
    if (lc.restart_delay_max < lc.restart_delay)
        r.error(node, "'restart_delay_max' must not be below 'restart_delay'");
    return lc;
}

void read_loopers(Reader& r, const YAML::Node& node, Config& c) {
    if (!node.IsSequence() || node.size() == 0) {
        r.error(node, "'loopers' must be a non-empty list");
        return;
    }
    std::set<std::string> names;
    for (auto item : node) {
        auto lc = read_looper(r, item);
        if (!lc) continue;
        if (!lc->name.empty() && !names.insert(lc->name).second)
            r.error(item["name"], "duplicate looper name '" + lc->name + "'");
        c.loopers.push_back(std::move(*lc));
    }
}

void read_routing_keys(Reader& r, const YAML::Node& node, Config& c) {
    auto keys = r.strings(node, "routing_keys", true);
    if (!keys) return;
    std::size_t i = 0;
    for (auto& k : *keys) {
        auto at = node.IsSequence() ? node[i] : node;
        if (auto err = routing_pattern_error(k))
            r.error(at, "invalid routing key pattern '" + k + "': " + *err);
        ++i;
    }
    c.routing_keys = std::move(*keys);
}

std::optional<Layout> parse_layout(const std::string& s) {
    if (s == "name" || s == "rkname") return Layout::name;
    if (s == "directory" || s == "rkdirectory") return Layout::directory;
    return std::nullopt;
}

void read_layout(Reader& r, const YAML::Node& node, std::string_view key, Config& c) {
    auto s = r.string(node, key);
    if (!s) return;
    if (auto l = parse_layout(*s))
        c.ansible.layout = *l;
    else
        r.error(node, "'" + std::string(key) +
                          "' must be name (rkname) or directory (rkdirectory), not '" + *s + "'");
}

bool is_directory(const std::string& p) {
    struct stat st {};
    return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void resolve_playbook_cmd(Reader& r, const YAML::Node& at, std::vector<std::string>& cmd) {
    auto& prog = cmd.front();
    if (prog.find('/') == std::string::npos) {
        auto found = find_in_path(prog);
        if (found)
            prog = *found;
        else if (r.options().check_files)
            r.error(at, "playbook_cmd '" + prog + "' is not found in PATH");
        return;
    }
    prog = r.path(prog);
    if (r.options().check_files && !executable_file(prog))
        r.error(at, "playbook_cmd '" + prog + "' is not an executable file");
}

void read_environment(Reader& r, const YAML::Node& node, Config& c) {
    if (!node.IsMap()) {
        r.error(node, "'environment' must be a mapping of variable names to strings");
        return;
    }
    for (auto it = node.begin(); it != node.end(); ++it) {
        auto name = it->first.Scalar();
        bool ok = !name.empty() && name.find('=') == std::string::npos &&
                  std::all_of(name.begin(), name.end(), [](char ch) {
                      return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_';
                  });
        if (!ok) r.error(it->first, "invalid environment variable name '" + name + "'");
        if (auto v = r.string(it->second, name)) c.ansible.environment.emplace_back(name, *v);
    }
}

const std::vector<std::string_view> kAnsibleKeys = {
    "playbooks_dir", "layout",           "playbook_cmd", "cfg_file_path",
    "inventory",     "trusted_payloads", "environment",  "event_variable"};

void check_file(Reader& r, const YAML::Node& at, const std::string& p, std::string_view key) {
    if (r.options().check_files && access(p.c_str(), R_OK) != 0)
        r.error(at, "'" + std::string(key) + "' " + p + ": " + std::strerror(errno));
}

void read_playbooks_dir(Reader& r, const YAML::Node& node, Config& c) {
    if (!node["playbooks_dir"]) {
        r.error(node, "'ansible' has no 'playbooks_dir'");
        return;
    }
    auto d = r.nonempty(node["playbooks_dir"], "playbooks_dir");
    if (!d) return;
    c.ansible.playbooks_dir = r.path(*d);
    if (r.options().check_files && !is_directory(c.ansible.playbooks_dir))
        r.error(node["playbooks_dir"],
                "playbooks_dir '" + c.ansible.playbooks_dir + "' is not a directory");
    // Playbooks are looked up by name in it, as the user loopabull runs as: without search
    // permission every event would fail (answered failed, not rejected: our fault, not the
    // event's); without read permission Ansible cannot list roles and includes beside them.
    else if (r.options().check_files && access(c.ansible.playbooks_dir.c_str(), R_OK | X_OK) != 0)
        r.error(node["playbooks_dir"], "playbooks_dir '" + c.ansible.playbooks_dir +
                                           "' is not readable by uid " + std::to_string(geteuid()) +
                                           ": " + std::strerror(errno));
}

void read_inventory(Reader& r, const YAML::Node& node, std::string_view key, Config& c) {
    auto inv = r.nonempty(node, key);
    if (!inv) return;
    // "host1,host2," is an inline inventory, not a path.
    if (inv->find(',') != std::string::npos) {
        c.ansible.inventory = *inv;
        return;
    }
    c.ansible.inventory = r.path(*inv);
    check_file(r, node, *c.ansible.inventory, key);
}

void read_cfg_file(Reader& r, const YAML::Node& node, Config& c) {
    if (auto p = r.nonempty(node, "cfg_file_path")) {
        c.ansible.cfg_file_path = r.path(*p);
        check_file(r, node, *c.ansible.cfg_file_path, "cfg_file_path");
    }
}

// The one variable that holds the body, or top-level (the original's form; loopabull.yml(5)).
void read_event_variable(Reader& r, const YAML::Node& node, Config& c) {
    auto name = r.string(node, "event_variable");
    if (!name) return;
    if (*name == "top-level")
        c.ansible.event_variable.reset();
    else if (auto err = event_variable_error(*name))
        r.error(node, "'event_variable': " + *err + " (or 'top-level')");
    else
        c.ansible.event_variable = *name;
}

void read_ansible(Reader& r, const YAML::Node& node, Config& c) {
    if (!r.mapping(node, "'ansible'", kAnsibleKeys)) return;
    read_playbooks_dir(r, node, c);
    if (auto v = node["layout"]) read_layout(r, v, "layout", c);
    if (auto v = node["playbook_cmd"]) {
        if (auto cmd = r.strings(v, "playbook_cmd", true)) {
            c.ansible.playbook_cmd = std::move(*cmd);
            resolve_playbook_cmd(r, v, c.ansible.playbook_cmd);
        }
    } else {
        resolve_playbook_cmd(r, node, c.ansible.playbook_cmd);
    }
    if (auto v = node["cfg_file_path"]) read_cfg_file(r, v, c);
    if (auto v = node["inventory"]) read_inventory(r, v, "inventory", c);
    if (auto v = node["trusted_payloads"])
        c.ansible.trusted_payloads = r.boolean(v, "trusted_payloads").value_or(false);
    if (auto v = node["environment"]) read_environment(r, v, c);
    if (auto v = node["event_variable"]) read_event_variable(r, v, c);
}

// clang-format off
const std::vector<std::string_view> kExecutorKeys = {
    "type",         "max_parallel", "queue_size", "timeout",      "kill_grace",
    "stop_timeout", "seccomp",      "allow_root", "limit_nofile", "manager",
    "slice",        "memory_max",   "tasks_max",  "cpu_quota",    "on_scope_failure",
    "warm",         "warm_max_jobs", "warm_max_age", "restrict_namespaces"};
// clang-format on

// "infinity" lifts a limit; anything else goes through the strict grammar of its kind.
template <typename F>
void read_limit(const YAML::Node& node, std::optional<std::uint64_t>& field, F parse) {
    if (node.IsScalar() && node.Scalar() == "infinity") {
        field.reset();
        return;
    }
    if (auto v = parse()) field = *v;
}

std::optional<std::uint64_t> parse_percent(Reader& r, const YAML::Node& node,
                                           std::string_view key) {
    auto s = r.string(node, key);
    if (!s) return std::nullopt;
    std::uint64_t n = 0;
    auto [end, ec] = std::from_chars(s->data(), s->data() + s->size(), n);
    if (ec != std::errc() || std::string_view(end) != "%" || n == 0 || n > 100000) {
        r.error(node, "'" + std::string(key) +
                          "' must be a percentage such as 50% or 200% "
                          "(of one CPU), or infinity, not '" +
                          *s + "'");
        return std::nullopt;
    }
    return n * 10000; // CPUQuotaPerSecUSec: 100% is one second of CPU time per second
}

void read_scope_keys(Reader& r, const YAML::Node& node, ExecutorConfig& e) {
    if (auto v = node["manager"]) {
        auto m = r.string(v, "manager");
        if (m && *m != "system" && *m != "user")
            r.error(v, "'manager' must be system or user, not '" + *m + "'");
        else if (m)
            e.user_manager = *m == "user";
    }
    if (auto v = node["slice"]) {
        auto sl = r.nonempty(v, "slice");
        if (sl && !sl->ends_with(".slice"))
            r.error(v, "'slice' must name a .slice unit, not '" + *sl + "'");
        else if (sl)
            e.slice = *sl;
    }
    if (auto v = node["memory_max"]) {
        read_limit(v, e.memory_max, [&] { return r.size(v, "memory_max"); });
        if (e.memory_max && *e.memory_max < (1u << 20))
            r.error(v, "'memory_max' must be at least 1MiB");
    }
    if (auto v = node["tasks_max"])
        read_limit(v, e.tasks_max, [&] { return r.integer(v, "tasks_max", 1, 4194304); });
    if (auto v = node["cpu_quota"])
        read_limit(v, e.cpu_quota_per_sec_usec, [&] { return parse_percent(r, v, "cpu_quota"); });
    if (auto v = node["on_scope_failure"]) {
        auto f = r.string(v, "on_scope_failure");
        if (f && *f != "fail" && *f != "direct")
            r.error(v, "'on_scope_failure' must be fail or direct, not '" + *f + "'");
        else if (f)
            e.fallback_direct = *f == "direct";
    }
}

void read_seccomp(Reader& r, const YAML::Node& node, ExecutorConfig& e) {
    auto s = r.nonempty(node, "seccomp");
    if (!s) return;
    e.seccomp = *s;
    if (*s == "off")
        e.seccomp_policy.reset();
    else if (*s == "default")
        e.seccomp_policy = default_seccomp_policy();
    else {
        e.seccomp = r.path(*s);
        if (auto p = load_seccomp_profile(e.seccomp, r.errors)) e.seccomp_policy = std::move(*p);
    }
}

void read_executor(Reader& r, const YAML::Node& node, Config& c) {
    if (!r.mapping(node, "'executor'", kExecutorKeys)) return;
    auto& e = c.executor;
    if (auto v = node["type"]) {
        auto t = r.string(v, "type");
        if (t && *t != "direct" && *t != "scope" && *t != "cgroup" && *t != "auto")
            r.error(v, "executor type must be auto, direct, cgroup or scope, not '" + *t + "'");
        else if (t)
            e.type = *t;
    }
    read_scope_keys(r, node, e);
    if (auto v = node["max_parallel"])
        e.max_parallel =
            static_cast<unsigned>(r.integer(v, "max_parallel", 1, 1024).value_or(e.max_parallel));
    if (auto v = node["queue_size"])
        e.queue_size = r.integer(v, "queue_size", 1, 1000000).value_or(e.queue_size);
    if (auto v = node["seccomp"]) read_seccomp(r, v, e);
    if (auto v = node["allow_root"]) e.allow_root = r.boolean(v, "allow_root").value_or(false);
    if (auto v = node["restrict_namespaces"])
        e.restrict_namespaces = r.boolean(v, "restrict_namespaces").value_or(true);
    if (auto v = node["limit_nofile"])
        e.limit_nofile = r.integer(v, "limit_nofile", 64, 1048576).value_or(e.limit_nofile);
    if (auto v = node["warm"]) e.warm = r.boolean(v, "warm").value_or(e.warm);
    if (auto v = node["warm_max_jobs"])
        e.warm_max_jobs = r.integer(v, "warm_max_jobs", 0, 1000000000).value_or(e.warm_max_jobs);
    if (auto v = node["warm_max_age"])
        if (auto d = r.duration(v, "warm_max_age")) e.warm_max_age = *d;
    for (auto [key, field] :
         {std::pair{"timeout", &e.timeout}, std::pair{"kill_grace", &e.kill_grace},
          std::pair{"stop_timeout", &e.stop_timeout}}) {
        if (auto v = node[key]) {
            auto d = r.duration(v, key);
            if (d && d->count() == 0)
                r.error(v, "'" + std::string(key) + "' must be more than 0");
            else if (d)
                *field = *d;
        }
    }
}

void read_loglevel(Reader& r, const YAML::Node& node, Config& c) {
    auto s = r.string(node, "loglevel");
    if (!s) return;
    if (auto l = parse_log_level(*s))
        c.loglevel = *l;
    else
        r.error(node, "'loglevel' must be debug, info, warning or error, not '" + *s + "'");
}

const std::vector<std::string_view> kTopKeys = {
    "loglevel", "routing_keys", "runtime_dir",          "loopers", "ansible",
    "executor", "routes",       "exit_without_loopers", "history", "metrics"};

// "off", or a duration above 0.
void read_exit_without_loopers(Reader& r, const YAML::Node& node, Config& c) {
    if (node.IsScalar() && node.Scalar() == "off") {
        c.exit_without_loopers.reset();
        return;
    }
    auto d = r.duration(node, "exit_without_loopers");
    if (d && d->count() == 0)
        r.error(node, "'exit_without_loopers' must be more than 0, or off");
    else if (d)
        c.exit_without_loopers = *d;
}

void read_current(Reader& r, const YAML::Node& root, Config& c) {
    c.dialect = "loopabull";
    r.mapping(root, "the configuration", kTopKeys);
    if (auto v = root["loglevel"]) read_loglevel(r, v, c);
    if (auto v = root["routing_keys"])
        read_routing_keys(r, v, c);
    else
        r.error(root, "missing 'routing_keys' (use [all] to route every key)");
    if (auto v = root["runtime_dir"]) {
        if (auto p = r.nonempty(v, "runtime_dir")) c.runtime_dir = r.path(*p);
    }
    if (auto v = root["loopers"])
        read_loopers(r, v, c);
    else
        r.error(root, "no 'loopers' configured: loopabull needs at least one looper");
    if (auto v = root["ansible"])
        read_ansible(r, v, c);
    else
        r.error(root, "missing the 'ansible' section (playbooks_dir at least)");
    if (auto v = root["executor"]) read_executor(r, v, c);
    if (auto v = root["routes"]) { // issue 14: parsed and checked in core/route.cpp
        auto sink = [&](const YAML::Node& at, std::string m) { r.error(at, std::move(m)); };
        c.routes = parse_routes(v, looper_names(c), sink);
        if (r.options().check_files) check_route_playbooks(v, c.ansible.playbooks_dir, sink);
    }
    if (auto v = root["exit_without_loopers"]) read_exit_without_loopers(r, v, c);
    if (auto v = root["history"]) read_history(r, v, c);
    check_dedup(r, root, c);
    if (auto v = root["metrics"]) read_metrics(r, v, c);
}

} // namespace loopabull::config_detail
