// SPDX-License-Identifier: GPL-3.0-or-later
#include "ctl/ctl-replay.hpp"

#include <nlohmann/json.hpp>

#include <cinttypes>
#include <cstdio>
#include <stdexcept>

namespace loopabull::ctl {

void print_replay(std::uint64_t new_id, std::uint64_t of, bool as_json) {
    if (as_json) {
        nlohmann::ordered_json j = {{"id", new_id}, {"replay_of", of}};
        std::printf("%s\n", j.dump(2).c_str());
        return;
    }
    std::printf("Job %" PRIu64 " queued: a replay of job %" PRIu64 ".\n", new_id, of);
}

void print_body(const std::string& text) {
    // ordered: the keys as the event had them.
    auto body = nlohmann::ordered_json::parse(text, nullptr, false);
    if (body.is_discarded()) throw std::runtime_error("unexpected reply from loopabull: not JSON");
    std::printf("%s\n", body.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
}

} // namespace loopabull::ctl
