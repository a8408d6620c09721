// SPDX-License-Identifier: GPL-3.0-or-later
// The webhook looper's pure logic: options, routing-key templates, authentication, events.
#include "webhook/webhook.hpp"

#include <gtest/gtest.h>

#include <map>

using namespace loopabull::webhook;
using nlohmann::json;

namespace {

std::string no_secret(const std::string& path) {
    if (path == "/creds/forge") return "from-credential";
    return "secret-of-" + path;
}

KeyTemplate::Headers headers(std::map<std::string, std::string> h) {
    return [h](std::string_view name) -> std::optional<std::string> {
        for (const auto& [k, v] : h)
            if (strcasecmp(k.c_str(), std::string(name).c_str()) == 0) return v;
        return std::nullopt;
    };
}

Options parse(const json& config) {
    return parse_options(config, "/creds", "/var/lib/x", no_secret);
}

json endpoint(json e) {
    return {{"listen", {"127.0.0.1:8080"}}, {"endpoints", {e}}};
}

} // namespace

// GitHub's documented vector (docs.github.com, "Validating webhook deliveries").
TEST(WebhookHmac, GithubTestVector) {
    EXPECT_EQ(hmac("sha256", "It's a Secret to Everybody", "Hello, World!", Encoding::hex),
              "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17");
    Auth a{AuthKind::hmac, "X-Hub-Signature-256",       "sha256", Encoding::hex,
           "sha256=",      "It's a Secret to Everybody"};
    auto good =
        headers({{"X-Hub-Signature-256",
                  "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"}});
    EXPECT_EQ(authenticate(a, good, "Hello, World!"), std::nullopt);
    EXPECT_NE(authenticate(a, good, "Hello, World?"), std::nullopt);
    EXPECT_EQ(authenticate(a, headers({}), "Hello, World!"), "no X-Hub-Signature-256 header");
    auto unprefixed =
        headers({{"X-Hub-Signature-256",
                  "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"}});
    EXPECT_NE(authenticate(a, unprefixed, "Hello, World!"), std::nullopt);
}

// RFC 4231, test case 2 ("Jefe"), SHA-512, and base64 of the same digest.
TEST(WebhookHmac, Rfc4231Sha512AndBase64) {
    EXPECT_EQ(hmac("sha512", "Jefe", "what do ya want for nothing?", Encoding::hex),
              "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d03"
              "4f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737");
    EXPECT_EQ(hmac("sha256", "Jefe", "what do ya want for nothing?", Encoding::base64),
              "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM=");
}

TEST(WebhookAuth, TokenAndBearer) {
    Auth token{AuthKind::token, "X-Gitlab-Token", "", Encoding::hex, "", "tok"};
    EXPECT_EQ(authenticate(token, headers({{"x-gitlab-token", "tok"}}), ""), std::nullopt);
    EXPECT_NE(authenticate(token, headers({{"x-gitlab-token", "tok2"}}), ""), std::nullopt);
    EXPECT_NE(authenticate(token, headers({{"x-gitlab-token", ""}}), ""), std::nullopt);
    Auth bearer{AuthKind::bearer, "Authorization", "", Encoding::hex, "", "b"};
    EXPECT_EQ(authenticate(bearer, headers({{"Authorization", "Bearer b"}}), ""), std::nullopt);
    EXPECT_NE(authenticate(bearer, headers({{"Authorization", "Basic b"}}), ""), std::nullopt);
    EXPECT_NE(authenticate(bearer, headers({{"Authorization", "Bearer"}}), ""), std::nullopt);
}

TEST(WebhookTemplate, ExpandsHeadersAndPointers) {
    auto t = KeyTemplate::parse("forge.{header:X-Event}.{body:/repository/name}");
    json body = {{"repository", {{"name", "loopabull"}}}};
    auto r = t.expand(headers({{"x-event", "push"}}), body);
    ASSERT_TRUE(r.key) << r.error;
    EXPECT_EQ(*r.key, "forge.push.loopabull");
    EXPECT_EQ(t.expand(headers({}), body).error, "header X-Event is missing");
    EXPECT_EQ(t.expand(headers({{"x-event", "push"}}), json::object()).error,
              "the body has no /repository/name");
    // Values that would leave the grammar: slashes, dots in the wrong place, a leading dash.
    for (const char* bad : {"../etc", "a/b", "", "-x", "a..b", "a b"})
        EXPECT_FALSE(t.expand(headers({{"x-event", bad}}), body).key) << bad;
    body["repository"]["name"] = json::array();
    EXPECT_FALSE(t.expand(headers({{"x-event", "push"}}), body).key);
    // RFC 6901 escapes.
    auto e = KeyTemplate::parse("k.{body:/a~1b/c~0d}");
    EXPECT_EQ(*e.expand(headers({}), json{{"a/b", {{"c~d", 7}}}}).key, "k.7");
}

TEST(WebhookTemplate, RefusesBadTemplates) {
    for (const char* bad :
         {"a.{header:}", "a.{body:x}", "a.{body:/~2}", "a.{env:HOME}", "a.{", "a}"})
        EXPECT_THROW(KeyTemplate::parse(bad), OptionError) << bad;
}

