// SPDX-License-Identifier: GPL-3.0-or-later
// The extra-vars file: YAML that PyYAML (so Ansible) reads back as the event body, with every
// event string tagged !unsafe unless payloads are trusted.
#include "core/varsfile.hpp"

#include "core/exact-json.hpp"

#include "tempdir.hpp"

#include <gtest/gtest.h>

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sstream>
#include <string>
#include <vector>

extern char** environ;

using namespace loopabull;
using json = nlohmann::json;
using loopabull::test::TempDir;

namespace {

// Most tests look at how values are written, in the top-level form (each body key on its own
// line); the namespaced default is tested on its own below.
const VarsOptions kUntrusted{.trusted = false, .event_variable = std::nullopt, .own = {}};
const VarsOptions kTrusted{.trusted = true, .event_variable = std::nullopt, .own = {}};

// The top-level entries of a vars file, each "KEY: VALUE". Every key is written explicitly,
// "? KEY" on one line and ": VALUE" on the next (YAML limits implicit keys to 1024 characters);
// loopabull's own variables are simple keys; anything else is reported as a failure.
std::vector<std::string> body_lines(const std::string& rendered) {
    std::vector<std::string> lines;
    std::istringstream in(rendered);
    for (std::string line; std::getline(in, line);) {
        if (line.starts_with('#')) continue;
        if (line.starts_with("loopabull_")) { // loopabull's own: short fixed names, simple keys
            lines.push_back(line);
            continue;
        }
        std::string value;
        if (!line.starts_with("? ") || !std::getline(in, value) || !value.starts_with(": ")) {
            ADD_FAILURE() << "not an explicit key and its value: " << line << " / " << value;
            return {};
        }
        lines.push_back(line.substr(2) + ":" + value.substr(1));
    }
    return lines;
}

// How one value is written: the rest of the line of a top-level key "v".
std::string value_text(const json& v, bool trusted = false) {
    auto lines = body_lines(render_vars(json::object({{"v", v}}), trusted ? kTrusted : kUntrusted));
    std::string prefix = trusted ? "\"v\": " : "!unsafe \"v\": ";
    if (lines.size() != 1 || !lines[0].starts_with(prefix)) {
        ADD_FAILURE() << "unexpected rendering of " << v.dump() << ": "
                      << testing::PrintToString(lines);
        return {};
    }
    return lines[0].substr(prefix.size());
}

// PyYAML's float form (YAML 1.1): [-+]?[0-9][0-9_]*\.[0-9_]*([eE][-+][0-9]+)?
bool yaml11_float(std::string_view s) {
    auto digits = [&](std::string_view allowed) {
        auto n = std::min(s.find_first_not_of(allowed), s.size());
        s.remove_prefix(n);
        return n;
    };
    if (s.starts_with('-') || s.starts_with('+')) s.remove_prefix(1);
    if (digits("0123456789") == 0) return false;
    digits("0123456789_");
    if (!s.starts_with('.')) return false;
    s.remove_prefix(1);
    digits("0123456789_");
    if (s.empty()) return true;
    if (s.size() < 3 || (s[0] != 'e' && s[0] != 'E') || (s[1] != '-' && s[1] != '+')) return false;
    s.remove_prefix(2);
    return digits("0123456789") > 0 && s.empty();
}

bool printable_ascii(const std::string& s) {
    return std::all_of(s.begin(), s.end(),
                       [](char c) { return c == '\n' || (c >= 0x20 && c < 0x7F); });
}

} // namespace

// --- the rendering ---

TEST(RenderVars, StringsAreTaggedUnsafe) {
    EXPECT_EQ(body_lines(render_vars({{"msg", "hello"}}, kUntrusted)),
              std::vector<std::string>{R"(!unsafe "msg": !unsafe "hello")"});
    EXPECT_EQ(value_text("{{ lookup('pipe', 'id') }}"), R"(!unsafe "{{ lookup('pipe', 'id') }}")");
}

TEST(RenderVars, TrustedModeHasNoTags) {
    auto rendered =
        render_vars(json::parse(R"({"msg": "{{ x }}", "n": {"k": ["a", 1]}})"), kTrusted);
    EXPECT_EQ(body_lines(rendered),
              (std::vector<std::string>{R"("msg": "{{ x }}")", R"("n": {? "k": ["a", 1]})"}));
    EXPECT_EQ(rendered.find("!unsafe"), std::string::npos) << rendered;
}

