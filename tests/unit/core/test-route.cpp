// SPDX-License-Identifier: GPL-3.0-or-later
// Routes: condition parsing and evaluation, route parsing with positioned errors, the first
// route that matches, and dispatch (what the supervisor and explain both decide with).
#include "core/condition.hpp"
#include "core/dispatch.hpp"
#include "core/route.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

using namespace loopabull;
using json = nlohmann::json;

namespace {

struct Err {
    int line, col;
    std::string message;
};

struct Collector {
    std::vector<Err> errors;
    ConditionErrorSink sink() {
        return [this](const YAML::Node& at, std::string m) {
            auto mark = at.Mark();
            errors.push_back({mark.is_null() ? 0 : mark.line + 1,
                              mark.is_null() ? 0 : mark.column + 1, std::move(m)});
        };
    }
    std::string all() const {
        std::string s;
        for (auto& e : errors)
            s += std::to_string(e.line) + ":" + std::to_string(e.col) + ": " + e.message + "\n";
        return s;
    }
};

std::optional<Condition> cond(const std::string& yaml, Collector* c = nullptr) {
    Collector local;
    Collector& col = c ? *c : local;
    return parse_condition(YAML::Load(yaml), col.sink());
}

bool holds(const std::string& yaml, const json& body) {
    Collector c;
    auto k = cond(yaml, &c);
    EXPECT_TRUE(k) << yaml << "\n" << c.all();
    return k && k->holds(body);
}

const json kBody = json::parse(R"({"msg": {"owner": "releng", "tag": "f41-updates-candidate",
    "scratch": false, "arch": "x86_64", "n": 3, "list": [10, 20], "a/b": 1, "m~n": 2}})");

} // namespace

TEST(BodyPath, ParsesRfc6901) {
    BodyPath p;
    EXPECT_FALSE(parse_body_path("", p));
    EXPECT_TRUE(p.tokens.empty());
    EXPECT_FALSE(parse_body_path("/msg/a~1b", p));
    EXPECT_EQ(p.tokens, (std::vector<std::string>{"msg", "a/b"}));
    EXPECT_FALSE(parse_body_path("/msg/m~0n", p));
    EXPECT_EQ(p.tokens, (std::vector<std::string>{"msg", "m~n"}));
    EXPECT_EQ(*p.resolve(kBody), 2);
    EXPECT_TRUE(parse_body_path("msg/owner", p));
    EXPECT_TRUE(parse_body_path("/msg/~2", p));
    EXPECT_TRUE(parse_body_path("/msg/~", p));
}

TEST(BodyPath, ResolvesArraysByRfcIndexesOnly) {
    BodyPath p;
    parse_body_path("/msg/list/1", p);
    EXPECT_EQ(*p.resolve(kBody), 20);
    for (auto bad : {"/msg/list/01", "/msg/list/-", "/msg/list/2", "/msg/list/x", "/msg/list/-1",
                     "/msg/owner/0", "/nothing", "/msg/list/99999999999999999999999"}) {
        parse_body_path(bad, p);
        EXPECT_EQ(p.resolve(kBody), nullptr) << bad;
    }
}

TEST(Condition, EqualsComparesJsonValues) {
    EXPECT_TRUE(holds("{path: /msg/owner, equals: releng}", kBody));
    EXPECT_FALSE(holds("{path: /msg/owner, equals: Releng}", kBody));
    EXPECT_TRUE(holds("{path: /msg/scratch, equals: false}", kBody));
    EXPECT_FALSE(holds("{path: /msg/scratch, equals: 'false'}", kBody)); // quoted: a string
    EXPECT_TRUE(holds("{path: /msg/n, equals: 3}", kBody));
    EXPECT_TRUE(holds("{path: /msg/n, equals: 3.0}", kBody));
    EXPECT_FALSE(holds("{path: /msg/n, equals: '3'}", kBody));
    EXPECT_FALSE(holds("{path: /missing, equals: null}", kBody));
    EXPECT_TRUE(holds("{path: /msg/list, equals: [10, 20]}", kBody));
}

