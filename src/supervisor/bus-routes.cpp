// SPDX-License-Identifier: GPL-3.0-or-later
#include "supervisor/bus-routes.hpp"

#include "core/protocol.hpp"
#include "core/routing.hpp"
#include "supervisor/manager.hpp"

#include <cinttypes>

namespace loopabull {

int bus_explain(sd_bus_message* m, Manager& manager, sd_bus_error* error) {
    const char *key = nullptr, *body_text = nullptr, *looper = nullptr;
    int r = sd_bus_message_read(m, "sss", &key, &body_text, &looper);
    if (r < 0) return r;
    if (auto err = routing_key_error(key))
        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "routing key '%s': %s", key,
                                 err->c_str());
    json body = json::object();
    if (*body_text) {
        body = json::parse(body_text, nullptr, false);
        if (body.is_discarded() || !body.is_object())
            return sd_bus_error_set(error, SD_BUS_ERROR_INVALID_ARGS,
                                    "the body must be a JSON object");
    }
    auto e = manager.explain(key, looper, body);
    std::string text = e.text(manager.config());
    std::string j = e.to_json().dump(-1, ' ', false, json::error_handler_t::replace);
    return sd_bus_reply_method_return(m, "bss", static_cast<int>(e.would_run), text.c_str(),
                                      j.c_str());
}

int bus_get_job_routing(sd_bus_message* m, Manager& manager, const char* no_such_job_error,
                        sd_bus_error* error) {
    std::uint64_t id = 0;
    int r = sd_bus_message_read(m, "t", &id);
    if (r < 0) return r;
    auto job = manager.job(id);
    if (!job)
        return sd_bus_error_setf(error, no_such_job_error, "No job %" PRIu64 " in instance %s", id,
                                 manager.instance().c_str());
    return sd_bus_reply_method_return(m, "sst", job->route.c_str(), job->serial_value.c_str(),
                                      static_cast<std::uint64_t>(job->superseded_by.value_or(0)));
}

} // namespace loopabull
