// SPDX-License-Identifier: GPL-3.0-or-later
// loopabull: argument parsing, then the manager.
#include "core/config-describe.hpp"
#include "core/config-migrate.hpp"
#include "core/config.hpp"
#include "supervisor/explain-offline.hpp"
#include "supervisor/log.hpp"
#include "supervisor/looper-check.hpp"
#include "supervisor/looper.hpp"
#include "supervisor/manager.hpp"

#include "build-config.h"

#include <getopt.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>

namespace {

using namespace loopabull;

constexpr const char* kUsage = R"(Usage: loopabull [OPTIONS] CONFIG
       loopabull --check-config [-v] CONFIG
       loopabull --migrate-config OLD-CONFIG
       loopabull --print-seccomp-policy [CONFIG]
       loopabull --explain [--json] [--looper NAME] CONFIG ROUTING_KEY [BODY-JSON|@FILE]

Turns events from looper processes into ansible-playbook runs.

Options:
  -i, --instance NAME      instance name (default: "default"); names the runtime
                           directory and is passed to loopers and playbooks
  -l, --log-level LEVEL    debug, info, warning or error (overrides the file)
  -b, --bus BUS            offer the D-Bus API on the system or user bus, or none
                           (default: system when started by the system manager, user
                           when started by a user manager, none otherwise)
  -c, --check-config       validate CONFIG, list every problem as FILE:LINE:COL, exit;
                           bundled loopers check their own options too
  -v, --verbose            with --check-config: print the effective configuration,
                           and which program each looper runs (bundled or from PATH)
  -m, --migrate-config     print OLD-CONFIG (a configuration of loopabull 0.0.7 or of
                           the original README) in the current dialect, with comments
                           where the meaning changed
  -e, --explain            say what CONFIG would do with an event and why: routing_keys,
                           each route, the playbook, the variables; exit 0 when it would
                           run a playbook, 1 when not, 2 on a usage or config error
      --json               --explain: print JSON for scripts
      --looper NAME        --explain: the event comes from looper NAME (default: any)
  -p, --print-seccomp-policy
                           print the system calls playbooks may make (the default
                           policy, or CONFIG's executor.seccomp when CONFIG is given)
  -h, --help               show this help
  -V, --version            show the version

See loopabull(8), loopabull.yml(5) and loopabull-looper(7).
)";

[[noreturn]] void usage_error(const std::string& msg) {
    std::fprintf(stderr, "loopabull: %s\nTry 'loopabull --help'.\n", msg.c_str());
    std::exit(2);
}

struct Args {
    ManagerOptions options;
    bool check = false;
    bool verbose = false;
    bool migrate = false;
    bool print_seccomp = false;
    std::optional<ExplainRequest> explain;
    std::string bus = "auto";
};

// Started by systemd (INVOCATION_ID): by the system manager when our parent is PID 1.
BusKind default_bus() {
    if (!std::getenv("INVOCATION_ID")) return BusKind::none;
    return getppid() == 1 ? BusKind::system : BusKind::user;
}

BusKind parse_bus(const std::string& s) {
    if (s == "auto") return default_bus();
    if (s == "system") return BusKind::system;
    if (s == "user") return BusKind::user;
    if (s == "none") return BusKind::none;
    usage_error("invalid --bus '" + s + "': system, user or none");
}

bool valid_instance(const std::string& s) {
    return !s.empty() && s.size() <= 64 && s[0] != '.' && s[0] != '-' &&
           std::all_of(s.begin(), s.end(), [](char c) {
               return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' ||
                      c == '.';
           });
}

Args parse_args(int argc, char** argv) {
    static const option longopts[] = {{"instance", required_argument, nullptr, 'i'},
                                      {"log-level", required_argument, nullptr, 'l'},
                                      {"bus", required_argument, nullptr, 'b'},
                                      {"check-config", no_argument, nullptr, 'c'},
                                      {"verbose", no_argument, nullptr, 'v'},
                                      {"migrate-config", no_argument, nullptr, 'm'},
                                      {"print-seccomp-policy", no_argument, nullptr, 'p'},
                                      {"explain", no_argument, nullptr, 'e'},
                                      {"json", no_argument, nullptr, 'J'},
                                      {"looper", required_argument, nullptr, 'L'},
                                      {"help", no_argument, nullptr, 'h'},
                                      {"version", no_argument, nullptr, 'V'},
                                      {nullptr, 0, nullptr, 0}};
    Args a;
    int c;
    bool explain = false, json = false;
    std::string looper;
    while ((c = getopt_long(argc, argv, "i:l:b:cvmpehV", longopts, nullptr)) != -1) {
        switch (c) {
        case 'i':
            a.options.instance = optarg;
            break;
        case 'l':
            a.options.log_level = parse_log_level(optarg);
            if (!a.options.log_level)
                usage_error(std::string("invalid log level '") + optarg + "'");
            break;
        case 'b':
            a.bus = optarg;
            break;
        case 'c':
            a.check = true;
            break;
        case 'v':
            a.verbose = true;
            break;
        case 'm':
            a.migrate = true;
            break;
        case 'p':
            a.print_seccomp = true;
            break;
        case 'e':
            explain = true;
            break;
        case 'J':
            json = true;
            break;
        case 'L':
            looper = optarg;
            break;
        case 'h':
            std::fputs(kUsage, stdout);
            std::exit(0);
        case 'V':
            std::printf("loopabull %s\n", LOOPABULL_VERSION);
            std::exit(0);
        default:
            usage_error("invalid arguments");
        }
    }
    if (a.print_seccomp && optind == argc) return a;
    const char* looper_dir = std::getenv("LOOPABULL_LOOPER_DIR");
    if (explain) {
        if (argc - optind < 2 || argc - optind > 3)
            usage_error("--explain needs CONFIG ROUTING_KEY [BODY-JSON|@FILE]");
        a.explain = ExplainRequest{argv[optind], looper_dir ? looper_dir : LOOPABULL_LOOPER_DIR,
                                   argv[optind + 1], argc - optind == 3 ? argv[optind + 2] : "",
                                   looper, json};
        return a;
    }
    if (json || !looper.empty()) usage_error("--json and --looper go with --explain");
    if (optind != argc - 1) usage_error("exactly one CONFIG file is required");
    if (a.verbose && !a.check) usage_error("--verbose goes with --check-config");
    if (a.migrate && (a.check || a.print_seccomp))
        usage_error("--migrate-config goes alone with the file to convert");
    if (!valid_instance(a.options.instance))
        usage_error("invalid instance name '" + a.options.instance +
                    "': letters, digits, '_', '-' and '.' only");
    a.options.config_path = argv[optind];
    a.options.bus = parse_bus(a.bus);
    const char* dir = std::getenv("LOOPABULL_LOOPER_DIR");
    a.options.looper_dir = dir ? dir : LOOPABULL_LOOPER_DIR;
    return a;
}

} // namespace

