// SPDX-License-Identifier: GPL-3.0-or-later
// Protocol v1: event parsing, answers, UTF-8 validation and line framing.
#include "core/protocol.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <concepts>
#include <cstring>
#include <random>
#include <string>
#include <vector>

using namespace loopabull;
using namespace std::string_literals;

namespace {

// What a line parses to when it is a T (an Event or a Rejection); anything else fails the test.
template <typename T> T parsed_as(std::string_view line) {
    auto parsed = parse_event(line);
    if (auto t = std::get_if<T>(&parsed)) return std::move(*t);
    if (auto r = std::get_if<Rejection>(&parsed))
        ADD_FAILURE() << "rejected (" << r->reason << "): " << line;
    else
        ADD_FAILURE() << "accepted: " << line;
    return {};
}

Event event_of(std::string_view line) {
    return parsed_as<Event>(line);
}
Rejection rejection_of(std::string_view line) {
    return parsed_as<Rejection>(line);
}

// {"routing_key": "a", "body": <depth - 2 nested objects>}: `depth` brackets in all.
std::string nested_event(int depth) {
    std::string line = R"({"routing_key":"a","body":)";
    for (int i = 0; i < depth - 2; ++i)
        line += R"({"a":)";
    line += "{}";
    line.append(static_cast<std::size_t>(depth - 2), '}');
    return line + "}";
}

} // namespace

// --- parse_event: accepted events ---

TEST(ParseEvent, ObjectWithBodyAndStringId) {
    auto e = event_of(R"({"routing_key": "a.b.c", "body": {"x": [1, "y"]}, "id": "42"})");
    EXPECT_EQ(e.routing_key, "a.b.c");
    EXPECT_EQ(e.body, json::parse(R"({"x": [1, "y"]})"));
    ASSERT_TRUE(e.id.has_value());
    EXPECT_EQ(*e.id, json("42"));
}

TEST(ParseEvent, ObjectWithoutBodyOrIdGetsEmptyBodyAndNoId) {
    auto e = event_of(R"({"routing_key": "org.fedoraproject.prod.buildsys.build.state.change"})");
    EXPECT_EQ(e.routing_key, "org.fedoraproject.prod.buildsys.build.state.change");
    EXPECT_TRUE(e.body.is_object());
    EXPECT_TRUE(e.body.empty());
    EXPECT_FALSE(e.id.has_value());
}

TEST(ParseEvent, IntegerIdsStayIntegers) {
    for (auto text : {"0", "7", "-3", "9007199254740993", "18446744073709551615"}) {
        auto e = event_of(R"({"routing_key": "a", "id": )"s + text + "}");
        ASSERT_TRUE(e.id.has_value()) << text;
        EXPECT_TRUE(e.id->is_number_integer()) << text;
        EXPECT_EQ(e.id->dump(), text);
    }
}

TEST(ParseEvent, IdOfExactly256BytesIsAccepted) {
    std::string id(256, 'i');
    auto e = event_of(R"({"routing_key": "a", "id": ")" + id + R"("})");
    ASSERT_TRUE(e.id.has_value());
    EXPECT_EQ(*e.id, json(id));
}

TEST(ParseEvent, UnknownFieldsAreIgnored) {
    auto e = event_of(R"({"routing_key": "a.b", "priority": 5, "headers": {"x": null}})");
    EXPECT_EQ(e.routing_key, "a.b");
    EXPECT_TRUE(e.body.empty());
}

TEST(ParseEvent, TwoElementArrayHasNoId) {
    auto e = event_of(R"(["io.pagure.prod.pagure.pull-request.new", {"pr": {"id": 1}}])");
    EXPECT_EQ(e.routing_key, "io.pagure.prod.pagure.pull-request.new");
    EXPECT_EQ(e.body, json::parse(R"({"pr": {"id": 1}})"));
    EXPECT_FALSE(e.id.has_value());
}

