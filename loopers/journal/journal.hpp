// SPDX-License-Identifier: GPL-3.0-or-later
//
// The journal looper's pure logic: its options, journalctl-style matches, the routing-key
// template over an entry's fields and the event body. Unit-tested in
// tests/unit/loopers/test-journal.cpp; the sd-journal I/O is in main.cpp.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace loopabull::journal {

using nlohmann::json;

struct OptionError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Options {
    bool user = false;      // journal: user (the user's own journal) or system (default)
    bool from_head = false; // start: head (everything kept) or now (default), without a cursor
    // journalctl's syntax: "FIELD=value" terms; terms of one field are alternatives, of different
    // fields all required; "+" separates groups of which any may match (sd_journal_add_match(3)).
    std::vector<std::string> matches;
    std::string routing_key; // template: literal text and {FIELD}
    std::size_t max_field_size = 16 * 1024;
    std::size_t max_in_flight = 16;
    std::string state_directory;
};

// Throws OptionError naming the key. default_state: where the cursor goes when the config does
// not say (empty: it must).
Options parse_options(const json& config, const std::string& default_state);

// FIELD=value with FIELD as journald accepts it (upper-case letters, digits, '_', not starting
// with a digit; systemd.journal-fields(7)), or "+". nullopt when valid.
std::optional<std::string> match_error(std::string_view match);

// A field's value made into routing-key words: every byte outside [A-Za-z0-9_-] (dots too)
// becomes '-', a leading '-' becomes '_', at most 64 bytes; "" and absent become "unknown".
// nginx.service -> nginx-service.
std::string sanitize(std::string_view value);

// The routing key: {FIELD} replaced by sanitize(value of FIELD). Throws OptionError at parse time
// for a template whose literal parts leave the grammar.
class KeyTemplate {
  public:
    static KeyTemplate parse(std::string_view text);
    std::string expand(const std::map<std::string, std::string>& fields) const;

  private:
    std::vector<std::pair<bool, std::string>> parts_; // (is_field, text)
};

// The body: {"fields": {NAME: text}, "binary": {NAME: base64}, "truncated": [NAME...]}; a value is
// text when it is valid UTF-8 without control characters other than tab and newline; longer
// values are cut at max_size bytes (on a character boundary for text) and named in truncated.
json entry_body(const std::vector<std::pair<std::string, std::string>>& fields,
                std::size_t max_size);

} // namespace loopabull::journal
