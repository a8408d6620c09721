// SPDX-License-Identifier: GPL-3.0-or-later
#include "core/routing.hpp"

#include "core/unique-fd.hpp"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

namespace loopabull {

namespace {

constexpr std::size_t kMaxKeyLength = 255;

bool word_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
}

std::vector<std::string_view> split_words(std::string_view s) {
    std::vector<std::string_view> words;
    std::size_t pos = 0;
    while (true) {
        auto dot = s.find('.', pos);
        words.push_back(s.substr(pos, dot == std::string_view::npos ? dot : dot - pos));
        if (dot == std::string_view::npos) return words;
        pos = dot + 1;
    }
}

std::optional<std::string> word_error(std::string_view w, bool wildcards) {
    if (w.empty()) return "empty word (two dots in a row, or a leading or trailing dot)";
    if (wildcards && (w == "*" || w == "#")) return std::nullopt;
    if (w.front() == '-') return "a word may not start with '-'";
    auto bad = std::find_if_not(w.begin(), w.end(), word_char);
    if (bad == w.end()) return std::nullopt;
    std::string msg = "character ";
    if (static_cast<unsigned char>(*bad) < 0x20 || static_cast<unsigned char>(*bad) >= 0x7f) {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02X", static_cast<unsigned char>(*bad));
        msg += hex;
    } else
        msg += std::string("'") + *bad + "'";
    return msg + " not allowed (letters, digits, '_' and '-' only)";
}

std::optional<std::string> grammar_error(std::string_view s, bool wildcards) {
    if (s.empty()) return "empty";
    if (s.size() > kMaxKeyLength) return "longer than 255 bytes";
    // A bad character says more about the input ("../../etc") than the empty words around it.
    for (auto w : split_words(s))
        if (!w.empty())
            if (auto err = word_error(w, wildcards)) return err;
    for (auto w : split_words(s))
        if (auto err = word_error(w, wildcards)) return err;
    return std::nullopt;
}

// Dynamic programming over the pattern's words: reach[j] says that the pattern's words so far can
// match the key's first j words. O(pattern words x key words) whatever the input: a recursive
// matcher takes exponential time on many '#' ("#.#.#.#.x", found by fuzzing) against a long key
// that does not match, and would stall the supervisor's one thread.
template <class Pattern> bool match_words(const Pattern& p, const RoutingWords& k) {
    const std::size_t n = k.size();
    std::array<bool, RoutingWords::kStackWords + 1> stack_reach{};
    bool* reach = stack_reach.data();
    std::unique_ptr<bool[]> big;
    if (n > RoutingWords::kStackWords) {
        big = std::make_unique<bool[]>(n + 1);
        reach = big.get();
    }
    std::fill(reach, reach + n + 1, false);
    reach[0] = true;
    for (std::size_t i = 0; i < p.size(); ++i) {
        bool any = false;
        if (p[i] == "#") { // zero or more words: reachable from any earlier position
            bool acc = false;
            for (std::size_t j = 0; j <= n; ++j) {
                acc = acc || reach[j];
                reach[j] = acc;
            }
            any = acc;
        } else { // one word: '*' or exactly this one
            for (std::size_t j = n; j > 0; --j) {
                reach[j] = reach[j - 1] && (p[i] == "*" || p[i] == k[j - 1]);
                any = any || reach[j];
            }
            reach[0] = false;
        }
        if (!any) return false;
    }
    return reach[n];
}

long openat2_beneath(int dirfd, const std::string& rel) {
    open_how how{};
    how.flags = O_PATH | O_CLOEXEC;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    return syscall(SYS_openat2, dirfd, rel.c_str(), &how, sizeof how);
}

} // namespace

std::optional<std::string> routing_key_error(std::string_view key) {
    return grammar_error(key, false);
}

std::optional<std::string> routing_pattern_error(std::string_view pattern) {
    if (pattern == "all") return std::nullopt;
    return grammar_error(pattern, true);
}

bool routing_pattern_matches(std::string_view pattern, std::string_view key) {
    if (pattern == "all") return true;
    if (pattern.find_first_of("*#") == std::string_view::npos) return pattern == key;
    return match_words(RoutingWords(pattern), RoutingWords(key));
}

RoutingWords::RoutingWords(std::string_view s) {
    std::size_t n = static_cast<std::size_t>(std::count(s.begin(), s.end(), '.')) + 1;
    if (n > kStackWords) {
        heap_.resize(n);
        data_ = heap_.data();
    }
    std::size_t pos = 0;
    while (true) {
        auto dot = s.find('.', pos);
        data_[size_++] = s.substr(pos, dot == std::string_view::npos ? dot : dot - pos);
        if (dot == std::string_view::npos) break;
        pos = dot + 1;
    }
}

RoutingPattern::RoutingPattern(std::string_view pattern)
    : all_(pattern == "all"), literal_(pattern.find_first_of("*#") == std::string_view::npos),
      text_(pattern) {
    RoutingWords w(pattern);
    for (std::size_t i = 0; i < w.size(); ++i)
        words_.emplace_back(w[i]);
}

bool RoutingPattern::matches(std::string_view key, const RoutingWords& key_words) const {
    if (all_) return true;
    if (literal_) return text_ == key;
    return match_words(words_, key_words);
}

RoutingFilter::RoutingFilter(std::vector<std::string> patterns) : patterns_(std::move(patterns)) {
    all_ = std::find(patterns_.begin(), patterns_.end(), "all") != patterns_.end();
}

bool RoutingFilter::selects(std::string_view key) const {
    if (all_) return true;
    return std::any_of(patterns_.begin(), patterns_.end(),
                       [&](const std::string& p) { return routing_pattern_matches(p, key); });
}

std::string playbook_relative_path(std::string_view key, Layout layout) {
    std::string rel(key);
    if (layout == Layout::directory) std::replace(rel.begin(), rel.end(), '.', '/');
    return rel + ".yml";
}

PlaybookLookup find_playbook(int dirfd, const std::string& dir, std::string_view key,
                             Layout layout) {
    return find_playbook_at(dirfd, dir, playbook_relative_path(key, layout));
}

PlaybookLookup find_playbook_at(int dirfd, const std::string& dir, const std::string& rel) {
    using S = PlaybookLookup::Status;
    std::string path = dir + "/" + rel;
    long fd = openat2_beneath(dirfd, rel);
    if (fd < 0) {
        int err = errno;
        if (err == ENOENT || err == ENOTDIR) return {S::missing, path, "no such playbook"};
        if (err == EXDEV || err == ELOOP)
            return {S::escapes, path, "resolves outside the playbooks directory"};
        return {S::error, path, std::strerror(err)};
    }
    UniqueFd owned(static_cast<int>(fd));
    struct stat st {};
    if (fstat(owned.get(), &st) < 0) return {S::error, path, std::strerror(errno)};
    if (!S_ISREG(st.st_mode)) return {S::not_a_file, path, "not a regular file"};
    return {S::found, std::move(path), {}};
}

} // namespace loopabull
