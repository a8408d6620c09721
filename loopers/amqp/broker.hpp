// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// One connection to the broker, with the one channel the amqp looper consumes, acknowledges
// and publishes retries on. Any failure throws BrokerError; the caller then drops the whole
// connection (and with it every delivery tag it handed out) and connects again.

#include "options.hpp"

#include <amqp.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <variant>

namespace loopabull::amqp {

struct BrokerError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Incoming {
    std::uint64_t tag = 0;
    std::string exchange; // "" for the default exchange
    std::string routing_key;
    std::string body;
    nlohmann::json properties;
};

// The broker's answer to one of our publishes (publisher confirms).
struct Confirm {
    std::uint64_t seq = 0;
    bool ack = false;
    bool multiple = false;
};

class RetryProperties;

class Broker {
  public:
    // Connects, declares and binds the queue, declares the retry exchange and one delay queue
    // per retry_delays entry (retry.hpp), sets the prefetch and starts consuming.
    Broker(const Options& options, const Endpoint& endpoint);
    ~Broker();
    Broker(const Broker&) = delete;
    Broker& operator=(const Broker&) = delete;

    int fd() const;
    // rabbitmq-c reads ahead: frames can wait in its buffers while the socket is quiet, so
    // this must be drained before poll() sleeps on the socket.
    bool buffered() const;
    // The next delivery or confirm, without blocking; monostate when there is none yet. Also
    // sends and checks heartbeats.
    std::variant<std::monostate, Incoming, Confirm> next();

    void ack(std::uint64_t tag);
    void reject(std::uint64_t tag, bool requeue);
    // Publishes a retry copy to exchange (the retry exchange, or a delay's) with the message's
    // routing key; returns its publisher-confirm sequence number.
    std::uint64_t publish_copy(const std::string& exchange, const std::string& routing_key,
                               const std::string& body, const RetryProperties& props);
    // A clean close: the broker requeues what we did not acknowledge.
    void close() noexcept;

  private:
    void open_socket(const Endpoint& e);
    void login(const Endpoint& e);
    void setup();
    void declare_retry_path();
    void check(const char* what);
    std::variant<std::monostate, Incoming, Confirm> method_frame();

    const Options& options_;
    amqp_connection_state_t conn_;
    std::uint64_t published_ = 0;
    bool open_ = false;
};

} // namespace loopabull::amqp
