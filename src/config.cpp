// SPDX-License-Identifier: GPL-3.0-or-later
#include "loopabull/config.hpp"

#include <yaml-cpp/yaml.h>

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>

namespace loopabull {

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

struct Unit {
    std::string_view name;
    std::uint64_t factor;
};

constexpr Unit kDurationUnits[] = {
    {"ms", 1000}, {"s", 1000000}, {"min", 60000000}, {"h", 3600000000}, {"d", 86400000000}};
constexpr Unit kSizeUnits[] = {{"B", 1},         {"K", 1 << 10}, {"KiB", 1 << 10}, {"M", 1 << 20},
                               {"MiB", 1 << 20}, {"G", 1 << 30}, {"GiB", 1 << 30}};

// "<digits><unit>" where the unit comes from the table; a bare number takes the default factor.
template <std::size_t N>
std::optional<std::uint64_t> parse_with_units(std::string_view text, const Unit (&units)[N],
                                              std::uint64_t bare, std::string* error,
                                              std::string_view what) {
    std::uint64_t n = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
    std::string_view unit(end, static_cast<std::size_t>(text.data() + text.size() - end));
    std::optional<std::uint64_t> factor;
    if (ec == std::errc() && unit.empty() && bare) factor = bare;
    for (auto& u : units)
        if (ec == std::errc() && unit == u.name) factor = u.factor;
    if (!factor) {
        std::string names;
        for (auto& u : units)
            names += std::string(names.empty() ? "" : ", ") + std::string(u.name);
        if (error)
            *error = "invalid " + std::string(what) + " '" + std::string(text) +
                     "': expected a whole number followed by one of " + names;
        return std::nullopt;
    }
    if (n > UINT64_MAX / *factor) {
        if (error) *error = std::string(what) + " '" + std::string(text) + "' is too large";
        return std::nullopt;
    }
    return n * *factor;
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j)
        row[j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
        std::size_t diag = row[0];
        row[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j) {
            std::size_t up = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1])});
            diag = up;
        }
    }
    return row[b.size()];
}

std::string did_you_mean(std::string_view word, const std::vector<std::string_view>& choices) {
    std::string_view best;
    std::size_t best_d = std::max<std::size_t>(2, word.size() / 3) + 1;
    for (auto c : choices) {
        auto d = edit_distance(word, c);
        if (d < best_d) best = c, best_d = d;
    }
    return best.empty() ? std::string() : "; did you mean '" + std::string(best) + "'?";
}

bool executable_file(const std::string& path) {
    struct stat st {};
    return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(path.c_str(), X_OK) == 0;
}

// Reads one config document, recording problems instead of stopping at the first.
class Reader {
  public:
    Reader(std::string file, const LoadOptions& options)
        : file_(std::move(file)), options_(options) {
        auto parent = fs::path(file_).parent_path();
        base_ = parent.empty() ? fs::current_path() : fs::absolute(parent);
    }

    std::vector<ConfigError> errors;

    void error(const YAML::Node& at, std::string message) {
        auto mark = at.Mark();
        int line = mark.is_null() ? 0 : mark.line + 1;
        int col = mark.is_null() ? 0 : mark.column + 1;
        errors.push_back({file_, line, col, std::move(message)});
    }
    void error_at(const YAML::Mark& mark, std::string message) {
        errors.push_back({file_, mark.line + 1, mark.column + 1, std::move(message)});
    }

    // Checks a mapping's keys against the allowed ones; reports unknown and duplicate keys.
    bool mapping(const YAML::Node& node, std::string_view where,
                 const std::vector<std::string_view>& allowed) {
        if (!node.IsMap()) {
            error(node, std::string(where) + " must be a mapping");
            return false;
        }
        std::set<std::string> seen;
        for (auto it = node.begin(); it != node.end(); ++it) {
            auto key = it->first.Scalar();
            if (!seen.insert(key).second) error(it->first, "duplicate key '" + key + "'");
            if (std::find(allowed.begin(), allowed.end(), key) == allowed.end())
                error(it->first, "unknown key '" + key + "' in " + std::string(where) +
                                     did_you_mean(key, allowed));
        }
        return true;
    }

