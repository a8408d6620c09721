// SPDX-License-Identifier: GPL-3.0-or-later
#include "ctl/ctl-routes.hpp"

#include "core/routing.hpp"
#include "shared/explain-args.hpp"

#include <cstdio>

namespace loopabull::ctl {

int cmd_explain(const std::vector<std::string>& args, const std::string& looper, bool json,
                const ExplainCall& call) {
    const std::string& key = args.at(0);
    // Checked here as well as by the instance: a usage error is a usage error (exit 2).
    if (auto err = routing_key_error(key)) {
        std::fprintf(stderr, "loopabullctl: routing key '%s': %s\n", key.c_str(), err->c_str());
        return 2;
    }
    std::string error;
    auto body = read_explain_body(args.size() > 1 ? args[1] : std::string(), &error);
    if (!body) {
        std::fprintf(stderr, "loopabullctl: %s\n", error.c_str());
        return 2;
    }
    auto reply = call(key, body->dump(), looper);
    if (json) {
        auto j = nlohmann::json::parse(reply.json, nullptr, false);
        std::printf("%s\n", j.is_discarded() ? reply.json.c_str() : j.dump(2).c_str());
    } else {
        std::fputs(reply.text.c_str(), stdout);
    }
    return reply.would_run ? 0 : 1;
}

std::string job_routing_lines(const JobRouting& r) {
    std::string out;
    if (!r.route.empty()) out += "       Route: " + r.route + "\n";
    if (!r.serialize_value.empty()) out += "  Serialized: " + r.serialize_value + "\n";
    if (r.superseded_by) out += "Superseded by: job " + std::to_string(r.superseded_by) + "\n";
    return out;
}

} // namespace loopabull::ctl
