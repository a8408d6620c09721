// SPDX-License-Identifier: GPL-3.0-or-later
// The journal looper's pure logic: options, matches, sanitising field values into routing-key
// words, and the event body (binary fields, size caps).
#include "journal/journal.hpp"

#include "core/routing.hpp"

#include <gtest/gtest.h>

using namespace loopabull::journal;
using nlohmann::json;

TEST(JournalKey, SanitisesFieldsIntoTheGrammar) {
    EXPECT_EQ(sanitize("nginx.service"), "nginx-service");
    EXPECT_EQ(sanitize("getty@tty1.service"), "getty-tty1-service");
    EXPECT_EQ(sanitize("-x"), "_x");
    EXPECT_EQ(sanitize(""), "unknown");
    EXPECT_EQ(sanitize("../../etc/passwd"), "_-----etc-passwd");
    EXPECT_EQ(sanitize(std::string(300, 'a')).size(), 64u);
    auto t = KeyTemplate::parse("journal.unit.{UNIT_RESULT}.{UNIT}");
    EXPECT_EQ(t.expand({{"UNIT", "nginx.service"}, {"UNIT_RESULT", "exit-code"}}),
              "journal.unit.exit-code.nginx-service");
    EXPECT_EQ(t.expand({}), "journal.unit.unknown.unknown");
    for (std::string v : {"\xff\xfe", "a b", ".", "-", "é"})
        EXPECT_EQ(loopabull::routing_key_error(t.expand({{"UNIT", v}})), std::nullopt) << v;
}

TEST(JournalKey, RefusesTemplatesOutsideTheGrammar) {
    for (const char* bad : {"journal..{UNIT}", "a/{UNIT}", "{unit}", "x.{UNIT", "x}", ".{UNIT}"})
        EXPECT_THROW(KeyTemplate::parse(bad), OptionError) << bad;
}

TEST(JournalBody, TextBinaryAndCaps) {
    auto body = entry_body({{"MESSAGE", "hello\tworld"},
                            {"UNIT", "a.service"},
                            {"UNIT", "second value ignored"},
                            {"BLOB", std::string("\x00\x01\xff", 3)},
                            {"COREDUMP", "\x1b[0m"},
                            {"LONG", std::string(100, 'x') + "\xc3\xa9"}},
                           101);
    EXPECT_EQ(body["fields"]["MESSAGE"], "hello\tworld");
    EXPECT_EQ(body["fields"]["UNIT"], "a.service");
    EXPECT_EQ(body["binary"]["BLOB"], "AAH/");
    EXPECT_EQ(body["binary"]["COREDUMP"], "G1swbQ==");
    // Cut on a character boundary, and named.
    EXPECT_EQ(body["fields"]["LONG"], std::string(100, 'x'));
    EXPECT_EQ(body["truncated"], json::array({"LONG"}));
    EXPECT_NO_THROW(body.dump());
}

TEST(JournalOptions, MatchesAndDefaults) {
    json c = {{"matches",
               {"MESSAGE_ID=d9b373ed55a64feb8242e02dbe79a49c", "+", "_SYSTEMD_UNIT=a.service"}},
              {"routing_key", "journal.{UNIT}"}};
    auto o = parse_options(c, "/var/lib/loopabull/x/journal-j");
    EXPECT_EQ(o.matches.size(), 3u);
    EXPECT_FALSE(o.user);
    EXPECT_FALSE(o.from_head);
    EXPECT_EQ(o.state_directory, "/var/lib/loopabull/x/journal-j");
    EXPECT_THROW(parse_options({{"routing_key", "x"}, {"matches", {"unit=x"}}}, "/s"), OptionError);
    EXPECT_THROW(parse_options({{"routing_key", "x"}, {"matches", {"NOEQUALS"}}}, "/s"),
                 OptionError);
    EXPECT_THROW(parse_options({{"routing_key", "x"}}, ""), OptionError);
    EXPECT_THROW(parse_options({{"routing_key", "x"}, {"journal", "remote"}}, "/s"), OptionError);
    EXPECT_THROW(parse_options({{"routing_key", "x"}, {"since", "today"}}, "/s"), OptionError);
}