TEST(RenderVars, NestedMapsAndLists) {
    EXPECT_EQ(value_text(json::parse(R"({"a": [1, "x", {"b": null}], "e": {}, "l": []})")),
              R"({? !unsafe "a": [1, !unsafe "x", {? !unsafe "b": null}], ? !unsafe "e": {}, )"
              R"(? !unsafe "l": []})");
    EXPECT_EQ(value_text(json::parse(R"([[[]], [{}]])")), "[[[]], [{}]]");
}

TEST(RenderVars, Integers) {
    for (auto text :
         {"0", "42", "-7", "9223372036854775807", "-9223372036854775808", "18446744073709551615"})
        EXPECT_EQ(value_text(json::parse(text)), text);
}

TEST(RenderVars, FloatsKeepADot) {
    EXPECT_EQ(value_text(1.5), "1.5");
    EXPECT_EQ(value_text(2.0), "2.0");
    EXPECT_EQ(value_text(-0.25), "-0.25");
    EXPECT_EQ(value_text(json::parse("1e+100")), "1.0e+100");
    EXPECT_EQ(value_text(json::parse("1e-7")), "1.0e-07");
}

TEST(RenderVars, FloatsReadAsFloatsByYaml11) {
    // PyYAML's float resolver (YAML 1.1): a dot is required, and a signed exponent.
    for (auto not_float : {"1e+100", "1.0e100", "100", "1.0e+", ".5", "1.5x"})
        ASSERT_FALSE(yaml11_float(not_float)) << not_float;
    for (auto text : {"1e100", "-1e100", "1e-300", "5e-324", "1.7976931348623157e308", "0.1",
                      "123456789012345678901234567890.0", "1E5", "-0.0", "3.0"}) {
        auto rendered = value_text(json::parse(text));
        EXPECT_TRUE(yaml11_float(rendered)) << text << " -> " << rendered;
    }
}

TEST(RenderVars, BooleansAndNull) {
    EXPECT_EQ(value_text(true), "true");
    EXPECT_EQ(value_text(false), "false");
    EXPECT_EQ(value_text(nullptr), "null");
    // Strings that look like other types stay quoted strings.
    EXPECT_EQ(value_text("true"), R"(!unsafe "true")");
    EXPECT_EQ(value_text("1.5"), R"(!unsafe "1.5")");
    EXPECT_EQ(value_text(""), R"(!unsafe "")");
}

