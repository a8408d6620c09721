// SPDX-License-Identifier: GPL-3.0-or-later
// Text from outside (file names, routing keys, looper stderr, D-Bus callers' names) made safe to
// log, and a limit on log lines that outsiders cause. Pure logic.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace loopabull {

// The text with every byte that could forge or hide a log line written as an escape: a backslash
// as "\\", \n \r \t, other C0 controls and DEL as \xNN, C1 controls (U+0080..U+009F), the line and
// paragraph separators and the bidirectional overrides (U+202A..U+202E, U+2066..U+2069, which
// reorder what a terminal shows: "Trojan Source", CVE-2021-42574) as \uNNNN, and bytes that are
// not UTF-8 as \xNN. Everything else, printable UTF-8 included, is kept. The result holds no
// control character, so a log line stays one line, whichever sink writes it.
std::string escape_for_log(std::string_view text);

// Whether text holds a byte escape_for_log would change other than a backslash: a message
// without one needs no escaping.
bool needs_log_escape(std::string_view text) noexcept;

// The text as it is when it needs no escaping, else escape_for_log(text): for messages that may
// quote outside text escaped already (a rejection reason), so that escaping twice does not double
// their backslashes.
std::string loggable(std::string_view text);

// At most `burst` lines per `interval`; what is left out is counted, so that the next line that
// passes (or flush()) can say how many were suppressed. Times are the caller's monotonic clock.
class LogRateLimit {
  public:
    using clock = std::chrono::steady_clock;

    LogRateLimit(unsigned burst, std::chrono::microseconds interval) noexcept
        : burst_(burst), interval_(interval) {}

    struct Verdict {
        bool log = false;             // log this line
        std::uint64_t suppressed = 0; // lines left out since the last one logged (log first)
    };

    Verdict check(clock::time_point now) noexcept;
    // Lines suppressed and not yet reported (at exit, say); resets the count.
    std::uint64_t flush() noexcept;

  private:
    unsigned burst_;
    std::chrono::microseconds interval_;
    clock::time_point window_start_{};
    unsigned in_window_ = 0;
    std::uint64_t suppressed_ = 0;
    bool started_ = false;
};

} // namespace loopabull
