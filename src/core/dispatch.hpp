// SPDX-License-Identifier: GPL-3.0-or-later
// What happens to an event, decided in one place for the supervisor and for explain: the
// routing_keys selection, the looper's own allowlist, the routes, the playbook, the throttle and
// the serialization value. Pure logic, apart from the playbook lookup the caller passes in.
#pragma once

#include "core/config.hpp"
#include "core/protocol.hpp"
#include "core/route.hpp"
#include "core/routing.hpp"
#include "core/scheduler.hpp"

#include <nlohmann/json.hpp>

#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace loopabull {

// Resolves a playbook path relative to playbooks_dir with the escape-proof lookup
// (find_playbook_at in routing.hpp).
using PlaybookResolver = std::function<PlaybookLookup(const std::string& relative)>;

struct Dispatch;

// looper: the looper the event came from; empty in explain without --looper (then no looper
// restriction is checked). want_verdicts: record each route's verdict (explain). Cost on the event
// path: the routing_keys patterns, the looper's allowlist, the routes' keys and conditions up to
// the first that takes the event (no allocation for them), and the playbook lookup; no sentence
// is written for a refusal until reason() is asked.
Dispatch dispatch(const Config& config, std::string_view key, std::string_view looper,
                  const nlohmann::json& body, const PlaybookResolver& resolve,
                  bool want_verdicts = false);

struct Dispatch {
    enum class Verdict {
        run,          // queue a job (after the throttle: see throttle_key)
        not_selected, // routing_keys does not select the key: unrouted
        not_allowed,  // outside the looper's own routing_keys: rejected
        no_route,     // routes are configured and none takes the event: unrouted
        no_playbook,  // the playbook does not exist: unrouted
        bad_playbook, // the playbook escapes playbooks_dir or is no file: rejected
        lookup_failed, // the playbook could not be looked up (our environment's fault): failed
        bad_body,     // top-level form: a body key Ansible gives meaning to: rejected
    };
    Verdict verdict = Verdict::run;
    Result result = Result::succeeded;       // the answer when the verdict is not run
    RouteChoice choice;                      // which route took it (choice.route), or came closest
    PlaybookLookup playbook{};               // when a playbook was looked up
    std::optional<std::string> serial;       // the scheduler key when the route serializes
    std::optional<std::string> serial_value; // the value itself (absent: nullopt)
    std::optional<std::string> throttle_key; // the Throttler key when the route throttles
    std::optional<std::string> throttle_value;

    bool runs() const noexcept { return verdict == Verdict::run; }
    std::string route_name() const { return choice.route ? choice.route->name : std::string(); }

    // A person's sentence when the verdict is not run (empty for run); key and looper: those
    // given to dispatch(). Written here, when someone reads it (a log line that passes its level
    // and rate limit, the ledger, explain), not for every event: a flood of keys that
    // routing_keys does not select, or that no route takes, would otherwise pay for a sentence
    // (and, for the closest route, a JSON rendering of its failed condition) per event
    // (docs/PERFORMANCE.md, "20 routes").
    std::string reason(std::string_view key, std::string_view looper) const;

  private:
    friend Dispatch dispatch(const Config&, std::string_view, std::string_view,
                             const nlohmann::json&, const PlaybookResolver&, bool);
    std::string fixed_reason_;       // bad_body: the sentence, written when found
    const Route* closest_ = nullptr; // no_route: the route that came closest, if any
};

// What the supervisor knows at the moment of an explain: nothing offline.
struct LiveState {
    const Scheduler* scheduler = nullptr;
    const Throttler* throttler = nullptr;
    std::uint64_t now_usec = 0; // CLOCK_MONOTONIC, the throttler's clock
    std::string instance;
};

// The answer to "would this event run, and why (not)?".
struct Explanation {
    Dispatch dispatch;
    bool would_run = false; // a playbook would run now (not throttled)
    bool live = false;
    bool throttled = false;               // live: the value's window is open
    std::uint64_t throttled_for_usec = 0; // live: how long it stays open
    bool serial_running = false;          // live: a job with this value runs
    std::size_t serial_waiting = 0;       // live: jobs with this value waiting
    std::string vars;                     // the vars file it would receive
    std::string routing_key, looper;
    std::vector<std::string> route_lines; // one line per route, for people

    std::string text(const Config& config) const; // for people, several lines
    nlohmann::json to_json() const;               // for scripts
};

Explanation explain(const Config& config, std::string_view key, std::string_view looper,
                    const nlohmann::json& body, const PlaybookResolver& resolve,
                    const LiveState* live);

} // namespace loopabull
