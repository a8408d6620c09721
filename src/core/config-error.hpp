// SPDX-License-Identifier: GPL-3.0-or-later
// One problem found in a configuration or profile file, with its position.
#pragma once

#include <string>

namespace loopabull {

struct ConfigError {
    std::string file;
    int line = 0; // 1-based; 0 when the problem has no position (file unreadable)
    int column = 0;
    std::string message;

    // "FILE:LINE:COL: message", or "FILE: message" without a position.
    std::string str() const;
};

} // namespace loopabull