    std::optional<std::string> string(const YAML::Node& node, std::string_view key) {
        if (!node.IsScalar() || node.Tag() == "tag:yaml.org,2002:null" ||
            (node.Tag() == "?" && (node.Scalar() == "~" || node.Scalar() == "null"))) {
            error(node, "'" + std::string(key) + "' must be a string");
            return std::nullopt;
        }
        return node.Scalar();
    }

    std::optional<std::string> nonempty(const YAML::Node& node, std::string_view key) {
        auto s = string(node, key);
        if (s && s->empty()) {
            error(node, "'" + std::string(key) + "' must not be empty");
            return std::nullopt;
        }
        return s;
    }

    std::string path(const std::string& p) const {
        return fs::path(p).is_absolute() ? p : (base_ / p).lexically_normal().string();
    }

    std::optional<bool> boolean(const YAML::Node& node, std::string_view key) {
        auto s = string(node, key);
        if (s == "true") return true;
        if (s == "false") return false;
        if (s) error(node, "'" + std::string(key) + "' must be true or false, not '" + *s + "'");
        return std::nullopt;
    }

    std::optional<std::uint64_t> integer(const YAML::Node& node, std::string_view key,
                                         std::uint64_t min, std::uint64_t max) {
        auto s = string(node, key);
        if (!s) return std::nullopt;
        std::uint64_t n = 0;
        auto [end, ec] = std::from_chars(s->data(), s->data() + s->size(), n);
        if (ec != std::errc() || end != s->data() + s->size() || n < min || n > max) {
            error(node, "'" + std::string(key) + "' must be a whole number from " +
                            std::to_string(min) + " to " + std::to_string(max) + ", not '" + *s +
                            "'");
            return std::nullopt;
        }
        return n;
    }

    std::optional<usec> duration(const YAML::Node& node, std::string_view key) {
        auto s = string(node, key);
        if (!s) return std::nullopt;
        std::string err;
        auto d = parse_duration(*s, &err);
        if (!d) error(node, "'" + std::string(key) + "': " + err);
        return d;
    }

    std::optional<std::uint64_t> size(const YAML::Node& node, std::string_view key) {
        auto s = string(node, key);
        if (!s) return std::nullopt;
        std::string err;
        auto n = parse_size(*s, &err);
        if (!n) error(node, "'" + std::string(key) + "': " + err);
        return n;
    }

    // A list of strings, or (when allowed) one string taken as a one-element list.
    std::optional<std::vector<std::string>> strings(const YAML::Node& node, std::string_view key,
                                                    bool single_ok) {
        if (single_ok && node.IsScalar()) {
            auto s = nonempty(node, key);
            if (!s) return std::nullopt;
            return std::vector<std::string>{*s};
        }
        if (!node.IsSequence() || node.size() == 0) {
            error(node, "'" + std::string(key) + "' must be a non-empty list of strings");
            return std::nullopt;
        }
        std::vector<std::string> out;
        for (auto item : node) {
            auto s = nonempty(item, key);
            if (!s) return std::nullopt;
            out.push_back(*s);
        }
        return out;
    }

    // Looper options are handed over as JSON: plain scalars take the type YAML 1.2 gives them.
    json to_json(const YAML::Node& node) {
        if (node.IsMap()) {
            json obj = json::object();
            for (auto it = node.begin(); it != node.end(); ++it)
                obj[it->first.Scalar()] = to_json(it->second);
            return obj;
        }
        if (node.IsSequence()) {
            json arr = json::array();
            for (auto item : node)
                arr.push_back(to_json(item));
            return arr;
        }
        if (!node.IsScalar()) return nullptr;
        return scalar_to_json(node);
    }

