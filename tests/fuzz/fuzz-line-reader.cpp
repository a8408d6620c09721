// SPDX-License-Identifier: GPL-3.0-or-later
// The looper protocol as the supervisor reads it: bytes arrive in reads of any size, the
// LineReader frames them, parse_event judges each line and format_answer answers it.
// Invariants: the lines produced are exactly the lines of the whole input (overlong ones reported
// once, as a prefix), the reader's buffer stays within max_line plus one read, every accepted
// event obeys the grammar, and every answer is one line of valid JSON.
#include "core/protocol.hpp"
#include "core/routing.hpp"

#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

using namespace loopabull;

namespace {

constexpr std::size_t kMaxChunk = 4096;

struct Produced {
    std::string text;
    bool overlong;
};

void check(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "invariant violated: %s\n", what);
        std::abort();
    }
}

void check_answer(const json& id, Result result, std::string_view error) {
    std::string line = format_answer(id, result, 1, error);
    check(!line.empty() && line.back() == '\n', "answer ends with a newline");
    check(line.find('\n') == line.size() - 1, "answer is one line");
    auto back = json::parse(line, nullptr, false);
    check(!back.is_discarded() && back.at("id") == id, "answer is JSON echoing the id");
}

void check_event(std::string_view line) {
    auto parsed = parse_event(line);
    if (auto* e = std::get_if<Event>(&parsed)) {
        check(!routing_key_error(e->routing_key), "accepted key obeys the grammar");
        check(e->body.is_object(), "accepted body is an object");
        check(!e->id || e->id->is_string() || e->id->is_number_integer(), "id type");
        if (e->id) check_answer(*e->id, Result::succeeded, {});
        return;
    }
    auto& r = std::get<Rejection>(parsed);
    check(!r.reason.empty(), "a rejection says why");
    check_answer(r.id.value_or(json(nullptr)), Result::rejected, r.reason);
}

// What a reader must produce for the whole input, by splitting it in one go.
std::vector<Produced> expected_lines(std::string_view input, std::size_t max_line) {
    std::vector<Produced> out;
    std::size_t pos = 0;
    for (auto nl = input.find('\n'); nl != std::string_view::npos; nl = input.find('\n', pos)) {
        auto line = input.substr(pos, nl - pos);
        out.push_back({std::string(line), line.size() > max_line});
        pos = nl + 1;
    }
    // An unfinished last line is never dispatched, but once past the limit it is reported.
    if (input.size() - pos > max_line) out.push_back({std::string(input.substr(pos)), true});
    return out;
}

void compare(const std::vector<Produced>& got, const std::vector<Produced>& want,
             std::size_t max_line) {
    check(got.size() == want.size(), "as many lines as the whole input has");
    for (std::size_t i = 0; i < got.size(); ++i) {
        check(got[i].overlong == want[i].overlong, "overlong flag");
        if (!want[i].overlong) {
            check(got[i].text == want[i].text, "line text");
            continue;
        }
        // An overlong line is reported by its first bytes: at most 64, at least what the reader
        // had seen when it gave up on it.
        std::size_t least = std::min({want[i].text.size(), std::size_t(64), max_line + 1});
        check(got[i].text.size() >= least && got[i].text.size() <= 64, "excerpt length");
        check(want[i].text.starts_with(got[i].text), "excerpt is a prefix of the line");
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    FuzzedDataProvider fdp(data, size);
    auto max_line = fdp.ConsumeIntegralInRange<std::size_t>(1, 300);
    auto seed = fdp.ConsumeIntegral<std::uint32_t>();
    std::string input = fdp.ConsumeRemainingBytesAsString();

    LineReader reader(max_line);
    std::vector<Produced> got;
    std::size_t pos = 0;
    while (pos < input.size()) {
        seed = seed * 1103515245u + 12345u; // chunk sizes: split reads of 1..kMaxChunk bytes
        std::size_t chunk = std::min<std::size_t>(1 + (seed >> 8) % kMaxChunk, input.size() - pos);
        auto area = reader.prepare(chunk);
        check(area.size() >= chunk && area.size() <= max_line + kMaxChunk, "buffer is bounded");
        std::memcpy(area.data(), input.data() + pos, chunk);
        reader.commit(chunk);
        pos += chunk;
        while (auto line = reader.next()) {
            got.push_back({std::string(line->text), line->overlong});
            if (!line->overlong) check_event(line->text);
        }
        check(!reader.has_line(), "no line left after draining");
        check(reader.pending() <= max_line, "held bytes within max_line");
        check(reader.partial_bytes() == reader.pending(), "partial bytes are the pending ones");
    }
    compare(got, expected_lines(input, max_line), max_line);
    // The whole input as one line, as a looper with a large max_line_length would send it.
    if (input.find('\n') == std::string::npos) check_event(input);
    return 0;
}
