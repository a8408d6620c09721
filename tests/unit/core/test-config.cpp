// SPDX-License-Identifier: GPL-3.0-or-later
// The configuration file: the current dialect, both legacy dialects, and every error message.
#include "core/config.hpp"
#include "core/config-describe.hpp"

#include "tempdir.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

using namespace loopabull;
using namespace std::chrono_literals;
using json = nlohmann::json;
using loopabull::test::TempDir;

namespace loopabull {
void PrintTo(const LooperConfig& l, std::ostream* os) {
    *os << "{name " << l.name << ", command " << testing::PrintToString(l.command) << ", config "
        << l.config.dump() << ", restart_delay " << l.restart_delay.count() << "us..."
        << l.restart_delay_max.count() << "us, restart_limit " << l.restart_limit
        << ", max_line_length " << l.max_line_length << "}";
}
} // namespace loopabull

namespace {

const std::string kPath = "/etc/loopabull/releng.yml";
const std::string kLooperDir = "/usr/libexec/loopabull/loopers";
const LoadOptions kNoFileChecks{.looper_dir = kLooperDir, .check_files = false};

// A valid new-dialect config with lines added: top-level ones, lines of its one looper (indented
// by 4) and of the ansible section (indented by 2).
std::string config_with(std::string_view top = "", std::string_view looper = "",
                        std::string_view ansible = "", std::string_view routing_keys = "[all]") {
    return "routing_keys: " + std::string(routing_keys) + "\n" + std::string(top) +
           "loopers:\n"
           "  - name: spool\n"
           "    command: [spool, /var/spool/x]\n" +
           std::string(looper) + "ansible:\n  playbooks_dir: /srv/playbooks\n" +
           std::string(ansible);
}
std::string with_top(std::string_view lines) {
    return config_with(lines);
}
std::string with_looper(std::string_view lines) {
    return config_with("", lines);
}
std::string with_ansible(std::string_view lines) {
    return config_with("", "", lines);
}
std::string with_routing_keys(std::string_view keys) {
    return config_with("", "", "", keys);
}

std::string describe(const std::vector<ConfigError>& errors) {
    std::string out;
    for (auto& e : errors)
        out += "\n  " + e.str();
    return out.empty() ? " none" : out;
}

// The config that text parses to; errors fail the test.
Config parsed(const std::string& text, const std::string& path = kPath,
              const LoadOptions& options = kNoFileChecks) {
    auto load = parse_config(text, path, options);
    if (!load.config) {
        ADD_FAILURE() << "errors:" << describe(load.errors) << "\nin:\n" << text;
        return {};
    }
    EXPECT_TRUE(load.errors.empty());
    return *load.config;
}

// The errors of text, which must not parse.
std::vector<ConfigError> errors_of(const std::string& text,
                                   const LoadOptions& options = kNoFileChecks,
                                   const std::string& path = kPath) {
    auto load = parse_config(text, path, options);
    EXPECT_FALSE(load.config.has_value()) << "accepted:\n" << text;
    EXPECT_FALSE(load.errors.empty());
    return load.errors;
}

void expect_executor(const ExecutorConfig& e, const char* type, unsigned max_parallel,
                     std::size_t queue_size, usec timeout, usec kill_grace, usec stop_timeout) {
    EXPECT_EQ(e.type, type);
    EXPECT_EQ(e.max_parallel, max_parallel);
    EXPECT_EQ(e.queue_size, queue_size);
    EXPECT_EQ(e.timeout, timeout);
    EXPECT_EQ(e.kill_grace, kill_grace);
    EXPECT_EQ(e.stop_timeout, stop_timeout);
}

// The error with exactly this message; its absence fails the test.
ConfigError error_with(const std::string& text, const std::string& message,
                       const LoadOptions& options = kNoFileChecks,
                       const std::string& path = kPath) {
    auto errors = errors_of(text, options, path);
    auto it = std::find_if(errors.begin(), errors.end(),
                           [&](const ConfigError& e) { return e.message == message; });
    if (it == errors.end()) {
        ADD_FAILURE() << "no error \"" << message << "\"; errors:" << describe(errors) << "\nin:\n"
                      << text;
        return {};
    }
    return *it;
}

} // namespace

// --- the current dialect ---

TEST(Config, MinimalConfigTakesTheDefaults) {
    auto c = parsed(config_with());
    EXPECT_EQ(c.path, kPath);
    EXPECT_EQ(c.dialect, "loopabull");
    EXPECT_EQ(c.loglevel, LogLevel::info);
    EXPECT_EQ(c.routing_keys, std::vector<std::string>{"all"});
    EXPECT_EQ(c.runtime_dir, std::nullopt);

    ASSERT_EQ(c.loopers.size(), 1u);
    EXPECT_EQ(c.loopers[0], (LooperConfig{.name = "spool",
                                          .command = {kLooperDir + "/spool", "/var/spool/x"},
                                          .command_as_written = "spool",
                                          .origin = LooperOrigin::bundled,
                                          .config = json::object(),
                                          .restart_delay = 1s,
                                          .restart_delay_max = 1min,
                                          .restart_limit = 5,
                                          .max_line_length = 1 << 20,
                                          .routing_keys = std::nullopt,
                                          .dedup_window = std::nullopt}));

    const auto& a = c.ansible;
    EXPECT_EQ(a.playbooks_dir, "/srv/playbooks");
    EXPECT_EQ(a.layout, Layout::name);
    EXPECT_EQ(a.playbook_cmd, std::vector<std::string>{"/usr/bin/ansible-playbook"});
    EXPECT_EQ(a.cfg_file_path, std::nullopt);
    EXPECT_EQ(a.inventory, std::nullopt);
    EXPECT_FALSE(a.trusted_payloads);
    EXPECT_EQ(a.event_variable, "event"); // the body is one variable by default
    EXPECT_TRUE(a.environment.empty());

    expect_executor(c.executor, "auto", 4, 1000, 25min, 10s, 5min);
}

TEST(Config, EveryKeyIsRead) {
    auto c = parsed(R"(loglevel: warning
routing_keys:
  - org.fedoraproject.prod.buildsys.#
  - io.pagure.*.pagure.pull-request.new
runtime_dir: /run/loopabull/releng
loopers:
  - name: spool
    command: [spool, /var/spool/loopabull/releng]
    config:
      url: amqps://example.org/%2F
      prefetch: 8
      durable: true
      bindings: [{exchange: amq.topic}]
    restart_delay: 250ms
    restart_delay_max: 2h
    restart_limit: 0
    max_line_length: 64KiB
  - name: second_one
    command: /opt/loopers/mine --verbose
ansible:
  playbooks_dir: /srv/playbooks
  layout: directory
  playbook_cmd: [/usr/bin/ansible-playbook, --diff]
  cfg_file_path: /etc/ansible/ansible.cfg
  inventory: /etc/ansible/hosts
  trusted_payloads: true
  environment:
    ANSIBLE_FORCE_COLOR: "0"
    http_proxy: http://proxy:3128
executor:
  type: direct
  max_parallel: 1024
  queue_size: 1
  timeout: 1d
  kill_grace: 30
  stop_timeout: 90min
)");
    EXPECT_EQ(c.loglevel, LogLevel::warning);
    EXPECT_EQ(c.routing_keys, (std::vector<std::string>{"org.fedoraproject.prod.buildsys.#",
                                                        "io.pagure.*.pagure.pull-request.new"}));
    EXPECT_EQ(c.runtime_dir, "/run/loopabull/releng");

    ASSERT_EQ(c.loopers.size(), 2u);
    EXPECT_EQ(c.loopers[0],
              (LooperConfig{.name = "spool",
                            .command = {kLooperDir + "/spool", "/var/spool/loopabull/releng"},
                            .command_as_written = "spool",
                            .origin = LooperOrigin::bundled,
                            .config = json::parse(R"({"url": "amqps://example.org/%2F",
                                "prefetch": 8, "durable": true,
                                "bindings": [{"exchange": "amq.topic"}]})"),
                            .restart_delay = 250ms,
                            .restart_delay_max = 2h,
                            .restart_limit = 0,
                            .max_line_length = 64 << 10,
                            .routing_keys = std::nullopt,
                            .dedup_window = std::nullopt}));
    EXPECT_EQ(c.loopers[1].name, "second_one");
    // One string is the whole argv[0], not split on spaces.
    EXPECT_EQ(c.loopers[1].command, std::vector<std::string>{"/opt/loopers/mine --verbose"});

    const auto& a = c.ansible;
    EXPECT_EQ(a.layout, Layout::directory);
    EXPECT_EQ(a.playbook_cmd, (std::vector<std::string>{"/usr/bin/ansible-playbook", "--diff"}));
    EXPECT_EQ(a.cfg_file_path, "/etc/ansible/ansible.cfg");
    EXPECT_EQ(a.inventory, "/etc/ansible/hosts");
    EXPECT_TRUE(a.trusted_payloads);
    EXPECT_EQ(a.environment,
              (std::vector<std::pair<std::string, std::string>>{
                  {"ANSIBLE_FORCE_COLOR", "0"}, {"http_proxy", "http://proxy:3128"}}));

    expect_executor(c.executor, "direct", 1024, 1, 24h, 30s, 90min);
}