int print_seccomp_policy(const Args& args) {
    std::optional<SeccompPolicy> policy = default_seccomp_policy();
    std::string source = "the default policy";
    if (!args.options.config_path.empty()) {
        auto load = load_config(args.options.config_path, {args.options.looper_dir, true});
        for (auto& e : load.errors)
            std::fprintf(stderr, "%s\n", e.str().c_str());
        if (!load.config) return 1;
        policy = load.config->executor.seccomp_policy;
        source = "executor.seccomp: " + load.config->executor.seccomp;
    }
    if (!policy) {
        std::printf("# seccomp is off (%s): no system call filter\n", source.c_str());
        return 0;
    }
    std::printf("# %s; native architecture only\n"
                "# allowed below; clone only without CLONE_NEW* flags; clone3 and system calls\n"
                "# newer than libseccomp fail with ENOSYS; everything else fails with EPERM\n",
                source.c_str());
    for (auto& name : policy->allow)
        if (known_syscall(name)) std::printf("%s\n", name.c_str());
    return 0;
}

int main(int argc, char** argv) {
    auto args = parse_args(argc, argv);
    if (args.print_seccomp) return print_seccomp_policy(args);
    if (args.migrate) {
        auto m = migrate_config(args.options.config_path, {args.options.looper_dir, true});
        for (auto& e : m.errors)
            std::fprintf(stderr, "%s\n", e.str().c_str());
        if (!m.text) return 1;
        std::fputs(m.text->c_str(), stdout);
        return 0;
    }
    if (args.explain) return explain_offline(*args.explain);
    auto load = load_config(args.options.config_path, {args.options.looper_dir, true});
    if (args.check) {
        for (auto& e : load.errors)
            std::fprintf(stderr, "%s\n", e.str().c_str());
        if (!load.config) return 1;
        auto loopers = check_looper_options(*load.config, args.options.instance);
        for (auto& w : loopers.warnings)
            std::fprintf(stderr, "%s\n", w.c_str());
        for (auto& p : loopers.problems)
            std::fprintf(stderr, "%s\n", p.c_str());
        if (!loopers.problems.empty()) return 1;
        std::printf("%s: OK (%s dialect, %zu looper(s))\n", args.options.config_path.c_str(),
                    load.config->dialect.c_str(), load.config->loopers.size());
        if (args.verbose) std::fputs(describe_config(*load.config).c_str(), stdout);
        return 0;
    }
    log::setup(
        args.options.log_level.value_or(load.config ? load.config->loglevel : LogLevel::info));
    if (!load.config) {
        for (auto& e : load.errors)
            spdlog::error("{}", e.str());
        spdlog::error("not starting: {} problem(s) in the configuration", load.errors.size());
        return 1;
    }
    try {
        adopt_listen_fds();
        Manager manager(std::move(args.options), std::move(*load.config));
        return manager.run();
    } catch (const std::exception& e) {
        spdlog::critical("{}", e.what());
        return 1;
    }
}
