// SPDX-License-Identifier: GPL-3.0-or-later
// What crosses from outside into loopabull (issue 12): exact numbers, the names an event may not
// set, escaping for the log and the rate limit of lines outsiders cause.
#include "core/event-names.hpp"
#include "core/exact-json.hpp"
#include "core/log-safe.hpp"

#include <gtest/gtest.h>

using namespace loopabull;
using json = nlohmann::json;
using namespace std::chrono_literals;

TEST(ExactJson, IntegersBeyond64BitsStayExact) {
    std::string err;
    auto v = parse_exact_json(
        R"({"big": 18446744073709551616, "neg": -123456789012345678901234567890, "max": 18446744073709551615, "min": -9223372036854775808})",
        &err);
    ASSERT_TRUE(v) << err;
    ASSERT_TRUE(is_big_integer((*v)["big"]));
    EXPECT_EQ(big_integer_text((*v)["big"]), "18446744073709551616");
    EXPECT_EQ(big_integer_text((*v)["neg"]), "-123456789012345678901234567890");
    EXPECT_TRUE((*v)["max"].is_number_unsigned());
    EXPECT_TRUE((*v)["min"].is_number_integer());
}

TEST(ExactJson, FloatsAndTheRestAsNlohmannParsesThem) {
    std::string text =
        R"({"f": 1.5, "e": 1E5, "a": [1, [2, {"x": null}]], "d": 1, "d": 2, "s": "\u00e9"})";
    std::string err;
    auto v = parse_exact_json(text, &err);
    ASSERT_TRUE(v) << err;
    EXPECT_EQ(*v, json::parse(text));
}

TEST(ExactJson, DumpWritesBigIntegersAsTheirLiteralsAndRoundTrips) {
    std::string text =
        R"({"a":[1,-2,1.5,"\u00e9\n",null,true,{}],"b":{"big":-123456789012345678901234567890},"e":[]})";
    auto v = parse_exact_json(text, nullptr);
    ASSERT_TRUE(v);
    EXPECT_EQ(
        dump_exact_json(*v),
        R"({"a":[1,-2,1.5,"é\n",null,true,{}],"b":{"big":-123456789012345678901234567890},"e":[]})");
    for (int indent : {-1, 2}) {
        auto again = parse_exact_json(dump_exact_json(*v, indent), nullptr);
        ASSERT_TRUE(again) << indent;
        EXPECT_EQ(*again, *v) << indent;
    }
    // Pretty output has the shape of nlohmann's dump(2) where there is no big integer.
    auto plain = json::parse(R"({"a":[1,{"x":null}],"b":{}})");
    EXPECT_EQ(dump_exact_json(plain, 2), plain.dump(2));
}

TEST(ExactJson, ErrorsAreReported) {
    for (auto text : {"1e400", "{\"a\":", "{} x", "[1,]", ""}) {
        std::string err;
        EXPECT_FALSE(parse_exact_json(text, &err)) << text;
        EXPECT_FALSE(err.empty()) << text;
    }
}

TEST(EventNames, TopLevelRefusesWhatAnsibleGivesMeaningTo) {
    for (auto key : {"ansible_python_interpreter",
                     "ansible_ssh_common_args",
                     "ansible_become_exe",
                     "ansible_shell_executable",
                     "ansible_whatever_comes_next",
                     "_ansible_no_log",
                     "inventory_hostname",
                     "hostvars",
                     "groups",
                     "group_names",
                     "playbook_dir",
                     "environment",
                     "omit",
                     "role_path",
                     "play_hosts",
                     "vars",
                     "item",
                     "lookup",
                     "become_exe",
                     "loopabull_job_id",
                     "loopabull_event_id",
                     "loopabull_replay_of"}) {
        auto err = top_level_key_error(key);
        ASSERT_TRUE(err) << key;
        EXPECT_NE(err->find(std::string("'") + key + "'"), std::string::npos) << *err;
    }
    for (auto key :
         {"msg", "topic", "loopabull_custom", "title", "ansible", "Ansible_x", "hosts_x"})
        EXPECT_FALSE(top_level_key_error(key)) << key;
}

TEST(EventNames, EventVariable) {
    EXPECT_FALSE(event_variable_error("event"));
    EXPECT_FALSE(event_variable_error("message"));
    for (auto name :
         {"", "1a", "a-b", "a.b", "class", "ansible_host", "hostvars", "loopabull_looper"})
        EXPECT_TRUE(event_variable_error(name)) << name;
}

TEST(LogSafe, ControlCharactersAreEscaped) {
    EXPECT_EQ(escape_for_log("plain é ✓"), "plain é ✓");
    EXPECT_EQ(escape_for_log("a\nFORGED\r\x1b[31m\t\x7f"), "a\\nFORGED\\r\\x1B[31m\\t\\x7F");
    EXPECT_EQ(escape_for_log("back\\slash"), "back\\\\slash");
    EXPECT_EQ(escape_for_log("\xff\xc0\x80"), "\\xFF\\xC0\\x80");
    EXPECT_EQ(escape_for_log("\u202e\u2028\u0085"), "\\u202E\\u2028\\u0085");
    EXPECT_FALSE(needs_log_escape("plain é \\"));
    EXPECT_TRUE(needs_log_escape("a\nb"));
    EXPECT_FALSE(needs_log_escape(escape_for_log("\n\x1b\xff\u202e")));
    EXPECT_EQ(loggable("C:\\dir \\n"), "C:\\dir \\n"); // escaped text stays as it is
    EXPECT_EQ(loggable("a\nb"), "a\\nb");
}

TEST(LogSafe, RateLimitCountsWhatItLeavesOut) {
    LogRateLimit limit(3, 10s);
    auto t = LogRateLimit::clock::time_point{} + 1h;
    int logged = 0;
    for (int i = 0; i < 10; ++i)
        logged += limit.check(t + std::chrono::milliseconds(i)).log;
    EXPECT_EQ(logged, 3);
    auto next = limit.check(t + 10s);
    EXPECT_TRUE(next.log);
    EXPECT_EQ(next.suppressed, 7u);
    EXPECT_EQ(limit.flush(), 0u);
    for (int i = 0; i < 5; ++i)
        limit.check(t + 11s);
    EXPECT_EQ(limit.flush(), 3u);
}