TEST(Config, ScopeExecutorAndSandboxKeys) {
    auto c = parsed(with_top("executor:\n  type: scope\n  manager: user\n  slice: jobs.slice\n"
                             "  memory_max: 512MiB\n  tasks_max: infinity\n  cpu_quota: 50%\n"
                             "  on_scope_failure: direct\n  seccomp: 'off'\n  allow_root: true\n"
                             "  limit_nofile: 2048\n"));
    auto& e = c.executor;
    EXPECT_EQ(e.type, "scope");
    EXPECT_TRUE(e.user_manager);
    EXPECT_EQ(e.slice, "jobs.slice");
    EXPECT_EQ(e.memory_max, std::optional<std::uint64_t>(512u << 20));
    EXPECT_EQ(e.tasks_max, std::nullopt);
    EXPECT_EQ(e.cpu_quota_per_sec_usec, std::optional<std::uint64_t>(500000));
    EXPECT_TRUE(e.fallback_direct);
    EXPECT_FALSE(e.seccomp_policy.has_value());
    EXPECT_TRUE(e.allow_root);
    EXPECT_EQ(e.limit_nofile, 2048u);
}

TEST(Config, WarmRunnerKeys) {
    auto d = parsed(config_with()).executor;
    EXPECT_TRUE(d.warm); // on by default; used only for ansible's own ansible-playbook
    EXPECT_EQ(d.warm_max_jobs, 1000u);
    EXPECT_EQ(d.warm_max_age, std::chrono::hours(1));
    auto e = parsed(with_top("executor:\n  warm: false\n  warm_max_jobs: 0\n"
                             "  warm_max_age: 30min\n"))
                 .executor;
    EXPECT_FALSE(e.warm);
    EXPECT_EQ(e.warm_max_jobs, 0u);
    EXPECT_EQ(e.warm_max_age, std::chrono::minutes(30));
}

TEST(Config, ScopeAndSandboxDefaults) {
    auto e = parsed(config_with()).executor;
    EXPECT_EQ(e.type, "auto");
    EXPECT_FALSE(e.user_manager);
    EXPECT_EQ(e.slice, "loopabull.slice");
    EXPECT_EQ(e.memory_max, std::optional<std::uint64_t>(std::uint64_t(2) << 30));
    EXPECT_EQ(e.tasks_max, std::optional<std::uint64_t>(1024));
    EXPECT_EQ(e.cpu_quota_per_sec_usec, std::optional<std::uint64_t>(2000000));
    EXPECT_FALSE(e.fallback_direct);
    ASSERT_TRUE(e.seccomp_policy.has_value());
    EXPECT_TRUE(e.seccomp_policy->allow.count("execve"));
    EXPECT_FALSE(e.seccomp_policy->allow.count("ptrace"));
    EXPECT_FALSE(e.allow_root);
}

TEST(Config, RelativePathsAreResolvedAgainstTheConfigDirectory) {
    auto c = parsed(R"(routing_keys: [all]
runtime_dir: run
loopers:
  - name: mine
    command: [./loopers/mine, relative-arg]
  - name: sub
    command: bin/looper
ansible:
  playbooks_dir: ../playbooks
  playbook_cmd: tools/ansible-playbook
  cfg_file_path: ./ansible.cfg
  inventory: inventory/hosts
)");
    EXPECT_EQ(c.runtime_dir, "/etc/loopabull/run");
    EXPECT_EQ(c.loopers[0].command,
              (std::vector<std::string>{"/etc/loopabull/loopers/mine", "relative-arg"}));
    EXPECT_EQ(c.loopers[1].command, std::vector<std::string>{"/etc/loopabull/bin/looper"});
    EXPECT_EQ(c.ansible.playbooks_dir, "/etc/playbooks");
    EXPECT_EQ(c.ansible.playbook_cmd,
              std::vector<std::string>{"/etc/loopabull/tools/ansible-playbook"});
    EXPECT_EQ(c.ansible.cfg_file_path, "/etc/loopabull/ansible.cfg");
    EXPECT_EQ(c.ansible.inventory, "/etc/loopabull/inventory/hosts");
}

TEST(Config, RelativeConfigPathIsTakenFromTheWorkingDirectory) {
    auto c = parsed(with_ansible("  cfg_file_path: ansible.cfg\n"), "conf/releng.yml");
    EXPECT_EQ(c.ansible.cfg_file_path,
              (std::filesystem::current_path() / "conf" / "ansible.cfg").string());
}

TEST(Config, InlineInventoryIsNotAPath) {
    auto c = parsed(with_ansible("  inventory: host1,host2,\n"));
    EXPECT_EQ(c.ansible.inventory, "host1,host2,");
}

TEST(Config, BarePlaybookCmdIsLookedUpInPath) {
    auto c = parsed(with_ansible("  playbook_cmd: [sh, -x]\n"));
    ASSERT_EQ(c.ansible.playbook_cmd.size(), 2u);
    EXPECT_TRUE(c.ansible.playbook_cmd[0].starts_with('/')) << c.ansible.playbook_cmd[0];
    EXPECT_TRUE(c.ansible.playbook_cmd[0].ends_with("/sh")) << c.ansible.playbook_cmd[0];
    EXPECT_EQ(c.ansible.playbook_cmd[1], "-x");
}

TEST(Config, SmallVariants) {
    EXPECT_EQ(parsed(with_routing_keys("org.example.#")).routing_keys,
              std::vector<std::string>{"org.example.#"});
    EXPECT_EQ(parsed(with_top("loglevel: DEBUG\n")).loglevel, LogLevel::debug);
    EXPECT_EQ(parsed(with_top("loglevel: warn\n")).loglevel, LogLevel::warning);
    EXPECT_EQ(parsed(with_top("loglevel: error\n")).loglevel, LogLevel::error);
    EXPECT_EQ(parsed(with_ansible("  layout: rkdirectory\n")).ansible.layout, Layout::directory);
    EXPECT_EQ(parsed(with_ansible("  layout: name\n")).ansible.layout, Layout::name);
    EXPECT_EQ(parsed(with_looper("    config:\n")).loopers[0].config, json::object());
    EXPECT_EQ(parsed(with_looper("    max_line_length: 64B\n")).loopers[0].max_line_length, 64u);
    EXPECT_EQ(parsed(with_looper("    max_line_length: 1G\n")).loopers[0].max_line_length,
              1u << 30);
}

// --- the legacy dialects ---

