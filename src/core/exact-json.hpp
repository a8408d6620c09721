// SPDX-License-Identifier: GPL-3.0-or-later
// JSON parsing that keeps every number exact. nlohmann::json turns an integer literal beyond 64
// bits into a double (18446744073709551616 becomes 1.8446744073709552e+19); Python's json module,
// and so `ansible-playbook -e @event.json`, keeps it exact. Pure logic.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <string_view>

namespace loopabull {

// The binary subtype that marks a big integer: a value nlohmann cannot parse from JSON text
// itself (JSON has no binary type), so no event can forge one.
inline constexpr std::uint8_t kBigIntegerSubtype = 0x49; // 'I'

// Parses one JSON text like nlohmann::json::parse, except that an integer literal that fits in
// neither int64 nor uint64 becomes a big integer: a binary value of subtype kBigIntegerSubtype
// holding the literal's text ("-123456789012345678901234567890"). A float literal whose value
// is not finite (1e400) is an error, as with nlohmann. On error, *error says why (nlohmann's
// message) and the result is empty.
std::optional<nlohmann::json> parse_exact_json(std::string_view text, std::string* error);

bool is_big_integer(const nlohmann::json& v) noexcept;

// The literal of a big integer (is_big_integer(v) must hold).
std::string big_integer_text(const nlohmann::json& v);

// JSON text of v with big integers written as their literals, so that
// parse_exact_json(dump_exact_json(v)) == v (nlohmann's dump() writes a binary value as an
// object of bytes). Compact by default; indent > 0 pretty-prints as dump(indent) does. Invalid
// UTF-8 in strings is replaced by U+FFFD, as dump() with error_handler_t::replace does.
std::string dump_exact_json(const nlohmann::json& v, int indent = -1);
void dump_exact_json(std::string& out, const nlohmann::json& v, int indent = -1);

} // namespace loopabull
