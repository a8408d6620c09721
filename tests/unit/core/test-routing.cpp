// SPDX-License-Identifier: GPL-3.0-or-later
// Routing keys: the grammar, routing_keys patterns, and where a key's playbook is looked up.
#include "core/routing.hpp"

#include "tempdir.hpp"
#include "tests/routing-reference.hpp"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <set>
#include <string>
#include <vector>

using namespace loopabull;
using namespace std::string_literals;
using loopabull::test::TempDir;

// --- routing_key_error ---

TEST(RoutingKey, AcceptsFedoraKeys) {
    for (auto key : {"org.fedoraproject.prod.buildsys.build.state.change",
                     "io.pagure.prod.pagure.pull-request.new", "a", "A_b-c.0.d-", "_x.y_"})
        EXPECT_EQ(routing_key_error(key), std::nullopt) << key;
}

TEST(RoutingKey, AcceptsUpTo255Bytes) {
    EXPECT_EQ(routing_key_error(std::string(255, 'k')), std::nullopt);
    std::string words;
    for (int i = 0; i < 127; ++i)
        words += "a.";
    words += "b"; // 128 words in 255 bytes
    ASSERT_EQ(words.size(), 255u);
    EXPECT_EQ(routing_key_error(words), std::nullopt);
    EXPECT_NE(routing_key_error(words + "c"), std::nullopt);
}

namespace {

// The error for an invalid key; a valid one fails the test.
std::string key_error(std::string_view key) {
    auto err = routing_key_error(key);
    if (!err) ADD_FAILURE() << "accepted: " << testing::PrintToString(std::string(key));
    return err.value_or("");
}

} // namespace

TEST(RoutingKey, RejectsBadKeys) {
    for (auto key : {"..",
                     "a..b",
                     ".a",
                     "a.",
                     ".",
                     "../../etc/passwd",
                     "x./etc/passwd",
                     "a/b",
                     "-a",
                     "a.-b",
                     "--help",
                     "a b",
                     " a",
                     "a\tb",
                     "a\nb",
                     "a*",
                     "#",
                     "a.*.b",
                     "a:b",
                     "a\\b",
                     "caf\xC3\xA9",
                     "\xFF",
                     "~root",
                     "$HOME",
                     "a;b",
                     "`id`"})
        key_error(key);
}

TEST(RoutingKey, ErrorsSayWhatIsWrong) {
    EXPECT_NE(key_error("").find("empty"), std::string::npos);
    EXPECT_NE(key_error(std::string(256, 'k')).find("255"), std::string::npos);
    EXPECT_NE(key_error("a..b").find("empty word"), std::string::npos);
    EXPECT_NE(key_error("a/b").find("'/'"), std::string::npos);
    EXPECT_NE(key_error("../../etc/passwd").find("'/'"), std::string::npos);
    EXPECT_NE(key_error("a.-b").find("'-'"), std::string::npos);
    EXPECT_NE(key_error("a b").find("' '"), std::string::npos);
    EXPECT_NE(key_error("a\0b"s).find("character 0x00 not allowed"), std::string::npos);
    // In hexadecimal, as the 0x says: the first byte of U+00E9 in UTF-8.
    EXPECT_NE(key_error("caf\xC3\xA9").find("character 0xC3 not allowed"), std::string::npos);
}

// --- routing_pattern_error and routing_pattern_matches ---

TEST(RoutingPattern, ValidPatterns) {
    for (auto p : {"all", "a.b.c", "*", "#", "a.*.c", "#.c", "a.#", "a.#.d", "*.*", "#.#"})
        EXPECT_EQ(routing_pattern_error(p), std::nullopt) << p;
}

TEST(RoutingPattern, InvalidPatterns) {
    for (auto p : {"", "a..b", "a.", "a*", "a.**", "#a", "a.b#", "a/*", "-a.#", "all.", "a.*b"})
        EXPECT_NE(routing_pattern_error(p), std::nullopt) << p;
}

// A pattern, keys it matches and keys it does not.
struct PatternCase {
    const char* pattern;
    std::vector<const char*> matching;
    std::vector<const char*> other;
};

void PrintTo(const PatternCase& c, std::ostream* os) {
    *os << c.pattern;
}

class RoutingPatternMatches : public testing::TestWithParam<PatternCase> {};