    // YAML 1.2 core schema, less what JSON cannot hold (.inf, .nan stay strings).
    json scalar_to_json(const YAML::Node& node) {
        const std::string& s = node.Scalar();
        if (node.Tag() != "?") return s; // quoted or explicitly tagged: a string
        if (s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL") return nullptr;
        if (s == "true" || s == "True" || s == "TRUE") return true;
        if (s == "false" || s == "False" || s == "FALSE") return false;
        static const std::regex integer("[-+]?[0-9]+");
        static const std::regex real("[-+]?(\\.[0-9]+|[0-9]+(\\.[0-9]*)?)([eE][-+]?[0-9]+)?");
        auto digits = s.front() == '+' ? s.substr(1) : s;
        std::int64_t i = 0;
        if (std::regex_match(s, integer)) {
            auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), i);
            if (ec == std::errc() && end == digits.data() + digits.size()) return i;
            return s; // past 64 bits: JSON would lose it
        }
        double d = 0;
        if (std::regex_match(s, real)) {
            auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), d);
            if (ec == std::errc() && end == digits.data() + digits.size()) return d;
        }
        return s;
    }

    const LoadOptions& options() const { return options_; }

  private:
    std::string file_;
    fs::path base_;
    const LoadOptions& options_;
};

std::string bundled_list(const std::string& dir) {
    auto names = bundled_loopers(dir);
    if (names.empty()) return "none are installed in " + dir;
    std::string out;
    for (auto& n : names)
        out += (out.empty() ? "" : ", ") + n;
    return out;
}

// The first word of a looper command: a bundled looper's name, or a path.
void resolve_looper_command(Reader& r, const YAML::Node& at, std::vector<std::string>& cmd) {
    auto& prog = cmd.front();
    if (prog.find('/') != std::string::npos) {
        prog = r.path(prog);
        if (r.options().check_files && !executable_file(prog))
            r.error(at, "looper command '" + prog + "' is not an executable file");
        return;
    }
    auto bundled = r.options().looper_dir + "/" + prog;
    if (r.options().check_files && !executable_file(bundled)) {
        r.error(at, "unknown looper '" + prog +
                        "' (bundled loopers: " + bundled_list(r.options().looper_dir) +
                        "); give your own looper as a path containing '/'");
        return;
    }
    prog = bundled;
}

const std::vector<std::string_view> kLooperKeys = {
    "name",          "command",        "config", "restart_delay", "restart_delay_max",
    "restart_limit", "max_line_length"};

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
        resolve_looper_command(r, node["command"], lc.command);
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

// A bare command name is looked up in PATH once, at load, so that a missing ansible-playbook is
// a configuration error rather than a failure of every job.
std::optional<std::string> find_in_path(const std::string& name) {
    const char* env = std::getenv("PATH");
    std::string path = env ? env : "/usr/local/bin:/usr/bin:/bin";
    std::stringstream ss(path);
    for (std::string dir; std::getline(ss, dir, ':');)
        if (!dir.empty() && executable_file(dir + "/" + name)) return dir + "/" + name;
    return std::nullopt;
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
    "inventory",     "trusted_payloads", "environment"};
const std::vector<std::string_view> kLegacyAnsibleKeys = {
    "playbooks_dir", "playbook_cmd", "cfg_file_path", "inventory_path", "modules_dir"};

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
}

const std::vector<std::string_view> kExecutorKeys = {
    "type",         "max_parallel", "queue_size", "timeout",      "kill_grace",
    "stop_timeout", "seccomp",      "allow_root", "limit_nofile", "manager",
    "slice",        "memory_max",   "tasks_max",  "cpu_quota",    "on_scope_failure"};

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
        if (t && *t != "direct" && *t != "scope")
            r.error(v, "executor type must be direct or scope, not '" + *t + "'");
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
    if (auto v = node["limit_nofile"])
        e.limit_nofile = r.integer(v, "limit_nofile", 64, 1048576).value_or(e.limit_nofile);
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

