// SPDX-License-Identifier: GPL-3.0-or-later
#include "ctl/ctl-replay.hpp"

#include "core/exact-json.hpp"

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

// Exact: an integer beyond 64 bits is printed as it was sent, not as a float.
void print_body(const std::string& text) {
    auto body = parse_exact_json(text, nullptr);
    if (!body) throw std::runtime_error("unexpected reply from loopabull: not JSON");
    std::printf("%s\n", dump_exact_json(*body, 2).c_str());
}

std::string job_record_lines(const nlohmann::ordered_json& record) {
    if (!record.is_object()) return {};
    std::string out;
    if (auto v = record.value("replay_of", nlohmann::ordered_json()); v.is_number_unsigned())
        out += "   Replay of: job " + std::to_string(v.get<std::uint64_t>()) + "\n";
    auto body = record.value("body", nlohmann::ordered_json());
    auto size = record.value("body_size", nlohmann::ordered_json());
    if (body.is_string() && size.is_number_unsigned()) {
        auto bytes = std::to_string(size.get<std::uint64_t>()) + " bytes";
        out += body == "stored"
                   ? "        Body: stored, " + bytes + " (job ID --body)\n"
                   : "        Body: not stored, " + bytes + " are over history.max_body_size\n";
    }
    return out;
}

} // namespace loopabull::ctl
