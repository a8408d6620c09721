// SPDX-License-Identifier: GPL-3.0-or-later
// Logging: spdlog, synchronous (the supervisor forks; no logging threads), to stderr or, when
// JOURNAL_STREAM says stderr is the journal, straight to the journal with structured fields.
#pragma once

#include "core/log-level.hpp"
#include "core/log-safe.hpp"

#include <spdlog/spdlog.h>

#include <string_view>

namespace loopabull::log {

// Context attached to every message logged while it is in scope (journal fields
// LOOPABULL_LOOPER, LOOPABULL_JOB, LOOPABULL_ROUTING_KEY, LOOPABULL_RESULT, MESSAGE_ID).
struct Fields {
    std::string_view looper = {};
    std::string_view job = {};
    std::string_view routing_key = {};
    std::string_view result = {};     // a job's protocol v1 result, on its end message
    std::string_view message_id = {}; // one of the ids below: the message has a catalog entry
};

// MESSAGE_IDs of the messages that catalog/loopabull.catalog explains (journalctl -x), fixed
// forever (made with systemd-id128 new): `journalctl MESSAGE_ID=...` finds every job.
inline constexpr std::string_view kJobStarted = "616a2627c52b4efaa9fdaf5c539cb6f8";
inline constexpr std::string_view kJobEnded = "5567f895ecde4aef8480d4c79b8aef64";

class Scope {
  public:
    explicit Scope(const Fields& f) noexcept;
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

  private:
    const Fields* previous_;
};

void setup(LogLevel level);
void set_level(LogLevel level);

// Whether a rate-limited line may be logged now (LogRateLimit::check on the steady clock); when
// lines were left out since the last one, says how many first, at `level`:
// "suppressed N similar messages (WHAT) in the last seconds".
bool may_log(LogRateLimit& limit, std::string_view what,
             spdlog::level::level_enum level = spdlog::level::warn);

} // namespace loopabull::log
