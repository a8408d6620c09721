// SPDX-License-Identifier: GPL-3.0-or-later
// The amqp looper's pure parts: options (both dialects), the answer policy, delivery
// bookkeeping across connections, and turning deliveries into events.
#include "message.hpp"
#include "options.hpp"
#include "policy.hpp"

#include <gtest/gtest.h>

using namespace loopabull::amqp;
using nlohmann::json;

namespace {

Delivery delivery(std::uint64_t tag, int attempts = 0) {
    Delivery d;
    d.tag = tag;
    d.attempts = attempts;
    return d;
}

Options parse(const json& j, Environment env = {}) {
    return parse_options(j, env);
}

std::string error_of(const json& j) {
    try {
        parse(j);
    } catch (const ConfigError& e) {
        return e.what();
    }
    return "no error";
}

} // namespace

TEST(AmqpOptions, DefaultsKeepMessages) {
    auto o = parse({{"queue", "q"}}, Environment{4, std::nullopt});
    ASSERT_EQ(o.endpoints.size(), 1u);
    EXPECT_EQ(o.endpoints[0].host, "localhost");
    EXPECT_EQ(o.endpoints[0].port, 5672);
    EXPECT_TRUE(o.queue.durable);
    EXPECT_FALSE(o.queue.exclusive);
    EXPECT_FALSE(o.queue.auto_delete);
    EXPECT_EQ(o.prefetch, 4); // LOOPABULL_MAX_PARALLEL: messages wait in the broker
    EXPECT_EQ(o.on_failure, OnFailure::retry);
    EXPECT_EQ(o.max_attempts, 3);
    EXPECT_TRUE(o.warnings.empty());
}

TEST(AmqpOptions, UrlsBindingsAndDeadLetter) {
    auto o = parse({{"urls", {"amqp://u:p@a:1234/v%2Fx", "amqps://b"}},
                    {"tls", {{"ca_cert", "/ca.pem"}}},
                    {"queue", {{"name", "q"}, {"arguments", {{"x-queue-type", "quorum"}}}}},
                    {"bindings", {{{"exchange", "e"}, {"routing_keys", {"a.#", "b.*"}}}}},
                    {"dead_letter_exchange", "dlx"},
                    {"consumer_timeout", "1h"},
                    {"prefetch", 7}});
    ASSERT_EQ(o.endpoints.size(), 2u);
    EXPECT_EQ(o.endpoints[0].host, "a");
    EXPECT_EQ(o.endpoints[0].port, 1234);
    EXPECT_EQ(o.endpoints[0].vhost, "v/x");
    EXPECT_EQ(o.endpoints[0].username, "u");
    EXPECT_TRUE(o.endpoints[1].tls);
    EXPECT_EQ(o.endpoints[1].port, 5671);
    EXPECT_EQ(o.queue.arguments["x-queue-type"], "quorum");
    EXPECT_EQ(o.queue.arguments["x-dead-letter-exchange"], "dlx");
    ASSERT_EQ(o.bindings.size(), 1u);
    EXPECT_EQ(o.bindings[0].exchange, "e");
    EXPECT_EQ(o.bindings[0].routing_keys, (std::vector<std::string>{"a.#", "b.*"}));
    EXPECT_EQ(o.consumer_timeout, seconds(3600));
    EXPECT_EQ(o.prefetch, 7);
}

TEST(AmqpOptions, LegacyFedmsgrabbitmqNames) {
    auto o = parse({{"rabbitmq",
                     {{"host", "rabbit"},
                      {"port", 5671},
                      {"virtual_host", "/pub"},
                      {"connection_attempts", 3}}},
                    {"tls", {{"ca_cert", "/ca"}, {"certfile", "/c"}, {"keyfile", "/k"}}},
                    {"channel_queue", {{"name", "old"}, {"durable", true}}},
                    {"routing_keys", {"org.fedoraproject.#"}}});
    EXPECT_EQ(o.endpoints[0].host, "rabbit");
    EXPECT_EQ(o.endpoints[0].vhost, "/pub");
    EXPECT_TRUE(o.endpoints[0].tls);
    EXPECT_EQ(o.sasl, Sasl::external); // as the 0.0.7 looper: the certificate authenticates
    EXPECT_EQ(o.queue.name, "old");
    EXPECT_FALSE(o.queue.exclusive); // unlike 0.0.7's default, which lost messages
    ASSERT_EQ(o.bindings.size(), 1u);
    EXPECT_EQ(o.bindings[0].exchange, "amq.topic");
    ASSERT_EQ(o.warnings.size(), 1u);
    EXPECT_NE(o.warnings[0].find("rabbitmq.connection_attempts"), std::string::npos);
}

