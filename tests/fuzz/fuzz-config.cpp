// SPDX-License-Identifier: GPL-3.0-or-later
// The configuration loader on arbitrary bytes: the current dialect and both legacy dialects.
// Invariants: it never throws or crashes; it returns a config or at least one error, never both;
// every error names the file and says something; a config it accepts is one the supervisor can
// run (a known dialect, loopers with a command, valid routing_keys).
#include "core/config.hpp"

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

using namespace loopabull;

namespace {

const std::string kPath = "/etc/loopabull/fuzz.yml";

void check(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "invariant violated: %s\n", what);
        std::abort();
    }
}

void check_config(const Config& c) {
    check(c.dialect == "loopabull" || c.dialect == "legacy-readme" || c.dialect == "legacy-0.0.7",
          "known dialect");
    check(!c.loopers.empty(), "at least one looper");
    for (auto& l : c.loopers) {
        check(!l.name.empty() && !l.command.empty(), "looper has a name and a command");
        check(l.max_line_length > 0, "max_line_length is positive");
    }
    check(!c.routing_keys.empty(), "routing_keys is not empty");
    for (auto& k : c.routing_keys)
        check(!routing_pattern_error(k), "routing_keys entries are valid patterns");
    check(!c.ansible.playbooks_dir.empty(), "playbooks_dir is set");
    check(!c.ansible.playbook_cmd.empty(), "playbook_cmd is not empty");
    check(c.executor.max_parallel > 0, "max_parallel is positive");
}

// executor.seccomp: PATH makes the loader read a profile from disk, where the fuzzer could name
// /dev/zero or a FIFO and hang; profiles are files, not these bytes, so such inputs are skipped.
bool names_a_seccomp_profile(const std::string& text) {
    try {
        auto root = YAML::Load(text);
        if (!root.IsMap()) return false;
        for (auto top : root) {
            if (!top.first.IsScalar() || top.first.Scalar() != "executor" || !top.second.IsMap())
                continue;
            for (auto kv : top.second)
                if (kv.first.IsScalar() && kv.first.Scalar() == "seccomp" &&
                    !(kv.second.IsScalar() &&
                      (kv.second.Scalar() == "off" || kv.second.Scalar() == "default")))
                    return true;
        }
    } catch (const YAML::Exception&) {
    }
    return false;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string text(reinterpret_cast<const char*>(data), size);
    if (names_a_seccomp_profile(text)) return 0;
    auto load = parse_config(
        text, kPath, {.looper_dir = "/usr/libexec/loopabull/loopers", .check_files = false});
    check(load.config.has_value() != !load.errors.empty(), "a config or errors, not both");
    for (auto& e : load.errors) {
        check(e.file == kPath && !e.message.empty(), "an error names the file and says why");
        check(e.line >= 0 && e.column >= 0, "positions are not negative");
        check(!e.str().empty(), "an error formats");
    }
    if (load.config) check_config(*load.config);
    return 0;
}
