// SPDX-License-Identifier: GPL-3.0-or-later
// The amqp looper's pure parts: options (both dialects), the answer policy, delivery
// bookkeeping across connections, and turning deliveries into events.
#include "message.hpp"
#include "options.hpp"
#include "policy.hpp"
#include "retry.hpp"

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
              "'url': 'http://x' is not an amqp:// or amqps:// URL "
              "(amqp[s]://user:password@host[:port]/vhost, port 1-65535)");
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
    // Added in 0.2: an operator's cancel is final; superseded and throttled are settled.
    EXPECT_EQ(decide("aborted", 0, o), Action::reject);
    EXPECT_EQ(decide("superseded", 0, o), Action::ack);
    EXPECT_EQ(decide("throttled", 0, o), Action::ack);
    // A result this looper does not know is unrouted: settled, never retried.
    EXPECT_EQ(decide("some-future-result", 0, o), Action::ack);
    EXPECT_FALSE(known_result("some-future-result"));
    EXPECT_TRUE(known_result("aborted"));
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
    std::string key = "org.x.y";
    auto line = event_line(&key, R"({"a": [1, 2]})", props, "3-9", nullptr, &why);
    ASSERT_TRUE(line) << why;
    EXPECT_EQ(line->back(), '\n');
    auto e = json::parse(*line);
    EXPECT_EQ(e["routing_key"], "org.x.y");
    EXPECT_EQ(e["id"], "3-9");
    EXPECT_EQ(e["body"]["msg"], json::parse(R"({"a": [1, 2]})"));
    EXPECT_EQ(e["body"]["topic"], "org.x.y");
    EXPECT_EQ(e["body"]["id"], "abc");
    EXPECT_EQ(e["body"]["headers"]["sent-at"], "now");
    EXPECT_EQ(e["dedup_id"], "abc"); // the message id: the same on every redelivery
}

TEST(AmqpMessage, BadBodiesAreRefused) {
    std::string why, k = "k";
    EXPECT_FALSE(event_line(&k, "not json", json::object(), "0-1", nullptr, &why));
    EXPECT_NE(why.find("not JSON"), std::string::npos);
    EXPECT_FALSE(event_line(&k, std::string(100, '[') + std::string(100, ']'), json::object(),
                            "0-1", nullptr, &why));
    EXPECT_NE(why.find("nested deeper"), std::string::npos);
    EXPECT_FALSE(event_line(&k, "\"" + std::string(2 << 20, 'x') + "\"", json::object(), "0-1",
                            nullptr, &why));
    EXPECT_NE(why.find("larger than"), std::string::npos);
}

TEST(AmqpMessage, EnvelopeChoosesTheKeyAndUnwrapsTheBody) {
    Envelope env; // fedmsg-rabbitmq-serializer's {"topic": T, "body": FEDMSG}
    std::string why, key = "workers";
    auto line = event_line(&key, R"({"topic": "org.fp.prod.x", "body": {"msg": {"a": 1}}})",
                           json::object(), "0-1", &env, &why);
    ASSERT_TRUE(line) << why;
    EXPECT_EQ(key, "org.fp.prod.x");
    auto e = json::parse(*line);
    EXPECT_EQ(e["routing_key"], "org.fp.prod.x");
    EXPECT_EQ(e["body"]["msg"], json::parse(R"({"msg": {"a": 1}})"));
    for (const char* bad : {R"({"body": {}})", R"({"topic": 5, "body": {}})",
                            R"({"topic": "", "body": {}})", R"({"topic": "t"})", "[1]"}) {
        key = "workers";
        EXPECT_FALSE(event_line(&key, bad, json::object(), "0-1", &env, &why)) << bad;
        EXPECT_NE(why.find("envelope"), std::string::npos);
    }
}

