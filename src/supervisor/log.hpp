// SPDX-License-Identifier: GPL-3.0-or-later
// Logging: spdlog, synchronous (the supervisor forks; no logging threads), to stderr or, when
// JOURNAL_STREAM says stderr is the journal, straight to the journal with structured fields.
#pragma once

#include "core/log-level.hpp"

#include <spdlog/spdlog.h>

#include <string_view>

namespace loopabull::log {

// Context attached to every message logged while it is in scope (journal fields
// LOOPABULL_LOOPER, LOOPABULL_JOB, LOOPABULL_ROUTING_KEY).
struct Fields {
    std::string_view looper = {};
    std::string_view job = {};
    std::string_view routing_key = {};
};

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

} // namespace loopabull::log
