// SPDX-License-Identifier: GPL-3.0-or-later
#include "supervisor/explain-offline.hpp"

#include "core/config.hpp"
#include "core/dispatch.hpp"
#include "core/unique-fd.hpp"
#include "shared/explain-args.hpp"

#include <fcntl.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace loopabull {

int explain_offline(const ExplainRequest& req) {
    if (auto err = routing_key_error(req.routing_key)) {
        std::fprintf(stderr, "loopabull: routing key '%s': %s\n", req.routing_key.c_str(),
                     err->c_str());
        return 2;
    }
    std::string error;
    auto body = read_explain_body(req.body, &error);
    if (!body) {
        std::fprintf(stderr, "loopabull: %s\n", error.c_str());
        return 2;
    }
    auto load = load_config(req.config_path, {req.looper_dir, true});
    for (auto& e : load.errors)
        std::fprintf(stderr, "%s\n", e.str().c_str());
    if (!load.config) return 2;
    const Config& config = *load.config;
    UniqueFd dir(open(config.ansible.playbooks_dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!dir) {
        std::fprintf(stderr, "loopabull: opening playbooks_dir %s: %s\n",
                     config.ansible.playbooks_dir.c_str(), std::strerror(errno));
        return 2;
    }
    auto e = explain(
        config, req.routing_key, req.looper, *body,
        [&](const std::string& rel) {
            return find_playbook_at(dir.get(), config.ansible.playbooks_dir, rel);
        },
        nullptr);
    if (req.json)
        std::printf("%s\n",
                    e.to_json().dump(2, ' ', false, json::error_handler_t::replace).c_str());
    else
        std::fputs(e.text(config).c_str(), stdout);
    return e.would_run ? 0 : 1;
}

} // namespace loopabull
