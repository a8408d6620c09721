// SPDX-License-Identifier: GPL-3.0-or-later
// `loopabullctl history`: the arguments and the printing of the ledger's records (issue 17).
// The D-Bus call (ListHistory, org.loopabull.Loopabull1(5)) is made by loopabullctl.cpp.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>

namespace loopabull::ctl {

// --since TIME, as CLOCK_REALTIME microseconds: a duration back from now ("6h", "30min", the
// grammar of loopabull.yml(5)), "@SECONDS" since the epoch, or a UTC date and time
// "YYYY-MM-DD", "YYYY-MM-DDTHH:MM[:SS]" (a space may replace the T; a trailing Z is allowed).
// nullopt when it is none of these. now_usec: the current time.
std::optional<std::uint64_t> parse_since(const std::string& text, std::uint64_t now_usec);

// Prints ListHistory's records (a JSON array, newest first) as a table, or as JSON.
void print_history(const nlohmann::json& records, bool as_json);

} // namespace loopabull::ctl