TEST(WebhookOptions, PresetsAndMandatoryAuthentication) {
    auto o = parse(endpoint({{"path", "/gh"}, {"preset", "github"}, {"secret_file", "/s"}}));
    ASSERT_EQ(o.endpoints.size(), 1u);
    const auto& e = o.endpoints[0];
    EXPECT_EQ(e.auth.kind, AuthKind::hmac);
    EXPECT_EQ(e.auth.header, "X-Hub-Signature-256");
    EXPECT_EQ(e.auth.prefix, "sha256=");
    EXPECT_EQ(e.auth.secret, "secret-of-/s");
    EXPECT_EQ(e.routing_key.text(), "github.{header:X-GitHub-Event}");
    EXPECT_EQ(o.state_directory, "/var/lib/x");

    auto am = parse(endpoint({{"path", "/a"}, {"preset", "alertmanager"}, {"secret_file", "/s"}}));
    EXPECT_TRUE(am.endpoints[0].split_alerts);
    EXPECT_EQ(am.endpoints[0].auth.kind, AuthKind::bearer);

    auto cred =
        parse(endpoint({{"path", "/f"}, {"preset", "forgejo"}, {"secret_credential", "forge"}}));
    EXPECT_EQ(cred.endpoints[0].auth.secret, "from-credential");

    auto none = parse(endpoint({{"path", "/n"}, {"auth", "none"}, {"routing_key", "x.y"}}));
    EXPECT_EQ(none.endpoints[0].auth.kind, AuthKind::none);

    auto refused = [](json e, const std::string& part) {
        try {
            parse(endpoint(e));
            ADD_FAILURE() << "accepted " << e.dump();
        } catch (const OptionError& err) {
            EXPECT_NE(std::string(err.what()).find(part), std::string::npos) << err.what();
        }
    };
    refused({{"path", "/n"}, {"routing_key", "x.y"}}, "no authentication");
    refused({{"path", "/n"}, {"preset", "github"}}, "secret_file or secret_credential is missing");
    refused({{"path", "/n"}, {"preset", "github"}, {"secret", "inline"}},
            "never from the configuration");
    refused({{"path", "/n"}, {"preset", "github"}, {"secret_credential", "../x"}},
            "credential's name");
    refused({{"path", "n"}, {"auth", "none"}, {"routing_key", "x"}}, "path must start");
    refused({{"path", "/n"},
             {"auth", {{"type", "hmac"}, {"header", "X-S"}, {"algorithm", "md5"}}},
             {"secret_file", "/s"},
             {"routing_key", "x"}},
            "sha256 or sha512");
    refused({{"path", "/n"}, {"preset", "bitbucket"}}, "preset must be");
    EXPECT_THROW(
        parse_options(endpoint({{"path", "/gh"}, {"preset", "github"}, {"secret_credential", "x"}}),
                      "", "/var/lib/x", no_secret),
        OptionError);
}

TEST(WebhookOptions, Listen) {
    EXPECT_EQ(parse_listen("127.0.0.1:8443").port, 8443u);
    EXPECT_EQ(parse_listen("[::1]:443").host, "::1");
    EXPECT_EQ(parse_listen("fd:web").fd_name, "web");
    for (const char* bad : {"8443", "host:", "host:99999", "fd:", "[::1:80"})
        EXPECT_THROW(parse_listen(bad), OptionError) << bad;
}

TEST(WebhookEvents, AlertmanagerSplitsAGroup) {
    auto o = parse(endpoint({{"path", "/a"}, {"preset", "alertmanager"}, {"secret_file", "/s"}}));
    json group = {{"status", "firing"},
                  {"receiver", "r"},
                  {"alerts",
                   {{{"status", "firing"}, {"labels", {{"alertname", "DiskFull"}}}},
                    {{"status", "resolved"}, {"labels", {{"alertname", "HighLoad"}}}}}}};
    auto ev = make_events(o.endpoints[0], headers({}), group.dump());
    ASSERT_EQ(ev.error, "");
    ASSERT_EQ(ev.events.size(), 2u);
    EXPECT_EQ(ev.events[0].routing_key, "alertmanager.firing.DiskFull");
    EXPECT_EQ(ev.events[1].routing_key, "alertmanager.resolved.HighLoad");
    EXPECT_EQ(ev.events[1].payload["group"]["receiver"], "r");
    EXPECT_FALSE(ev.events[1].payload["group"].contains("alerts"));
    group["alerts"][1]["labels"]["alertname"] = "has space";
    EXPECT_TRUE(make_events(o.endpoints[0], headers({}), group.dump()).events.empty());
    EXPECT_NE(make_events(o.endpoints[0], headers({}), "{}").error, "");
}

TEST(WebhookEvents, BodiesAndReplayKeys) {
    auto o = parse(endpoint({{"path", "/gh"}, {"preset", "github"}, {"secret_file", "/s"}}));
    const auto& e = o.endpoints[0];
    auto h = headers({{"X-GitHub-Event", "push"}, {"Content-Type", "application/json"}});
    EXPECT_NE(make_events(e, h, "{oops").error, "");
    auto text = make_events(e, headers({{"X-GitHub-Event", "push"}}), "Hello, World!");
    ASSERT_EQ(text.events.size(), 1u);
    EXPECT_EQ(text.events[0].payload, "Hello, World!");
    EXPECT_EQ(make_events(e, h, "").events[0].payload, json::object());
    // Deeply nested bodies are refused before they can exhaust the stack.
    EXPECT_NE(make_events(e, h, std::string(100000, '[')).error, "");
    EXPECT_EQ(replay_key(e, headers({{"X-GitHub-Delivery", "d"}})), "/gh\nd");
    EXPECT_EQ(replay_key(e, headers({{"X-Hub-Signature-256", "sha256=ab"}})), "/gh\nsha256=ab");
    auto am = parse(endpoint({{"path", "/a"}, {"preset", "alertmanager"}, {"secret_file", "/s"}}));
    EXPECT_EQ(replay_key(am.endpoints[0], headers({{"Authorization", "Bearer x"}})), std::nullopt);
}
