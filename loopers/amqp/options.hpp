// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The amqp looper's settings, read from its JSON config. Pure: no network, testable alone.

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace loopabull::amqp {

using seconds = std::chrono::seconds;

// A config problem; the message names the field.
struct ConfigError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Endpoint {
    std::string host = "localhost";
    int port = 5672;
    std::string vhost = "/";
    std::string username = "guest";
    std::string password = "guest";
    bool tls = false;
};

struct TlsOptions {
    std::string ca_cert;
    std::string certfile;
    std::string keyfile;
    bool verify_hostname = true;
};

enum class Sasl { plain, external };

struct QueueOptions {
    std::string name;
    bool durable = true;
    bool exclusive = false;
    bool auto_delete = false;
    nlohmann::json arguments = nlohmann::json::object(); // strings, integers, booleans
};

struct Binding {
    std::string exchange = "amq.topic";
    std::vector<std::string> routing_keys;
};

// What to do with a message whose playbook failed or timed out.
enum class OnFailure { retry, reject, ack };

// Routing key and body taken from fields of a JSON message, as fedmsg-rabbitmq-serializer
// wrapped fedmsg messages ({"topic": T, "body": FEDMSG}) for loopabull 0.0.5/0.0.6.
struct Envelope {
    std::string routing_key = "topic";
    std::string body = "body";
};

struct Options {
    std::vector<Endpoint> endpoints;
    std::optional<TlsOptions> tls;
    Sasl sasl = Sasl::plain;
    QueueOptions queue;
    std::vector<Binding> bindings;
    std::uint16_t prefetch = 1;
    seconds heartbeat{60};
    seconds connect_timeout{30};
    OnFailure on_failure = OnFailure::retry;
    int max_attempts = 3;
    // Waits before the 2nd, 3rd... attempt (the last repeats); empty: retry at once.
    std::vector<seconds> retry_delays;
    // The HMAC key of retry copies (retry.hpp); empty: $STATE_DIRECTORY's, made on first use.
    std::string retry_secret_file;
    std::optional<Envelope> envelope;
    // legacy_retry_copies: run: retry copies of the looper before 0.2 (retry.hpp) run with the
    // routing key and attempt count of their unsigned headers; false: they are rejected.
    bool run_legacy_copies = false;
    bool requeue_cancelled = true;
    seconds consumer_timeout{30 * 60};
    seconds reconnect_delay{1};
    seconds reconnect_delay_max{60};
    // Things worth a line on stderr that do not stop the looper.
    std::vector<std::string> warnings;
};

// What the supervisor told the looper through its environment.
struct Environment {
    unsigned max_parallel = 1;          // LOOPABULL_MAX_PARALLEL
    std::optional<seconds> job_timeout; // LOOPABULL_JOB_TIMEOUT
};

// Reads both the amqp looper's own keys and the 0.0.7 fedmsgrabbitmq looper's (rabbitmq,
// channel_queue, routing_keys, exchange); throws ConfigError naming the offending field.
Options parse_options(const nlohmann::json& config, const Environment& env);

// amqp://user:pass@host:port/vhost and amqps://...; throws ConfigError (whose text has the URL
// with its password redacted).
Endpoint parse_url(const std::string& url, const std::string& field);

// The one place credentials are taken out of text before it is logged. Each "://" starts a URL
// that runs to the next "://" or the end of text; in it, whatever lies between the first ':'
// after "://" and the URL's last '@' (the password, percent-encoded or not, even containing
// ':', '/', '@' or spaces, which a hand-written URL may) becomes "***". Text without "://" or
// '@' is returned unchanged. A malformed URL is redacted too: more rather than less. Give it a
// URL, not a sentence that holds one (a later '@' in the sentence would be redacted as well).
std::string redact(std::string_view text);

} // namespace loopabull::amqp