TEST(AmqpMessage, RetryCopyKeepsPropertiesAndCountsAttempts) {
    json props = {{"message_id", "abc"},
                  {"content_type", "application/json"},
                  {"priority", 3},
                  {"headers", {{"x-delivery-count", 4}, {"nested", {{"list", {1, "two", true}}}}}}};
    RetryProperties copy(props, 2, "cafe");
    // Read it back the way a delivery is read.
    json back = properties_to_json(*copy.get());
    EXPECT_EQ(back["message_id"], "abc");
    EXPECT_EQ(back["content_type"], "application/json");
    EXPECT_EQ(back["priority"], 3);
    EXPECT_EQ(back["headers"]["nested"]["list"], json::parse(R"([1, "two", true])"));
    EXPECT_FALSE(back["headers"].contains("x-delivery-count"));
    EXPECT_EQ(back["headers"][kAttemptsHeader], 2);
    EXPECT_EQ(back["headers"][kSignatureHeader], "cafe");
}

namespace {

const std::string kKey(32, 'k');

json signed_copy(const RetrySigner& s, const std::string& key, int attempts,
                 const std::string& body) {
    return {{"message_id", "m1"},
            {"headers",
             {{kAttemptsHeader, attempts},
              {kSignatureHeader, s.sign({"q", key, "m1", body, attempts})}}}};
}

} // namespace

TEST(AmqpRetry, OnlySignedCopiesThroughTheRetryExchangeAreBelieved) {
    RetrySigner s(kKey);
    const std::string back = retry_exchange("q"), body = R"({"n": 1})";
    auto props = signed_copy(s, "ops.a", 2, body);
    auto o = origin_of(s, "q", back, "ops.a", props, body);
    EXPECT_TRUE(o.problem.empty()) << o.problem;
    EXPECT_EQ(o.attempts, 2);
    EXPECT_EQ(o.routing_key, "ops.a");
    // Through a binding, the binding decides, whatever the headers say (even a valid copy's).
    o = origin_of(s, "q", "amq.topic", "ops.harmless", props, body);
    EXPECT_EQ(o.attempts, 0);
    EXPECT_EQ(o.routing_key, "ops.harmless");
    EXPECT_TRUE(o.problem.empty());
    // Through the retry exchange, every change of a signed fact is refused.
    EXPECT_FALSE(origin_of(s, "q", back, "ops.dangerous", props, body).problem.empty());
    EXPECT_FALSE(origin_of(s, "q", back, "ops.a", props, R"({"n": 2})").problem.empty());
    auto more = props;
    more["headers"][kAttemptsHeader] = 1;
    EXPECT_FALSE(origin_of(s, "q", back, "ops.a", more, body).problem.empty());
    auto other_id = props;
    other_id["message_id"] = "m2";
    EXPECT_FALSE(origin_of(s, "q", back, "ops.a", other_id, body).problem.empty());
    EXPECT_FALSE(origin_of(s, "q2", retry_exchange("q2"), "ops.a", props, body).problem.empty());
    EXPECT_FALSE(origin_of(RetrySigner(std::string(32, 'o')), "q", back, "ops.a", props, body)
                     .problem.empty());
    EXPECT_FALSE(origin_of(s, "q", back, "ops.a", json::object(), body).problem.empty());
    EXPECT_THROW(RetrySigner("short"), std::invalid_argument);
}

