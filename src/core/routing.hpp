// SPDX-License-Identifier: GPL-3.0-or-later
// Routing keys: the grammar, the routing_keys selection, and the key-to-playbook layouts.
#pragma once

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
