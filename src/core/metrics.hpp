// SPDX-License-Identifier: GPL-3.0-or-later
// The supervisor's metrics (issue 17) in the Prometheus text exposition format, version 0.0.4
// (prometheus.io/docs/instrumenting/exposition_formats), which node_exporter's textfile
// collector reads and OpenMetrics parsers accept. Pure: no I/O, no clock; the supervisor writes
// the text to metrics.textfile and answers GetMetrics() with it.
//
// Why prometheus-cpp (Debian's prometheus-cpp-dev, its core library only): its TextSerializer
// writes the format, escapes label values (backslash, double quote, newline) and HELP text, and
// its Registry/Family/Counter/Histogram are the model the format expects. Its pull (HTTP) and
// push parts are not linked: the supervisor runs no HTTP server.
//
// Label cardinality: routing keys come from events, which outsiders write. At most max_keys
// distinct routing keys get series of their own; every later key is counted under
// routing_key="other" (the real key "other" shares that series). Looper and route labels come from
// the configuration, results from protocol v1: memory stays bounded whatever loopers send.
#pragma once

#include "core/protocol.hpp"

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace prometheus {
class Registry;
class Counter;
class Gauge;
class Histogram;
template <typename T> class Family;
} // namespace prometheus

namespace loopabull {

// What the supervisor knows only when the text is rendered (its state, not its history).
struct MetricsSnapshot {
    std::uint64_t queue_length = 0;
    std::uint64_t jobs_running = 0;
    struct Looper {
        std::string name;
        std::uint64_t restarts = 0;
    };
    std::vector<Looper> loopers;
    bool ledger = false; // whether the ledger is on; its counters are written only then
    std::uint64_t ledger_written = 0, ledger_dropped = 0, ledger_errors = 0, ledger_rotations = 0;
};

class Metrics {
  public:
    static constexpr std::size_t kDefaultMaxKeys = 100;
    static constexpr std::string_view kOtherKey = "other";
    // Job durations in seconds: a playbook runs from about a second (a local task) to an hour.
    static const std::vector<double>& duration_buckets();

    // max_keys: distinct routing keys with series of their own (metrics.max_keys), at least 1.
    explicit Metrics(std::size_t max_keys = kDefaultMaxKeys);
    ~Metrics();
    Metrics(const Metrics&) = delete;
    Metrics& operator=(const Metrics&) = delete;

    // A new bound applies to keys seen from now on; keys that already have series keep them.
    void set_max_keys(std::size_t n) noexcept { max_keys_ = n ? n : 1; }

    // An event was answered (one call per event, with its final result). looper: a configured
    // looper's name.
    void event(const std::string& looper, Result result);
    // An event with a valid routing key arrived; now_seconds: CLOCK_REALTIME in seconds.
    void key_seen(const std::string& routing_key, double now_seconds);
    // A job ended. route: "" without routes (the label is then absent, as Prometheus reads an
    // empty label). duration_seconds: started to finished; negative when it never started (not
    // observed in the histogram).
    void job_done(const std::string& routing_key, const std::string& route, Result result,
                  double duration_seconds);

    // The whole exposition text, ending with a newline.
    std::string render(const MetricsSnapshot& snapshot) const;

    // Distinct routing keys that have series of their own (for tests of the bound).
    std::size_t keys() const noexcept { return keys_.size(); }

  private:
    static constexpr std::size_t kResults = 9; // protocol v1's results (core/protocol.hpp)
    struct KeySeries {
        std::string label; // the key, or "other" when it was folded
        prometheus::Gauge* last_seen = nullptr;
        prometheus::Histogram* duration = nullptr;
        // jobs_total by route and result: routes come from the configuration
        std::unordered_map<std::string, std::array<prometheus::Counter*, kResults>> jobs;
    };
    KeySeries& series(const std::string& routing_key);

    std::size_t max_keys_;
    std::shared_ptr<prometheus::Registry> registry_;
    prometheus::Family<prometheus::Counter>* events_;
    prometheus::Family<prometheus::Counter>* jobs_;
    prometheus::Family<prometheus::Histogram>* durations_;
    prometheus::Family<prometheus::Gauge>* last_seen_;
    std::unordered_map<std::string, std::array<prometheus::Counter*, kResults>> loopers_;
    std::unordered_map<std::string, KeySeries> keys_; // at most max_keys_ + 1 ("other")
};

// One sample line of the text format, read back (`loopabullctl metrics --json`, tests).
struct MetricSample {
    std::string name;
    std::map<std::string, std::string> labels; // values unescaped
    double value = 0;                          // +Inf, -Inf and NaN as the format writes them

    bool operator==(const MetricSample&) const = default;
};

// Reads the sample lines of the text format 0.0.4 (comments and blank lines skipped; no
// timestamps: the supervisor writes none). nullopt, with error set to the line's number and what
// is wrong, when a line is malformed.
std::optional<std::vector<MetricSample>> parse_metrics(std::string_view text, std::string* error);

} // namespace loopabull
