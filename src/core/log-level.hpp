// SPDX-License-Identifier: GPL-3.0-or-later
// The log levels of the configuration's `loglevel` and of `--log-level`.
#pragma once

#include <optional>
#include <string_view>

namespace loopabull {

enum class LogLevel { debug, info, warning, error };

// "debug", "info", "warning" (or "warn"), "error", in any case; nullopt for anything else.
std::optional<LogLevel> parse_log_level(std::string_view text);

} // namespace loopabull
