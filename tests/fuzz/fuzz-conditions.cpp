// SPDX-License-Identifier: GPL-3.0-or-later
// Route conditions: parsing (YAML) and evaluation on an untrusted body (JSON). The input is
// "CONDITIONS-YAML \n---BODY---\n BODY-JSON"; the YAML is read as a `routes:` list when it is a
// sequence and as one condition otherwise.
// Invariants: parsing never throws or crashes and reports a problem whenever it returns nothing;
// evaluation never throws; `not` is the negation of its child and `any` the disjunction of its
// children; RE2 keeps every match linear (libFuzzer's -timeout catches blow-ups).
#include "core/condition.hpp"
#include "core/route.hpp"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

using namespace loopabull;
using json = nlohmann::json;

namespace {

void check(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "invariant violated: %s\n", what);
        std::abort();
    }
}

void check_condition(const Condition& c, const json& body) {
    bool v = c.holds(body);
    (void)c.describe();
    if (c.kind == Condition::Kind::not_) check(v == !c.children.front().holds(body), "not");
    if (c.kind == Condition::Kind::any) {
        bool any = false;
        for (const auto& child : c.children)
            any = any || child.holds(body);
        check(v == any, "any");
    }
    for (const auto& child : c.children)
        check_condition(child, body);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string input(reinterpret_cast<const char*>(data), size);
    std::string yaml = input, body_text = "{}";
    if (auto sep = input.find("\n---BODY---\n"); sep != std::string::npos) {
        yaml = input.substr(0, sep);
        body_text = input.substr(sep + 12);
    }
    json body = json::parse(body_text, nullptr, false);
    if (body.is_discarded()) body = json(body_text);
    YAML::Node node;
    try {
        node = YAML::Load(yaml);
    } catch (const YAML::Exception&) {
        return 0; // the configuration reader reports YAML syntax errors itself
    }
    std::size_t problems = 0;
    auto sink = [&](const YAML::Node&, std::string message) {
        check(!message.empty(), "empty message");
        ++problems;
    };
    if (node.IsSequence()) {
        auto routes = parse_routes(node, {"bus"}, sink);
        check(routes.size() == node.size() || problems > 0, "a route dropped silently");
        for (const auto& r : routes)
            for (const auto& c : r.when)
                check_condition(c, body);
        auto choice = choose_route(routes, "org.example.a", "bus", body, true);
        check(choice.verdicts.size() <= routes.size(), "verdicts");
        for (const auto& r : routes) {
            if (r.serialize) (void)serial_key(r, r.serialize->value("k", body));
            if (r.throttle) (void)r.throttle->per.value("k", body);
        }
        return 0;
    }
    auto c = parse_condition(node, sink);
    check(c.has_value() || problems > 0, "a condition refused silently");
    if (c) check_condition(*c, body);
    return 0;
}
