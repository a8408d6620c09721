// SPDX-License-Identifier: GPL-3.0-or-later
// The reference for routing_pattern_matches (AMQP topic semantics: '*' one word, '#' zero or
// more), written the plainest way: the set of key positions reachable word by word of the
// pattern. Shared by tests/fuzz/fuzz-routing and tests/unit/core/test-routing, which check that
// the supervisor's matcher agrees with it.
#pragma once

#include <cstddef>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace loopabull::test {

inline std::vector<std::string> split_at(std::string_view s, char sep) {
    std::vector<std::string> out;
    std::size_t pos = 0;
    for (auto at = s.find(sep); at != std::string_view::npos; at = s.find(sep, pos)) {
        out.emplace_back(s.substr(pos, at - pos));
        pos = at + 1;
    }
    out.emplace_back(s.substr(pos));
    return out;
}

inline bool reference_match(std::string_view pattern, std::string_view key) {
    if (pattern == "all") return true;
    auto p = split_at(pattern, '.'), k = split_at(key, '.');
    std::set<std::size_t> at{0};
    for (auto& w : p) {
        std::set<std::size_t> next;
        for (auto j : at) {
            if (w == "#")
                for (auto s = j; s <= k.size(); ++s)
                    next.insert(s);
            else if (j < k.size() && (w == "*" || w == k[j]))
                next.insert(j + 1);
        }
        at = std::move(next);
    }
    return at.count(k.size()) > 0;
}

} // namespace loopabull::test
