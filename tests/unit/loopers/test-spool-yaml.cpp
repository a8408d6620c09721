// SPDX-License-Identifier: GPL-3.0-or-later
// The spool's YAML 1.1 typing against what PyYAML 6.0 (Ansible's loader) makes of the same
// text; the expected values were read from `yaml.load(doc, Loader=AnsibleLoader)` and
// Ansible's to_json. The integration test test_spool.py::test_yaml_events_mean_what_ansible_reads
// compares the two through a real playbook.
#include "spool/yaml11.hpp"

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

using loopabull::spool::compact_json;
using loopabull::spool::Limits;
using loopabull::spool::resolve_plain_scalar;
using loopabull::spool::Unrepresentable;
using loopabull::spool::yaml_to_json;

namespace {

void expect_all(const std::vector<std::pair<const char*, const char*>>& cases) {
    for (const auto& [in, out] : cases)
        EXPECT_EQ(resolve_plain_scalar(in), out) << "plain scalar: " << in;
}

void expect_refused(const std::vector<const char*>& cases, const char* why) {
    for (const char* in : cases)
        EXPECT_THROW(resolve_plain_scalar(in), Unrepresentable) << why << ": " << in;
}

} // namespace

TEST(SpoolYaml, BooleansInEveryYaml11Spelling) {
    expect_all({{"yes", "true"},
                {"Yes", "true"},
                {"YES", "true"},
                {"on", "true"},
                {"On", "true"},
                {"ON", "true"},
                {"true", "true"},
                {"True", "true"},
                {"TRUE", "true"},
                {"no", "false"},
                {"No", "false"},
                {"NO", "false"},
                {"off", "false"},
                {"Off", "false"},
                {"OFF", "false"},
                {"false", "false"},
                {"False", "false"},
                {"FALSE", "false"}});
    // Not booleans to PyYAML: mixed case, and y/n (dropped from its resolver).
    expect_all({{"yEs", "\"yEs\""},
                {"tRUE", "\"tRUE\""},
                {"y", "\"y\""},
                {"n", "\"n\""},
                {"Y", "\"Y\""},
                {"N", "\"N\""}});
}

TEST(SpoolYaml, IntegersOctalHexBinarySexagesimalUnderscores) {
    expect_all({{"0", "0"},
                {"-0", "0"},
                {"+0", "0"},
                {"00", "0"},
                {"012", "10"},
                {"0755", "493"},
                {"0_7", "7"},
                {"0x1A", "26"},
                {"0x_1a", "26"},
                {"-0x0", "0"},
                {"0b101", "5"},
                {"-0b11", "-3"},
                {"+0x10", "16"},
                {"1_000", "1000"},
                {"1__0", "10"},
                {"190:20:30", "685230"},
                {"1:30", "90"},
                {"-1:30", "-90"},
                {"1_0:30", "630"},
                // YAML 1.2 octal is a string in YAML 1.1, and 08 is no octal: a string too.
                {"0o12", "\"0o12\""},
                {"08", "\"08\""},
                {"0789", "\"0789\""},
                {"1:60", "\"1:60\""}});
}

TEST(SpoolYaml, IntegersOfAnySizeStayExact) {
    expect_all({{"123456789012345678901234567890", "123456789012345678901234567890"},
                {"-18446744073709551616", "-18446744073709551616"},
                {"0x1FFFFFFFFFFFFFFFFFFFF", "2417851639229258349412351"},
                {"0b11111111111111111111111111111111111111111111111111111111111111111",
                 "36893488147419103231"}});
}

TEST(SpoolYaml, FloatsNeedADotAndASignedExponent) {
    expect_all({{"1.5", "1.5"},
                {"1.", "1.0"},
                {".5", "0.5"},
                {"1.e+3", "1000.0"},
                {"1.0e+3", "1000.0"},
                {"1_000.5", "1000.5"},
                {"-1.5", "-1.5"},
                {"-0.0", "-0.0"},
                {"1:30.5", "90.5"},
                {"190:20:30.15", "685230.15"},
                {"0.30000000000000004", "0.30000000000000004"},
                // Strings to PyYAML: no dot, or an unsigned exponent.
                {"1e3", "\"1e3\""},
                {"1.0e3", "\"1.0e3\""},
                {"._5", "\"._5\""},
                {"1.2.3", "\"1.2.3\""}});
    expect_refused({".inf", "-.inf", "+.inf", ".Inf", ".INF", ".nan", ".NaN", ".NAN", "1.0e+400"},
                   "JSON has no infinity or NaN");
}

TEST(SpoolYaml, NullAndSpecialKeys) {
    expect_all({{"~", "null"},
                {"null", "null"},
                {"Null", "null"},
                {"NULL", "null"},
                {"", "null"},
                {"nULL", "\"nULL\""}});
    expect_refused({"=", "<<"}, "PyYAML has no constructor for these as values");
    expect_refused({"0b_", "0x_"}, "int() of no digits fails in PyYAML");
}