const std::vector<std::string_view> kTopKeys = {"loglevel", "routing_keys", "runtime_dir",
                                                "loopers",  "ansible",      "executor"};

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
}

// playbook_cmd in the original was one string split on white space.
std::vector<std::string> split_words(const std::string& s) {
    std::istringstream in(s);
    std::vector<std::string> words;
    for (std::string w; in >> w;)
        words.push_back(w);
    return words;
}

void read_legacy_ansible(Reader& r, const YAML::Node& node, Config& c) {
    if (!r.mapping(node, "'ansible'", kLegacyAnsibleKeys)) return;
    read_playbooks_dir(r, node, c);
    if (auto v = node["playbook_cmd"]) {
        if (auto s = r.nonempty(v, "playbook_cmd")) c.ansible.playbook_cmd = split_words(*s);
    }
    if (c.ansible.playbook_cmd.empty()) c.ansible.playbook_cmd = {"/usr/bin/ansible-playbook"};
    resolve_playbook_cmd(r, node["playbook_cmd"] ? node["playbook_cmd"] : node,
                         c.ansible.playbook_cmd);
    if (auto v = node["cfg_file_path"]) read_cfg_file(r, v, c);
    if (auto v = node["inventory_path"]) read_inventory(r, v, "inventory_path", c);
    if (auto v = node["modules_dir"]) {
        // The original passed -M; ANSIBLE_LIBRARY means the same and suits any playbook_cmd.
        if (auto p = r.nonempty(v, "modules_dir"))
            c.ansible.environment.emplace_back("ANSIBLE_LIBRARY", r.path(*p));
    }
}

// A looper named in a legacy config is the bundled looper of that name.
void add_legacy_looper(Reader& r, const YAML::Node& at, const std::string& name, json options,
                       Config& c) {
    LooperConfig lc;
    lc.name = name;
    lc.command = {name};
    lc.config = std::move(options);
    if (name.find('/') != std::string::npos || !valid_looper_name(name)) {
        r.error(at, "invalid looper name '" + name + "'");
        return;
    }
    resolve_looper_command(r, at, lc.command);
    c.loopers.push_back(std::move(lc));
}

const std::vector<std::string_view> kReadmeKeys = {"plugin", "path_translator", "routing_keys",
                                                   "ansible", "loglevel"};

// What both legacy dialects share: loglevel, the required routing_keys and ansible.
void read_legacy_common(Reader& r, const YAML::Node& root, Config& c) {
    if (auto v = root["loglevel"]) read_loglevel(r, v, c);
    if (auto v = root["routing_keys"])
        read_routing_keys(r, v, c);
    else
        r.error(root, "missing 'routing_keys'");
    if (auto v = root["ansible"])
        read_legacy_ansible(r, v, c);
    else
        r.error(root, "missing the 'ansible' section");
}

void read_legacy_readme(Reader& r, const YAML::Node& root, Config& c) {
    c.dialect = "legacy-readme";
    r.mapping(root, "the configuration", kReadmeKeys);
    if (!root["plugin"])
        r.error(root, "missing 'plugin' (the looper to run)");
    else if (auto name = r.nonempty(root["plugin"], "plugin"))
        add_legacy_looper(r, root["plugin"], *name, json::object(), c);
    if (auto v = root["path_translator"]) read_layout(r, v, "path_translator", c);
    read_legacy_common(r, root, c);
}

void read_legacy_plugins(Reader& r, const YAML::Node& node, Config& c) {
    if (!r.mapping(node, "'plugins'", {"looper", "translator"})) return;
    auto looper = node["looper"];
    if (!looper)
        r.error(node, "'plugins' has no 'looper'");
    else if (looper.IsMap() && looper["name"]) {
        auto name = r.nonempty(looper["name"], "name");
        json options = r.to_json(looper);
        options.erase("name");
        if (name) add_legacy_looper(r, looper["name"], *name, std::move(options), c);
    } else {
        r.error(looper, "'plugins.looper' must be a mapping with a 'name'");
    }
    if (auto t = node["translator"]) {
        if (!r.mapping(t, "'plugins.translator'", {"name"})) return;
        if (t["name"]) read_layout(r, t["name"], "plugins.translator.name", c);
    }
}