TEST_P(RoutingPatternMatches, AmqpTopicSemantics) {
    const auto& c = GetParam();
    for (auto key : c.matching)
        EXPECT_TRUE(routing_pattern_matches(c.pattern, key))
            << c.pattern << " should match " << key;
    for (auto key : c.other)
        EXPECT_FALSE(routing_pattern_matches(c.pattern, key)) << c.pattern << " matches " << key;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, RoutingPatternMatches,
    testing::Values(
        // clang-format off
        PatternCase{"a.b.c",   {"a.b.c"},                      {"a.b", "a.b.c.d", "a.b.cd", "x.a.b.c"}},
        PatternCase{"*",       {"a", "org"},                   {"a.b"}},
        PatternCase{"a.*",     {"a.b", "a.xyz"},               {"a", "a.b.c", "b.a"}},
        PatternCase{"a.*.c",   {"a.b.c", "a.xyz.c"},           {"a.c", "a.b.x.c", "a.b.d"}},
        PatternCase{"*.*",     {"a.b"},                        {"a", "a.b.c"}},
        PatternCase{"#",       {"a", "a.b", "a.b.c.d.e"},      {}},
        PatternCase{"a.#",     {"a", "a.b", "a.b.c"},          {"b.a", "ab", "b"}},
        PatternCase{"#.c",     {"c", "b.c", "a.b.c"},          {"a.b.cd", "c.a", "a.b"}},
        PatternCase{"a.#.d",   {"a.d", "a.b.d", "a.b.c.d"},    {"a.b.c", "x.a.d", "a.d.e"}},
        PatternCase{"#.*",     {"a", "a.b"},                   {}},
        PatternCase{"*.#",     {"a", "a.b"},                   {}},
        PatternCase{"#.#",     {"a", "a.b"},                   {}},
        PatternCase{"a.#.#.b", {"a.b", "a.x.b", "a.x.y.b"},    {"a", "b", "a.b.c"}},
        PatternCase{"#.b.#",   {"b", "a.b", "b.c", "a.b.c"},   {"a.c", "ab.c"}},
        PatternCase{"all",     {"a", "anything.at.all"},       {}},
        PatternCase{"org.fedoraproject.prod.buildsys.#",
                    {"org.fedoraproject.prod.buildsys.build.state.change",
                     "org.fedoraproject.prod.buildsys.tag"},
                    {"org.fedoraproject.prod.pungi.compose.status.change",
                     "org.fedoraproject.stg.buildsys.tag"}},
        PatternCase{"org.fedoraproject.*.buildsys.#",
                    {"org.fedoraproject.stg.buildsys.tag", "org.fedoraproject.prod.buildsys"},
                    {"org.fedoraproject.buildsys.tag"}} // clang-format on
        ));

// --- RoutingFilter ---

// Found by tests/fuzz/fuzz-routing: many '#' against a long key that does not match took
// exponential time (hours for this pair) in the supervisor's only thread.
TEST(RoutingPattern, ManyHashesMatchInPolynomialTime) {
    std::string pattern, key = "a";
    for (int i = 0; i < 40; ++i)
        pattern += "#.";
    for (int i = 0; i < 100; ++i)
        key += ".a";
    auto start = std::chrono::steady_clock::now();
    EXPECT_FALSE(routing_pattern_matches(pattern + "x", key));
    EXPECT_TRUE(routing_pattern_matches(pattern + "a", key));
    EXPECT_TRUE(routing_pattern_matches(pattern + "#", key));
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1));
}

namespace {

std::string join(const std::vector<std::string>& words) {
    std::string s;
    for (auto& w : words)
        s += (s.empty() ? "" : ".") + w;
    return s;
}

} // namespace

// The matcher splits up to 16 words on the stack and longer keys and patterns on the heap: both
// agree with the reference on random pairs of up to 40 words over a small alphabet.
TEST(RoutingPattern, AgreesWithAReferenceMatcherShortAndLong) {
    std::mt19937 rng(14);
    const char* words[] = {"a", "b", "*", "#"};
    int matched = 0;
    for (int round = 0; round < 20000; ++round) {
        std::size_t np = 1 + rng() % (round % 2 ? 40 : 6), nk = 1 + rng() % (round % 2 ? 40 : 6);
        std::vector<std::string> p, k;
        for (std::size_t i = 0; i < np; ++i)
            p.push_back(words[rng() % 4]);
        for (std::size_t i = 0; i < nk; ++i)
            k.push_back(words[rng() % 2]);
        bool expected = loopabull::test::reference_match(join(p), join(k));
        matched += expected;
        ASSERT_EQ(routing_pattern_matches(join(p), join(k)), expected)
            << join(p) << " against " << join(k);
    }
    EXPECT_GT(matched, 1000);
}

TEST(RoutingFilter, SelectsKeysMatchingAnyPattern) {
    RoutingFilter filter({"a.b", "c.#", "*.x"});
    EXPECT_TRUE(filter.selects("a.b"));
    EXPECT_TRUE(filter.selects("c"));
    EXPECT_TRUE(filter.selects("c.d.e"));
    EXPECT_TRUE(filter.selects("q.x"));
    EXPECT_FALSE(filter.selects("a.c"));
    EXPECT_FALSE(filter.selects("a.b.c"));
    EXPECT_FALSE(filter.selects("q.r.x"));
}

TEST(RoutingFilter, AllSelectsEverything) {
    for (auto patterns :
         {std::vector<std::string>{"all"}, std::vector<std::string>{"x.y", "all"}}) {
        RoutingFilter filter(patterns);
        EXPECT_TRUE(filter.selects("a"));
        EXPECT_TRUE(filter.selects("org.fedoraproject.prod.buildsys.build.state.change"));
    }
}

