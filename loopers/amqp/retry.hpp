// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Where a retry copy goes and how its facts are proved. Every header of a message is written by
// whoever published it, so the attempt count of a copy (and its routing key) are only believed
// when the copy carries an HMAC-SHA256 (RFC 2104, FIPS 180-4) made with a secret that only this
// looper (and the other instances of the same queue) hold, and only when it came back through
// loopabull's own retry exchange. Anything else is a first delivery: the queue's binding (the
// routing key the broker routed it by) decides the playbook and the count starts at 0.

#include <nlohmann/json.hpp>

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace loopabull::amqp {

// Headers of a retry copy: runs before this delivery (an integer), and the proof.
inline constexpr const char* kAttemptsHeader = "x-loopabull-attempts";
inline constexpr const char* kSignatureHeader = "x-loopabull-signature";
// Retry copies of the looper before 0.2 were published to the default exchange under the queue's
// name, unsigned, with the original routing key in this header (and kAttemptsHeader).
inline constexpr const char* kLegacyRoutingKeyHeader = "x-loopabull-routing-key";

// Secrets are at least this long (bytes of the file, a trailing newline not counted).
inline constexpr std::size_t kMinSecret = 32;

// Names the looper declares beside its queue (see loopabull-amqp(7), "Retries"):
// - the retry exchange, fanout, bound to the queue: copies come back through it keeping their
//   original routing key (so a dead-letter exchange routed by topic still sees that key);
// - per delay, a fanout exchange and a queue of the same name, whose message TTL is the delay
//   and whose dead-letter exchange is the retry exchange: the broker keeps the wait.
std::string retry_exchange(std::string_view queue);
std::string delay_name(std::string_view queue, std::chrono::seconds delay);

// The facts a signature covers. The body goes in as its SHA-256, so that a valid signature
// cannot be moved onto another body; the queue's name so that it cannot be moved to another
// queue that shares the secret.
struct RetryFacts {
    std::string_view queue;
    std::string_view routing_key;
    std::string_view message_id; // "" when the message has none
    std::string_view body;
    int attempts = 0;
};

class RetrySigner {
  public:
    // key: at least kMinSecret bytes; throws std::invalid_argument otherwise.
    explicit RetrySigner(std::string key);
    // Lower-case hex of HMAC-SHA256 over an unambiguous (length-prefixed) encoding of f.
    std::string sign(const RetryFacts& f) const;
    // Compares in constant time (CRYPTO_memcmp).
    bool verify(const RetryFacts& f, std::string_view signature) const;

  private:
    std::string key_;
};

// Reads the secret at path, creating it (32 random bytes from getrandom(2), hex, mode 0600,
// O_EXCL so that two instances starting together agree) when create is true and it is missing.
// Errors (unreadable, too short, cannot create) are returned in *why as text naming the path.
std::optional<std::string> load_secret(const std::string& path, bool create, std::string* why);

// A file name made of the queue's name: bytes outside [A-Za-z0-9._-] become '_'.
std::string secret_file_name(std::string_view queue);

// The routing key and attempt count a delivery is run with, and what is wrong with it.
struct Origin {
    std::string routing_key;
    int attempts = 0;
    bool copy = false;   // a verified retry copy
    std::string problem; // non-empty: refuse (reject without requeue) for this reason
};

// exchange: the delivery's exchange (a copy dead-lettered out of a delay queue names the
// dead-letter exchange, which is our retry exchange); properties: properties_to_json's output.
// Only deliveries through our retry exchange are looked at for a signature; a copy there without
// a valid one is refused (someone published into loopabull's retry path).
// A delivery shaped like a retry copy of the looper before 0.2 (default exchange, the queue's
// name as routing key, a string kLegacyRoutingKeyHeader) would run under the queue's name,
// answer unrouted and be acked: lost. Its headers are unsigned (any publisher to the default
// exchange can write them), so it is refused (rejected: dead-lettered) unless run_legacy is
// true, when it runs with that header's key and kAttemptsHeader's count (1 to 1,000,000; else
// 1): an operator's choice for the upgrade, trusting whoever may publish to the default exchange.
Origin origin_of(const RetrySigner& signer, std::string_view queue, std::string_view exchange,
                 std::string_view routing_key, const nlohmann::json& properties,
                 std::string_view body, bool run_legacy = false);

} // namespace loopabull::amqp
