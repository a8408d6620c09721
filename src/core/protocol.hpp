// SPDX-License-Identifier: GPL-3.0-or-later
// Looper protocol v1: line framing and event parsing. Pure logic, no I/O.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>

namespace loopabull {

using json = nlohmann::json;

struct Event {
    std::string routing_key;
    json body;              // always an object
    std::optional<json> id; // string or integer, echoed in the answer
    // "dedup_id" (added in 0.2, issue 17): names the *message* across redeliveries when "id"
    // names one delivery (the amqp looper's ids are per channel); a string of at most 256
    // bytes. De-duplication (a looper's `dedup`) uses it, else the id.
    std::optional<std::string> dedup_id;
};

struct Rejection {
    std::string reason;
    std::optional<json> id; // set when the id could be read, so the looper still gets an answer
};

using ParsedEvent = std::variant<Event, Rejection>;

// Parses one line (without its newline). Never throws: every malformed input is a Rejection.
ParsedEvent parse_event(std::string_view line);

// cancelled: a shutdown interrupted the job or never started it (the looper puts the event back);
// aborted (added in 0.2): an operator cancelled it, final (loopabull-looper(7));
// superseded and throttled (added in 0.2, routes): settled as done without running.
enum class Result { succeeded, failed, unrouted, rejected, timeout, cancelled, aborted, superseded, throttled };

std::string_view to_string(Result r) noexcept;

// One answer line, newline included. A non-empty reason (human text: why the event was rejected,
// failed to start, or who aborted it) is written as "reason" (added in 0.2) and, for loopers
// written for 0.1, as "error"; bytes that are not UTF-8 become U+FFFD.
// duplicate_of (added in 0.2, issue 17): the job that already ran this event successfully;
// written as "duplicate_of" (an integer) on a `succeeded` answer that ran nothing.
std::string format_answer(const json& id, Result result, std::optional<int> exit_code,
                          std::string_view reason = {},
                          std::optional<std::uint64_t> duplicate_of = std::nullopt);

bool valid_utf8(std::string_view s) noexcept;

// Splits a byte stream into lines with a hard bound on memory: a line longer than the limit is
// reported once as overlong and the rest of it is discarded up to the next newline.
class LineReader {
  public:
    struct Line {
        std::string_view text; // the line, or its first bytes when overlong
        bool overlong = false;
    };

    explicit LineReader(std::size_t max_line) : max_line_(max_line) {}

    // Room for at least `want` more bytes; fill it, then call commit() with what was read.
    std::span<char> prepare(std::size_t want);
    void commit(std::size_t n);

    // The next complete line; the view stays valid until the next call to prepare() or next().
    std::optional<Line> next();

    // Bytes of an unfinished line held (a partial last line at EOF is never dispatched).
    std::size_t pending() const noexcept { return discarding_ ? 0 : filled_ - start_; }
    // Bytes after the last buffered newline: the unfinished line, whatever else is buffered.
    std::size_t partial_bytes() const noexcept;
    // Whether a newline is buffered, i.e. next() has something to return.
    bool has_line() const noexcept;

  private:
    void compact();

    std::string buf_;
    std::size_t start_ = 0; // first byte not yet returned
    std::size_t scan_ = 0;  // bytes from start_ known to hold no newline
    std::size_t filled_ = 0;
    std::size_t max_line_;
    bool discarding_ = false;
};

} // namespace loopabull
