// SPDX-License-Identifier: GPL-3.0-or-later
//
// The webhook looper's pure logic (no sockets, no files except secrets): its options, the
// routing-key templates, authentication of a request, and turning an accepted request into
// events. Unit-tested (tests/unit/loopers/test-webhook.cpp) and fuzzed (tests/fuzz/fuzz-webhook).
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstddef>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace loopabull::webhook {

using nlohmann::json;

// A mistake in the looper's `config:`; the message names the key.
struct OptionError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// "{header:NAME}", "{body:/json/pointer}" and literal text, parsed once at start.
class KeyTemplate {
  public:
    // Throws OptionError for an unknown placeholder, an unclosed brace or a bad JSON Pointer
    // (RFC 6901).
    static KeyTemplate parse(std::string_view text);
    // The header's value by name (case-insensitive, as HTTP says); nullopt when absent.
    using Headers = std::function<std::optional<std::string>(std::string_view name)>;
    // The routing key, or why none: a missing header or pointer, a value that is not a string or
    // number, or a result outside the routing-key grammar (core/routing.hpp).
    struct Result {
        std::optional<std::string> key;
        std::string error;
    };
    Result expand(const Headers& headers, const json& body) const;
    const std::string& text() const { return text_; }

  private:
    struct Part {
        enum class Kind { literal, header, body } kind;
        std::string value; // the literal, the header name, or the pointer's text
    };
    std::string text_;
    std::vector<Part> parts_;
};

enum class AuthKind { none, hmac, token, bearer };
enum class Encoding { hex, base64 };

struct Auth {
    AuthKind kind = AuthKind::none;
    std::string header;               // hmac: the signature header; token: the token header
    std::string algorithm = "sha256"; // hmac: sha256 or sha512
    Encoding encoding = Encoding::hex;
    std::string prefix; // hmac: text before the signature, e.g. "sha256="
    std::string secret; // read from secret_file or secret_credential
};

struct Endpoint {
    std::string path;
    std::string preset = "none";
    KeyTemplate routing_key;
    Auth auth;
    // alertmanager: one event per element of the body's "alerts" array.
    bool split_alerts = false;
    // The header whose value identifies a delivery (replay detection); empty: the signature.
    std::string delivery_header;
    bool replay_protection = true;
    bool synchronous = false;
    std::chrono::milliseconds sync_timeout{30000};
};

struct Tls {
    std::string certfile, keyfile, client_ca;
    bool enabled() const { return !certfile.empty(); }
};

struct Limits {
    std::size_t max_body = 1024 * 1024;
    std::size_t max_header = 16 * 1024;
    std::chrono::seconds request_timeout{30};
    std::chrono::seconds idle_timeout{10};
    unsigned max_connections = 64;
    unsigned max_connections_per_client = 16;
    double rate = 10; // requests a second per client address
    double rate_burst = 20;
    std::size_t max_spooled = 10000;
    std::chrono::seconds replay_window{86400};
};

struct Options {
    std::vector<std::string> listen;
    Tls tls;
    std::vector<Endpoint> endpoints;
    Limits limits;
    std::string state_directory;
};

// Reads a secret: the file's content without one trailing newline. Throws OptionError.
using SecretReader = std::function<std::string(const std::string& path)>;

// Parses the looper's `config:` (man/loopabull-webhook.7). credentials_dir is
// $CREDENTIALS_DIRECTORY (systemd.exec(5)) or empty; default_state is where the spool goes
// when state_directory is not given (empty: it must be given). Throws OptionError.
Options parse_options(const json& config, const std::string& credentials_dir,
                      const std::string& default_state, const SecretReader& read_secret);

// Why the request is not authentic, or nullopt. body is the raw body, byte for byte as received;
// every comparison with a secret takes the same time whatever the difference (CRYPTO_memcmp on
// equal-length digests).
std::optional<std::string> authenticate(const Auth& auth, const KeyTemplate::Headers& headers,
                                        std::string_view body);

// The HMAC of data with key (RFC 2104), algorithm "sha256" or "sha512", in the encoding.
std::string hmac(std::string_view algorithm, std::string_view key, std::string_view data,
                 Encoding encoding);

// What identifies a delivery for replay detection: the delivery header's value, else the
// signature or token presented; nullopt when neither (auth none without a delivery header).
std::optional<std::string> replay_key(const Endpoint& endpoint,
                                      const KeyTemplate::Headers& headers);

struct Event {
    std::string routing_key;
    json payload;
};

// The events of one accepted request, or the reason it is refused (HTTP 400). The payload is the
// body's JSON value, or its text when it is not JSON and not declared JSON (Content-Type); an
// empty body is {}. Refused: a body declared JSON that is not, an alertmanager body without
// "alerts", or a routing key that cannot be built.
struct Events {
    std::vector<Event> events;
    std::string error;
};
Events make_events(const Endpoint& endpoint, const KeyTemplate::Headers& headers,
                   std::string_view body);

// Parses "host:port", "[v6]:port" or "fd:NAME". Throws OptionError.
struct ListenAddress {
    std::string fd_name; // set for fd:NAME
    std::string host;
    unsigned port = 0;
};
ListenAddress parse_listen(std::string_view text);

} // namespace loopabull::webhook
