// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// What the amqp looper does with a message once the supervisor answers, and which deliveries
// are waiting for an answer. Pure: no network, testable alone.

#include "options.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

namespace loopabull::amqp {

enum class Action {
    ack,     // done: remove it from the queue
    reject,  // remove it without running it again (to the dead-letter exchange, if any)
    requeue, // put it back as it is, to run again (not counted as an attempt)
    retry,   // publish a copy with the attempt count raised, then ack the original
};

const char* action_name(Action a);

// `attempts` counts the runs before this delivery (0 the first time). Failed and timed-out
// runs are bounded by max_attempts, so a broken playbook never loops for ever. Results as in
// loopabull-looper(7): aborted (an operator's cancel) is rejected without requeue; superseded
// and throttled are acked; a result not listed there is treated as unrouted (acked).
Action decide(std::string_view result, int attempts, const Options& options);

// Whether decide() knows this result by name (the others are logged and treated as unrouted).
bool known_result(std::string_view result);

// The wait before the next attempt after `runs` runs (1 after the first failure): the
// (runs-1)th of retry_delays, its last one repeating; nullopt when there are no delays.
std::optional<seconds> retry_delay(int runs, const Options& options);

// A delivery waiting for the supervisor's answer; what a retry needs to publish its copy.
struct Delivery {
    std::uint64_t tag = 0;
    int attempts = 0;
    std::string routing_key; // as the playbook saw it (after the envelope, if any)
    std::string amqp_key;    // as the broker delivered it: what a retry copy keeps and signs
    std::string body;
    nlohmann::json properties; // content_type, message_id, headers...: see message.hpp
};

// Event ids are "GENERATION-TAG": delivery tags are only valid on the channel that delivered
// them, so an answer for a tag of an earlier connection must never reach the new channel.
class Ledger {
  public:
    std::uint64_t generation() const { return generation_; }
    // A new connection: every pending delivery is forgotten (the broker delivers them again).
    std::size_t new_generation();
    std::string add(Delivery d);

    enum class Lookup { found, stale, unknown };
    struct Taken {
        Lookup lookup = Lookup::unknown;
        std::optional<Delivery> delivery;
    };
    Taken take(std::string_view event_id);
    std::size_t pending() const { return pending_.size(); }

  private:
    std::uint64_t generation_ = 0;
    std::unordered_map<std::uint64_t, Delivery> pending_;
};

std::string event_id(std::uint64_t generation, std::uint64_t tag);
// nullopt when the text is not an id this looper makes.
std::optional<std::pair<std::uint64_t, std::uint64_t>> parse_event_id(std::string_view id);

} // namespace loopabull::amqp
