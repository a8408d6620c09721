// SPDX-License-Identifier: GPL-3.0-or-later
// Loading a configuration: read the file, choose the dialect, collect every problem.
#include "core/config.hpp"

#include "core/config-reader.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace loopabull {

using namespace config_detail;

namespace {

void read_document(Reader& r, const YAML::Node& root, Config& c) {
    if (!root.IsMap()) {
        r.error(root, "the configuration must be a YAML mapping");
        return;
    }
    // executor: is not among them: the legacy dialects take it as it is.
    bool has_new = root["loopers"] || root["runtime_dir"];
    if (root["plugins"] && !has_new) return read_legacy_007(r, root, c);
    if ((root["plugin"] || root["path_translator"]) && !has_new)
        return read_legacy_readme(r, root, c);
    if (root["plugins"] || root["plugin"])
        r.error(root, "this file mixes the legacy 'plugin'/'plugins' keys with 'loopers': "
                      "use one dialect");
    read_current(r, root, c);
}

} // namespace

std::vector<std::string> bundled_loopers(const std::string& dir) {
    std::vector<std::string> names;
    std::error_code ec;
    for (auto& entry : fs::directory_iterator(dir, ec))
        if (executable_file(entry.path().string())) names.push_back(entry.path().filename());
    std::sort(names.begin(), names.end());
    return names;
}

ConfigLoad parse_config(const std::string& text, const std::string& path,
                        const LoadOptions& options) {
    Reader r(path, options);
    Config c;
    c.path = path;
    try {
        read_document(r, YAML::Load(text), c);
    } catch (const YAML::ParserException& e) {
        r.error_at(e.mark, "YAML syntax error: " + e.msg);
    } catch (const YAML::Exception& e) {
        r.error_at(e.mark, std::string("invalid YAML: ") + e.what());
    }
    if (!r.errors.empty()) return {std::nullopt, std::move(r.errors)};
    return {std::move(c), {}};
}

ConfigLoad load_config(const std::string& path, const LoadOptions& options) {
    std::ifstream in(path);
    if (!in)
        return {std::nullopt, {{path, 0, 0, std::string("cannot read: ") + std::strerror(errno)}}};
    std::stringstream ss;
    ss << in.rdbuf();
    return parse_config(ss.str(), path, options);
}

} // namespace loopabull