TEST(Config, LegacyReadmeDialect) {
    auto c = parsed(R"(routing_keys:
  - org.example.hello
  - org.example.#
plugin: fedmsg
path_translator: rkdirectory
ansible:
  playbooks_dir: ../playbooks
  cfg_file_path: ansible.cfg
  playbook_cmd: /usr/bin/ansible-playbook --diff  -v
  inventory_path: /etc/ansible/hosts
  modules_dir: library
)");
    EXPECT_EQ(c.dialect, "legacy-readme");
    EXPECT_EQ(c.ansible.event_variable, std::nullopt); // the original's top-level form
    EXPECT_EQ(c.routing_keys, (std::vector<std::string>{"org.example.hello", "org.example.#"}));
    ASSERT_EQ(c.loopers.size(), 1u);
    EXPECT_EQ(c.loopers[0].name, "fedmsg");
    EXPECT_EQ(c.loopers[0].command, std::vector<std::string>{kLooperDir + "/fedmsg"});
    EXPECT_EQ(c.loopers[0].config, json::object());
    EXPECT_EQ(c.loopers[0].restart_delay, LooperConfig{}.restart_delay);
    EXPECT_EQ(c.ansible.layout, Layout::directory);
    EXPECT_EQ(c.ansible.playbooks_dir, "/etc/playbooks");
    EXPECT_EQ(c.ansible.cfg_file_path, "/etc/loopabull/ansible.cfg");
    EXPECT_EQ(c.ansible.playbook_cmd,
              (std::vector<std::string>{"/usr/bin/ansible-playbook", "--diff", "-v"}));
    EXPECT_EQ(c.ansible.inventory, "/etc/ansible/hosts");
    EXPECT_EQ(c.ansible.environment, (std::vector<std::pair<std::string, std::string>>{
                                         {"ANSIBLE_LIBRARY", "/etc/loopabull/library"}}));
}

TEST(Config, LegacyReadmeRkname) {
    auto c = parsed("routing_keys: [all]\nplugin: spool\npath_translator: rkname\n"
                    "ansible: {playbooks_dir: /srv/pb}\n");
    EXPECT_EQ(c.dialect, "legacy-readme");
    EXPECT_EQ(c.ansible.layout, Layout::name);
    EXPECT_EQ(c.ansible.playbook_cmd, std::vector<std::string>{"/usr/bin/ansible-playbook"});
}

