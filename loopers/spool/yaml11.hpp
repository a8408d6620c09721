// SPDX-License-Identifier: GPL-3.0-or-later
//
// Event bodies typed as Ansible types them. `ansible-playbook -e @file` reads a file with
// PyYAML's SafeConstructor and yaml.resolver.Resolver (YAML 1.1): `no` is false, `0755` is 493,
// `1:30` is 90, `2026-11-30` a date. yaml-cpp parses (the syntax is the same); the typing of
// plain scalars, explicit tags and merge keys here follows PyYAML 6.0's resolver.py and
// constructor.py, whose regular expressions are copied verbatim and run with RE2 (linear time
// on untrusted text). Whatever JSON cannot carry the same way (.inf, binary data, sets, keys
// that Ansible reads as booleans or numbers, ...) is refused with a reason, never changed.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>

namespace loopabull::spool {

// The event cannot be carried as Ansible would read it: the message says why (for the log and
// the reason file), in words an event's author can act on.
struct Unrepresentable : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Limits {
    std::size_t max_bytes = 1024 * 1024; // of the JSON produced, counting aliases expanded
    int max_depth = 128;                 // nesting of mappings and sequences
};

// One YAML document (text of a .yml/.yaml event) as compact JSON text on one line. Integers of
// any size are written exactly (JSON has no limit; nlohmann would round them); floats with the
// shortest text that reads back the same double; timestamps as Python's isoformat(), which is
// what Ansible's to_json prints for them. An empty document (only blanks or comments) is "null".
// Throws Unrepresentable (also for YAML syntax errors, with yaml-cpp's message).
std::string yaml_to_json(const std::string& text, const Limits& limits = {});

// The JSON text of a plain (unquoted, untagged) scalar as PyYAML resolves and constructs it:
// "true" for `On`, "493" for `0755`, "\"0o17\"" for `0o17` (not octal in YAML 1.1).
// Throws Unrepresentable for .inf/.nan, `=`, `<<` as a value and dates that do not exist.
std::string resolve_plain_scalar(std::string_view scalar);

// A JSON text (a .json event) on one line, byte for byte otherwise: whitespace outside strings
// is dropped, numbers stay as written (so 2**64 is not rounded). Throws Unrepresentable when
// the text is not valid JSON (nlohmann's message), is nested deeper than limits.max_depth, or
// the result is longer than limits.max_bytes.
std::string compact_json(std::string_view text, const Limits& limits = {});

} // namespace loopabull::spool