TEST(ParseEvent, NonAsciiUtf8InBodyIsAccepted) {
    auto e =
        event_of("{\"routing_key\": \"a\", \"body\": {\"m\": \"caf\xC3\xA9 \xF0\x9F\x98\x80\"}}");
    EXPECT_EQ(e.body["m"], "caf\xC3\xA9 \xF0\x9F\x98\x80");
}

TEST(ParseEvent, NestingOf64LevelsIsAccepted) {
    auto e = event_of(nested_event(64));
    EXPECT_TRUE(e.body.is_object());
}

TEST(ParseEvent, BracketsInsideStringsDoNotCountAsNesting) {
    std::string deep(200, '[');
    auto e = event_of(R"({"routing_key": "a", "body": {"s": "\")" + deep + R"(", "t": ")" + deep +
                      R"("}})");
    EXPECT_EQ(e.body["t"], deep);
}

// --- parse_event: rejections ---

struct RejectCase {
    const char* label;
    std::string line;
    std::string reason; // a part of the expected reason
    std::optional<json> id = std::nullopt;
};

void PrintTo(const RejectCase& c, std::ostream* os) {
    *os << c.label;
}

class ParseEventRejects : public testing::TestWithParam<RejectCase> {};

TEST_P(ParseEventRejects, WithReasonAndId) {
    const auto& c = GetParam();
    auto r = rejection_of(c.line);
    EXPECT_NE(r.reason.find(c.reason), std::string::npos) << "reason: " << r.reason;
    EXPECT_EQ(r.id, c.id);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ParseEventRejects,
    testing::Values(
        RejectCase{"EmptyLine", "", "malformed JSON"},
        RejectCase{"NotJson", "hello", "malformed JSON"},
        RejectCase{"Truncated", R"({"routing_key": "a", "id": "1")", "malformed JSON"},
        RejectCase{"TrailingGarbage", R"({"routing_key": "a"} x)", "malformed JSON"},
        RejectCase{"SingleQuotes", "{'routing_key': 'a'}", "malformed JSON"},
        // Found by tests/fuzz/fuzz-varsfile: a number too large for a double made the JSON
        // parser throw out_of_range, which escaped parse_event (the line went unanswered and
        // the rest of its read waited for the looper's next write).
        RejectCase{"FloatOverflow", R"({"routing_key": "a", "body": {"x": 1e400}})",
                   "number overflow"},
        RejectCase{"NulInString", "{\"routing_key\": \"a\0b\", \"id\": \"1\"}"s, "NUL"},
        RejectCase{"NulAfterObject", "{\"routing_key\": \"a\"}\0"s, "NUL"},
        RejectCase{"Overlong2Byte", "{\"routing_key\": \"a\", \"body\": {\"s\": \"\xC0\xAF\"}}",
                   "UTF-8"},
        RejectCase{"Overlong3Byte", "{\"routing_key\": \"a\", \"body\": {\"s\": \"\xE0\x80\xAF\"}}",
                   "UTF-8"},
        RejectCase{"Overlong4Byte",
                   "{\"routing_key\": \"a\", \"body\": {\"s\": \"\xF0\x80\x80\xAF\"}}", "UTF-8"},
        RejectCase{"Surrogate", "{\"routing_key\": \"a\", \"body\": {\"s\": \"\xED\xA0\x80\"}}",
                   "UTF-8"},
        RejectCase{"TruncatedSequence", "{\"routing_key\": \"a\", \"body\": {\"s\": \"\xE2\x82\"}}",
                   "UTF-8"},
        RejectCase{"TruncatedAtEnd", "{\"routing_key\": \"a\"}\xC3", "UTF-8"},
        RejectCase{"Latin1", "{\"routing_key\": \"a\", \"id\": \"caf\xE9\"}", "UTF-8"},
        RejectCase{"String", R"("a.b")", "must be a JSON object or a [routing_key, body] array"},
        RejectCase{"Number", "42", "must be a JSON object or a [routing_key, body] array"},
        RejectCase{"Null", "null", "must be a JSON object or a [routing_key, body] array"},
        RejectCase{"BodyArray", R"({"routing_key": "a", "body": [], "id": "7"})",
                   "\"body\" must be a JSON object", json("7")},
        RejectCase{"BodyString", R"({"routing_key": "a", "body": "x", "id": 7})",
                   "\"body\" must be a JSON object", json(7)},
        RejectCase{"BodyNull", R"({"routing_key": "a", "body": null})",
                   "\"body\" must be a JSON object"},
        RejectCase{"ArrayBodyNotObject", R"(["a.b", [1]])", "\"body\" must be a JSON object"},
        RejectCase{"ArrayOfOne", R"(["a.b"])", "an array event must be"},
        RejectCase{"ArrayOfThree", R"(["a.b", {}, {}])", "an array event must be"},
        RejectCase{"ArrayKeyNotString", R"([1, {}])", "an array event must be"},
        RejectCase{"ArrayInvalidKey", R"(["a..b", {}])", "invalid routing key"},
        RejectCase{"MissingRoutingKey", R"({"body": {}, "id": "m1"})", "missing \"routing_key\"",
                   json("m1")},
        RejectCase{"RoutingKeyNumber", R"({"routing_key": 5, "id": 3})",
                   "\"routing_key\" must be a string", json(3)},
        RejectCase{"RoutingKeyNull", R"({"routing_key": null})",
                   "\"routing_key\" must be a string"},
        RejectCase{"RoutingKeyTraversal", R"({"routing_key": "../../etc/passwd", "id": "t"})",
                   "invalid routing key", json("t")},
        RejectCase{"RoutingKeyEmpty", R"({"routing_key": "", "id": "e"})", "invalid routing key",
                   json("e")},
        RejectCase{"RoutingKeyDashWord", R"({"routing_key": "a.-rf"})", "invalid routing key"},
        RejectCase{"IdFloat", R"({"routing_key": "a", "id": 1.5})", "\"id\" must be a string"},
        RejectCase{"IdObject", R"({"routing_key": "a", "id": {"n": 1}})",
                   "\"id\" must be a string"},
        RejectCase{"IdArray", R"({"routing_key": "a", "id": [1]})", "\"id\" must be a string"},
        RejectCase{"IdBool", R"({"routing_key": "a", "id": true})", "\"id\" must be a string"},
        RejectCase{"IdNull", R"({"routing_key": "a", "id": null})", "\"id\" must be a string"},
        RejectCase{"IdTooLong", R"({"routing_key": "a", "id": ")" + std::string(257, 'i') + "\"}",
                   "longer than 256 bytes"},
        RejectCase{"Nesting65", nested_event(65), "nested deeper than 64"},
        RejectCase{"DeepArrays",
                   R"({"routing_key": "a", "body": {"x": )" + std::string(100, '[') +
                       std::string(100, ']') + "}}",
                   "nested deeper than 64"},
        // Too deep to parse, yet answered: its top-level id is read without building a tree.
        RejectCase{"DeepWithId",
                   R"({"routing_key": "a", "body": {"id": "inner", "x": )" +
                       std::string(100000, '[') + std::string(100000, ']') + R"(}, "id": "deep"})",
                   "nested deeper than 64", json("deep")},
        RejectCase{"DeepWithIntegerIdFirst",
                   R"({"id": 7, "routing_key": "a", "body": )" + std::string(70, '[') +
                       std::string(70, ']') + "}",
                   "nested deeper than 64", json(7)},
        RejectCase{"DeepWithUnusableId",
                   R"({"id": 1.5, "routing_key": "a", "body": )" + std::string(70, '[') +
                       std::string(70, ']') + "}",
                   "nested deeper than 64"}),
    [](const auto& info) { return std::string(info.param.label); });

