// SPDX-License-Identifier: GPL-3.0-or-later
// loopabull --migrate-config: a configuration in a dialect of the original loopabull (the
// README's `plugin:` or 0.0.7's `plugins:`) rewritten in the current dialect, with comments
// where the meaning changed (event variables, root, timeouts, parallel runs).
#pragma once

#include "core/config.hpp"

#include <optional>
#include <string>
#include <vector>

namespace loopabull {

struct Migration {
    std::optional<std::string> text; // the new configuration (YAML with comments)
    std::vector<ConfigError> errors; // why there is none
};

// path: a configuration file in a legacy dialect; it is first loaded as load_config() loads
// it, and its problems are returned as they are. A file already in the current dialect is an
// error ("nothing to migrate"). The text returned loads with the same options (checked before
// it is returned) into a Config that runs the same playbooks for the same events: relative
// paths stay relative, so it belongs in the old file's directory.
Migration migrate_config(const std::string& path, const LoadOptions& options);

} // namespace loopabull