TEST(AmqpOptions, ErrorsNameTheField) {
    EXPECT_EQ(error_of({{"queue", "q"}, {"prefetsh", 1}}), "unknown option 'prefetsh'");
    EXPECT_EQ(error_of(json::object()), "'queue' is required (the name of the queue to consume)");
    EXPECT_EQ(error_of({{"queue", {{"name", "q"}, {"durabel", true}}}}),
              "unknown option 'queue.durabel'");
    EXPECT_EQ(error_of({{"queue", "q"}, {"prefetch", 0}}),
              "'prefetch' must be between 1 and 65535");
    EXPECT_EQ(error_of({{"queue", "q"}, {"url", "http://x"}}),
              "'url': 'http://x' is not an amqp:// or amqps:// URL");
    EXPECT_EQ(error_of({{"queue", "q"}, {"on_failure", "requeue"}}),
              "'on_failure' must be 'retry', 'reject' or 'ack', not 'requeue'");
    EXPECT_EQ(error_of({{"queue", "q"}, {"url", "amqp://a"}, {"host", "b"}}).substr(0, 20),
              "give the broker as '");
    EXPECT_EQ(error_of({{"queue", "q"}, {"heartbeat", "soon"}}).substr(0, 12), "'heartbeat':");
    EXPECT_EQ(error_of({{"queue", "q"}, {"tls", {{"certfile", "/c"}}}}),
              "'tls.certfile' and 'tls.keyfile' go together: give both or neither");
    EXPECT_EQ(error_of({{"queue", "q"}, {"url", "amqps://h"}}).substr(0, 50),
              "TLS (amqps://, or a 'tls' section) needs 'tls.ca_c");
    EXPECT_EQ(error_of({{"queue", "q"}, {"bindings", {{{"exchange", "e"}}}}}),
              "'bindings[0]' has no 'routing_keys'");
}

TEST(AmqpOptions, WarnsAboutLosingQueuesAndConsumerTimeout) {
    auto o = parse({{"queue", {{"name", "q"}, {"exclusive", true}}}, {"consumer_timeout", 600}},
                   Environment{1, seconds(600)});
    ASSERT_EQ(o.warnings.size(), 2u);
    EXPECT_NE(o.warnings[0].find("exclusive"), std::string::npos);
    EXPECT_NE(o.warnings[1].find("not below the broker's consumer_timeout"), std::string::npos);
    EXPECT_TRUE(parse({{"queue", "q"}}, Environment{1, seconds(599)}).warnings.empty());
}

TEST(AmqpPolicy, AnswersToActions) {
    Options o;
    EXPECT_EQ(decide("succeeded", 0, o), Action::ack);
    EXPECT_EQ(decide("unrouted", 0, o), Action::ack);
    EXPECT_EQ(decide("rejected", 0, o), Action::reject);
    EXPECT_EQ(decide("cancelled", 5, o), Action::requeue);
    EXPECT_EQ(decide("failed", 0, o), Action::retry);
    EXPECT_EQ(decide("timeout", 1, o), Action::retry);
    EXPECT_EQ(decide("failed", 2, o), Action::reject); // the third run was the last
    EXPECT_EQ(decide("some-future-result", 0, o), Action::retry);
    o.on_failure = OnFailure::reject;
    EXPECT_EQ(decide("failed", 0, o), Action::reject);
    o.on_failure = OnFailure::ack;
    EXPECT_EQ(decide("timeout", 0, o), Action::ack);
    o.requeue_cancelled = false;
    EXPECT_EQ(decide("cancelled", 0, o), Action::ack);
}

