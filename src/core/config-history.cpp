// SPDX-License-Identifier: GPL-3.0-or-later
// The "history" section of the current dialect: where and how long the job ledger keeps what ran
// (loopabull.yml(5)). Kept apart from config-current.cpp so that issue 17's keys stay in one file.
#include "core/config-reader.hpp"

namespace loopabull::config_detail {

namespace {
const std::vector<std::string_view> kHistoryKeys = {
    "enabled", "path", "flush_interval", "batch_size", "max_age", "max_jobs", "record_unrouted",
    "store_bodies", "max_body_size"};
}

void read_history(Reader& r, const YAML::Node& node, Config& c) {
    if (!r.mapping(node, "'history'", kHistoryKeys)) return;
    auto& h = c.history;
    if (auto v = node["enabled"]) h.enabled = r.boolean(v, "enabled").value_or(h.enabled);
    if (auto v = node["path"]) {
        if (auto p = r.nonempty(v, "path")) h.path = r.path(*p);
    }
    if (auto v = node["flush_interval"]) {
        auto d = r.duration(v, "flush_interval");
        // Under 10ms the timer would cost more than the batching saves; over a minute, a crash
        // loses more history than an operator expects.
        if (d && (*d < std::chrono::milliseconds(10) || *d > std::chrono::minutes(1)))
            r.error(v, "'flush_interval' must be between 10ms and 1min");
        else if (d)
            h.flush_interval = *d;
    }
    if (auto v = node["batch_size"])
        h.batch_size = r.integer(v, "batch_size", 1, 100000).value_or(h.batch_size);
    if (auto v = node["max_age"]) {
        auto d = r.duration(v, "max_age");
        if (d && d->count() == 0)
            r.error(v, "'max_age' must be more than 0");
        else if (d)
            h.max_age = *d;
    }
    if (auto v = node["max_jobs"])
        h.max_jobs = r.integer(v, "max_jobs", 1, 1000000000).value_or(h.max_jobs);
    if (auto v = node["record_unrouted"])
        h.record_unrouted = r.boolean(v, "record_unrouted").value_or(h.record_unrouted);
    if (auto v = node["store_bodies"])
        h.store_bodies = r.boolean(v, "store_bodies").value_or(h.store_bodies);
    if (auto v = node["max_body_size"]) {
        // A body is one SQLite value: SQLite's default SQLITE_MAX_LENGTH is 1,000,000,000 bytes
        // (sqlite.org/limits.html); 16MiB is far below it and keeps the ledger's size
        // (max_jobs times this) something an operator can reason about.
        auto n = r.size(v, "max_body_size");
        if (n && (*n < 1 || *n > (16u << 20)))
            r.error(v, "'max_body_size' must be between 1B and 16MiB");
        else if (n)
            h.max_body_size = *n;
    }
    if (h.store_bodies && !h.enabled)
        r.error(node["store_bodies"], "'store_bodies' keeps bodies in the history ledger, which "
                                      "'history.enabled: false' turns off");
}

void read_dedup(Reader& r, const YAML::Node& node, LooperConfig& lc) {
    static const std::vector<std::string_view> kDedupKeys = {"window"};
    if (!r.mapping(node, "'dedup'", kDedupKeys)) return;
    auto v = node["window"];
    if (!v) return r.error(node, "'dedup' needs a 'window' (for example 24h)");
    auto d = r.duration(v, "window");
    if (d && d->count() == 0)
        r.error(v, "'dedup.window' must be more than 0");
    else if (d)
        lc.dedup_window = *d;
}

void check_dedup(Reader& r, const YAML::Node& root, const Config& c) {
    for (const auto& lc : c.loopers) {
        if (!lc.dedup_window) continue;
        YAML::Node at = root;
        const YAML::Node loopers = root["loopers"];
        for (const auto& item : loopers)
            if (item.IsMap() && item["name"] && item["name"].IsScalar() &&
                item["name"].Scalar() == lc.name)
                at = item["dedup"];
        if (!c.history.enabled)
            r.error(at, "looper '" + lc.name +
                            "': 'dedup' looks earlier jobs up in the history ledger, which "
                            "'history.enabled: false' turns off");
        else if (*lc.dedup_window > c.history.max_age)
            r.error(at, "looper '" + lc.name +
                            "': 'dedup.window' is longer than 'history.max_age': the jobs it "
                            "would look for are pruned before");
    }
}

} // namespace loopabull::config_detail
