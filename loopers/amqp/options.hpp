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

// amqp://user:pass@host:port/vhost and amqps://...; throws ConfigError.
Endpoint parse_url(const std::string& url, const std::string& field);

} // namespace loopabull::amqp
