// SPDX-License-Identifier: GPL-3.0-or-later
// The extra-vars file: an event line goes through parse_event, its body through render_vars, and
// the file is read back with yaml-cpp, as ansible-playbook would read it with PyYAML.
// Invariants, in both forms (the body under the variable `event`, and top-level): the file reads
// back to exactly the body (top-level: loopabull's own names dropped), integers of any size exact,
// loopabull's own variables added; every string, key or value, at any depth, carries the !unsafe
// tag (untrusted mode); every untagged scalar is a null, boolean, integer or float as YAML 1.1
// resolves it. With LOOPABULL_FUZZ_VARS_DUMP=DIR, each body and its file are written to DIR
// (NAME.json, NAME.yml) so that tests/fuzz/test_varsfile_ansible.py can read them with Ansible's
// own loader.
#include "core/event-names.hpp"
#include "core/exact-json.hpp"
#include "core/protocol.hpp"
#include "core/varsfile.hpp"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <optional>
#include <regex>
#include <string>

using namespace loopabull;

namespace {

void check(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "invariant violated: %s\n", what);
        std::abort();
    }
}

// PyYAML's (YAML 1.1) resolvers for what render_vars writes plain: a plain scalar that matched
// none of these, or the wrong one, would reach a playbook as a string or as another number.
const std::regex kInt("-?(0|[1-9][0-9]*)");
const std::regex kFloat("-?[0-9][0-9]*\\.[0-9]*([eE][-+][0-9]+)?");

json plain(const std::string& s) {
    if (s == "null") return nullptr;
    if (s == "true" || s == "false") return s == "true";
    bool is_int = std::regex_match(s, kInt);
    check(is_int || std::regex_match(s, kFloat), "plain scalar resolves as a number");
    if (is_int) return *parse_exact_json(s, nullptr); // beyond 64 bits too, as Python reads it
    return std::strtod(s.c_str(), nullptr);
}

std::string string_of(const YAML::Node& n, bool trusted) {
    check(n.IsScalar(), "a key is a scalar");
    // yaml-cpp reports a quoted scalar without a tag as "!", a plain one as "?".
    check(n.Tag() == (trusted ? "!" : "!unsafe"), "every string is quoted and tagged !unsafe");
    return n.Scalar();
}

json to_json(const YAML::Node& n, bool trusted) {
    if (n.IsMap()) {
        json obj = json::object();
        for (auto it = n.begin(); it != n.end(); ++it) {
            auto key = string_of(it->first, trusted);
            check(!obj.contains(key), "no duplicate key");
            obj[key] = to_json(it->second, trusted);
        }
        return obj;
    }
    if (n.IsSequence()) {
        json arr = json::array();
        for (auto& item : n)
            arr.push_back(to_json(item, trusted));
        return arr;
    }
    if (n.IsNull()) return nullptr; // yaml-cpp's reading of a plain "null"
    check(n.IsScalar(), "a value is a map, a sequence or a scalar");
    if (n.Tag() == "?") return plain(n.Scalar());
    return string_of(n, trusted);
}

// JSON text of v, big integers as their literal (nlohmann would write them as binary objects).
std::string json_text(const json& v) {
    if (is_big_integer(v)) return big_integer_text(v);
    std::string out;
    if (v.is_object()) {
        out += '{';
        for (auto& [k, item] : v.items())
            out += (out.size() > 1 ? "," : "") + json(k).dump() + ":" + json_text(item);
        return out + '}';
    }
    if (v.is_array()) {
        out += '[';
        for (auto& item : v)
            out += (out.size() > 1 ? "," : "") + json_text(item);
        return out + ']';
    }
    return v.dump();
}

void dump(const std::string& dir, const json& expected, const std::string& file) {
    auto name = dir + "/" + std::to_string(std::hash<std::string>{}(file));
    std::ofstream(name + ".json") << json_text(expected);
    std::ofstream(name + ".yml") << file;
}

bool own_name(const std::string& key) {
    return std::find(std::begin(kOwnVariables), std::end(kOwnVariables), key) !=
           std::end(kOwnVariables);
}

void round_trip(const json& body, bool trusted, bool top_level) {
    VarsOptions options{
        .trusted = trusted,
        .event_variable = top_level ? std::nullopt : std::optional<std::string>("event"),
        .own = {{"loopabull_routing_key", "org.x"}, {"loopabull_event_id", "i\"d\n{{ x }}"}}};
    std::string file = render_vars(body, options);
    for (unsigned char c : file)
        check(c == '\n' || (c >= 0x20 && c < 0x7f), "the file is printable ASCII");
    json expected = json::object();
    if (!top_level)
        expected["event"] = body;
    else
        for (auto& [k, v] : body.items())
            if (!own_name(k)) expected[k] = v;
    // loopabull's own variables are always tagged, also with trusted payloads.
    json got = json::object();
    for (auto& [k, v] : options.own)
        expected[k] = v;
    YAML::Node doc = YAML::Load(file);
    check(doc.IsMap(), "the file is a mapping");
    for (auto it = doc.begin(); it != doc.end(); ++it) {
        bool plain_key = it->first.Tag() == "?"; // loopabull's own names and `event`
        auto key = plain_key ? it->first.Scalar() : string_of(it->first, trusted);
        check(!got.contains(key), "no duplicate top-level key");
        bool own = plain_key && key != "event";
        check(!plain_key || own_name(key) || (key == "event" && !top_level),
              "plain top-level keys are loopabull's");
        got[key] = own ? json(string_of(it->second, false)) : to_json(it->second, trusted);
    }
    check(got == expected, "the file reads back as the body");
    if (auto dir = std::getenv("LOOPABULL_FUZZ_VARS_DUMP"); dir && !trusted)
        dump(dir, expected, file);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    auto parsed = parse_event({reinterpret_cast<const char*>(data), size});
    auto* event = std::get_if<Event>(&parsed);
    if (!event) return 0;
    for (bool top_level : {false, true}) {
        round_trip(event->body, false, top_level);
        round_trip(event->body, true, top_level);
    }
    return 0;
}