TEST(Condition, InMatchesExistsNotAny) {
    EXPECT_TRUE(holds("{path: /msg/arch, in: [aarch64, x86_64]}", kBody));
    EXPECT_FALSE(holds("{path: /msg/arch, in: [s390x]}", kBody));
    EXPECT_TRUE(holds("{path: /msg/tag, matches: '^f4[0-9]-updates'}", kBody));
    EXPECT_FALSE(holds("{path: /msg/tag, matches: '^f3'}", kBody));
    EXPECT_FALSE(holds("{path: /msg/n, matches: '3'}", kBody)); // only strings match
    EXPECT_TRUE(holds("{path: /msg/owner, exists: true}", kBody));
    EXPECT_TRUE(holds("{path: /msg/nope, exists: false}", kBody));
    EXPECT_TRUE(holds("{path: /msg/scratch, not: {equals: true}}", kBody));
    EXPECT_FALSE(holds("{not: {path: /msg/owner, equals: releng}}", kBody));
    EXPECT_TRUE(
        holds("{any: [{path: /msg/arch, in: [x86_64]}, {path: /msg/arch, exists: false}]}", kBody));
    EXPECT_TRUE(holds("{any: [{path: /x, exists: true}, {path: /msg/n, equals: 3}]}", kBody));
    EXPECT_FALSE(holds("{any: [{path: /x, exists: true}, {path: /msg/n, equals: 4}]}", kBody));
    EXPECT_TRUE(holds("{path: '', exists: true}", json::object()));
}

TEST(Condition, RegexIsRe2LinearTime) {
    // The classic catastrophic-backtracking pattern: std::regex would take exponential time.
    json body = {{"s", std::string(100000, 'a') + "!"}};
    EXPECT_FALSE(holds("{path: /s, matches: '^(a+)+$'}", body));
}

TEST(Condition, ErrorsCarryPositions) {
    Collector c;
    EXPECT_FALSE(cond("{path: msg/owner, equals: x}", &c));
    ASSERT_EQ(c.errors.size(), 1u) << c.all();
    EXPECT_EQ(c.errors[0].col, 8);
    EXPECT_NE(c.errors[0].message.find("not a JSON Pointer"), std::string::npos);

    c.errors.clear();
    EXPECT_FALSE(cond("{path: /a, matches: '(unclosed'}", &c));
    ASSERT_EQ(c.errors.size(), 1u);
    EXPECT_EQ(c.errors[0].col, 21);
    EXPECT_NE(c.errors[0].message.find("bad regular expression"), std::string::npos);

    for (auto bad :
         {"{path: /a}", "{path: /a, equals: 1, in: [1]}", "{equals: 1}", "{path: /a, in: []}",
          "{path: /a, exists: maybe}", "{path: /a, any: []}", "{any: [{equals: 1}]}",
          "{path: /a, frobs: 1}", "[1]", "{path: /~3, exists: true}", "{path: /a, matches: [x]}"}) {
        c.errors.clear();
        EXPECT_FALSE(cond(bad, &c)) << bad;
        EXPECT_FALSE(c.errors.empty()) << bad;
    }
    std::string deep = "{path: /a, equals: 1}";
    for (int i = 0; i < 40; ++i)
        deep = "{not: " + deep + "}";
    c.errors.clear();
    EXPECT_FALSE(cond(deep, &c));
    EXPECT_NE(c.all().find("nest deeper"), std::string::npos);
}

TEST(Condition, Describes) {
    EXPECT_EQ(cond("{path: /msg/owner, equals: releng}")->describe(),
              "/msg/owner equals \"releng\"");
    EXPECT_EQ(cond("{path: /a, not: {in: [1, 2]}}")->describe(), "not (/a in [1,2])");
}

