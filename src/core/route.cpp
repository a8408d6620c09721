// SPDX-License-Identifier: GPL-3.0-or-later
#include "core/route.hpp"

#include "core/config.hpp"

#include <algorithm>
#include <filesystem>
#include <set>

namespace loopabull {

using json = nlohmann::json;

namespace {

const std::vector<std::string_view> kRouteKeys = {"name",     "keys",      "loopers",  "when",
                                                  "playbook", "serialize", "coalesce", "throttle"};

std::optional<std::vector<std::string>> string_list(const YAML::Node& node, std::string_view key,
                                                    const RouteErrorSink& errors) {
    if (node.IsScalar()) return std::vector<std::string>{node.Scalar()};
    if (!node.IsSequence() || node.size() == 0) {
        errors(node, "'" + std::string(key) + "' must be a non-empty list of strings");
        return std::nullopt;
    }
    std::vector<std::string> out;
    for (auto item : node) {
        if (!item.IsScalar() || item.Scalar().empty()) {
            errors(item, "'" + std::string(key) + "' must be a non-empty list of strings");
            return std::nullopt;
        }
        out.push_back(item.Scalar());
    }
    return out;
}

std::optional<std::vector<std::string>> patterns(const YAML::Node& node, std::string_view key,
                                                 const RouteErrorSink& errors) {
    auto list = string_list(node, key, errors);
    if (!list) return std::nullopt;
    bool ok = true;
    std::size_t i = 0;
    for (const auto& p : *list) {
        if (auto err = routing_pattern_error(p)) {
            errors(node.IsSequence() ? node[i] : node,
                   "'" + std::string(key) + "': '" + p + "': " + *err);
            ok = false;
        }
        ++i;
    }
    if (!ok) return std::nullopt;
    return list;
}

std::optional<ValueSource> value_source(const YAML::Node& node, std::string_view key,
                                        const RouteErrorSink& errors) {
    if (!node.IsScalar()) {
        errors(node, "'" + std::string(key) +
                         "' must be a JSON Pointer into the body (/msg/name) or routing_key");
        return std::nullopt;
    }
    ValueSource v;
    if (node.Scalar() == "routing_key") {
        v.routing_key = true;
        return v;
    }
    if (auto err = parse_body_path(node.Scalar(), v.path)) {
        errors(node, "'" + std::string(key) + "': " + *err + " (or routing_key)");
        return std::nullopt;
    }
    return v;
}

bool bad_playbook_path(const std::string& p) {
    if (p.empty() || p.front() == '/') return true;
    std::size_t start = 0;
    while (start <= p.size()) {
        auto end = p.find('/', start);
        if (end == std::string::npos) end = p.size();
        auto part = std::string_view(p).substr(start, end - start);
        if (part == ".." || part.empty()) return true;
        start = end + 1;
    }
    return false;
}

std::optional<Route> read_route(const YAML::Node& node, std::size_t index,
                                const std::vector<std::string>& looper_names,
                                const RouteErrorSink& errors) {
    if (!node.IsMap()) {
        errors(node, "a route must be a mapping with at least 'keys'");
        return std::nullopt;
    }
    bool ok = true;
    Route r;
    r.line = node.Mark().is_null() ? 0 : node.Mark().line + 1;
    std::set<std::string> seen;
    for (auto it = node.begin(); it != node.end(); ++it) {
        auto key = it->first.Scalar();
        if (!seen.insert(key).second) {
            errors(it->first, "duplicate key '" + key + "' in a route");
            ok = false;
        }
        if (std::find(kRouteKeys.begin(), kRouteKeys.end(), key) == kRouteKeys.end()) {
            errors(it->first, "unknown key '" + key +
                                  "' in a route (name, keys, loopers, when, playbook, serialize, "
                                  "coalesce, throttle)");
            ok = false;
        }
    }
    r.name = "#" + std::to_string(index + 1);
    if (auto v = node["name"]) {
        if (!v.IsScalar() || v.Scalar().empty())
            errors(v, "a route's 'name' must be a non-empty string"), ok = false;
        else
            r.name = v.Scalar();
    }
    if (auto v = node["keys"]) {
        if (auto k = patterns(v, "keys", errors)) {
            r.keys = std::move(*k);
            for (const auto& p : r.keys)
                r.key_patterns.emplace_back(p);
        } else {
            ok = false;
        }
    } else {
        errors(node, "route '" + r.name + "' has no 'keys' (use [all] for every key)");
        ok = false;
    }
    if (auto v = node["loopers"]) {
        if (auto l = string_list(v, "loopers", errors)) {
            for (std::size_t i = 0; i < l->size(); ++i)
                if (std::find(looper_names.begin(), looper_names.end(), (*l)[i]) ==
                    looper_names.end()) {
                    errors(v.IsSequence() ? v[i] : v, "route '" + r.name + "' names looper '" +
                                                          (*l)[i] + "', which is not configured");
                    ok = false;
                }
            r.loopers = std::move(*l);
        } else {
            ok = false;
        }
    }
    if (auto v = node["when"]) {
        if (!v.IsSequence() || v.size() == 0) {
            errors(v, "'when' must be a non-empty list of conditions");
            ok = false;
        } else {
            for (auto item : v) {
                if (auto c = parse_condition(item, errors))
                    r.when.push_back(std::move(*c));
                else
                    ok = false;
            }
        }
    }
    if (auto v = node["playbook"]) {
        if (!v.IsScalar() || bad_playbook_path(v.Scalar())) {
            errors(v, "'playbook' must be a relative path under playbooks_dir, without '..'");
            ok = false;
        } else {
            r.playbook = v.Scalar();
        }
    }
    if (auto v = node["serialize"]) {
        if (auto s = value_source(v, "serialize", errors))
            r.serialize = std::move(*s);
        else
            ok = false;
    }
    if (auto v = node["coalesce"]) {
        auto b = yaml_to_json(v);
        if (!b.is_boolean()) {
            errors(v, "'coalesce' must be true or false");
            ok = false;
        } else {
            r.coalesce = b.get<bool>();
            if (r.coalesce && !node["serialize"]) {
                errors(v, "'coalesce' needs 'serialize' (it keeps the newest event per value)");
                ok = false;
            }
        }
    }
    if (auto v = node["throttle"]) {
        if (!v.IsMap() || !v["per"] || !v["once_within"] || v.size() != 2) {
            errors(v, "'throttle' must be {per: PATH, once_within: DURATION}");
            ok = false;
        } else {
            Throttle t;
            auto per = value_source(v["per"], "per", errors);
            std::string err;
            auto d = v["once_within"].IsScalar() ? parse_duration(v["once_within"].Scalar(), &err)
                                                 : std::nullopt;
            if (!d || d->count() <= 0) {
                errors(v["once_within"],
                       "'once_within' must be a duration above 0 (10s, 5min, 1h)" +
                           (err.empty() ? std::string() : ": " + err));
                ok = false;
            }
            if (!per) ok = false;
            if (per && d) {
                t.per = std::move(*per);
                t.once_within = *d;
                r.throttle = std::move(t);
            }
        }
    }
    if (!ok) return std::nullopt;
    return r;
}

} // namespace

std::optional<std::string> ValueSource::value(std::string_view key, const json& body) const {
    if (routing_key) return std::string(key);
    auto* v = path.resolve(body);
    if (!v) return std::nullopt;
    if (v->is_string()) return v->get<std::string>();
    return v->dump(-1, ' ', false, json::error_handler_t::replace);
}

bool Route::takes_key(std::string_view key) const {
    return takes_key(key, RoutingWords(key));
}

bool Route::takes_key(std::string_view key, const RoutingWords& key_words) const {
    return std::any_of(key_patterns.begin(), key_patterns.end(),
                       [&](const RoutingPattern& p) { return p.matches(key, key_words); });
}

bool Route::takes_looper(std::string_view looper) const {
    return loopers.empty() || looper.empty() ||
           std::find(loopers.begin(), loopers.end(), looper) != loopers.end();
}

std::vector<Route> parse_routes(const YAML::Node& node,
                                const std::vector<std::string>& looper_names,
                                const RouteErrorSink& errors) {
    std::vector<Route> out;
    if (!node.IsSequence()) {
        errors(node, "'routes' must be a list of routes");
        return out;
    }
    std::set<std::string> names;
    std::size_t i = 0;
    for (auto item : node) {
        if (auto r = read_route(item, i, looper_names, errors)) {
            if (!names.insert(r->name).second)
                errors(item["name"] ? item["name"] : item,
                       "duplicate route name '" + r->name + "'");
            out.push_back(std::move(*r));
        }
        ++i;
    }
    return out;
}

std::vector<std::string> looper_names(const Config& config) {
    std::vector<std::string> names;
    for (const auto& l : config.loopers)
        names.push_back(l.name);
    return names;
}

void check_route_playbooks(const YAML::Node& routes, const std::string& playbooks_dir,
                           const RouteErrorSink& errors) {
    if (playbooks_dir.empty() || !routes.IsSequence()) return;
    for (auto route : routes) {
        auto pb = route.IsMap() ? route["playbook"] : YAML::Node();
        if (!pb || !pb.IsScalar() || bad_playbook_path(pb.Scalar())) continue;
        std::error_code ec;
        if (!std::filesystem::is_regular_file(playbooks_dir + "/" + pb.Scalar(), ec))
            errors(pb, "playbook '" + pb.Scalar() + "' is not a file under playbooks_dir (" +
                           playbooks_dir + ")");
    }
}

std::optional<std::vector<std::string>> parse_looper_allowlist(const YAML::Node& node,
                                                               const RouteErrorSink& errors) {
    return patterns(node, "routing_keys", errors);
}

RouteChoice choose_route(const std::vector<Route>& routes, std::string_view key,
                         std::string_view looper, const json& body, bool want_verdicts) {
    RouteChoice choice;
    std::optional<std::size_t> best_held;
    const RoutingWords key_words(key);
    for (std::size_t i = 0; i < routes.size(); ++i) {
        const Route& r = routes[i];
        RouteVerdict v;
        v.index = i;
        if (!r.takes_key(key, key_words)) {
            v.outcome = RouteVerdict::Outcome::key;
        } else if (!r.takes_looper(looper)) {
            v.outcome = RouteVerdict::Outcome::looper;
        } else {
            v.outcome = RouteVerdict::Outcome::matched;
            for (std::size_t c = 0; c < r.when.size(); ++c) {
                if (!r.when[c].holds(body)) {
                    v.outcome = RouteVerdict::Outcome::condition;
                    v.failed_condition = c;
                    break;
                }
                ++v.conditions_held;
            }
            if (v.outcome == RouteVerdict::Outcome::condition &&
                (!best_held || v.conditions_held > *best_held)) {
                best_held = v.conditions_held;
                choice.closest = i;
                choice.closest_held = v.conditions_held;
                choice.closest_failed = *v.failed_condition;
            }
        }
        if (want_verdicts) choice.verdicts.push_back(v);
        if (v.outcome == RouteVerdict::Outcome::matched) {
            choice.route = &r;
            choice.closest.reset();
            return choice;
        }
    }
    return choice;
}

std::string serial_key(const Route& route, const std::optional<std::string>& value) {
    std::string k = route.name;
    k += '\0';
    if (value) k += 'v' + *value; // absent differs from every value, "" included
    return k;
}

std::string display_value(const std::optional<std::string>& value) {
    return value ? *value : "(absent)";
}

} // namespace loopabull