TEST(RoutingFilter, EmptySelectsNothing) {
    RoutingFilter filter({});
    EXPECT_FALSE(filter.selects("a"));
}

// --- playbook_relative_path ---

TEST(PlaybookPath, NameLayoutKeepsDots) {
    EXPECT_EQ(playbook_relative_path("org.example.hello", Layout::name), "org.example.hello.yml");
    EXPECT_EQ(playbook_relative_path("single", Layout::name), "single.yml");
}

TEST(PlaybookPath, DirectoryLayoutTurnsDotsIntoDirectories) {
    EXPECT_EQ(playbook_relative_path("org.example.hello", Layout::directory),
              "org/example/hello.yml");
    EXPECT_EQ(playbook_relative_path("single", Layout::directory), "single.yml");
}

// --- find_playbook against a real directory ---

namespace {

// TMP/playbooks (looked up through an O_PATH descriptor) next to TMP/outside.
class FindPlaybook : public testing::Test {
  protected:
    void SetUp() override {
        dir_ = tmp_.mkdir("playbooks");
        tmp_.write("outside/secret.yml", "- hosts: all\n");
        fd_ = open(dir_.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
        ASSERT_GE(fd_, 0);
    }
    void TearDown() override {
        if (fd_ >= 0) close(fd_);
    }

    std::string playbook(std::string_view rel) {
        return tmp_.write("playbooks/" + std::string(rel), "- hosts: all\n");
    }
    void link(std::string_view target, std::string_view rel) {
        tmp_.symlink(target, "playbooks/" + std::string(rel));
    }
    PlaybookLookup lookup(std::string_view key, Layout layout = Layout::name) {
        return find_playbook(fd_, dir_, key, layout);
    }
    void expect_found(std::string_view key, Layout layout, const std::string& path) {
        auto r = lookup(key, layout);
        EXPECT_EQ(r.status, PlaybookLookup::Status::found) << key << ": " << r.detail;
        EXPECT_EQ(r.path, path) << key;
    }
    void expect(std::string_view key, Layout layout, PlaybookLookup::Status status) {
        auto r = lookup(key, layout);
        EXPECT_EQ(r.status, status) << key << ": " << r.detail;
        if (status != PlaybookLookup::Status::found) {
            EXPECT_FALSE(r.detail.empty()) << key;
        }
    }

    TempDir tmp_;
    std::string dir_;
    int fd_ = -1;
};

using Status = PlaybookLookup::Status;

} // namespace

TEST_F(FindPlaybook, FoundWithNameLayout) {
    expect_found("org.example.hello", Layout::name, playbook("org.example.hello.yml"));
}

TEST_F(FindPlaybook, FoundWithDirectoryLayout) {
    expect_found("org.example.hello", Layout::directory, playbook("org/example/hello.yml"));
}

TEST_F(FindPlaybook, MissingPlaybook) {
    playbook("org.example.hello.yml");
    expect("org.example.bye", Layout::name, Status::missing);
    expect("org.example.hello", Layout::directory, Status::missing);
}

TEST_F(FindPlaybook, MissingWhenADirectoryOnTheWayIsAFile) {
    tmp_.write("playbooks/org", "not a directory");
    expect("org.example", Layout::directory, Status::missing);
}

TEST_F(FindPlaybook, SymlinkToAbsolutePathOutsideEscapes) {
    link("/etc/passwd", "evil.yml");
    auto r = lookup("evil");
    EXPECT_EQ(r.status, Status::escapes) << r.detail;
}

TEST_F(FindPlaybook, SymlinkUpwardsEscapes) {
    link("../outside/secret.yml", "sneaky.yml");
    expect("sneaky", Layout::name, Status::escapes);
}

TEST_F(FindPlaybook, SymlinkInsideIsFound) {
    playbook("real.yml");
    link("real.yml", "alias.yml");
    link("sub/../real.yml", "dotted.yml");
    tmp_.mkdir("playbooks/sub");
    expect_found("alias", Layout::name, dir_ + "/alias.yml");
    expect_found("dotted", Layout::name, dir_ + "/dotted.yml");
}

TEST_F(FindPlaybook, DirectoryNamedLikeAPlaybookIsNotAFile) {
    tmp_.mkdir("playbooks/x.yml");
    expect("x", Layout::name, Status::not_a_file);
}

TEST_F(FindPlaybook, SymlinkedSubdirectoryOutsideEscapesWithDirectoryLayout) {
    link((tmp_.path() / "outside").string(), "org");
    expect("org.secret", Layout::directory, Status::escapes);
}

TEST_F(FindPlaybook, SymlinkedSubdirectoryInsideIsFoundWithDirectoryLayout) {
    playbook("real/hello.yml");
    link("real", "org");
    expect_found("org.hello", Layout::directory, dir_ + "/org/hello.yml");
}