namespace {

std::vector<Route> routes(const std::string& yaml, Collector& c,
                          std::vector<std::string> loopers = {"bus", "spool"}) {
    return parse_routes(YAML::Load(yaml), loopers, c.sink());
}

const char* kFedora = R"(
- name: builds
  keys: [org.fedoraproject.*.buildsys.build.state.change]
  loopers: [bus]
  when:
    - {path: /msg/owner, equals: releng}
    - {path: /msg/tag, matches: '^f4[0-9]-updates'}
    - {path: /msg/scratch, not: {equals: true}}
    - {any: [{path: /msg/arch, in: [x86_64, aarch64]}, {path: /msg/arch, exists: false}]}
  playbook: build-done.yml
  serialize: /msg/name
  coalesce: true
  throttle: {per: /msg/name, once_within: 10min}
- keys: ['org.fedoraproject.#']
  playbook: catch-all.yml
)";

} // namespace

TEST(Routes, ParsesTheIssueExample) {
    Collector c;
    auto r = routes(kFedora, c);
    ASSERT_TRUE(c.errors.empty()) << c.all();
    ASSERT_EQ(r.size(), 2u);
    EXPECT_EQ(r[0].name, "builds");
    EXPECT_EQ(r[0].when.size(), 4u);
    EXPECT_EQ(*r[0].playbook, "build-done.yml");
    EXPECT_EQ(r[0].serialize->text(), "/msg/name");
    EXPECT_TRUE(r[0].coalesce);
    EXPECT_EQ(r[0].throttle->once_within, std::chrono::minutes(10));
    EXPECT_EQ(r[1].name, "#2");
    EXPECT_EQ(r[0].line, 2);
}

TEST(Routes, FirstMatchingRouteDecides) {
    Collector c;
    auto r = routes(kFedora, c);
    std::string key = "org.fedoraproject.prod.buildsys.build.state.change";
    json body = {{"msg", {{"owner", "releng"}, {"tag", "f41-updates"}, {"name", "bash"}}}};
    auto choice = choose_route(r, key, "bus", body);
    ASSERT_TRUE(choice.route);
    EXPECT_EQ(choice.route->name, "builds");
    // From another looper, the first route does not apply; the catch-all does.
    choice = choose_route(r, key, "spool", body, true);
    EXPECT_EQ(choice.route->name, "#2");
    EXPECT_EQ(choice.verdicts[0].outcome, RouteVerdict::Outcome::looper);
    body["msg"]["owner"] = "someone";
    choice = choose_route(r, key, "bus", body, true);
    EXPECT_EQ(choice.route->name, "#2");
    EXPECT_EQ(choice.verdicts[0].outcome, RouteVerdict::Outcome::condition);
    EXPECT_EQ(*choice.verdicts[0].failed_condition, 0u);
    EXPECT_FALSE(choose_route(r, "org.example.x", "bus", body).route);
}

TEST(Routes, ClosestRouteIsTheOneWhoseConditionsHeldLongest) {
    Collector c;
    auto r = routes(R"(
- {name: a, keys: [k], when: [{path: /x, equals: 1}, {path: /y, equals: 1}]}
- {name: b, keys: [k], when: [{path: /x, equals: 1}, {path: /y, equals: 2}, {path: /z, equals: 3}]}
- {name: c, keys: [other]}
)",
                    c);
    ASSERT_TRUE(c.errors.empty()) << c.all();
    auto choice = choose_route(r, "k", "bus", json{{"x", 1}, {"y", 2}});
    EXPECT_FALSE(choice.route);
    EXPECT_EQ(choice.closest, 1u);
    EXPECT_FALSE(choose_route(r, "nothing", "bus", json::object()).closest);
}

TEST(Routes, ReportsEveryProblemWithItsPosition) {
    Collector c;
    routes(R"(- name: x
  keys: [a..b]
  when: [{path: nope, equals: 1}, {path: /a, matches: '[z-a]'}]
  loopers: [ghost]
  playbook: ../etc/passwd
  serialize: not-a-pointer
  throttle: {per: /a, once_within: forever}
  colaesce: true
- {keys: [k], coalesce: true}
- {keys: [k], throttle: {per: /a}}
- {name: x, keys: [k]}
- {name: x, keys: [k]}
)",
           c);
    std::string all = c.all();
    for (auto want :
         {"2:10: 'keys': 'a..b'", "3:17: 'nope' is not a JSON Pointer",
          "3:55: bad regular expression '[z-a]'", "4:13: route 'x' names looper 'ghost'",
          "5:13: 'playbook' must be a relative path", "6:14: 'serialize'",
          "7:36: 'once_within' must be a duration", "8:3: unknown key 'colaesce'",
          "9:25: 'coalesce' needs 'serialize'", "10:25: 'throttle' must be",
          "12:10: duplicate route name 'x'"})
        EXPECT_NE(all.find(want), std::string::npos) << want << "\n" << all;
}