TEST(AmqpPolicy, RetryNeverLoops) {
    Options o;
    o.max_attempts = 1;
    EXPECT_EQ(decide("failed", 0, o), Action::reject);
    // Whatever the header says, runs are bounded.
    o.max_attempts = 5;
    int attempts = 0;
    while (decide("failed", attempts, o) == Action::retry)
        ++attempts;
    EXPECT_EQ(attempts, 4);
}

TEST(AmqpLedger, StaleTagsAreNeverReturned) {
    Ledger l;
    auto id = l.add(delivery(7, 1));
    EXPECT_EQ(id, "0-7");
    auto t = l.take(id);
    ASSERT_EQ(t.lookup, Ledger::Lookup::found);
    EXPECT_EQ(t.delivery->attempts, 1);
    EXPECT_EQ(l.take(id).lookup, Ledger::Lookup::unknown); // answered twice
    auto old = l.add(delivery(8));
    EXPECT_EQ(l.new_generation(), 1u);
    EXPECT_EQ(l.pending(), 0u);
    EXPECT_EQ(l.take(old).lookup, Ledger::Lookup::stale);
    // Tags restart at 1 on a new channel: the same tag of a new generation is another message.
    auto fresh = l.add(delivery(8));
    EXPECT_EQ(fresh, "1-8");
    EXPECT_EQ(l.take(old).lookup, Ledger::Lookup::stale);
    EXPECT_EQ(l.take(fresh).lookup, Ledger::Lookup::found);
    EXPECT_EQ(l.take("nonsense").lookup, Ledger::Lookup::unknown);
    EXPECT_EQ(l.take("1-x").lookup, Ledger::Lookup::unknown);
}

TEST(AmqpMessage, EventCarriesMsgTopicHeadersAndId) {
    json props = {{"message_id", "abc"}, {"headers", {{"sent-at", "now"}}}};
    std::string why;
    auto line = event_line("org.x.y", R"({"a": [1, 2]})", props, "3-9", &why);
    ASSERT_TRUE(line) << why;
    EXPECT_EQ(line->back(), '\n');
    auto e = json::parse(*line);
    EXPECT_EQ(e["routing_key"], "org.x.y");
    EXPECT_EQ(e["id"], "3-9");
    EXPECT_EQ(e["body"]["msg"], json::parse(R"({"a": [1, 2]})"));
    EXPECT_EQ(e["body"]["topic"], "org.x.y");
    EXPECT_EQ(e["body"]["id"], "abc");
    EXPECT_EQ(e["body"]["headers"]["sent-at"], "now");
}

TEST(AmqpMessage, BadBodiesAreRefused) {
    std::string why;
    EXPECT_FALSE(event_line("k", "not json", json::object(), "0-1", &why));
    EXPECT_NE(why.find("not JSON"), std::string::npos);
    EXPECT_FALSE(event_line("k", std::string(100, '[') + std::string(100, ']'), json::object(),
                            "0-1", &why));
    EXPECT_NE(why.find("nested deeper"), std::string::npos);
    EXPECT_FALSE(
        event_line("k", "\"" + std::string(2 << 20, 'x') + "\"", json::object(), "0-1", &why));
    EXPECT_NE(why.find("larger than"), std::string::npos);
}

TEST(AmqpMessage, RetryCopyKeepsPropertiesAndCountsAttempts) {
    json props = {{"message_id", "abc"},
                  {"content_type", "application/json"},
                  {"priority", 3},
                  {"headers", {{"x-delivery-count", 4}, {"nested", {{"list", {1, "two", true}}}}}}};
    EXPECT_EQ(attempts_of(props), 4);
    RetryProperties copy(props, 2, "org.original");
    // Read it back the way a delivery is read.
    json back = properties_to_json(*copy.get());
    EXPECT_EQ(back["message_id"], "abc");
    EXPECT_EQ(back["content_type"], "application/json");
    EXPECT_EQ(back["priority"], 3);
    EXPECT_EQ(back["headers"]["nested"]["list"], json::parse(R"([1, "two", true])"));
    EXPECT_FALSE(back["headers"].contains("x-delivery-count"));
    EXPECT_EQ(attempts_of(back), 2);
    EXPECT_EQ(routing_key_of(back, "queue-name"), "org.original");
    EXPECT_EQ(routing_key_of(json::object(), "org.delivered"), "org.delivered");
}
