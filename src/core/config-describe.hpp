// SPDX-License-Identifier: GPL-3.0-or-later
// The effective configuration, one fact a line ("key: value"), for `--check-config -v`: what a
// file means once defaults, relative paths and looper lookup are applied. Two files that print
// the same lines run the same loopers and playbooks (the migration tests compare them so).
#pragma once

#include "core/config.hpp"

#include <string>

namespace loopabull {

// Lines end in '\n'. Values of looper options whose key contains "password" are shown as
// "(hidden)": the output goes to terminals and CI logs.
std::string describe_config(const Config& config);

// The program a looper runs and how it was found: "/usr/bin/x ('x' found in PATH)",
// ".../spool (the bundled looper 'spool')" or "/srv/l.sh (a path)".
std::string describe_looper_program(const LooperConfig& looper);

} // namespace loopabull
