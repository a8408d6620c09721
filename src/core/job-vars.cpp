// SPDX-License-Identifier: GPL-3.0-or-later
#include "core/job-vars.hpp"

#include "core/varsfile.hpp"

namespace loopabull {

std::string job_vars_text(const nlohmann::json& body, const JobIdentity& job, bool trusted,
                          const std::optional<std::string>& event_variable) {
    VarsOptions vo;
    vo.trusted = trusted;
    vo.event_variable = event_variable;
    vo.own = {{"loopabull_routing_key", job.routing_key},
              {"loopabull_job_id", job.job_id},
              {"loopabull_instance", job.instance},
              {"loopabull_looper", job.looper}};
    if (job.event_id)
        vo.own.emplace_back("loopabull_event_id", job.event_id->is_string()
                                                      ? job.event_id->get<std::string>()
                                                      : job.event_id->dump());
    if (!job.route.empty()) vo.own.emplace_back("loopabull_route", job.route);
    if (!job.replay_of.empty()) vo.own.emplace_back("loopabull_replay_of", job.replay_of);
    return render_vars(body, vo);
}

} // namespace loopabull