TEST(RenderVars, QuotesAndBackslashesAreEscaped) {
    EXPECT_EQ(value_text(R"(say "hi")"), R"(!unsafe "say \"hi\"")");
    EXPECT_EQ(value_text(R"(C:\dir\)"), R"(!unsafe "C:\\dir\\")");
    EXPECT_EQ(value_text(R"(\"")"), R"(!unsafe "\\\"\"")");
}

TEST(RenderVars, ControlAndNonAsciiCharactersAreEscaped) {
    struct {
        const char* in;
        const char* out;
    } cases[] = {
        {"\n", R"(\x0A)"},
        {"\t", R"(\x09)"},
        {"\r", R"(\x0D)"},
        {"\x1B", R"(\x1B)"},
        {"\x7F", R"(\x7F)"},
        {"\xC2\x85", R"(\x85)"},
        {"caf\xC3\xA9", R"(caf\xE9)"},
        {"\xE2\x82\xAC", R"(\u20AC)"},
        {"\xE2\x80\xA8", R"(\u2028)"},
        {"\xEF\xBB\xBF", R"(\uFEFF)"},
        {"\xF0\x9F\x98\x80", R"(\U0001F600)"},
        {"\xF4\x8F\xBF\xBF", R"(\U0010FFFF)"},
    };
    for (auto& c : cases)
        EXPECT_EQ(value_text(c.in), std::string("!unsafe \"") + c.out + "\"")
            << testing::PrintToString(std::string(c.in));
    EXPECT_EQ(value_text(std::string("a\0b", 3)), R"(!unsafe "a\x00b")");
}

TEST(RenderVars, KeysAreEscapedToo) {
    EXPECT_EQ(body_lines(render_vars({{"cl\xC3\xA9 \"q\"", 1}}, kUntrusted)),
              std::vector<std::string>{R"(!unsafe "cl\xE9 \"q\"": 1)"});
}

TEST(RenderVars, OutputIsPrintableAscii) {
    std::string all;
    for (unsigned cp = 0; cp < 0x800; ++cp) { // every 1- and 2-byte code point
        if (cp < 0x80)
            all += static_cast<char>(cp);
        else
            all += static_cast<char>(0xC0 | (cp >> 6)),
                all += static_cast<char>(0x80 | (cp & 0x3F));
    }
    all += "\xE2\x80\xA8\xEF\xBF\xBF\xF0\x9F\x98\x80";
    auto rendered = render_vars(
        {{all, all}, {"list", {all, {{all, all}}}}},
        {.trusted = false, .event_variable = std::nullopt, .own = {{"loopabull_event_id", all}}});
    EXPECT_TRUE(printable_ascii(rendered));
}

TEST(RenderVars, OneTopLevelKeyPerLine) {
    auto body = json::parse(R"({"a": "x\ny", "b": {"c": "1\n2", "d": [1, 2]}, "e": 3})");
    EXPECT_EQ(body_lines(render_vars(body, kUntrusted)).size(), 3u);
}

TEST(RenderVars, OwnVariablesComeLastAndWin) {
    auto body = json::parse(R"({"loopabull_job_id": "forged", "x": 1, "loopabull_looper": 2})");
    VarsOptions options{.trusted = false,
                        .event_variable = std::nullopt,
                        .own = {{"loopabull_routing_key", "a.b"},
                                {"loopabull_job_id", "7"},
                                {"loopabull_looper", "spool"}}};
    EXPECT_EQ(body_lines(render_vars(body, options)),
              (std::vector<std::string>{
                  R"(!unsafe "x": 1)", R"(loopabull_routing_key: !unsafe "a.b")",
                  R"(loopabull_job_id: !unsafe "7")", R"(loopabull_looper: !unsafe "spool")"}));
}

TEST(RenderVars, OwnValuesAreTaggedEvenWhenTrusted) {
    // loopabull_routing_key and loopabull_event_id come from the event.
    VarsOptions options{.trusted = true,
                        .event_variable = std::nullopt,
                        .own = {{"loopabull_event_id", "{{ x }}"}}};
    EXPECT_EQ(body_lines(render_vars(json::object(), options)),
              std::vector<std::string>{R"(loopabull_event_id: !unsafe "{{ x }}")"});
}

TEST(RenderVars, TheBodyIsOneVariableByDefault) {
    auto body = json::parse(R"({"ansible_python_interpreter": "x", "loopabull_job_id": "forged"})");
    VarsOptions options{.own = {{"loopabull_job_id", "7"}}};
    auto rendered = render_vars(body, options);
    EXPECT_NE(rendered.find("\nevent: {? !unsafe \"ansible_python_interpreter\": !unsafe \"x\", "
                            "? !unsafe \"loopabull_job_id\": !unsafe \"forged\"}\n"),
              std::string::npos)
        << rendered;
    EXPECT_NE(rendered.find("\nloopabull_job_id: !unsafe \"7\"\n"), std::string::npos);
    options.event_variable = "message";
    EXPECT_NE(render_vars(body, options).find("\nmessage: {"), std::string::npos);
}

TEST(RenderVars, BigIntegersAreWrittenAsTheirLiteral) {
    std::string err;
    auto body = parse_exact_json(
        R"({"big": 18446744073709551616, "neg": -123456789012345678901234567890})", &err);
    ASSERT_TRUE(body) << err;
    EXPECT_EQ(body_lines(render_vars(*body, kUntrusted)),
              (std::vector<std::string>{R"(!unsafe "big": 18446744073709551616)",
                                        R"(!unsafe "neg": -123456789012345678901234567890)"}));
}

// --- reading the file back with PyYAML ---

namespace {

constexpr const char* kPython = "/usr/bin/python3";

// Loads VARS with PyYAML (!unsafe read as a plain string) and compares it, types included, with
// the JSON in EXPECTED; in untrusted mode every quoted scalar must carry !unsafe.
constexpr const char* kCompareScript = R"PY(
import json, sys, yaml
mode, vars_path, expected_path = sys.argv[1:]

class Loader(yaml.SafeLoader):
    pass
Loader.add_constructor('!unsafe', lambda loader, node: loader.construct_scalar(node))

def same(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b

def scalars(node):
    if isinstance(node, yaml.ScalarNode):
        yield node
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from scalars(item)
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield from scalars(key)
            yield from scalars(value)

text = open(vars_path, encoding='ascii').read()
loaded = yaml.load(text, Loader=Loader)
expected = json.load(open(expected_path, encoding='utf-8'))
if not same(loaded, expected):
    print('loaded:  ', repr(loaded)[:2000], file=sys.stderr)
    print('expected:', repr(expected)[:2000], file=sys.stderr)
    sys.exit(1)
if mode == 'untrusted':
    untagged = [n.value for n in scalars(yaml.compose(text, Loader=Loader))
                if n.style == '"' and n.tag != '!unsafe']
    if untagged:
        print('strings without !unsafe:', untagged[:10], file=sys.stderr)
        sys.exit(1)
)PY";

int run(std::vector<std::string> argv) {
    std::vector<char*> args;
    for (auto& a : argv)
        args.push_back(a.data());
    args.push_back(nullptr);
    pid_t pid;
    if (posix_spawn(&pid, args[0], nullptr, nullptr, args.data(), environ) != 0) return -1;
    int status = 0;
    if (waitpid(pid, &status, 0) < 0) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

bool python_yaml_available() {
    return access(kPython, X_OK) == 0 && run({kPython, "-c", "import yaml"}) == 0;
}

// The variables a playbook should see: the body, with the own variables replacing its keys.
json expected_vars(json body, const VarsOptions& options) {
    if (options.event_variable) body = json::object({{*options.event_variable, body}});
    for (auto& [k, v] : options.own)
        body[k] = v;
    return body;
}

// Renders body, has PyYAML read it back, and returns the script's exit status (0: same).
int python_round_trip(const json& body, const VarsOptions& options) {
    TempDir tmp;
    auto script = tmp.write("compare.py", kCompareScript);
    auto vars = tmp.write("vars.yml", render_vars(body, options));
    auto expected = tmp.write("expected.json", expected_vars(body, options).dump());
    return run({kPython, script, options.trusted ? "trusted" : "untrusted", vars, expected});
}

class PyYamlRoundTrip : public testing::Test {
  protected:
    void SetUp() override {
        if (!python_yaml_available())
            GTEST_SKIP() << kPython << " with the yaml module (python3-yaml) is not installed";
    }
};

json rich_body() {
    return json::parse(R"({
        "msg": {"commit": "abc123", "text": "Fix \"quoting\" in C:\\path\\ and {{ ansible_env }}",
                "lines": "one\ntwo\r\nthree\ttabbed\u0000nul\u001bescape\u007fdel"},
        "unicode": "caf\u00e9 \u20ac \ud83d\ude00 \u2028\u2029\u0085\ufeff\ufffe\uffff \udbff\udfff",
        "numbers": [0, -1, 42, 9223372036854775807, 18446744073709551615, 1.5, -0.25, 2.0,
                    1e100, 1e-7, 5e-324, 1.7976931348623157e308],
        "flags": [true, false, null],
        "look_alikes": ["true", "yes", "no", "on", "null", "~", "1", "1.5", "0x10", "1e3",
                        "2024-01-01", "", " ", "- item", "a: b", "# c", "&anchor", "*alias",
                        "!tag", "%directive", "@at", "`tick`", "|", ">", "[", "{", "'", "?"],
        "yes": "key that YAML 1.1 reads as a boolean",
        "null": 1, "~": 2, "1": 3, "": 4, "a: b": 5, "-": 6,
        "empty": {"map": {}, "list": [], "string": ""},
        "deep": {"a": [{"b": [{"c": [{"d": "bottom"}]}]}]},
        "loopabull_job_id": "forged"
    })");
}

const VarsOptions kOwn{.trusted = false,
                       .event_variable = std::nullopt,
                       .own = {{"loopabull_routing_key", "org.example.hello"},
                               {"loopabull_job_id", "12"},
                               {"loopabull_event_id", "caf\xC3\xA9 \"42\""}}};

} // namespace

TEST_F(PyYamlRoundTrip, UntrustedBodyReadsBackExactly) {
    EXPECT_EQ(python_round_trip(rich_body(), kOwn), 0);
}

TEST_F(PyYamlRoundTrip, TrustedBodyReadsBackExactly) {
    auto options = kOwn;
    options.trusted = true;
    EXPECT_EQ(python_round_trip(rich_body(), options), 0);
}

TEST_F(PyYamlRoundTrip, TheEventVariableReadsBackExactly) {
    auto options = kOwn;
    options.event_variable = "event";
    EXPECT_EQ(python_round_trip(rich_body(), options), 0);
}

TEST_F(PyYamlRoundTrip, NestingOf64LevelsReadsBack) {
    json body = "bottom";
    for (int i = 0; i < 32; ++i)
        body = json::object({{"k", json::array({body})}});
    EXPECT_EQ(python_round_trip(body, kUntrusted), 0);
}

TEST_F(PyYamlRoundTrip, LongStringsReadBack) {
    EXPECT_EQ(python_round_trip({{"long", std::string(100000, 'v')}}, kUntrusted), 0);
}

TEST_F(PyYamlRoundTrip, KeysLongerThan1024CharactersReadBack) {
    EXPECT_EQ(python_round_trip({{std::string(1100, 'k'), 1}}, kUntrusted), 0);
    EXPECT_EQ(python_round_trip({{"nested", {{std::string(1100, 'k'), 1}}}}, kUntrusted), 0);
    EXPECT_EQ(python_round_trip({{std::string(300, '\x01'), 1}}, kUntrusted), 0);
}