// Issue 19: a retry copy the looper before 0.2 left in the queue (default exchange, the queue's
// name as key, the original key in an unsigned header) would run under the queue's name and be
// acked as unrouted. Refused (dead-lettered) by default; run by the header with the option.
TEST(AmqpRetry, CopiesOfTheLooperBefore02AreRefusedOrRunByTheirHeader) {
    RetrySigner s(kKey);
    json old = {{"headers", {{kLegacyRoutingKeyHeader, "ops.a"}, {kAttemptsHeader, 2}}}};
    auto o = origin_of(s, "q", "", "q", old, "{}");
    EXPECT_NE(o.problem.find("legacy_retry_copies: run"), std::string::npos) << o.problem;
    o = origin_of(s, "q", "", "q", old, "{}", true);
    EXPECT_TRUE(o.problem.empty()) << o.problem;
    EXPECT_EQ(o.routing_key, "ops.a");
    EXPECT_EQ(o.attempts, 2);
    old["headers"][kAttemptsHeader] = 99999999; // out of range: counted as one run before
    EXPECT_EQ(origin_of(s, "q", "", "q", old, "{}", true).attempts, 1);
    // Only that shape: through a binding, or by another queue's name, the header means nothing.
    o = origin_of(s, "q", "amq.topic", "q", old, "{}", true);
    EXPECT_EQ(o.routing_key, "q");
    EXPECT_TRUE(o.problem.empty());
    o = origin_of(s, "q", "", "other", old, "{}");
    EXPECT_EQ(o.routing_key, "other");
    EXPECT_TRUE(o.problem.empty());
    EXPECT_TRUE(parse({{"queue", "q"}, {"legacy_retry_copies", "run"}}).run_legacy_copies);
    EXPECT_FALSE(parse({{"queue", "q"}}).run_legacy_copies);
    EXPECT_THROW(parse({{"queue", "q"}, {"legacy_retry_copies", "yes"}}), ConfigError);
}

TEST(AmqpRetry, SignatureIsHmacSha256) {
    // The same primitive as GitHub's webhook test vector (FIELD-NOTES §9), to know it is HMAC.
    RetrySigner s("It's a Secret to Everybody and more than 32 bytes");
    auto a = s.sign({"q", "k", "", "b", 1});
    EXPECT_EQ(a.size(), 64u);
    EXPECT_EQ(a, s.sign({"q", "k", "", "b", 1}));
    // Length-prefixed fields: moving bytes from one field to the next changes the signature.
    EXPECT_NE(s.sign({"q", "kk", "", "b", 1}), s.sign({"qk", "k", "", "b", 1}));
}

TEST(AmqpRetry, DelaysRepeatTheLastAndNamesFollowTheQueue) {
    Options o;
    EXPECT_FALSE(retry_delay(1, o));
    o.retry_delays = {seconds(30), seconds(300)};
    EXPECT_EQ(*retry_delay(1, o), seconds(30));
    EXPECT_EQ(*retry_delay(2, o), seconds(300));
    EXPECT_EQ(*retry_delay(7, o), seconds(300));
    EXPECT_EQ(delay_name("work", seconds(30)), "work.loopabull-delay-30s");
    EXPECT_EQ(retry_exchange("work"), "work.loopabull-retry");
    EXPECT_EQ(secret_file_name("a/../b c"), "amqp-retry-secret-a_.._b_c");
}

TEST(AmqpOptions, RedactTakesOutEveryPasswordSpelling) {
    EXPECT_EQ(redact("amqp://releng:s3cret@broker:567200/"), "amqp://releng:***@broker:567200/");
    EXPECT_EQ(redact("amqps://u:s%33cret@h/v"), "amqps://u:***@h/v");
    EXPECT_EQ(redact("amqp://u:p@ss:w/rd@h/"), "amqp://u:***@h/");
    EXPECT_EQ(redact("amqp://u:pa ss@h"), "amqp://u:***@h");
    EXPECT_EQ(redact("a amqp://u:x@h b amqp://v:y@i"), "a amqp://u:***@h b amqp://v:***@i");
    EXPECT_EQ(redact("amqp://host:5672/vhost"), "amqp://host:5672/vhost");
    EXPECT_EQ(redact("no url here: user@host"), "no url here: user@host");
    auto e = [](const std::string& url) {
        try {
            parse({{"queue", "q"}, {"url", url}});
        } catch (const ConfigError& err) {
            return std::string(err.what());
        }
        return std::string("no error");
    };
    auto m = e("amqp://releng:s3cret@broker:567200/");
    EXPECT_EQ(m.find("s3cret"), std::string::npos) << m;
    EXPECT_NE(m.find("amqp://releng:***@broker:567200/"), std::string::npos) << m;
}