TEST(Config, Legacy007Dialect) {
    auto c = parsed(R"(loglevel: debug
routing_keys: [org.example.#]
ansible:
  playbooks_dir: /srv/playbooks
  inventory_path: hosts
plugins:
  looper:
    name: fedmsg
    directory: /var/spool/x
    count: 3
    negative: -2
    ratio: 0.5
    enabled: true
    disabled: false
    nothing: ~
    empty:
    quoted: "5"
    single: '1.5'
    list: [1, a, true]
    nested: {k: v, n: 2}
  translator:
    name: rkdirectory
)");
    EXPECT_EQ(c.dialect, "legacy-0.0.7");
    EXPECT_EQ(c.ansible.event_variable, std::nullopt);
    EXPECT_EQ(c.loglevel, LogLevel::debug);
    EXPECT_EQ(c.routing_keys, std::vector<std::string>{"org.example.#"});
    ASSERT_EQ(c.loopers.size(), 1u);
    EXPECT_EQ(c.loopers[0].name, "fedmsg");
    EXPECT_EQ(c.loopers[0].command, std::vector<std::string>{kLooperDir + "/fedmsg"});
    EXPECT_EQ(c.loopers[0].config, json::parse(R"({
        "directory": "/var/spool/x", "count": 3, "negative": -2, "ratio": 0.5,
        "enabled": true, "disabled": false, "nothing": null, "empty": null,
        "quoted": "5", "single": "1.5", "list": [1, "a", true], "nested": {"k": "v", "n": 2}})"));
    EXPECT_EQ(c.ansible.layout, Layout::directory);
    EXPECT_EQ(c.ansible.inventory, "/etc/loopabull/hosts");
}

TEST(Config, Legacy007WithoutTranslatorUsesNames) {
    auto c = parsed("routing_keys: [all]\nansible: {playbooks_dir: /p}\n"
                    "plugins: {looper: {name: spool}}\n");
    EXPECT_EQ(c.ansible.layout, Layout::name);
    EXPECT_EQ(c.loopers[0].config, json::object());
}

// A legacy file takes the current dialect's executor section and ansible keys beside its own,
// so an operator can add one setting without converting it (issue 16).
TEST(Config, LegacyDialectsTakeExecutorAndCurrentAnsibleKeys) {
    for (std::string head : {"plugin: spool\n", "plugins: {looper: {name: spool}}\n"}) {
        auto c = parsed(head + "routing_keys: [all]\n"
                               "ansible:\n  playbooks_dir: /p\n  playbook_cmd: [/bin/ap, -v]\n"
                               "  layout: directory\n  inventory: /i\n  trusted_payloads: true\n"
                               "  environment: {A: b}\n  modules_dir: /m\n"
                               "executor: {max_parallel: 2, timeout: 5min, allow_root: true}\n");
        EXPECT_EQ(c.dialect, head.starts_with("plugin:") ? "legacy-readme" : "legacy-0.0.7");
        EXPECT_EQ(c.executor.max_parallel, 2u);
        EXPECT_EQ(c.executor.timeout, 5min);
        EXPECT_TRUE(c.executor.allow_root);
        EXPECT_EQ(c.ansible.playbook_cmd, (std::vector<std::string>{"/bin/ap", "-v"}));
        EXPECT_EQ(c.ansible.layout, Layout::directory);
        EXPECT_EQ(c.ansible.inventory, "/i");
        EXPECT_TRUE(c.ansible.trusted_payloads);
        EXPECT_EQ(c.ansible.environment,
                  (std::vector<std::pair<std::string, std::string>>{{"A", "b"},
                                                                    {"ANSIBLE_LIBRARY", "/m"}}));
    }
}

TEST(Config, ExitWithoutLoopers) {
    EXPECT_EQ(parsed(config_with()).exit_without_loopers, 5min);
    EXPECT_EQ(parsed(with_top("exit_without_loopers: 30s\n")).exit_without_loopers, 30s);
    EXPECT_EQ(parsed(with_top("exit_without_loopers: off\n")).exit_without_loopers, std::nullopt);
}

TEST(Config, LooperOrigin) {
    auto c = parsed(with_top(""));
    ASSERT_FALSE(c.loopers.empty());
    EXPECT_EQ(c.loopers[0].origin, LooperOrigin::bundled);
    EXPECT_EQ(c.loopers[0].command_as_written, "spool");
}

TEST(Config, LegacyReadmeWithoutPlugin) {
    auto errors = errors_of("path_translator: rkname\nrouting_keys: [all]\n"
                            "ansible: {playbooks_dir: /x}\n");
    ASSERT_EQ(errors.size(), 1u) << describe(errors);
    EXPECT_NE(errors[0].message.find("plugin"), std::string::npos);
    EXPECT_EQ(errors[0].message.find("invalid YAML"), std::string::npos) << errors[0].message;
    EXPECT_EQ(errors[0].line, 1);
}

TEST(Config, LooperOptionsInfAndNanStayStrings) {
    auto c = parsed("routing_keys: [all]\nansible: {playbooks_dir: /p}\n"
                    "plugins: {looper: {name: spool, a: inf, b: nan, c: infinity, d: -inf}}\n");
    EXPECT_EQ(c.loopers[0].config.dump(),
              json({{"a", "inf"}, {"b", "nan"}, {"c", "infinity"}, {"d", "-inf"}}).dump());
}

// --- error messages ---

struct ErrorCase {
    const char* label;
    std::string yaml;
    std::string message;
};

void PrintTo(const ErrorCase& c, std::ostream* os) {
    *os << c.label;
}

std::string label_of(const testing::TestParamInfo<ErrorCase>& info) {
    return info.param.label;
}

class ConfigErrors : public testing::TestWithParam<ErrorCase> {};

TEST_P(ConfigErrors, Message) {
    error_with(GetParam().yaml, GetParam().message);
}

namespace {

const std::string kDurationUnits = "expected a whole number followed by one of ms, s, min, h, d";
const std::string kSizeUnits =
    "expected a whole number followed by one of B, K, KiB, M, MiB, G, GiB";
const std::string kLegacyTail = "routing_keys: [all]\nansible: {playbooks_dir: /p}\n";

ErrorCase looper_case(const char* label, std::string lines, std::string message) {
    return {label, with_looper(lines), std::move(message)};
}
ErrorCase ansible_case(const char* label, std::string lines, std::string message) {
    return {label, with_ansible(lines), std::move(message)};
}
ErrorCase top_case(const char* label, std::string lines, std::string message) {
    return {label, with_top(lines), std::move(message)};
}
ErrorCase executor_case(const char* label, std::string lines, std::string message) {
    return top_case(label, "executor:\n" + lines, std::move(message));
}
ErrorCase duration_case(const char* label, const std::string& value) {
    return looper_case(label, "    restart_delay: '" + value + "'\n",
                       "'restart_delay': invalid duration '" + value + "': " + kDurationUnits);
}
ErrorCase size_case(const char* label, const std::string& value) {
    return looper_case(label, "    max_line_length: '" + value + "'\n",
                       "'max_line_length': invalid size '" + value + "': " + kSizeUnits);
}
ErrorCase range_case(const char* label, const char* key, const char* value, const char* range) {
    auto message =
        std::string("'") + key + "' must be a whole number from " + range + ", not '" + value + "'";
    auto line = std::string(key) + ": " + value + "\n";
    if (std::string_view(key) == "restart_limit") return looper_case(label, "    " + line, message);
    return executor_case(label, "  " + line, message);
}

} // namespace

INSTANTIATE_TEST_SUITE_P(
    UnknownAndDuplicateKeys, ConfigErrors,
    testing::Values(
        top_case("TopLevelTypo", "loglevl: info\n",
                 "unknown key 'loglevl' in the configuration; did you mean 'loglevel'?"),
        top_case("TopLevelPlural", "routing_key: [all]\n",
                 "unknown key 'routing_key' in the configuration; did you mean 'routing_keys'?"),
        top_case("TopLevelFarOff", "frobnicate: 1\n",
                 "unknown key 'frobnicate' in the configuration"),
        looper_case("LooperTypo", "    restart_dealy: 1s\n",
                    "unknown key 'restart_dealy' in a looper; did you mean 'restart_delay'?"),
        ansible_case("AnsibleTypo", "  inventroy: /x\n",
                     "unknown key 'inventroy' in 'ansible'; did you mean 'inventory'?"),
        ansible_case("AnsibleLegacyKeyInNewDialect", "  inventory_path: /x\n",
                     "unknown key 'inventory_path' in 'ansible'"),
        executor_case("ExecutorTypo", "  max_paralel: 2\n",
                      "unknown key 'max_paralel' in 'executor'; did you mean 'max_parallel'?"),
        top_case("DuplicateTopLevel", "loglevel: info\nloglevel: debug\n",
                 "duplicate key 'loglevel'"),
        looper_case("DuplicateInLooper", "    restart_limit: 1\n    restart_limit: 2\n",
                    "duplicate key 'restart_limit'")),
    label_of);

INSTANTIATE_TEST_SUITE_P(
    WrongTypes, ConfigErrors,
    testing::Values(
        ErrorCase{"NotAMapping", "- a\n- b\n", "the configuration must be a YAML mapping"},
        ErrorCase{"EmptyDocument", "", "the configuration must be a YAML mapping"},
        top_case("LoglevelList", "loglevel: [info]\n", "'loglevel' must be a string"),
        top_case("LoglevelNull", "loglevel: ~\n", "'loglevel' must be a string"),
        top_case("LoglevelUnknown", "loglevel: loud\n",
                 "'loglevel' must be debug, info, warning or error, not 'loud'"),
        ErrorCase{"RoutingKeysMapping", with_routing_keys("{a: b}"),
                  "'routing_keys' must be a non-empty list of strings"},
        ErrorCase{"RoutingKeysEmpty", with_routing_keys("[]"),
                  "'routing_keys' must be a non-empty list of strings"},
        ErrorCase{"RoutingKeysEmptyString", with_routing_keys("[a, '']"),
                  "'routing_keys' must not be empty"},
        ErrorCase{"LoopersMapping",
                  "routing_keys: [all]\nloopers: {name: x}\nansible: {playbooks_dir: /p}\n",
                  "'loopers' must be a non-empty list"},
        ErrorCase{"LoopersEmpty",
                  "routing_keys: [all]\nloopers: []\nansible: {playbooks_dir: /p}\n",
                  "'loopers' must be a non-empty list"},
        ErrorCase{"LooperNotMapping",
                  "routing_keys: [all]\nloopers: [spool]\nansible: {playbooks_dir: /p}\n",
                  "a looper must be a mapping"},
        ErrorCase{"AnsibleList",
                  "routing_keys: [all]\nloopers: [{name: a, command: x}]\nansible: [a]\n",
                  "'ansible' must be a mapping"},
        top_case("ExecutorScalar", "executor: fast\n", "'executor' must be a mapping"),
        top_case("RuntimeDirEmpty", "runtime_dir: ''\n", "'runtime_dir' must not be empty"),
        looper_case("ConfigList", "    config: [a, b]\n", "'config' must be a mapping"),
        looper_case("ConfigScalar", "    config: yes\n", "'config' must be a mapping"),
        looper_case("CommandMapping", "  - name: b\n    command: {a: b}\n",
                    "'command' must be a non-empty list of strings"),
        looper_case("CommandEmptyList", "  - name: b\n    command: []\n",
                    "'command' must be a non-empty list of strings"),
        looper_case("CommandNullItem", "  - name: b\n    command: [x, ~]\n",
                    "'command' must be a string"),
        ErrorCase{
            "PlaybooksDirEmpty",
            "routing_keys: [all]\nloopers: [{name: a, command: x}]\nansible: {playbooks_dir: ''}\n",
            "'playbooks_dir' must not be empty"},
        ansible_case("LayoutUnknown", "  layout: flat\n",
                     "'layout' must be name (rkname) or directory (rkdirectory), not 'flat'"),
        ansible_case("PlaybookCmdEmpty", "  playbook_cmd: []\n",
                     "'playbook_cmd' must be a non-empty list of strings"),
        ansible_case("CfgFileEmpty", "  cfg_file_path: ''\n", "'cfg_file_path' must not be empty"),
        ansible_case("InventoryList", "  inventory: [a]\n", "'inventory' must be a string"),
        ansible_case("TrustedMaybe", "  trusted_payloads: maybe\n",
                     "'trusted_payloads' must be true or false, not 'maybe'"),
        ansible_case("EventVariableTaken", "  event_variable: hostvars\n",
                     "'event_variable': 'hostvars' is taken: a name Ansible gives meaning to "
                     "(or 'top-level')"),
        ansible_case("EventVariableNotAName", "  event_variable: a.b\n",
                     "'event_variable': 'a.b' is not a variable name (letters, digits and '_', "
                     "not starting with a digit) (or 'top-level')"),
        ansible_case("TrustedYes", "  trusted_payloads: yes\n",
                     "'trusted_payloads' must be true or false, not 'yes'"),
        ansible_case("EnvironmentList", "  environment: [A=1]\n",
                     "'environment' must be a mapping of variable names to strings"),
        ansible_case("EnvironmentBadName", "  environment: {A-B: x}\n",
                     "invalid environment variable name 'A-B'"),
        ansible_case("EnvironmentEqualsInName", "  environment: {'A=B': x}\n",
                     "invalid environment variable name 'A=B'"),
        ansible_case("EnvironmentValueMapping", "  environment: {A: {b: c}}\n",
                     "'A' must be a string"),
        executor_case("ExecutorType", "  type: chroot\n",
                      "executor type must be auto, direct, cgroup or scope, not 'chroot'"),
        executor_case("Manager", "  manager: session\n", "'manager' must be system or user, not 'session'"),
        executor_case("Slice", "  slice: jobs\n", "'slice' must name a .slice unit, not 'jobs'"),
        executor_case("CpuQuota", "  cpu_quota: 50\n",
                      "'cpu_quota' must be a percentage such as 50% or 200% (of one CPU), or "
                      "infinity, not '50'"),
        executor_case("MemoryMaxBare", "  memory_max: 4096\n",
                      "'memory_max': invalid size '4096': " + kSizeUnits),
        executor_case("OnScopeFailure", "  on_scope_failure: retry\n",
                      "'on_scope_failure' must be fail or direct, not 'retry'"),
        executor_case("AllowRoot", "  allow_root: yes\n",
                      "'allow_root' must be true or false, not 'yes'"),
        executor_case("Warm", "  warm: on\n", "'warm' must be true or false, not 'on'")),
    label_of);

INSTANTIATE_TEST_SUITE_P(
    DurationsAndSizes, ConfigErrors,
    testing::Values(
        duration_case("DurationMinuteAbbreviation", "1m"),
        duration_case("DurationFraction", "1.5h"), duration_case("DurationSpace", "30 s"),
        duration_case("DurationNegative", "-5s"), duration_case("DurationUnitOnly", "s"),
        duration_case("DurationWord", "soon"), duration_case("DurationUpperCase", "5S"),
        duration_case("DurationSeconds", "5sec"), size_case("SizeBare", "4096"),
        size_case("SizeFraction", "1.5MiB"), size_case("SizeSpace", "1 MiB"),
        size_case("SizeLowerCase", "1mib"), size_case("SizeDecimalUnit", "1KB"),
        size_case("SizeNegative", "-1K"),
        looper_case("DelayZero", "    restart_delay: 0s\n", "'restart_delay' must be more than 0"),
        looper_case("DelayMaxBelowDelay", "    restart_delay: 10s\n    restart_delay_max: 1s\n",
                    "'restart_delay_max' must not be below 'restart_delay'"),
        looper_case("LineLengthTooSmall", "    max_line_length: 63B\n",
                    "'max_line_length' must be between 64B and 1GiB"),
        looper_case("LineLengthTooLarge", "    max_line_length: 2GiB\n",
                    "'max_line_length' must be between 64B and 1GiB"),
        executor_case("TimeoutZero", "  timeout: 0\n", "'timeout' must be more than 0"),
        executor_case("KillGraceZero", "  kill_grace: 0ms\n", "'kill_grace' must be more than 0"),
        executor_case("StopTimeoutBad", "  stop_timeout: 5 min\n",
                      "'stop_timeout': invalid duration '5 min': " + kDurationUnits)),
    label_of);

INSTANTIATE_TEST_SUITE_P(
    OutOfRange, ConfigErrors,
    testing::Values(range_case("MaxParallelZero", "max_parallel", "0", "1 to 1024"),
                    range_case("MaxParallelTooMany", "max_parallel", "1025", "1 to 1024"),
                    range_case("MaxParallelNegative", "max_parallel", "-1", "1 to 1024"),
                    range_case("MaxParallelFraction", "max_parallel", "2.5", "1 to 1024"),
                    range_case("MaxParallelWord", "max_parallel", "many", "1 to 1024"),
                    range_case("QueueSizeZero", "queue_size", "0", "1 to 1000000"),
                    range_case("QueueSizeTooLarge", "queue_size", "1000001", "1 to 1000000"),
                    range_case("RestartLimitNegative", "restart_limit", "-1", "0 to 1000000"),
                    range_case("RestartLimitTooLarge", "restart_limit", "1000001", "0 to 1000000"),
                    range_case("RestartLimitHuge", "restart_limit", "99999999999999999999",
                               "0 to 1000000")),
    label_of);

INSTANTIATE_TEST_SUITE_P(
    MissingAndInvalid, ConfigErrors,
    testing::Values(
        ErrorCase{"NoLoopers", "routing_keys: [all]\nansible: {playbooks_dir: /p}\n",
                  "no 'loopers' configured: loopabull needs at least one looper"},
        ErrorCase{"NoAnsible", "routing_keys: [all]\nloopers: [{name: a, command: x}]\n",
                  "missing the 'ansible' section (playbooks_dir at least)"},
        ErrorCase{
            "NoPlaybooksDir",
            "routing_keys: [all]\nloopers: [{name: a, command: x}]\nansible: {layout: name}\n",
            "'ansible' has no 'playbooks_dir'"},
        ErrorCase{"NoRoutingKeys",
                  "loopers: [{name: a, command: x}]\nansible: {playbooks_dir: /p}\n",
                  "missing 'routing_keys' (use [all] to route every key)"},
        ErrorCase{
            "PlaybooksDirNull",
            "routing_keys: [all]\nloopers: [{name: a, command: x}]\nansible: {playbooks_dir: ~}\n",
            "'playbooks_dir' must be a string"},
        looper_case("LooperWithoutName", "  - command: [x]\n", "looper has no 'name'"),
        looper_case("LooperWithoutCommand", "  - name: lonely\n",
                    "looper 'lonely' has no 'command'"),
        looper_case("DuplicateLooperNames", "  - name: spool\n    command: [x]\n",
                    "duplicate looper name 'spool'"),
        looper_case("LooperNameWithSpace", "  - name: bad name\n    command: [x]\n",
                    "looper name 'bad name' must be 1-64 letters, digits, '_' or '-'"),
        looper_case("LooperNameWithSlash", "  - name: a/b\n    command: [x]\n",
                    "looper name 'a/b' must be 1-64 letters, digits, '_' or '-'"),
        looper_case("LooperNameTooLong",
                    "  - name: " + std::string(65, 'n') + "\n    command: [x]\n",
                    "looper name '" + std::string(65, 'n') +
                        "' must be 1-64 letters, digits, '_' or '-'"),
        ErrorCase{"RoutingPatternEmptyWord", with_routing_keys("[all, a..b]"),
                  "invalid routing key pattern 'a..b': empty word (two dots in a row, or a "
                  "leading or trailing dot)"},
        ErrorCase{"RoutingPatternSlash", with_routing_keys("[a/b]"),
                  "invalid routing key pattern 'a/b': character '/' not allowed (letters, "
                  "digits, '_' and '-' only)"},
        ErrorCase{"RoutingPatternStarInWord", with_routing_keys("org.*x"),
                  "invalid routing key pattern 'org.*x': character '*' not allowed (letters, "
                  "digits, '_' and '-' only)"},
        ErrorCase{"YamlSyntax", "a: b: c\n", "YAML syntax error: illegal map value"},
        ErrorCase{"YamlUnclosedFlow", "loglevel: info\nrouting_keys: [all\n",
                  "YAML syntax error: end of sequence flow not found"},
        ErrorCase{"MixedLoopersAndPlugins", with_top("plugins: {looper: {name: spool}}\n"),
                  "this file mixes the legacy 'plugin'/'plugins' keys with 'loopers': use one "
                  "dialect"},
        ErrorCase{"MixedRuntimeDirAndPlugin",
                  "plugin: spool\nrouting_keys: [all]\nruntime_dir: /r\n"
                  "ansible: {playbooks_dir: /p}\n",
                  "this file mixes the legacy 'plugin'/'plugins' keys with 'loopers': use one "
                  "dialect"},
        top_case("ExitWithoutLoopersZero", "exit_without_loopers: 0s\n",
                 "'exit_without_loopers' must be more than 0, or off")),
    label_of);

INSTANTIATE_TEST_SUITE_P(
    Legacy, ConfigErrors,
    testing::Values(
        ErrorCase{"ReadmeUnknownKey", "plugin: spool\nlooper_dir: /x\n" + kLegacyTail,
                  "unknown key 'looper_dir' in the configuration"},
        ErrorCase{"ReadmeInvalidPluginName", "plugin: ../evil\n" + kLegacyTail,
                  "invalid looper name '../evil'"},
        ErrorCase{"ReadmeBadTranslator", "plugin: spool\npath_translator: rkflat\n" + kLegacyTail,
                  "'path_translator' must be name (rkname) or directory (rkdirectory), not "
                  "'rkflat'"},
        ErrorCase{"ReadmeNoRoutingKeys", "plugin: spool\nansible: {playbooks_dir: /p}\n",
                  "missing 'routing_keys'"},
        ErrorCase{"ReadmeNoAnsible", "plugin: spool\nrouting_keys: [all]\n",
                  "missing the 'ansible' section"},
        ErrorCase{"ReadmeTwoInventories",
                  "plugin: spool\nrouting_keys: [all]\n"
                  "ansible: {playbooks_dir: /p, inventory: /a, inventory_path: /b}\n",
                  "'inventory' and 'inventory_path' say the same: keep one"},
        ErrorCase{"ReadmeLayoutAndTranslator",
                  "plugin: spool\npath_translator: rkname\nrouting_keys: [all]\n"
                  "ansible: {playbooks_dir: /p, layout: name}\n",
                  "'layout' and 'path_translator' say the same: keep one"},
        ErrorCase{"PluginsLayoutAndTranslator",
                  "plugins: {looper: {name: spool}, translator: {name: rkname}}\n"
                  "routing_keys: [all]\nansible: {playbooks_dir: /p, layout: name}\n",
                  "'layout' and 'plugins.translator' say the same: keep one"},
        ErrorCase{"ReadmeUnknownAnsibleKey",
                  "plugin: spool\nrouting_keys: [all]\nansible: {playbooks_dir: /p, layot: name}\n",
                  "unknown key 'layot' in 'ansible'; did you mean 'layout'?"},
        ErrorCase{"PluginsWithoutLooper", "plugins: {translator: {name: rkname}}\n" + kLegacyTail,
                  "'plugins' has no 'looper'"},
        ErrorCase{"PluginsLooperWithoutName", "plugins: {looper: {directory: /x}}\n" + kLegacyTail,
                  "'plugins.looper' must be a mapping with a 'name'"},
        ErrorCase{"PluginsLooperScalar", "plugins: {looper: spool}\n" + kLegacyTail,
                  "'plugins.looper' must be a mapping with a 'name'"},
        ErrorCase{"PluginsLooperBadName", "plugins: {looper: {name: 'a b'}}\n" + kLegacyTail,
                  "invalid looper name 'a b'"},
        ErrorCase{"PluginsUnknownKey",
                  "plugins: {looper: {name: spool}, translatr: {name: rkname}}\n" + kLegacyTail,
                  "unknown key 'translatr' in 'plugins'; did you mean 'translator'?"},
        ErrorCase{"PluginsBadTranslator",
                  "plugins: {looper: {name: spool}, translator: {name: flat}}\n" + kLegacyTail,
                  "'plugins.translator.name' must be name (rkname) or directory (rkdirectory), "
                  "not 'flat'"}),
    label_of);

// --- positions ---

TEST(ConfigErrorPosition, StrIsFileLineColumnMessage) {
    EXPECT_EQ(error_with(with_top("loglevel: loud\n"),
                         "'loglevel' must be debug, info, warning or error, not 'loud'")
                  .str(),
              kPath + ":2:11: 'loglevel' must be debug, info, warning or error, not 'loud'");
    EXPECT_EQ(error_with(with_looper("    restart_limit: lots\n"),
                         "'restart_limit' must be a whole number from 0 to 1000000, not 'lots'")
                  .str(),
              kPath +
                  ":5:20: 'restart_limit' must be a whole number from 0 to 1000000, not 'lots'");
    EXPECT_EQ(error_with(with_ansible("  inventroy: /x\n"),
                         "unknown key 'inventroy' in 'ansible'; did you mean 'inventory'?")
                  .str(),
              kPath + ":7:3: unknown key 'inventroy' in 'ansible'; did you mean 'inventory'?");
}

TEST(ConfigErrorPosition, PointsAtTheListItem) {
    auto e = error_with(with_routing_keys("[all, a..b]"),
                        "invalid routing key pattern 'a..b': empty word (two dots in a row, or a "
                        "leading or trailing dot)");
    EXPECT_EQ(e.line, 1);
    EXPECT_EQ(e.column, 21);
}

TEST(ConfigErrorPosition, YamlSyntaxErrorHasLineAndColumn) {
    EXPECT_EQ(error_with("a: b: c\n", "YAML syntax error: illegal map value").str(),
              kPath + ":1:5: YAML syntax error: illegal map value");
    auto e = error_with("loglevel: info\nrouting_keys:\n  - a\n x: [1, 2\n",
                        "YAML syntax error: end of map not found");
    EXPECT_EQ(e.line, 4);
    EXPECT_EQ(e.column, 2);
}

TEST(ConfigErrorPosition, EveryProblemIsReported) {
    auto errors = errors_of(config_with("loglevel: loud\nexecutor: {max_parallel: 0}\n",
                                        "    restart_delay: 1m\n", "  layout: flat\n"));
    EXPECT_EQ(errors.size(), 4u) << describe(errors);
}

TEST(ConfigErrorPosition, StrWithoutPosition) {
    ConfigError e{"/etc/x.yml", 0, 0, "cannot read: Permission denied"};
    EXPECT_EQ(e.str(), "/etc/x.yml: cannot read: Permission denied");
    ConfigError f{"x.yml", 12, 3, "oops"};
    EXPECT_EQ(f.str(), "x.yml:12:3: oops");
}

// --- file checks, against a temporary tree ---

namespace {

// TMP/{loopabull.yml, playbooks/, loopers/{spool,ticker,notes.txt}, bin/ansible-playbook,
// ansible.cfg, inventory}, with the config written next to them using relative paths.
class ConfigFiles : public testing::Test {
  protected:
    void SetUp() override {
        tmp_.mkdir("playbooks");
        tmp_.executable("loopers/spool");
        tmp_.executable("loopers/ticker");
        tmp_.write("loopers/notes.txt", "not a looper");
        tmp_.executable("bin/ansible-playbook");
        tmp_.write("ansible.cfg", "[defaults]\n");
        tmp_.write("inventory", "localhost\n");
        tmp_.mkdir("empty");
    }

    LoadOptions options(const std::string& looper_dir = "loopers") const {
        return {.looper_dir = tmp_ / looper_dir, .check_files = true};
    }
    std::string config(std::string_view command, std::string_view ansible_extra = "") const {
        return "routing_keys: [all]\nloopers:\n  - name: one\n    command: " +
               std::string(command) +
               "\nansible:\n  playbooks_dir: playbooks\n  playbook_cmd: bin/ansible-playbook\n" +
               "  cfg_file_path: ansible.cfg\n  inventory: inventory\n" +
               std::string(ansible_extra);
    }
    Config load(const std::string& text) const { return parsed(text, file(), options()); }
    std::string file() const { return tmp_ / "loopabull.yml"; }
    ConfigError error(const std::string& text, const std::string& message,
                      const LoadOptions& opts) const {
        return error_with(text, message, opts, file());
    }
    void expect_error(const std::string& text, const std::string& message) const {
        error(text, message, options());
    }

    TempDir tmp_;
};

} // namespace

TEST_F(ConfigFiles, ValidTreePasses) {
    auto c = load(config("[spool, --dir, /x]"));
    EXPECT_EQ(c.loopers[0].command,
              (std::vector<std::string>{tmp_ / "loopers/spool", "--dir", "/x"}));
    EXPECT_EQ(c.ansible.playbooks_dir, tmp_ / "playbooks");
    EXPECT_EQ(c.ansible.playbook_cmd, std::vector<std::string>{tmp_ / "bin/ansible-playbook"});
    EXPECT_EQ(c.ansible.cfg_file_path, tmp_ / "ansible.cfg");
    EXPECT_EQ(c.ansible.inventory, tmp_ / "inventory");
}

TEST_F(ConfigFiles, OwnLooperByPath) {
    auto c = load(config("./loopers/ticker"));
    EXPECT_EQ(c.loopers[0].command, std::vector<std::string>{tmp_ / "loopers/ticker"});
}

// PATH as the reader sees it (the error names it).
std::string search_path() {
    const char* p = std::getenv("PATH");
    return p ? p : "/usr/local/bin:/usr/bin:/bin";
}

TEST_F(ConfigFiles, UnknownBundledLooperListsTheInstalledOnesAndPath) {
    expect_error(config("[amqp]"), "unknown looper 'amqp': not a bundled looper (bundled "
                                   "loopers: spool, ticker) and not found in PATH (" +
                                       search_path() + ")");
}

TEST_F(ConfigFiles, UnknownBundledLooperWhenNoneAreInstalled) {
    error(config("[amqp]"),
          "unknown looper 'amqp': not a bundled looper (bundled loopers: none are installed in " +
              (tmp_ / "empty") + ") and not found in PATH (" + search_path() + ")",
          options("empty"));
}

TEST_F(ConfigFiles, UnknownLegacyLooperListsTheInstalledOnes) {
    expect_error("plugin: fedmsg\nrouting_keys: [all]\nansible: {playbooks_dir: playbooks, "
                 "playbook_cmd: bin/ansible-playbook}\n",
                 "unknown looper 'fedmsg': not a bundled looper (bundled loopers: spool, ticker) "
                 "and not found in PATH (" + search_path() + ")");
}

// A bare name that is no bundled looper is looked up in PATH, as systemd's ExecStart= does;
// a bundled looper of that name wins.
TEST_F(ConfigFiles, BareNameFromPathAfterTheBundledOnes) {
    std::string saved = search_path();
    tmp_.executable("bin/spool");
    setenv("PATH", (tmp_ / "bin").c_str(), 1);
    auto c = load(config("[ansible-playbook, x]"));
    auto bundled = load(config("[spool]"));
    setenv("PATH", saved.c_str(), 1);
    EXPECT_EQ(c.loopers[0].command, (std::vector<std::string>{tmp_ / "bin/ansible-playbook", "x"}));
    EXPECT_EQ(c.loopers[0].origin, LooperOrigin::path_lookup);
    EXPECT_EQ(c.loopers[0].command_as_written, "ansible-playbook");
    EXPECT_EQ(bundled.loopers[0].command, std::vector<std::string>{tmp_ / "loopers/spool"});
    EXPECT_EQ(bundled.loopers[0].origin, LooperOrigin::bundled);
}

TEST_F(ConfigFiles, LooperPathNotExecutable) {
    expect_error(config("[loopers/notes.txt]"),
                 "looper command '" + (tmp_ / "loopers/notes.txt") + "' is not an executable file");
    expect_error(config("[./missing/looper]"),
                 "looper command '" + (tmp_ / "missing/looper") + "' is not an executable file");
}

TEST_F(ConfigFiles, MissingPlaybooksDir) {
    auto text = config("[spool]");
    text.replace(text.find("playbooks_dir: playbooks"), 24, "playbooks_dir: nowhere");
    expect_error(text, "playbooks_dir '" + (tmp_ / "nowhere") + "' is not a directory");
}

TEST_F(ConfigFiles, MissingCfgFileAndInventory) {
    std::filesystem::remove(tmp_ / "ansible.cfg");
    std::filesystem::remove(tmp_ / "inventory");
    auto text = config("[spool]");
    expect_error(text, "'cfg_file_path' " + (tmp_ / "ansible.cfg") + ": No such file or directory");
    expect_error(text, "'inventory' " + (tmp_ / "inventory") + ": No such file or directory");
}

TEST_F(ConfigFiles, PlaybookCmdNotFound) {
    auto text = config("[spool]");
    text.replace(text.find("bin/ansible-playbook"), 20, "[no-such-ansible-playbook-cmd]");
    expect_error(text, "playbook_cmd 'no-such-ansible-playbook-cmd' is not found in PATH");
    text = config("[spool]");
    text.replace(text.find("bin/ansible-playbook"), 20, "./ansible.cfg");
    expect_error(text, "playbook_cmd '" + (tmp_ / "ansible.cfg") + "' is not an executable file");
}

TEST_F(ConfigFiles, LoadConfigReadsTheFile) {
    tmp_.write("loopabull.yml", config("[spool]"));
    auto load = load_config(file(), options());
    ASSERT_TRUE(load.config.has_value()) << describe(load.errors);
    EXPECT_EQ(load.config->path, file());
    EXPECT_EQ(load.config->loopers[0].command, std::vector<std::string>{tmp_ / "loopers/spool"});
}

TEST_F(ConfigFiles, LoadConfigOfAMissingFile) {
    auto load = load_config(tmp_ / "absent.yml", options());
    EXPECT_FALSE(load.config.has_value());
    ASSERT_EQ(load.errors.size(), 1u);
    EXPECT_EQ(load.errors[0].str(),
              (tmp_ / "absent.yml") + ": cannot read: No such file or directory");
}

TEST_F(ConfigFiles, BundledLoopersAreTheExecutablesSorted) {
    tmp_.executable("loopers/amqp");
    EXPECT_EQ(bundled_loopers(tmp_ / "loopers"),
              (std::vector<std::string>{"amqp", "spool", "ticker"}));
    EXPECT_TRUE(bundled_loopers(tmp_ / "empty").empty());
    EXPECT_TRUE(bundled_loopers(tmp_ / "does-not-exist").empty());
}

// --- the value grammars ---

TEST(ParseDuration, AcceptsEveryUnit) {
    struct {
        const char* text;
        usec value;
    } cases[] = {{"250ms", 250ms}, {"0ms", 0ms}, {"1s", 1s}, {"30min", 30min}, {"1h", 1h},
                 {"2d", 48h},      {"30", 30s},  {"0", 0s},  {"90000ms", 90s}, {"007s", 7s}};
    for (auto& c : cases) {
        std::string error;
        EXPECT_EQ(parse_duration(c.text, &error), c.value) << c.text << ": " << error;
    }
}

TEST(ParseDuration, RejectsEverythingElse) {
    for (auto text : {"", "1m", "1.5h", "30 s", " 30s", "30s ", "-5s", "+5s", "5S", "5sec", "s",
                      "1e3s", "0x10s", "1h30min", "5 ", "ms", "1,5s"}) {
        std::string error;
        EXPECT_EQ(parse_duration(text, &error), std::nullopt) << text;
        EXPECT_EQ(error, std::string("invalid duration '") + text + "': " + kDurationUnits);
    }
}

TEST(ParseDuration, RejectsOverflow) {
    std::string error;
    EXPECT_EQ(parse_duration("99999999999999999999s", &error), std::nullopt);
    EXPECT_EQ(parse_duration("999999999999999999d", &error), std::nullopt);
    EXPECT_EQ(error, "duration '999999999999999999d' is too large");
    EXPECT_EQ(parse_duration("1s", nullptr), 1s); // the error is optional
    EXPECT_EQ(parse_duration("1x", nullptr), std::nullopt);
}

TEST(ParseDuration, ValuesPastInt64MicrosecondsAreRejected) {
    std::string error;
    auto d = parse_duration("10000000000000s", &error);
    EXPECT_EQ(d, std::nullopt) << d->count();
    EXPECT_EQ(error, "duration '10000000000000s' is too large");
    EXPECT_EQ(parse_duration("106751992d", nullptr), std::nullopt);
    errors_of(with_top("executor: {timeout: 10000000000000s}\n"));
}

TEST(ParseSize, AcceptsEveryUnit) {
    struct {
        const char* text;
        std::uint64_t value;
    } cases[] = {{"64B", 64},      {"0B", 0},          {"4K", 4096},     {"4KiB", 4096},
                 {"1M", 1u << 20}, {"1MiB", 1u << 20}, {"1G", 1u << 30}, {"3GiB", 3ull << 30}};
    for (auto& c : cases) {
        std::string error;
        EXPECT_EQ(parse_size(c.text, &error), c.value) << c.text << ": " << error;
    }
}

TEST(ParseSize, RejectsEverythingElse) {
    for (auto text : {"", "4096", "0", "1.5MiB", "1 MiB", "1mib", "1k", "1KB", "1Mb", "-1K", "+1K",
                      "MiB", "1TiB", "1e3B", " 1K"}) {
        std::string error;
        EXPECT_EQ(parse_size(text, &error), std::nullopt) << text;
        EXPECT_EQ(error, std::string("invalid size '") + text + "': " + kSizeUnits);
    }
}

TEST(ParseSize, RejectsOverflow) {
    std::string error;
    EXPECT_EQ(parse_size("17179869184G", &error), std::nullopt); // 2^64 bytes
    EXPECT_EQ(error, "size '17179869184G' is too large");
    EXPECT_EQ(parse_size("17179869183G", &error), 17179869183ull << 30);
}

TEST(ParseLogLevel, NamesInAnyCase) {
    EXPECT_EQ(parse_log_level("debug"), LogLevel::debug);
    EXPECT_EQ(parse_log_level("INFO"), LogLevel::info);
    EXPECT_EQ(parse_log_level("Warning"), LogLevel::warning);
    EXPECT_EQ(parse_log_level("warn"), LogLevel::warning);
    EXPECT_EQ(parse_log_level("error"), LogLevel::error);
    EXPECT_EQ(parse_log_level("verbose"), std::nullopt);
    EXPECT_EQ(parse_log_level(""), std::nullopt);
    EXPECT_EQ(parse_log_level("info "), std::nullopt);
}

// Issue 17: the metrics section's keys, defaults and bounds.
TEST(Config, MetricsKeys) {
    auto d = parsed(with_top(""));
    EXPECT_EQ(d.metrics.textfile, std::nullopt); // off unless configured
    EXPECT_EQ(d.metrics.interval, std::chrono::seconds(15));
    EXPECT_EQ(d.metrics.max_keys, 100u);
    auto c = parsed(with_top("metrics:\n  textfile: /var/lib/node-exporter/loopabull.prom\n"
                             "  interval: 30s\n  max_keys: 20\n"));
    EXPECT_EQ(c.metrics.textfile,
              std::optional<std::string>("/var/lib/node-exporter/loopabull.prom"));
    EXPECT_EQ(c.metrics.interval, std::chrono::seconds(30));
    EXPECT_EQ(c.metrics.max_keys, 20u);
    auto bad = errors_of(with_top("metrics:\n  interval: 100ms\n  max_keys: 0\n  port: 9100\n"));
    ASSERT_EQ(bad.size(), 3u);
}

// Issue 17: the history section's keys, defaults and bounds.
TEST(Config, HistoryKeys) {
    auto d = parsed(with_top(""));
    EXPECT_TRUE(d.history.enabled);
    EXPECT_EQ(d.history.path, std::nullopt);
    EXPECT_FALSE(d.history.record_unrouted);
    auto c = parsed(with_top("history:\n  path: /var/lib/l/h.sqlite\n  flush_interval: 200ms\n"
                             "  batch_size: 50\n  max_age: 30d\n  max_jobs: 5000\n"
                             "  record_unrouted: true\n"));
    auto& h = c.history;
    EXPECT_EQ(h.path, std::optional<std::string>("/var/lib/l/h.sqlite"));
    EXPECT_EQ(h.flush_interval, std::chrono::milliseconds(200));
    EXPECT_EQ(h.batch_size, 50u);
    EXPECT_EQ(h.max_age, std::chrono::hours(24 * 30));
    EXPECT_EQ(h.max_jobs, 5000u);
    EXPECT_TRUE(h.record_unrouted);
    auto bad = errors_of(with_top("history:\n  flush_interval: 2min\n  max_age: 0s\n  color: red\n"));
    ASSERT_EQ(bad.size(), 3u);
}

// Issue 17: stored bodies; the errors name the field.
TEST(Config, HistoryBodies) {
    auto d = parsed(with_top(""));
    EXPECT_FALSE(d.history.store_bodies);
    EXPECT_EQ(d.history.max_body_size, 64u * 1024);
    auto c = parsed(with_top("history:\n  store_bodies: true\n  max_body_size: 1MiB\n"));
    EXPECT_TRUE(c.history.store_bodies);
    EXPECT_EQ(c.history.max_body_size, 1u << 20);
    error_with(with_top("history:\n  max_body_size: 17MiB\n"),
               "'max_body_size' must be between 1B and 16MiB");
    error_with(with_top("history:\n  enabled: false\n  store_bodies: true\n"),
               "'store_bodies' keeps bodies in the history ledger, which 'history.enabled: "
               "false' turns off");
    auto e = errors_of(with_top("history:\n  store_bodies: maybe\n"));
    ASSERT_EQ(e.size(), 1u);
    EXPECT_NE(describe(e).find("store_bodies"), std::string::npos) << describe(e);
}

// --check-config -v says what the history and metrics sections mean, defaults included.
TEST(Config, DescribeSaysHistoryAndMetrics) {
    auto d = describe_config(parsed(with_top("")));
    EXPECT_NE(d.find("history: $STATE_DIRECTORY/history.sqlite (off where"), std::string::npos) << d;
    EXPECT_NE(d.find("history flush: every 1s or 1000 records\n"), std::string::npos) << d;
    EXPECT_NE(d.find("history retention: 90d, at most 1000000 records\n"), std::string::npos) << d;
    EXPECT_NE(d.find("history record_unrouted: false\n"), std::string::npos) << d;
    EXPECT_NE(d.find("history store_bodies: false\n"), std::string::npos) << d;
    EXPECT_NE(d.find("metrics textfile: (none)\n"), std::string::npos) << d;
    EXPECT_EQ(d.find("metrics interval"), std::string::npos) << d; // no file, no interval
    EXPECT_NE(d.find("metrics max_keys: 100\n"), std::string::npos) << d;
    auto c = describe_config(parsed(
        with_top("history:\n  path: /var/lib/l/h.sqlite\n  flush_interval: 200ms\n"
                 "  batch_size: 50\n  max_age: 36h\n  max_jobs: 5000\n"
                 "  store_bodies: true\n  max_body_size: 1KiB\n"
                 "metrics:\n  textfile: /var/lib/node/l.prom\n  interval: 30s\n")));
    EXPECT_NE(c.find("history: /var/lib/l/h.sqlite\n"), std::string::npos) << c;
    EXPECT_NE(c.find("history flush: every 200ms or 50 records\n"), std::string::npos) << c;
    EXPECT_NE(c.find("history retention: 36h, at most 5000 records\n"), std::string::npos) << c;
    EXPECT_NE(c.find("history store_bodies: true, at most 1024 bytes each\n"), std::string::npos)
        << c;
    EXPECT_NE(c.find("metrics textfile: /var/lib/node/l.prom\nmetrics interval: 30s\n"),
              std::string::npos)
        << c;
    EXPECT_NE(describe_config(parsed(with_top("history:\n  enabled: false\n"))).find("history: off\n"),
              std::string::npos);
}

// --- dedup (issue 17) ---

TEST(Config, DedupWindowIsReadAndChecked) {
    EXPECT_FALSE(parsed(with_looper("")).loopers[0].dedup_window);
    EXPECT_EQ(parsed(with_looper("    dedup: {window: 24h}\n")).loopers[0].dedup_window,
              usec(std::chrono::hours(24)));
    error_with(with_looper("    dedup: {}\n"), "'dedup' needs a 'window' (for example 24h)");
    error_with(with_looper("    dedup: {window: 0s}\n"), "'dedup.window' must be more than 0");
    auto e = errors_of(with_looper("    dedup: {window: 1h, per: x}\n"));
    EXPECT_NE(describe(e).find("per"), std::string::npos) << describe(e);
    // It looks successes up in the ledger: history on, and keeping them long enough.
    auto off = errors_of(config_with("history: {enabled: false}\n", "    dedup: {window: 1h}\n"));
    EXPECT_NE(describe(off).find("history.enabled: false"), std::string::npos) << describe(off);
    auto shorter = errors_of(config_with("history: {max_age: 1h}\n", "    dedup: {window: 2h}\n"));
    EXPECT_NE(describe(shorter).find("longer than 'history.max_age'"), std::string::npos)
        << describe(shorter);
    EXPECT_TRUE(parsed(config_with("history: {max_age: 1h}\n", "    dedup: {window: 1h}\n"))
                    .loopers[0]
                    .dedup_window);
}
