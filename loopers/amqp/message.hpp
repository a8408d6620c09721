// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Turning AMQP deliveries into loopabull events and back into AMQP messages (for a retry).
// Pure: rabbitmq-c's types, none of its I/O; testable alone.

#include <amqp.h>
#include <nlohmann/json.hpp>

#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace loopabull::amqp {

// Headers a retried copy carries: how many runs it had, and the routing key it first came
// with (the copy goes straight to the queue through the default exchange, whose routing key
// is the queue's name).
inline constexpr const char* kAttemptsHeader = "x-loopabull-attempts";
inline constexpr const char* kRoutingKeyHeader = "x-loopabull-routing-key";

nlohmann::json table_to_json(const amqp_table_t& table);
// The properties worth keeping for a playbook and for a retry, as a JSON object.
nlohmann::json properties_to_json(const amqp_basic_properties_t& props);

// Runs before this delivery: our header, or a quorum queue's x-delivery-count.
int attempts_of(const nlohmann::json& properties);
// The routing key the playbook is chosen by: the original one for a retried copy.
std::string routing_key_of(const nlohmann::json& properties, std::string_view delivered);

// The event line (with its newline) for a delivery, or nullopt with *why when the body is not
// a JSON document or the event would be too large for the supervisor.
std::optional<std::string> event_line(std::string_view routing_key, std::string_view body,
                                      const nlohmann::json& properties, std::string_view id,
                                      std::string* why);

// Owns the memory of amqp_basic_properties_t built from properties_to_json's output, with the
// attempt count and original routing key set for a retried copy.
class RetryProperties {
  public:
    RetryProperties(const nlohmann::json& properties, int attempts, std::string_view routing_key);
    RetryProperties(const RetryProperties&) = delete;
    RetryProperties& operator=(const RetryProperties&) = delete;
    const amqp_basic_properties_t* get() const { return &props_; }

  private:
    amqp_bytes_t bytes(const std::string& s);
    amqp_table_t table(const nlohmann::json& object);
    amqp_field_value_t value(const nlohmann::json& v);

    amqp_basic_properties_t props_{};
    std::deque<std::string> strings_;
    std::deque<std::vector<amqp_table_entry_t>> entries_;
    std::deque<std::vector<amqp_field_value_t>> arrays_;
};

} // namespace loopabull::amqp