TEST(SpoolYaml, TimestampsAsPythonsIsoformat) {
    expect_all({{"2001-12-14", "\"2001-12-14\""},
                {"2002-12-14t21:59:43.10-05:00", "\"2002-12-14T21:59:43.100000-05:00\""},
                {"2001-12-14 21:59:43.10 -5", "\"2001-12-14T21:59:43.100000-05:00\""},
                {"2001-12-15T02:59:43.1Z", "\"2001-12-15T02:59:43.100000+00:00\""},
                {"2001-12-15 2:59:43.10", "\"2001-12-15T02:59:43.100000\""},
                {"2001-12-14T21:59:43.000", "\"2001-12-14T21:59:43\""},
                {"2001-12-14T21:59:43.0000001", "\"2001-12-14T21:59:43\""},
                {"2001-12-14T21:59:43-00:00", "\"2001-12-14T21:59:43+00:00\""},
                {"2000-02-29", "\"2000-02-29\""},
                // The date-only form needs two-digit months: a string.
                {"2001-1-4", "\"2001-1-4\""}});
    expect_refused({"2001-02-30", "2001-13-01", "0000-01-01", "1900-02-29", "2001-12-14T21:59:60",
                    "2001-12-14T21:59:43+24:00"},
                   "Python's datetime refuses it");
}

TEST(SpoolYaml, MergeKeysAnchorsAndLastKeyWins) {
    EXPECT_EQ(yaml_to_json("base: &b {a: 1, b: 2}\n"
                           "other: &o {b: 3, c: 4}\n"
                           "m:\n  <<: [*b, *o]\n  c: 5\n"
                           "n:\n  <<: *b\n  a: 9\n"),
              R"({"base":{"a":1,"b":2},"other":{"b":3,"c":4},"m":{"b":2,"c":5,"a":1},)"
              R"("n":{"a":9,"b":2}})");
    EXPECT_EQ(yaml_to_json("a: 1\nb: 2\na: 3\n"), R"({"a":3,"b":2})");
    EXPECT_EQ(yaml_to_json("'<<': x\n=: y\n"), R"({"<<":"x","=":"y"})");
    EXPECT_THROW(yaml_to_json("a:\n  <<: 5\n"), Unrepresentable);
    EXPECT_THROW(yaml_to_json("a:\n  <<: [1]\n"), Unrepresentable);
}

TEST(SpoolYaml, ExplicitTags) {
    EXPECT_EQ(yaml_to_json("a: !!str 12\nb: !!int '0x10'\nc: !!float '1'\nd: !!bool 'YES'\n"
                           "e: !unsafe '{{x}}'\ng: !!null x\nh: !!timestamp 2001-1-1\n"),
              R"({"a":"12","b":16,"c":1.0,"d":true,"e":"{{x}}","g":null,"h":"2001-01-01"})");
    for (const char* doc : {"a: !!binary aGk=\n", "a: !!set {x}\n", "a: !!omap [{x: 1}]\n",
                            "a: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n", "a: !!float 0x10\n",
                            "a: !!int 1.5\n", "a: !!python/name:os.system\n"})
        EXPECT_THROW(yaml_to_json(doc), Unrepresentable) << doc;
}

TEST(SpoolYaml, KeysMustBeStringsToAnsible) {
    for (const char* doc :
         {"yes: 1\n", "1: a\n", "~: b\n", "2001-01-01: x\n", "? [a]\n: 1\n", "1.5: x\n"})
        EXPECT_THROW(yaml_to_json(doc), Unrepresentable) << doc;
    EXPECT_EQ(yaml_to_json("'yes': 1\n\"1\": a\nplain: b\n"), R"({"yes":1,"1":"a","plain":"b"})");
}

TEST(SpoolYaml, DocumentsAndLimits) {
    EXPECT_EQ(yaml_to_json(""), "null");
    EXPECT_EQ(yaml_to_json("# only a comment\n"), "null");
    EXPECT_THROW(yaml_to_json("a: 1\n---\nb: 2\n"), Unrepresentable);
    EXPECT_THROW(yaml_to_json("a: b: c\n"), Unrepresentable);
    EXPECT_THROW(yaml_to_json("a: \"\xff\"\n"), Unrepresentable);
    // A billion laughs: each level doubles; the output budget stops it early.
    std::string laughs = "a0: &a0 [x, x]\n";
    for (int i = 1; i < 40; ++i)
        laughs += "a" + std::to_string(i) + ": &a" + std::to_string(i) + " [*a" +
                  std::to_string(i - 1) + ", *a" + std::to_string(i - 1) + "]\n";
    EXPECT_THROW(yaml_to_json(laughs, Limits{4096, 128}), Unrepresentable);
    std::string deep(200, '[');
    EXPECT_THROW(yaml_to_json("a: " + deep + std::string(200, ']') + "\n"), Unrepresentable);
}

TEST(SpoolYaml, CompactJsonKeepsNumbersAsWritten) {
    EXPECT_EQ(compact_json("{\n  \"big\": 18446744073709551616,\n  \"s\": \"a b\\\" c\"\n}\n"),
              R"({"big":18446744073709551616,"s":"a b\" c"})");
    EXPECT_EQ(compact_json("\xEF\xBB\xBF{}"), "{}");
    EXPECT_THROW(compact_json("{ not json"), Unrepresentable);
    EXPECT_THROW(compact_json("[[[1]]]", Limits{100, 2}), Unrepresentable);
}
