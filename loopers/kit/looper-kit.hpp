// SPDX-License-Identifier: GPL-3.0-or-later
//
// What every bundled looper needs around protocol v1 (man/loopabull-looper.7): its config from
// $LOOPABULL_CONFIG_FILE, diagnostics on stderr, answers split from stdin, events queued for a
// non-blocking stdout, and SIGTERM as a readable descriptor. No looper-specific logic lives here.
#pragma once

#include "core/unique-fd.hpp"

#include <nlohmann/json.hpp>

#include <cstddef>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace loopabull::kit {

using nlohmann::json;

// The supervisor's default max_line_length is 1 MiB; one byte under it leaves room for the
// newline whichever way it is counted.
constexpr std::size_t kMaxEventLine = 1024 * 1024 - 1;

// A usage mistake: the looper exits 2 instead of 1.
struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

std::string errno_text(int error);

// One write per line, so lines of loopers that share the supervisor's log never interleave.
void log_line(std::string_view line);
template <typename... Parts> void log(const Parts&... parts) {
    std::string line;
    (line.append(std::string_view(parts)), ...);
    log_line(line);
}

// Where a looper that keeps state (a spool, a cursor) keeps it by default: the first directory of
// $STATE_DIRECTORY (systemd.exec(5), StateDirectory= of loopabull@.service) joined with
// "KIND-LOOPER" ($LOOPABULL_LOOPER), so two loopers of one instance never share it. Empty when
// either variable is missing or the looper's name could leave the directory.
std::string default_state_directory(std::string_view kind);

// Untrusted text (answers, messages) is shortened before it reaches the log.
std::string shortened(std::string_view text, std::size_t max = 200);

// Refuses a protocol version this looper does not speak.
void check_protocol();

// The JSON object the supervisor passes as the looper's `config`; {} when there is none.
json read_config();

// Parses untrusted JSON; the depth limit keeps hostile input from overflowing the stack when
// it is dumped again. Throws std::runtime_error with the parser's message.
json parse_untrusted_json(std::string_view text, int max_depth = 128);

// The string value of key in object, if it is a string.
std::optional<std::string> string_field(const json& object, const char* key);

// SIGTERM and SIGINT, blocked and delivered as a readable descriptor; SIGPIPE ignored so that a
// vanished supervisor shows up as EPIPE.
UniqueFd stop_signals();

// Splits stdin into answer lines, keeping at most max_line bytes of an unfinished one.
class AnswerReader {
  public:
    using Handler = std::function<void(std::string_view line)>;
    explicit AnswerReader(std::size_t max_line = 64 * 1024) : max_line_(max_line) {}
    // Reads once from fd; false at end of file (the supervisor is stopping this looper).
    bool read(int fd, const Handler& handle);

  private:
    void feed(std::string_view data, const Handler& handle);
    void append(std::string_view data);

    std::size_t max_line_;
    std::string buffer_;
    bool skipping_ = false;
};

// Event lines waiting for a non-blocking stdout: a looper stops taking in new events while this
// holds more than a bound of its choosing, so a supervisor that is not reading (its queue is
// full) holds the source back instead of growing the looper.
class Outbox {
  public:
    void push(std::string line) { data_.append(line); }
    std::size_t size() const { return data_.size() - pos_; }
    bool empty() const { return size() == 0; }
    // Writes what the pipe takes now; throws when the supervisor is gone.
    void flush(int fd);

  private:
    std::string data_;
    std::size_t pos_ = 0;
};

// {"routing_key":KEY,"body":BODY,"id":ID}\n, or nullopt when it would exceed kMaxEventLine or
// the body holds invalid UTF-8.
std::optional<std::string> event_line(std::string_view key, const json& body, std::string_view id);

} // namespace loopabull::kit
