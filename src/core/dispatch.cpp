// SPDX-License-Identifier: GPL-3.0-or-later
#include "core/dispatch.hpp"

#include "core/event-names.hpp"

#include "core/job-vars.hpp"

#include <algorithm>

namespace loopabull {

using json = nlohmann::json;

namespace {

std::string usec_text(std::uint64_t usec) {
    std::uint64_t s = (usec + 999999) / 1000000;
    if (s < 120) return std::to_string(s) + "s";
    if (s < 7200) return std::to_string(s / 60) + "min " + std::to_string(s % 60) + "s";
    return std::to_string(s / 3600) + "h " + std::to_string(s % 3600 / 60) + "min";
}

const char* verdict_name(Dispatch::Verdict v) {
    switch (v) {
    case Dispatch::Verdict::run:
        return "run";
    case Dispatch::Verdict::not_selected:
        return "not_selected";
    case Dispatch::Verdict::not_allowed:
        return "not_allowed";
    case Dispatch::Verdict::no_route:
        return "no_route";
    case Dispatch::Verdict::no_playbook:
        return "no_playbook";
    case Dispatch::Verdict::bad_playbook:
        return "bad_playbook";
    case Dispatch::Verdict::lookup_failed:
        return "lookup_failed";
    case Dispatch::Verdict::bad_body:
        return "bad_body";
    }
    return "?";
}

// As RoutingFilter::selects, without copying the patterns on every event.
bool selects(const std::vector<std::string>& patterns, std::string_view key) {
    return std::any_of(patterns.begin(), patterns.end(),
                       [&](const std::string& p) { return routing_pattern_matches(p, key); });
}

} // namespace

Dispatch dispatch(const Config& config, std::string_view key, std::string_view looper,
                  const json& body, const PlaybookResolver& resolve, bool want_verdicts) {
    Dispatch d;
    auto refuse = [&](Dispatch::Verdict v, Result r, std::string reason = {}) {
        d.verdict = v;
        d.result = r;
        d.fixed_reason_ = std::move(reason);
        return std::move(d);
    };
    // Refusals carry no sentence: reason() writes it when someone reads it.
    if (!selects(config.routing_keys, key))
        return refuse(Dispatch::Verdict::not_selected, Result::unrouted);
    if (!looper.empty()) {
        auto lc = std::find_if(config.loopers.begin(), config.loopers.end(),
                               [&](const LooperConfig& l) { return l.name == looper; });
        if (lc != config.loopers.end() && lc->routing_keys && !selects(*lc->routing_keys, key))
            return refuse(Dispatch::Verdict::not_allowed, Result::rejected);
    }
    std::string relative;
    if (!config.routes.empty()) {
        d.choice = choose_route(config.routes, key, looper, body, want_verdicts);
        if (!d.choice.route) {
            if (d.choice.closest) d.closest_ = &config.routes[*d.choice.closest];
            return refuse(Dispatch::Verdict::no_route, Result::unrouted);
        }
        const Route& r = *d.choice.route;
        relative = r.playbook ? *r.playbook : playbook_relative_path(key, config.ansible.layout);
    } else {
        relative = playbook_relative_path(key, config.ansible.layout);
    }
    d.playbook = resolve(relative);
    using S = PlaybookLookup::Status;
    if (d.playbook.status == S::missing)
        return refuse(Dispatch::Verdict::no_playbook, Result::unrouted);
    if (d.playbook.status == S::error) // playbooks_dir unreadable, say: retryable
        return refuse(Dispatch::Verdict::lookup_failed, Result::failed);
    if (d.playbook.status != S::found)
        return refuse(Dispatch::Verdict::bad_playbook, Result::rejected);
    if (!config.ansible.event_variable && body.is_object()) {
        // The top-level form: a key Ansible gives meaning to would steer the play.
        for (auto& [name, value] : body.items())
            if (auto err = top_level_key_error(name))
                return refuse(Dispatch::Verdict::bad_body, Result::rejected,
                              *err + " (ansible.event_variable: top-level)");
    }
    if (const Route* r = d.choice.route) {
        if (r->serialize) {
            d.serial_value = r->serialize->value(key, body);
            d.serial = serial_key(*r, d.serial_value);
        }
        if (r->throttle) {
            d.throttle_value = r->throttle->per.value(key, body);
            d.throttle_key = serial_key(*r, d.throttle_value);
        }
    }
    return d;
}

std::string Dispatch::reason(std::string_view key, std::string_view looper) const {
    switch (verdict) {
    case Verdict::run:
        return {};
    case Verdict::not_selected:
        return "routing_keys does not select '" + std::string(key) + "'";
    case Verdict::not_allowed:
        return "looper '" + std::string(looper) + "' may not send routing key '" +
               std::string(key) + "' (its routing_keys allowlist)";
    case Verdict::no_route: {
        std::string reason = "no route takes it";
        if (closest_)
            reason += "; closest: route '" + closest_->name + "' (" +
                      std::to_string(choice.closest_held) + " of " +
                      std::to_string(closest_->when.size()) + " conditions held; failed: " +
                      closest_->when[choice.closest_failed].describe() + ")";
        return reason;
    }
    case Verdict::no_playbook:
        return "no playbook " + playbook.path;
    case Verdict::lookup_failed:
        return "cannot open playbook " + playbook.path + ": " + playbook.detail;
    case Verdict::bad_playbook:
        return "playbook " + playbook.path + " " + playbook.detail;
    case Verdict::bad_body:
        return fixed_reason_;
    }
    return fixed_reason_;
}

Explanation explain(const Config& config, std::string_view key, std::string_view looper,
                    const json& body, const PlaybookResolver& resolve, const LiveState* live) {
    Explanation e;
    e.routing_key = std::string(key);
    e.looper = std::string(looper);
    e.dispatch = dispatch(config, key, looper, body, resolve, true);
    e.live = live != nullptr;
    const Dispatch& d = e.dispatch;
    for (const auto& v : d.choice.verdicts) {
        const Route& r = config.routes[v.index];
        std::string line = "route '" + r.name + "' (line " + std::to_string(r.line) + "): ";
        switch (v.outcome) {
        case RouteVerdict::Outcome::key:
            line += "key not in keys";
            break;
        case RouteVerdict::Outcome::looper:
            line += "not for this looper";
            break;
        case RouteVerdict::Outcome::condition:
            line += "condition " + std::to_string(*v.failed_condition + 1) + " of " +
                    std::to_string(r.when.size()) +
                    " failed: " + r.when[*v.failed_condition].describe();
            break;
        case RouteVerdict::Outcome::matched:
            line += "MATCHED" + std::string(r.when.empty() ? "" : " (every condition holds)");
            break;
        }
        e.route_lines.push_back(std::move(line));
    }
    if (d.runs()) {
        e.would_run = true;
        if (live && live->scheduler && d.serial) {
            e.serial_running = live->scheduler->serial_running(*d.serial);
            e.serial_waiting = live->scheduler->serial_waiting(*d.serial);
        }
        if (live && live->throttler && d.throttle_key) {
            if (auto until = live->throttler->open_until(*d.throttle_key, live->now_usec)) {
                e.throttled = true;
                e.throttled_for_usec = *until - live->now_usec;
                e.would_run = false;
            }
        }
        JobIdentity id{std::string(key),
                       "(assigned when queued)",
                       live ? live->instance : std::string("(the instance)"),
                       looper.empty() ? std::string("(the looper)") : std::string(looper),
                       std::nullopt,
                       d.route_name()};
        e.vars = job_vars_text(body, id, config.ansible.trusted_payloads,
                               config.ansible.event_variable);
    }
    return e;
}

std::string Explanation::text(const Config& config) const {
    const Dispatch& d = dispatch;
    std::string out;
    out += "event: " + routing_key + (looper.empty() ? "" : " from looper " + looper) + "\n";
    bool selected = d.verdict != Dispatch::Verdict::not_selected;
    out +=
        std::string("routing_keys: ") + (selected ? "selects" : "does NOT select") + " the key\n";
    const std::string reason = d.reason(routing_key, looper);
    if (!selected) return out + "result: unrouted (" + reason + ")\n";
    if (d.verdict == Dispatch::Verdict::not_allowed)
        return out + "looper allowlist: REFUSED\nresult: rejected (" + reason + ")\n";
    if (config.routes.empty()) {
        out += "routes: none configured; the key's playbook by layout\n";
    } else {
        out += "routes, in order (the first that takes the event decides):\n";
        for (const auto& l : route_lines)
            out += "  " + l + "\n";
        if (d.choice.route && route_lines.size() < config.routes.size())
            out += "  (" + std::to_string(config.routes.size() - route_lines.size()) +
                   " later route(s) not consulted)\n";
    }
    if (d.verdict == Dispatch::Verdict::no_route)
        return out + "result: unrouted (" + reason + ")\n";
    out += "playbook: " + d.playbook.path;
    if (d.verdict == Dispatch::Verdict::no_playbook)
        return out + " (missing)\nresult: unrouted (" + reason + ")\n";
    if (d.verdict == Dispatch::Verdict::bad_playbook)
        return out + " (REFUSED: " + d.playbook.detail + ")\nresult: rejected\n";
    if (d.verdict == Dispatch::Verdict::lookup_failed)
        return out + " (CANNOT OPEN: " + d.playbook.detail + ")\nresult: failed (retryable)\n";
    if (d.verdict == Dispatch::Verdict::bad_body)
        return out + "\nresult: rejected (" + reason + ")\n";
    out += "\n";
    const Route* r = d.choice.route;
    if (r && r->serialize) {
        out += "serialize: " + r->serialize->text() + " = " + display_value(d.serial_value) +
               (r->coalesce ? " (coalesced)" : "");
        if (live)
            out += serial_running ? "; a job with this value runs, " +
                                        std::to_string(serial_waiting) + " waiting: it would wait"
                                  : "; no job with this value runs";
        out += "\n";
    }
    if (r && r->throttle) {
        out += "throttle: " + r->throttle->per.text() + " = " + display_value(d.throttle_value) +
               ", once within " +
               usec_text(static_cast<std::uint64_t>(r->throttle->once_within.count()));
        if (live)
            out += throttled ? "; THROTTLED for another " + usec_text(throttled_for_usec)
                             : "; window not open: it would run";
        out += "\n";
    }
    if (throttled) return out + "result: throttled (not run)\n";
    out += "result: would run" +
           std::string(live ? ""
                            : " (offline: serialization and throttle "
                              "state are only known to a running "
                              "instance)") +
           "\nvariables the playbook would receive:\n";
    std::size_t start = 0;
    while (start < vars.size()) {
        auto end = vars.find('\n', start);
        if (end == std::string::npos) end = vars.size();
        out += "  " + vars.substr(start, end - start) + "\n";
        start = end + 1;
    }
    return out;
}

json Explanation::to_json() const {
    const Dispatch& d = dispatch;
    json j;
    j["routing_key"] = routing_key;
    if (!looper.empty()) j["looper"] = looper;
    j["would_run"] = would_run;
    j["verdict"] = throttled ? "throttled" : verdict_name(d.verdict);
    j["result"] = would_run   ? json(nullptr)
                  : throttled ? json("throttled")
                              : json(std::string(to_string(d.result)));
    if (auto reason = d.reason(routing_key, looper); !reason.empty()) j["reason"] = reason;
    j["selected_by_routing_keys"] = d.verdict != Dispatch::Verdict::not_selected;
    j["routes"] = route_lines;
    if (d.choice.route) j["route"] = d.choice.route->name;
    if (!d.playbook.path.empty()) j["playbook"] = d.playbook.path;
    if (d.serial_value || d.serial)
        j["serialize_value"] = d.serial_value ? json(*d.serial_value) : json(nullptr);
    if (d.throttle_key)
        j["throttle_value"] = d.throttle_value ? json(*d.throttle_value) : json(nullptr);
    j["live"] = live;
    if (live && d.serial) {
        j["serial_running"] = serial_running;
        j["serial_waiting"] = serial_waiting;
    }
    if (live && d.throttle_key) {
        j["throttled"] = throttled;
        if (throttled) j["throttled_for_usec"] = throttled_for_usec;
    }
    if (!vars.empty()) j["vars"] = vars;
    return j;
}

} // namespace loopabull
