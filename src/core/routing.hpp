// SPDX-License-Identifier: GPL-3.0-or-later
// Routing keys: the grammar, the routing_keys selection, and the key-to-playbook layouts.
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace loopabull {

// Why a routing key is invalid, or nothing. Keys are untrusted: the grammar (dot-separated words
// of [A-Za-z0-9_-], not starting with '-') leaves no room for '/', "..", or option injection.
std::optional<std::string> routing_key_error(std::string_view key);

// Why a routing_keys entry is invalid: "all", a key, or a pattern with '*' / '#' words.
std::optional<std::string> routing_pattern_error(std::string_view pattern);

// AMQP topic semantics: '*' is exactly one word, '#' zero or more words.
bool routing_pattern_matches(std::string_view pattern, std::string_view key);

// A key or a pattern split at its dots. Up to 16 words (Fedora's topics have 5 to 8) stay on the
// stack, so that splitting a key once per event allocates nothing; longer ones take the heap.
// Holds views into the string it was made from, which must outlive it.
class RoutingWords {
  public:
    static constexpr std::size_t kStackWords = 16;
    explicit RoutingWords(std::string_view s);
    RoutingWords(const RoutingWords&) = delete;
    RoutingWords& operator=(const RoutingWords&) = delete;
    std::size_t size() const noexcept { return size_; }
    std::string_view operator[](std::size_t i) const noexcept { return data_[i]; }

  private:
    std::array<std::string_view, kStackWords> stack_;
    std::vector<std::string_view> heap_;
    std::string_view* data_ = stack_.data();
    std::size_t size_ = 0;
};

// A routing_keys pattern (or "all") split once, when the configuration is read, to be matched
// against many keys: routes match every event's key against theirs. Same semantics as
// routing_pattern_matches; key_words: RoutingWords(key), split once per event.
class RoutingPattern {
  public:
    explicit RoutingPattern(std::string_view pattern);
    bool matches(std::string_view key, const RoutingWords& key_words) const;

  private:
    bool all_ = false, literal_ = false;
    std::string text_;
    std::vector<std::string> words_;
};

class RoutingFilter {
  public:
    explicit RoutingFilter(std::vector<std::string> patterns);
    bool selects(std::string_view key) const;

  private:
    std::vector<std::string> patterns_;
    bool all_ = false;
};

enum class Layout { name, directory };

// The playbook's path relative to playbooks_dir: name: a.b.c -> a.b.c.yml; directory: a/b/c.yml.
std::string playbook_relative_path(std::string_view key, Layout layout);

struct PlaybookLookup {
    enum class Status { found, missing, escapes, not_a_file, error } status;
    std::string path;   // absolute path to hand to ansible-playbook when found
    std::string detail; // for the log when not found
};

// Looks the playbook up beneath the playbooks directory (an O_PATH descriptor): openat2 with
// RESOLVE_BENEATH refuses any escape, including through a symlink planted inside the directory.
PlaybookLookup find_playbook(int playbooks_dirfd, const std::string& playbooks_dir,
                             std::string_view key, Layout layout);

// The same for a path relative to playbooks_dir (a route's `playbook`).
PlaybookLookup find_playbook_at(int playbooks_dirfd, const std::string& playbooks_dir,
                                const std::string& relative);

} // namespace loopabull