TEST(AmqpOptions, RetryDelaysEnvelopeAndSecretFile) {
    auto o = parse({{"queue", "q"},
                    {"retry_delays", {"30s", "5min", 3600}},
                    {"retry_secret_file", "/etc/k"},
                    {"envelope", true}});
    EXPECT_EQ(o.retry_delays, (std::vector<seconds>{seconds(30), seconds(300), seconds(3600)}));
    EXPECT_EQ(o.retry_secret_file, "/etc/k");
    ASSERT_TRUE(o.envelope);
    EXPECT_EQ(o.envelope->routing_key, "topic");
    o = parse({{"queue", "q"}, {"envelope", {{"routing_key", "t"}, {"body", "b"}}}});
    EXPECT_EQ(o.envelope->body, "b");
    EXPECT_NE(error_of({{"queue", "q"}, {"retry_delays", {0}}}).find("retry_delays[0]"),
              std::string::npos);
    EXPECT_NE(error_of({{"queue", "q"}, {"envelope", {{"topic", "t"}}}}).find("envelope.topic"),
              std::string::npos);
    EXPECT_NE(error_of({{"queue", std::string(230, 'q')}}).find("215"), std::string::npos);
}

TEST(AmqpOptions, Legacy007TlsMeansPort5671AndExternal) {
    json tls = {{"ca_cert", "/ca.pem"}, {"certfile", "/c.pem"}, {"keyfile", "/c.key"}};
    // fedmsg_rabbitmq_example.yml of loopabull 0.0.7: credentials with an empty password, tls.
    auto o = parse({{"rabbitmq", {{"host", "rabbitmq.example.org"}, {"virtual_host", "/pub"}}},
                    {"credentials", {{"username", "fedora"}, {"password", nullptr}}},
                    {"tls", tls},
                    {"channel_queue", {{"name", "q"}}}});
    EXPECT_EQ(o.endpoints[0].port, 5671);
    EXPECT_TRUE(o.endpoints[0].tls);
    EXPECT_EQ(o.sasl, Sasl::external);
    ASSERT_EQ(o.warnings.size(), 1u);
    EXPECT_NE(o.warnings[0].find("'credentials' are not used"), std::string::npos);
    // An explicit port stays; without tls, an empty password is taken with a warning.
    o = parse(
        {{"rabbitmq", {{"host", "h"}, {"port", 6000}}}, {"tls", tls}, {"channel_queue", "q"}});
    EXPECT_EQ(o.endpoints[0].port, 6000);
    o = parse({{"rabbitmq", {{"host", "h"}}},
               {"credentials", {{"username", "u"}, {"password", ""}}},
               {"channel_queue", "q"}});
    EXPECT_EQ(o.endpoints[0].port, 5672);
    EXPECT_EQ(o.sasl, Sasl::plain);
    ASSERT_EQ(o.warnings.size(), 1u);
    EXPECT_NE(o.warnings[0].find("empty"), std::string::npos);
    // The current dialect keeps its own rules: null is not a password there.
    EXPECT_NE(error_of({{"queue", "q"}, {"credentials", {{"password", nullptr}}}})
                  .find("credentials.password"),
              std::string::npos);
}

TEST(AmqpMessage, DedupIdIsStableWithoutMessageId) {
    // No message_id: a hash of key and body, the same for every delivery of the message and
    // different for another body or key.
    auto a = dedup_id("k.x", R"({"a":1})", json::object());
    EXPECT_EQ(a.rfind("sha256:", 0), 0u);
    EXPECT_EQ(a.size(), 7u + 64u);
    EXPECT_EQ(a, dedup_id("k.x", R"({"a":1})", {{"headers", {{"x-attempts", 2}}}}));
    EXPECT_NE(a, dedup_id("k.x", R"({"a":2})", json::object()));
    EXPECT_NE(a, dedup_id("k.y", R"({"a":1})", json::object()));
    // A message id too long for the protocol's 256 bytes is hashed as well.
    EXPECT_EQ(dedup_id("k", "{}", {{"message_id", std::string(300, 'm')}}).rfind("sha256:", 0), 0u);
    EXPECT_EQ(dedup_id("k", "{}", {{"message_id", "m-1"}}), "m-1");
}
