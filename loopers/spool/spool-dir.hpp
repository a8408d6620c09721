// SPDX-License-Identifier: GPL-3.0-or-later
//
// The spool directory and the directories the looper writes into (failed/), opened so that
// nobody who can write to the spool can redirect the looper's moves: relative to the spool's
// descriptor, without following symlinks, and only when owned by the looper's own user.
// Measured against issue 13: a group member who replaced an empty failed/ with a symlink to the
// playbooks directory made the looper move failing events there.
#pragma once

#include "core/unique-fd.hpp"

#include <sys/types.h>

#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace loopabull::spool {

// The name of the spool file's routing key and unique part: KEY.EXT or KEY@UNIQUE.EXT, where
// EXT is json, yml or yaml. '@' cannot occur in a routing key (core/routing.hpp's grammar).
struct SpoolName {
    std::string key;
    std::string extension;
};

// Whether a directory entry is meant for the spool (names starting with '.' and other
// extensions are left alone: writers' temporary files). The key is not checked here.
std::optional<SpoolName> split_spool_name(const std::string& name);

// A directory the looper writes into, opened with O_NOFOLLOW|O_DIRECTORY relative to the spool's
// descriptor and created (mode 0750) when missing. The error says what is wrong, for the log.
std::variant<UniqueFd, std::string> open_own_directory(int spool_fd, const char* name, uid_t owner);

// What an operator should know about a spool directory's layout, for --check-config
// (loopabull-spool(7), "A shared spool"): the directory writable by others without the sticky
// bit, failed/ that is a symlink, not a directory, not owned by the spool's owner, or writable
// by others. Empty when the layout is safe or the directory does not exist yet.
struct LayoutReport {
    std::vector<std::string> errors;   // the looper cannot start (not a directory, ...)
    std::vector<std::string> warnings; // others can interfere, or failing events stay put
};
LayoutReport check_layout(const std::string& path, uid_t service_uid);

} // namespace loopabull::spool
