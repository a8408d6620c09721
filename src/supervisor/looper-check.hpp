// SPDX-License-Identifier: GPL-3.0-or-later
// `loopabull --check-config` asks each bundled looper to check its own options: the looper is
// started as a run would start it (the same environment, its config in the file named by
// LOOPABULL_CONFIG_FILE), with --check-config before its own arguments, and exits 0 when its
// options are valid, non-zero with the problems on stderr otherwise (loopabull-looper(7)).
#pragma once

#include "core/config.hpp"

#include <string>
#include <vector>

namespace loopabull {

// Whether the bundled looper `name` (command[0] as written) checks its own options.
bool checks_own_options(const LooperConfig& looper);

struct LooperCheck {
    std::vector<std::string> problems; // from checks that failed
    std::vector<std::string> warnings; // what passing checks said on stderr
};

// Runs the check of every looper of config that has one. Each line a looper wrote on stderr
// becomes "FILE: looper NAME: TEXT" (or how the check failed to run). instance is handed over
// as LOOPABULL_INSTANCE. Blocks until every check has exited.
LooperCheck check_looper_options(const Config& config, const std::string& instance);

} // namespace loopabull