// --- format_answer ---

namespace {

// The answer parsed back, after checking it is one compact line ending in a newline.
json answer_of(const std::string& line) {
    EXPECT_FALSE(line.empty());
    EXPECT_EQ(line.back(), '\n');
    EXPECT_EQ(std::count(line.begin(), line.end(), '\n'), 1) << line;
    EXPECT_TRUE(valid_utf8(line));
    return json::parse(line);
}

} // namespace

TEST(FormatAnswer, SucceededEchoesStringId) {
    EXPECT_EQ(answer_of(format_answer("42", Result::succeeded, 0)),
              json::parse(R"({"id": "42", "result": "succeeded", "exit_code": 0})"));
}

TEST(FormatAnswer, IntegerIdStaysInteger) {
    auto a = answer_of(format_answer(17, Result::succeeded, 0));
    EXPECT_TRUE(a["id"].is_number_integer());
    EXPECT_EQ(a["id"], 17);
}

TEST(FormatAnswer, FailedCarriesExitCode) {
    EXPECT_EQ(answer_of(format_answer("j", Result::failed, 137)),
              json::parse(R"({"id": "j", "result": "failed", "exit_code": 137})"));
}

TEST(FormatAnswer, ExitCodeIsNullWhenNoneGiven) {
    for (auto r : {Result::failed, Result::unrouted, Result::timeout, Result::cancelled}) {
        auto a = answer_of(format_answer("x", r, std::nullopt));
        EXPECT_EQ(a, (json{{"id", "x"}, {"result", to_string(r)}, {"exit_code", nullptr}}));
        EXPECT_FALSE(a.contains("error"));
    }
}