TEST(Routes, ValueSources) {
    Collector c;
    auto r =
        routes("- {keys: [k], serialize: routing_key, throttle: {per: /n, once_within: 1s}}", c);
    ASSERT_EQ(r.size(), 1u) << c.all();
    EXPECT_EQ(r[0].serialize->value("k", json::object()), "k");
    EXPECT_EQ(r[0].throttle->per.value("k", json{{"n", 5}}), "5");
    EXPECT_EQ(r[0].throttle->per.value("k", json{{"n", "5"}}), "5");
    EXPECT_FALSE(r[0].throttle->per.value("k", json::object()));
    EXPECT_NE(serial_key(r[0], std::nullopt), serial_key(r[0], std::string()));
}

namespace {

Config config_with(const std::string& routes_yaml, Collector& c) {
    Config cfg;
    cfg.ansible.playbooks_dir = "/pb";
    cfg.loopers.push_back({});
    cfg.loopers.back().name = "bus";
    cfg.loopers.push_back({});
    cfg.loopers.back().name = "spool";
    cfg.loopers.back().routing_keys = std::vector<std::string>{"org.example.*"};
    if (!routes_yaml.empty()) cfg.routes = routes(routes_yaml, c);
    return cfg;
}

PlaybookLookup fake_lookup(const std::string& rel) {
    using S = PlaybookLookup::Status;
    if (rel.starts_with("missing")) return {S::missing, "/pb/" + rel, "no such playbook"};
    if (rel.starts_with("escape"))
        return {S::escapes, "/pb/" + rel, "resolves outside the playbooks directory"};
    return {S::found, "/pb/" + rel, {}};
}

} // namespace

TEST(Dispatch, WithoutRoutesTheKeyPicksThePlaybook) {
    Collector c;
    auto cfg = config_with("", c);
    auto d = dispatch(cfg, "org.example.hello", "bus", json::object(), fake_lookup);
    EXPECT_TRUE(d.runs());
    EXPECT_EQ(d.playbook.path, "/pb/org.example.hello.yml");
    d = dispatch(cfg, "missing.x", "bus", json::object(), fake_lookup);
    EXPECT_EQ(d.verdict, Dispatch::Verdict::no_playbook);
    EXPECT_EQ(d.result, Result::unrouted);
    d = dispatch(cfg, "escape.x", "bus", json::object(), fake_lookup);
    EXPECT_EQ(d.result, Result::rejected);
}

TEST(Dispatch, LooperAllowlistRejectsNamingLooperAndKey) {
    Collector c;
    auto cfg = config_with("", c);
    auto d = dispatch(cfg, "org.fedoraproject.x", "spool", json::object(), fake_lookup);
    EXPECT_EQ(d.verdict, Dispatch::Verdict::not_allowed);
    EXPECT_EQ(d.result, Result::rejected);
    auto reason = d.reason("org.fedoraproject.x", "spool");
    EXPECT_NE(reason.find("spool"), std::string::npos);
    EXPECT_NE(reason.find("org.fedoraproject.x"), std::string::npos);
    EXPECT_TRUE(dispatch(cfg, "org.example.a", "spool", json::object(), fake_lookup).runs());
    cfg.routing_keys = {"org.fedoraproject.#"};
    d = dispatch(cfg, "org.example.a", "spool", json::object(), fake_lookup);
    EXPECT_EQ(d.verdict, Dispatch::Verdict::not_selected);
    EXPECT_EQ(d.reason("org.example.a", "spool"), "routing_keys does not select 'org.example.a'");
}

