// SPDX-License-Identifier: GPL-3.0-or-later
#include "core/log-safe.hpp"

#include <cstdio>

namespace loopabull {

namespace {

// The length of the UTF-8 sequence at p and its code point, or 0 when it is not valid UTF-8
// (overlong forms, surrogates, values past U+10FFFF: RFC 3629).
std::size_t decode(const unsigned char* p, const unsigned char* end, unsigned& cp) noexcept {
    if (*p < 0x80) {
        cp = *p;
        return 1;
    }
    std::size_t n;
    if ((*p & 0xE0) == 0xC0)
        n = 2, cp = *p & 0x1Fu;
    else if ((*p & 0xF0) == 0xE0)
        n = 3, cp = *p & 0x0Fu;
    else if ((*p & 0xF8) == 0xF0)
        n = 4, cp = *p & 0x07u;
    else
        return 0;
    if (static_cast<std::size_t>(end - p) < n) return 0;
    for (std::size_t i = 1; i < n; ++i) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (p[i] & 0x3Fu);
    }
    static constexpr unsigned min_for_len[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_for_len[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return n;
}

bool hidden(unsigned cp) noexcept {
    return cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp <= 0x9F) || cp == 0x2028 || cp == 0x2029 ||
           (cp >= 0x202A && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069);
}

void hex(std::string& out, const char* format, unsigned value) {
    char buf[12];
    std::snprintf(buf, sizeof buf, format, value);
    out += buf;
}

} // namespace

bool needs_log_escape(std::string_view text) noexcept {
    auto p = reinterpret_cast<const unsigned char*>(text.data());
    auto end = p + text.size();
    while (p < end) {
        unsigned cp = 0;
        std::size_t n = decode(p, end, cp);
        if (n == 0 || hidden(cp)) return true;
        p += n;
    }
    return false;
}

std::string escape_for_log(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    auto p = reinterpret_cast<const unsigned char*>(text.data());
    auto end = p + text.size();
    while (p < end) {
        unsigned cp = 0;
        std::size_t n = decode(p, end, cp);
        if (n == 0) {
            hex(out, "\\x%02X", *p++);
            continue;
        }
        if (cp == '\\')
            out += "\\\\";
        else if (cp == '\n')
            out += "\\n";
        else if (cp == '\r')
            out += "\\r";
        else if (cp == '\t')
            out += "\\t";
        else if (cp < 0x20 || cp == 0x7F)
            hex(out, "\\x%02X", cp);
        else if (hidden(cp))
            hex(out, "\\u%04X", cp);
        else
            out.append(reinterpret_cast<const char*>(p), n);
        p += n;
    }
    return out;
}

std::string loggable(std::string_view text) {
    return needs_log_escape(text) ? escape_for_log(text) : std::string(text);
}

LogRateLimit::Verdict LogRateLimit::check(clock::time_point now) noexcept {
    if (!started_ || now - window_start_ >= interval_) {
        started_ = true;
        window_start_ = now;
        in_window_ = 0;
    }
    if (in_window_ >= burst_) {
        ++suppressed_;
        return {false, 0};
    }
    ++in_window_;
    return {true, flush()};
}

std::uint64_t LogRateLimit::flush() noexcept {
    auto n = suppressed_;
    suppressed_ = 0;
    return n;
}

} // namespace loopabull