TEST(FormatAnswer, RejectedCarriesError) {
    EXPECT_EQ(answer_of(format_answer("r", Result::rejected, std::nullopt, "missing \"body\"")),
              json::parse(R"({"id": "r", "result": "rejected", "exit_code": null,
                              "error": "missing \"body\"", "reason": "missing \"body\""})"));
}

TEST(FormatAnswer, AbortedIsAResultOfItsOwn) {
    EXPECT_EQ(to_string(Result::aborted), "aborted");
    EXPECT_EQ(answer_of(format_answer(5, Result::aborted, 143, "cancelled by uid 0")),
              json::parse(R"({"id": 5, "result": "aborted", "exit_code": 143,
                              "error": "cancelled by uid 0", "reason": "cancelled by uid 0"})"));
}

TEST(ParseEvent, IntegersBeyond64BitsStayExact) {
    auto parsed = parse_event(R"({"routing_key": "a", "body": {"big": 18446744073709551616}})");
    auto* ev = std::get_if<Event>(&parsed);
    ASSERT_NE(ev, nullptr);
    EXPECT_TRUE(ev->body["big"].is_binary());
}

TEST(ParseEvent, AnInvalidRoutingKeyIsQuotedEscaped) {
    auto parsed = parse_event(R"({"routing_key": "a\nFORGED\u001b[2J", "id": 1})");
    auto* r = std::get_if<Rejection>(&parsed);
    ASSERT_NE(r, nullptr);
    EXPECT_NE(r->reason.find("'a\\nFORGED\\x1B[2J'"), std::string::npos) << r->reason;
}

TEST(FormatAnswer, InvalidUtf8InErrorIsReplacedNotThrown) {
    std::string line;
    ASSERT_NO_THROW(line =
                        format_answer("r", Result::rejected, std::nullopt, "bad \xC3( \xFF end"));
    auto a = answer_of(line);
    auto error = a["error"].get<std::string>();
    EXPECT_EQ(error.rfind("bad ", 0), 0u) << error;
    EXPECT_NE(error.find("\xEF\xBF\xBD"), std::string::npos) << "U+FFFD expected: " << error;
    EXPECT_NE(error.find(" end"), std::string::npos) << error;
}

TEST(FormatAnswer, ResultNames) {
    EXPECT_EQ(to_string(Result::succeeded), "succeeded");
    EXPECT_EQ(to_string(Result::failed), "failed");
    EXPECT_EQ(to_string(Result::unrouted), "unrouted");
    EXPECT_EQ(to_string(Result::rejected), "rejected");
    EXPECT_EQ(to_string(Result::timeout), "timeout");
    EXPECT_EQ(to_string(Result::cancelled), "cancelled");
}

// --- valid_utf8 ---

TEST(ValidUtf8, AcceptsWellFormedSequences) {
    for (std::string s : {""s, "plain ascii"s, "\0"s, "\x7F"s,
                          "\xC2\x80"s,         // U+0080, shortest 2-byte
                          "\xDF\xBF"s,         // U+07FF
                          "\xE0\xA0\x80"s,     // U+0800, shortest 3-byte
                          "\xED\x9F\xBF"s,     // U+D7FF, just below the surrogates
                          "\xEE\x80\x80"s,     // U+E000, just above them
                          "\xEF\xBF\xBF"s,     // U+FFFF
                          "\xF0\x90\x80\x80"s, // U+10000, shortest 4-byte
                          "\xF4\x8F\xBF\xBF"s, // U+10FFFF, the last code point
                          "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"s})
        EXPECT_TRUE(valid_utf8(s)) << testing::PrintToString(s);
}

TEST(ValidUtf8, RejectsMalformedSequences) {
    for (std::string s : {"\x80"s,
                          "\xBF"s, // lone continuation bytes
                          "\xC0\x80"s,
                          "\xC1\xBF"s, // overlong 2-byte
                          "\xE0\x80\x80"s,
                          "\xE0\x9F\xBF"s, // overlong 3-byte
                          "\xF0\x80\x80\x80"s,
                          "\xF0\x8F\xBF\xBF"s, // overlong 4-byte
                          "\xED\xA0\x80"s,
                          "\xED\xBF\xBF"s, // surrogates
                          "\xF4\x90\x80\x80"s,
                          "\xF5\x80\x80\x80"s, // past U+10FFFF
                          "\xF8\x88\x80\x80\x80"s,
                          "\xFE"s,
                          "\xFF"s, // not lead bytes
                          "\xC3"s,
                          "a\xE2\x82"s,
                          "\xF0\x9F\x98"s, // truncated at the end
                          "\xC3"
                          "A"s,
                          "\xE2\x28\xA1"s,
                          "\xF0\x9F\x98"
                          "A"s}) // bad continuation
        EXPECT_FALSE(valid_utf8(s)) << testing::PrintToString(s);
}

// --- LineReader ---

namespace {

struct Got {
    std::string text;
    bool overlong = false;
    bool operator==(const Got&) const = default;
};

void PrintTo(const Got& g, std::ostream* os) {
    *os << (g.overlong ? "overlong " : "") << testing::PrintToString(g.text);
}

// Takes every complete line the reader has.
void drain(LineReader& reader, std::vector<Got>& out) {
    while (auto line = reader.next())
        out.push_back({std::string(line->text), line->overlong});
}

// Feeds data in chunks of the sizes chunk_size() returns, draining after each; returns the lines.
template <std::invocable ChunkSize>
std::vector<Got> feed(LineReader& reader, std::string_view data, ChunkSize chunk_size) {
    std::vector<Got> out;
    while (!data.empty()) {
        auto n = std::min<std::size_t>(chunk_size(), data.size());
        auto area = reader.prepare(n);
        EXPECT_GE(area.size(), n);
        std::memcpy(area.data(), data.data(), n);
        reader.commit(n);
        data.remove_prefix(n);
        drain(reader, out);
    }
    return out;
}

std::vector<Got> feed(LineReader& reader, std::string_view data, std::size_t chunk) {
    return feed(reader, data, [chunk] { return chunk; });
}

// Lines of random printable text and length, some empty.
std::vector<std::string> random_lines(std::mt19937& rng, int count, int max_length) {
    std::uniform_int_distribution<int> length(0, max_length), ch(0x20, 0x7E);
    std::vector<std::string> lines;
    for (int i = 0; i < count; ++i) {
        std::string s(static_cast<std::size_t>(length(rng)), ' ');
        for (auto& c : s)
            c = static_cast<char>(ch(rng));
        lines.push_back(std::move(s));
    }
    return lines;
}

std::string join_lines(const std::vector<std::string>& lines) {
    std::string out;
    for (auto& l : lines)
        out += l + '\n';
    return out;
}

std::vector<Got> plain(const std::vector<std::string>& lines) {
    std::vector<Got> out;
    for (auto& l : lines)
        out.push_back({l});
    return out;
}

} // namespace

TEST(LineReader, LinesSplitAcrossRandomChunks) {
    std::mt19937 rng(20240601);
    auto lines = random_lines(rng, 500, 300);
    std::uniform_int_distribution<std::size_t> size(1, 257);
    LineReader reader(1024);
    EXPECT_EQ(feed(reader, join_lines(lines), [&] { return size(rng); }), plain(lines));
}

TEST(LineReader, LinesFedOneByteAtATime) {
    std::mt19937 rng(7);
    auto lines = random_lines(rng, 100, 80);
    LineReader reader(1024);
    EXPECT_EQ(feed(reader, join_lines(lines), 1), plain(lines));
}

TEST(LineReader, ManyLinesInOneChunk) {
    LineReader reader(64);
    EXPECT_EQ(feed(reader, "a\n\nbc\n{\"routing_key\": \"x\"}\n", 4096),
              plain({"a", "", "bc", "{\"routing_key\": \"x\"}"}));
}

TEST(LineReader, PartialLastLineStaysPending) {
    LineReader reader(64);
    EXPECT_EQ(feed(reader, "one\ntwo\nthr", 3), plain({"one", "two"}));
    EXPECT_GT(reader.pending(), 0u);
    EXPECT_FALSE(reader.has_line());
    EXPECT_FALSE(reader.next().has_value());
    EXPECT_FALSE(reader.next().has_value());
    EXPECT_EQ(feed(reader, "ee\n", 1), plain({"three"}));
}

TEST(LineReader, PendingCountsOnlyTheUnfinishedLine) {
    LineReader reader(64);
    EXPECT_EQ(reader.pending(), 0u);
    EXPECT_EQ(feed(reader, "one\ntwo\nthr", 3), plain({"one", "two"}));
    EXPECT_EQ(reader.pending(), 3u);
    reader.prepare(4096); // room for the next read holds no line yet
    EXPECT_EQ(reader.pending(), 3u);
    EXPECT_EQ(feed(reader, "ee\n", 1), plain({"three"}));
    EXPECT_EQ(reader.pending(), 0u);
    reader.prepare(4096);
    EXPECT_EQ(reader.pending(), 0u);
}

TEST(LineReader, HasLineTellsWhetherNextReturnsALine) {
    LineReader reader(64);
    EXPECT_FALSE(reader.has_line());
    auto area = reader.prepare(16);
    std::memcpy(area.data(), "ab", 2);
    reader.commit(2);
    EXPECT_FALSE(reader.has_line());
    area = reader.prepare(16);
    std::memcpy(area.data(), "c\nd\n", 4);
    reader.commit(4);
    EXPECT_TRUE(reader.has_line());
    ASSERT_EQ(reader.next()->text, "abc");
    EXPECT_TRUE(reader.has_line());
    ASSERT_EQ(reader.next()->text, "d");
    EXPECT_FALSE(reader.has_line());
    EXPECT_FALSE(reader.next().has_value());
}

TEST(LineReader, LineOfExactlyTheLimitIsAccepted) {
    std::string line(100, 'x');
    LineReader whole(100), bytewise(100);
    EXPECT_EQ(feed(whole, line + "\n", 4096), plain({line}));
    EXPECT_EQ(feed(bytewise, line + "\n", 1), plain({line}));
}

namespace {

// One line over the limit, then an ordinary one: the first is reported once as overlong with
// some of its first bytes, the second arrives intact.
void expect_overlong_then_intact(std::size_t chunk) {
    SCOPED_TRACE("chunk size " + std::to_string(chunk));
    LineReader reader(100);
    auto got = feed(reader, std::string(1000, 'x') + "\nnext line\n", chunk);
    ASSERT_EQ(got.size(), 2u) << testing::PrintToString(got);
    EXPECT_TRUE(got[0].overlong);
    EXPECT_FALSE(got[0].text.empty());
    EXPECT_LE(got[0].text.size(), 100u);
    EXPECT_EQ(got[0].text, std::string(got[0].text.size(), 'x'));
    EXPECT_EQ(got[1], Got{"next line"});
}

} // namespace

TEST(LineReader, OverlongLineReportedOnceAndNextLineIntact) {
    for (std::size_t chunk : {1, 7, 64, 101, 1000, 4096})
        expect_overlong_then_intact(chunk);
}

TEST(LineReader, OneByteOverTheLimitIsOverlong) {
    for (std::size_t chunk : {1, 4096}) {
        LineReader reader(100);
        auto got = feed(reader, std::string(101, 'y') + "\nok\n", chunk);
        ASSERT_EQ(got.size(), 2u) << "chunk " << chunk;
        EXPECT_TRUE(got[0].overlong) << "chunk " << chunk;
        EXPECT_EQ(got[1], Got{"ok"}) << "chunk " << chunk;
    }
}

TEST(LineReader, MemoryStaysBoundedWithoutNewline) {
    constexpr std::size_t max_line = 1 << 20, chunk = 64 << 10, total = 64 << 20;
    LineReader reader(max_line);
    std::vector<Got> got;
    for (std::size_t fed = 0; fed < total; fed += chunk) {
        auto area = reader.prepare(chunk);
        ASSERT_GE(area.size(), chunk);
        ASSERT_LE(area.size(), max_line + chunk) << "after " << fed << " bytes";
        ASSERT_LE(reader.pending(), max_line + chunk) << "after " << fed << " bytes";
        std::memset(area.data(), 'a', chunk);
        reader.commit(chunk);
        ASSERT_LE(reader.pending(), max_line + chunk) << "after " << fed << " bytes";
        drain(reader, got);
        ASSERT_LE(got.size(), 1u) << "after " << fed << " bytes";
    }
    ASSERT_EQ(got.size(), 1u);
    EXPECT_TRUE(got[0].overlong);
    EXPECT_LE(got[0].text.size(), max_line);
    EXPECT_EQ(feed(reader, "\nafter\n", chunk), plain({"after"}));
}

TEST(LineReader, HasLineWhileDiscardingAnOverlongTail) {
    LineReader reader(16);
    auto got = feed(reader, std::string(100, 'x'), 50);
    ASSERT_EQ(got.size(), 1u);
    auto area = reader.prepare(16);
    std::memcpy(area.data(), "tail\n", 5);
    reader.commit(5);
    bool has_line = reader.has_line();
    EXPECT_EQ(has_line, reader.next().has_value());
}

// --- de-duplication (issue 17, added in 0.2) ---

TEST(ParseEvent, DedupIdIsReadAndChecked) {
    auto e = event_of(R"({"routing_key": "a", "id": "1-7", "dedup_id": "msg-uuid"})");
    ASSERT_TRUE(e.dedup_id);
    EXPECT_EQ(*e.dedup_id, "msg-uuid");
    EXPECT_FALSE(event_of(R"({"routing_key": "a", "id": 1})").dedup_id);
    // Not a string, empty or too long: rejected, with the id so that the looper is answered.
    for (auto bad :
         {R"({"routing_key": "a", "id": "x", "dedup_id": 5})"s,
          R"({"routing_key": "a", "id": "x", "dedup_id": ""})"s,
          R"({"routing_key": "a", "id": "x", "dedup_id": ")"s + std::string(257, 'd') + "\"}"}) {
        auto r = rejection_of(bad);
        EXPECT_NE(r.reason.find("dedup_id"), std::string::npos) << r.reason;
        EXPECT_EQ(r.id, json("x"));
    }
}

TEST(FormatAnswer, DuplicateOfNamesTheEarlierJob) {
    EXPECT_EQ(answer_of(format_answer("e", Result::succeeded, std::nullopt, {}, 4711)),
              json::parse(R"({"id": "e", "result": "succeeded", "exit_code": null,
                              "duplicate_of": 4711})"));
    EXPECT_FALSE(answer_of(format_answer("e", Result::succeeded, 0)).contains("duplicate_of"));
}