TEST(Dispatch, RoutesPickPlaybookSerialAndThrottle) {
    Collector c;
    auto cfg = config_with(kFedora, c);
    ASSERT_TRUE(c.errors.empty()) << c.all();
    std::string key = "org.fedoraproject.prod.buildsys.build.state.change";
    json body = {{"msg", {{"owner", "releng"}, {"tag", "f41-updates"}, {"name", "bash"}}}};
    auto d = dispatch(cfg, key, "bus", body, fake_lookup);
    ASSERT_TRUE(d.runs()) << d.reason(key, "bus");
    EXPECT_EQ(d.reason(key, "bus"), "");
    EXPECT_EQ(d.playbook.path, "/pb/build-done.yml");
    EXPECT_EQ(d.serial_value, "bash");
    EXPECT_EQ(d.throttle_value, "bash");
    EXPECT_EQ(d.route_name(), "builds");
    d = dispatch(cfg, "org.example.none", "bus", body, fake_lookup);
    EXPECT_EQ(d.verdict, Dispatch::Verdict::no_route);
    EXPECT_EQ(d.result, Result::unrouted);
    body["msg"]["owner"] = "x";
    cfg.routes.pop_back();
    d = dispatch(cfg, key, "bus", body, fake_lookup);
    EXPECT_EQ(d.verdict, Dispatch::Verdict::no_route);
    // The sentence is written when asked (not on the event path), from the route that came
    // closest, and reads the same however often it is asked.
    auto reason = d.reason(key, "bus");
    EXPECT_NE(reason.find("closest: route 'builds' (0 of 4"), std::string::npos) << reason;
    EXPECT_NE(reason.find("failed: /msg/owner equals \"releng\""), std::string::npos) << reason;
    EXPECT_EQ(d.reason(key, "bus"), reason);
    d = dispatch(cfg, "missing.x", "bus", body, fake_lookup);
    EXPECT_EQ(d.reason("missing.x", "bus"), "no route takes it");
}

TEST(Explain, OfflineAndLive) {
    Collector c;
    auto cfg = config_with(kFedora, c);
    std::string key = "org.fedoraproject.prod.buildsys.build.state.change";
    json body = {{"msg", {{"owner", "releng"}, {"tag", "f41-updates"}, {"name", "bash"}}}};
    auto e = explain(cfg, key, "bus", body, fake_lookup, nullptr);
    EXPECT_TRUE(e.would_run);
    std::string text = e.text(cfg);
    EXPECT_NE(text.find("route 'builds' (line 2): MATCHED"), std::string::npos) << text;
    EXPECT_NE(text.find("playbook: /pb/build-done.yml"), std::string::npos) << text;
    EXPECT_NE(text.find("loopabull_route: !unsafe \"builds\""), std::string::npos) << text;
    EXPECT_EQ(e.to_json()["route"], "builds");

    Scheduler s(4, 100);
    Throttler t;
    auto d = e.dispatch;
    s.enqueue(1, *d.serial, true);
    s.next();
    t.admit(*d.throttle_key, 1000, 600000000);
    LiveState live{&s, &t, 2000, "main"};
    e = explain(cfg, key, "bus", body, fake_lookup, &live);
    EXPECT_FALSE(e.would_run);
    EXPECT_TRUE(e.throttled);
    EXPECT_TRUE(e.serial_running);
    text = e.text(cfg);
    EXPECT_NE(text.find("THROTTLED for another 10min"), std::string::npos) << text;
    EXPECT_NE(text.find("result: throttled"), std::string::npos) << text;
    EXPECT_EQ(e.to_json()["result"], "throttled");

    body["msg"]["owner"] = "x";
    e = explain(cfg, key, "bus", body, fake_lookup, nullptr);
    text = e.text(cfg);
    EXPECT_NE(text.find("condition 1 of 4 failed: /msg/owner equals \"releng\""), std::string::npos)
        << text;
    EXPECT_NE(text.find("route '#2' (line 14): MATCHED"), std::string::npos) << text;
}
