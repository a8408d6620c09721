// SPDX-License-Identifier: GPL-3.0-or-later
#include "policy.hpp"

#include <charconv>

namespace loopabull::amqp {

const char* action_name(Action a) {
    switch (a) {
    case Action::ack:
        return "ack";
    case Action::reject:
        return "reject";
    case Action::requeue:
        return "requeue";
    case Action::retry:
        return "retry";
    }
    return "reject";
}

namespace {

Action on_failure(int attempts, const Options& o) {
    switch (o.on_failure) {
    case OnFailure::ack:
        return Action::ack;
    case OnFailure::reject:
        return Action::reject;
    case OnFailure::retry:
        return attempts + 1 < o.max_attempts ? Action::retry : Action::reject;
    }
    return Action::reject;
}

} // namespace

Action decide(std::string_view result, int attempts, const Options& o) {
    if (result == "succeeded" || result == "unrouted") return Action::ack;
    // Added in protocol 0.2 (loopabull-looper(7)): done on purpose, settled as done.
    if (result == "superseded" || result == "throttled") return Action::ack;
    // A fault of the event, or an operator's cancel (`aborted`): final, to the dead letters.
    if (result == "rejected" || result == "aborted") return Action::reject;
    // Cancelled means the supervisor is stopping: the run says nothing about the message.
    if (result == "cancelled")
        return o.requeue_cancelled ? Action::requeue : on_failure(attempts, o);
    if (result == "failed" || result == "timeout") return on_failure(attempts, o);
    // A result this looper does not know: as `unrouted` (settle, never retry), as the protocol
    // says, so that a newer supervisor cannot make an older looper loop.
    return Action::ack;
}

bool known_result(std::string_view r) {
    for (auto k : {"succeeded", "failed", "unrouted", "rejected", "timeout", "cancelled", "aborted",
                   "superseded", "throttled"})
        if (r == k) return true;
    return false;
}

std::optional<seconds> retry_delay(int runs, const Options& o) {
    if (o.retry_delays.empty() || runs < 1) return std::nullopt;
    auto i = std::min<std::size_t>(static_cast<std::size_t>(runs) - 1, o.retry_delays.size() - 1);
    return o.retry_delays[i];
}

std::size_t Ledger::new_generation() {
    ++generation_;
    auto dropped = pending_.size();
    pending_.clear();
    return dropped;
}

std::string Ledger::add(Delivery d) {
    auto id = event_id(generation_, d.tag);
    pending_[d.tag] = std::move(d);
    return id;
}

Ledger::Taken Ledger::take(std::string_view id) {
    auto parsed = parse_event_id(id);
    if (!parsed) return {};
    if (parsed->first != generation_) return {Lookup::stale, std::nullopt};
    auto node = pending_.extract(parsed->second);
    if (node.empty()) return {};
    return {Lookup::found, std::move(node.mapped())};
}

std::string event_id(std::uint64_t generation, std::uint64_t tag) {
    return std::to_string(generation) + "-" + std::to_string(tag);
}

std::optional<std::pair<std::uint64_t, std::uint64_t>> parse_event_id(std::string_view id) {
    auto number = [](std::string_view s) -> std::optional<std::uint64_t> {
        std::uint64_t v = 0;
        if (s.empty() || s.size() > 20) return std::nullopt;
        auto [end, err] = std::from_chars(s.data(), s.data() + s.size(), v);
        if (err != std::errc() || end != s.data() + s.size()) return std::nullopt;
        return v;
    };
    auto dash = id.find('-');
    if (dash == std::string_view::npos) return std::nullopt;
    auto g = number(id.substr(0, dash));
    auto t = number(id.substr(dash + 1));
    if (!g || !t) return std::nullopt;
    return std::pair{*g, *t};
}

} // namespace loopabull::amqp
