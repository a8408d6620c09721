// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Turning AMQP deliveries into loopabull events and back into AMQP messages (for a retry).
// Pure: rabbitmq-c's types, none of its I/O; testable alone.

#include "options.hpp"

#include <amqp.h>
#include <nlohmann/json.hpp>

#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace loopabull::amqp {

nlohmann::json table_to_json(const amqp_table_t& table);
// The properties worth keeping for a playbook and for a retry, as a JSON object.
nlohmann::json properties_to_json(const amqp_basic_properties_t& props);

// The event's "dedup_id" (protocol 0.2; the supervisor's `dedup` looks it up): the same for
// every delivery of one message, where the event id ("GENERATION-TAG", policy.hpp) names one
// delivery. The message_id property when it is a non-empty string of at most 200 bytes, else
// "sha256:" and the hex SHA-256 of the routing key, a NUL and the body: two messages without
// message_id that carry the same key and body are then one event for de-duplication.
std::string dedup_id(std::string_view routing_key, std::string_view body,
                     const nlohmann::json& properties);

// The event line (with its newline) for a delivery, or nullopt with *why when the body is not
// a JSON document, the envelope's fields are missing, or the event would be too large for the
// supervisor. *routing_key: in, the key the delivery is trusted with (retry.hpp's origin_of);
// out, the key the playbook is chosen by (the envelope's field, when envelope is given).
std::optional<std::string> event_line(std::string* routing_key, std::string_view body,
                                      const nlohmann::json& properties, std::string_view id,
                                      const Envelope* envelope, std::string* why);

// Owns the memory of amqp_basic_properties_t built from properties_to_json's output, with the
// attempt count and its signature (retry.hpp) set for a retried copy, persistent.
class RetryProperties {
  public:
    RetryProperties(const nlohmann::json& properties, int attempts, std::string_view signature);
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
