// SPDX-License-Identifier: GPL-3.0-or-later
// Inside the configuration reader (not used outside src/core): the Reader that records every
// problem with its position, and the section readers that the dialects share.
//   config.cpp          the entry points and the choice of dialect
//   config-current.cpp  the current dialect, and the sections the legacy dialects borrow
//   config-legacy.cpp   the two dialects of the original loopabull (its README's and 0.0.7's)
//   config-values.cpp   the value grammars: scalars, durations, sizes, "did you mean"
#pragma once

#include "core/config.hpp"

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace loopabull::config_detail {

using json = nlohmann::json;
namespace fs = std::filesystem;

// " (did you mean 'x'?)" for the closest choice within a small edit distance, else "".
std::string did_you_mean(std::string_view word, const std::vector<std::string_view>& choices);
// A regular file that this process may execute.
bool executable_file(const std::string& path);

// Reads one config document, recording problems instead of stopping at the first.
class Reader {
  public:
    Reader(std::string file, const LoadOptions& options)
        : file_(std::move(file)), options_(options) {
        auto parent = fs::path(file_).parent_path();
        base_ = parent.empty() ? fs::current_path() : fs::absolute(parent);
    }

    std::vector<ConfigError> errors;

    void error(const YAML::Node& at, std::string message) {
        auto mark = at.Mark();
        int line = mark.is_null() ? 0 : mark.line + 1;
        int col = mark.is_null() ? 0 : mark.column + 1;
        errors.push_back({file_, line, col, std::move(message)});
    }
    void error_at(const YAML::Mark& mark, std::string message) {
        errors.push_back({file_, mark.line + 1, mark.column + 1, std::move(message)});
    }

    // Checks a mapping's keys against the allowed ones; reports unknown and duplicate keys.
    bool mapping(const YAML::Node& node, std::string_view where,
                 const std::vector<std::string_view>& allowed);

    std::optional<std::string> string(const YAML::Node& node, std::string_view key);

    std::optional<std::string> nonempty(const YAML::Node& node, std::string_view key);

    std::string path(const std::string& p) const {
        return fs::path(p).is_absolute() ? p : (base_ / p).lexically_normal().string();
    }

    std::optional<bool> boolean(const YAML::Node& node, std::string_view key);

    std::optional<std::uint64_t> integer(const YAML::Node& node, std::string_view key,
                                         std::uint64_t min, std::uint64_t max);

    std::optional<usec> duration(const YAML::Node& node, std::string_view key);

    std::optional<std::uint64_t> size(const YAML::Node& node, std::string_view key);

    // A list of strings, or (when allowed) one string taken as a one-element list.
    std::optional<std::vector<std::string>> strings(const YAML::Node& node, std::string_view key,
                                                    bool single_ok);

    // Looper options are handed over as JSON: plain scalars take the type YAML 1.2 gives them.
    json to_json(const YAML::Node& node);

    // YAML 1.2 core schema, less what JSON cannot hold (.inf, .nan stay strings).
    json scalar_to_json(const YAML::Node& node);

    const LoadOptions& options() const { return options_; }

  private:
    std::string file_;
    fs::path base_;
    const LoadOptions& options_;
};

// Sections of the current dialect (config-current.cpp) that the legacy dialects read too.
void read_current(Reader& r, const YAML::Node& root, Config& c);
void read_loglevel(Reader& r, const YAML::Node& node, Config& c);
void read_routing_keys(Reader& r, const YAML::Node& node, Config& c);
void read_layout(Reader& r, const YAML::Node& node, std::string_view key, Config& c);
void read_playbooks_dir(Reader& r, const YAML::Node& node, Config& c);
void resolve_playbook_cmd(Reader& r, const YAML::Node& at, std::vector<std::string>& cmd);
void read_cfg_file(Reader& r, const YAML::Node& node, Config& c);
void read_inventory(Reader& r, const YAML::Node& node, std::string_view key, Config& c);
bool valid_looper_name(const std::string& n);
// Resolves lc.command's first word and records how (lc.origin, lc.command_as_written).
void resolve_looper_command(Reader& r, const YAML::Node& at, LooperConfig& lc);
// Sections of the current dialect that the legacy dialects accept beside their own (issue 16).
void read_environment(Reader& r, const YAML::Node& node, Config& c);
void read_event_variable(Reader& r, const YAML::Node& node, Config& c);
void read_executor(Reader& r, const YAML::Node& node, Config& c);

// The dialects of the original loopabull (config-legacy.cpp). playbook_cmd there was one
// string that the original split on white space (and ran without a shell).
std::vector<std::string> split_words(const std::string& s);
void read_legacy_readme(Reader& r, const YAML::Node& root, Config& c);
void read_legacy_007(Reader& r, const YAML::Node& root, Config& c);

// The "history" section (config-history.cpp).
void read_history(Reader& r, const YAML::Node& node, Config& c);
// A looper's `dedup: {window: W}` (config-history.cpp: it is the ledger's feature).
void read_dedup(Reader& r, const YAML::Node& node, LooperConfig& lc);
// After the history section: dedup looks successes up in the ledger, so it needs history on
// and a window no longer than history.max_age (older rows are pruned).
void check_dedup(Reader& r, const YAML::Node& root, const Config& c);
// The "metrics" section (config-metrics.cpp).
void read_metrics(Reader& r, const YAML::Node& node, Config& c);

} // namespace loopabull::config_detail
