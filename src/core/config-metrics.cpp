// SPDX-License-Identifier: GPL-3.0-or-later
// The "metrics" section of the current dialect (loopabull.yml(5)): where the Prometheus text is
// written and how many routing keys get series of their own (core/metrics.hpp).
#include "core/config-reader.hpp"

namespace loopabull::config_detail {

namespace {
const std::vector<std::string_view> kMetricsKeys = {"textfile", "interval", "max_keys"};
}

void read_metrics(Reader& r, const YAML::Node& node, Config& c) {
    if (!r.mapping(node, "'metrics'", kMetricsKeys)) return;
    auto& m = c.metrics;
    if (auto v = node["textfile"]) {
        if (auto p = r.nonempty(v, "textfile")) m.textfile = r.path(*p);
    }
    if (auto v = node["interval"]) {
        auto d = r.duration(v, "interval");
        // node_exporter reads the file at every scrape (15s to 1min as usually configured):
        // rewriting it more often than every second only costs; over an hour it is stale.
        if (d && (*d < std::chrono::seconds(1) || *d > std::chrono::hours(1)))
            r.error(v, "'interval' must be between 1s and 1h");
        else if (d)
            m.interval = *d;
    }
    // Each key costs about 20 series (last seen, the histogram's buckets, jobs by result).
    if (auto v = node["max_keys"])
        m.max_keys = r.integer(v, "max_keys", 1, 100000).value_or(m.max_keys);
}

} // namespace loopabull::config_detail
