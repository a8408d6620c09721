// SPDX-License-Identifier: GPL-3.0-or-later
#include "ctl/ctl-metrics.hpp"

#include "core/metrics.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <stdexcept>

namespace loopabull::ctl {

void print_metrics(const std::string& text, bool as_json) {
    if (!as_json) {
        std::fputs(text.c_str(), stdout);
        return;
    }
    std::string error;
    auto samples = parse_metrics(text, &error);
    if (!samples) throw std::runtime_error("unexpected reply from loopabull: " + error);
    auto out = nlohmann::json::array();
    for (auto& s : *samples) {
        nlohmann::json value = s.value;
        if (std::isnan(s.value))
            value = "NaN";
        else if (std::isinf(s.value))
            value = s.value > 0 ? "+Inf" : "-Inf";
        out.push_back({{"name", s.name}, {"labels", s.labels}, {"value", value}});
    }
    std::printf("%s\n", out.dump(2).c_str());
}

} // namespace loopabull::ctl