const std::vector<std::string_view> kLegacyKeys = {"loglevel", "routing_keys", "ansible",
                                                   "plugins"};

void read_legacy_007(Reader& r, const YAML::Node& root, Config& c) {
    c.dialect = "legacy-0.0.7";
    r.mapping(root, "the configuration", kLegacyKeys);
    read_legacy_plugins(r, root["plugins"], c);
    read_legacy_common(r, root, c);
}

void read_document(Reader& r, const YAML::Node& root, Config& c) {
    if (!root.IsMap()) {
        r.error(root, "the configuration must be a YAML mapping");
        return;
    }
    bool has_new = root["loopers"] || root["executor"] || root["runtime_dir"];
    if (root["plugins"] && !has_new) return read_legacy_007(r, root, c);
    if ((root["plugin"] || root["path_translator"]) && !has_new)
        return read_legacy_readme(r, root, c);
    if (root["plugins"] || root["plugin"])
        r.error(root, "this file mixes the legacy 'plugin'/'plugins' keys with 'loopers': "
                      "use one dialect");
    read_current(r, root, c);
}

} // namespace

std::string ConfigError::str() const {
    if (line == 0) return file + ": " + message;
    return file + ":" + std::to_string(line) + ":" + std::to_string(column) + ": " + message;
}

std::optional<usec> parse_duration(std::string_view text, std::string* error) {
    auto n = parse_with_units(text, kDurationUnits, 1000000, error, "duration");
    if (!n) return std::nullopt;
    if (*n > static_cast<std::uint64_t>(INT64_MAX)) {
        if (error) *error = "duration '" + std::string(text) + "' is too large";
        return std::nullopt;
    }
    return usec(static_cast<usec::rep>(*n));
}

std::optional<std::uint64_t> parse_size(std::string_view text, std::string* error) {
    return parse_with_units(text, kSizeUnits, 0, error, "size");
}

std::optional<LogLevel> parse_log_level(std::string_view text) {
    std::string s(text);
    std::transform(s.begin(), s.end(), s.begin(),
                   [](unsigned char ch) { return std::tolower(ch); });
    if (s == "debug") return LogLevel::debug;
    if (s == "info") return LogLevel::info;
    if (s == "warning" || s == "warn") return LogLevel::warning;
    if (s == "error") return LogLevel::error;
    return std::nullopt;
}

std::vector<std::string> bundled_loopers(const std::string& dir) {
    std::vector<std::string> names;
    std::error_code ec;
    for (auto& entry : fs::directory_iterator(dir, ec))
        if (executable_file(entry.path().string())) names.push_back(entry.path().filename());
    std::sort(names.begin(), names.end());
    return names;
}

ConfigLoad parse_config(const std::string& text, const std::string& path,
                        const LoadOptions& options) {
    Reader r(path, options);
    Config c;
    c.path = path;
    try {
        read_document(r, YAML::Load(text), c);
    } catch (const YAML::ParserException& e) {
        r.error_at(e.mark, "YAML syntax error: " + e.msg);
    } catch (const YAML::Exception& e) {
        r.error_at(e.mark, std::string("invalid YAML: ") + e.what());
    }
    if (!r.errors.empty()) return {std::nullopt, std::move(r.errors)};
    return {std::move(c), {}};
}

ConfigLoad load_config(const std::string& path, const LoadOptions& options) {
    std::ifstream in(path);
    if (!in)
        return {std::nullopt, {{path, 0, 0, std::string("cannot read: ") + std::strerror(errno)}}};
    std::stringstream ss;
    ss << in.rdbuf();
    return parse_config(ss.str(), path, options);
}

} // namespace loopabull
