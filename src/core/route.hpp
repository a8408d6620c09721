// SPDX-License-Identifier: GPL-3.0-or-later
// Routes (`routes:` in loopabull.yml(5)): an ordered list; the first route that takes an event
// decides its playbook, its serialization and its throttle. Pure logic: parsing and deciding.
#pragma once

#include "core/condition.hpp"
#include "core/routing.hpp"

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace loopabull {

struct Config;

// Where a serialization or throttle value comes from: a JSON Pointer into the body, or the
// routing key (written `routing_key`, which no JSON Pointer can be).
struct ValueSource {
    bool routing_key = false;
    BodyPath path;

    std::string text() const { return routing_key ? "routing_key" : path.text; }
    // The value for this event: a string as itself, any other JSON value as its JSON text, and
    // nothing when the path names nothing (all such events then share one value, "absent").
    std::optional<std::string> value(std::string_view key, const nlohmann::json& body) const;
};

struct Throttle {
    ValueSource per;
    std::chrono::microseconds once_within{0};
};

struct Route {
    std::string name;                     // as configured, or "#N" (1-based position)
    std::vector<std::string> keys;        // routing keys or AMQP patterns, as routing_keys
    std::vector<RoutingPattern> key_patterns; // the same, split once when read (matching)
    std::vector<std::string> loopers;     // empty: every looper
    std::vector<Condition> when;          // all must hold
    std::optional<std::string> playbook;  // relative to playbooks_dir; default: the key's layout
    std::optional<ValueSource> serialize; // at most one running job per value (per route)
    bool coalesce = false;                // with serialize: only the newest waiting job is kept
    std::optional<Throttle> throttle;
    int line = 0; // where it was configured, for messages

    bool takes_key(std::string_view key) const;
    // key_words: RoutingWords(key), split once for all routes.
    bool takes_key(std::string_view key, const RoutingWords& key_words) const;
    // An empty looper (explain without --looper) passes every looper filter.
    bool takes_looper(std::string_view looper) const;
};

using RouteErrorSink = ConditionErrorSink;

// Reads the `routes:` list. looper_names: the configured loopers (a route naming another one is
// an error). Every problem is reported through errors (bad JSON Pointer syntax, bad regular
// expression, unknown keys...); the routes without problems are returned.
std::vector<Route> parse_routes(const YAML::Node& node,
                                const std::vector<std::string>& looper_names,
                                const RouteErrorSink& errors);

// The configured loopers' names (what parse_routes checks `loopers:` against).
std::vector<std::string> looper_names(const Config& config);

// Reports each route's `playbook` that is not a regular file under playbooks_dir (the
// configuration check; at run time the escape-proof lookup decides again).
void check_route_playbooks(const YAML::Node& routes, const std::string& playbooks_dir,
                           const RouteErrorSink& errors);

// Reads a looper's own `routing_keys` allowlist (patterns as routing_keys).
std::optional<std::vector<std::string>> parse_looper_allowlist(const YAML::Node& node,
                                                               const RouteErrorSink& errors);

// How each route judged an event (explain, and the log line of an event no route takes).
struct RouteVerdict {
    enum class Outcome { key, looper, condition, matched };
    std::size_t index = 0;
    Outcome outcome = Outcome::key;  // key/looper/condition: why it did not take the event
    std::size_t conditions_held = 0; // before the first that failed
    std::optional<std::size_t> failed_condition; // index into Route::when
};

struct RouteChoice {
    const Route* route = nullptr;       // the first route that takes the event, or none
    std::optional<std::size_t> closest; // no route: the one whose key and looper matched and
                                        // whose conditions held longest (first on a tie)
    std::size_t closest_held = 0;       // the closest route's conditions that held
    std::size_t closest_failed = 0;     // and the index of the one that failed
    std::vector<RouteVerdict> verdicts; // filled only when asked (explain)
};

// The first route that takes (key, looper, body). Cost: keys and conditions of the routes up to
// the first match; no allocation unless verdicts are asked for.
RouteChoice choose_route(const std::vector<Route>& routes, std::string_view key,
                         std::string_view looper, const nlohmann::json& body,
                         bool want_verdicts = false);

// The serialization value that keys the scheduler: the route's name and the value, so that two
// routes serializing on the same field do not wait for each other.
std::string serial_key(const Route& route, const std::optional<std::string>& value);

// A value as a person reads it in logs and explain: strings as themselves, absent as "(absent)".
std::string display_value(const std::optional<std::string>& value);

} // namespace loopabull
