// SPDX-License-Identifier: GPL-3.0-or-later
// The BODY argument of `loopabull --explain` and `loopabullctl explain`: JSON text, or @FILE
// (@- for standard input). Shared so that both commands read it the same way.
#pragma once

#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>
#include <string>

namespace loopabull {

// The body as a JSON object ({} when arg is empty), or nothing with the reason in *error.
inline std::optional<nlohmann::json> read_explain_body(const std::string& arg, std::string* error) {
    std::string text = arg;
    if (!arg.empty() && arg[0] == '@') {
        std::string path = arg.substr(1);
        if (path == "-") {
            text.assign(std::istreambuf_iterator<char>(std::cin), {});
        } else {
            std::ifstream in(path, std::ios::binary);
            if (!in) {
                *error = "cannot read " + path;
                return std::nullopt;
            }
            text.assign(std::istreambuf_iterator<char>(in), {});
        }
    }
    if (text.empty()) return nlohmann::json::object();
    auto body = nlohmann::json::parse(text, nullptr, false);
    if (body.is_discarded() || !body.is_object()) {
        *error = "the body must be a JSON object";
        return std::nullopt;
    }
    return body;
}

} // namespace loopabull
