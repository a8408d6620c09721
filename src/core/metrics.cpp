// SPDX-License-Identifier: GPL-3.0-or-later
#include "core/metrics.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <charconv>
#include <cmath>
#include <sstream>

namespace loopabull {

namespace {

constexpr std::array kAllResults = {Result::succeeded, Result::failed,     Result::unrouted,
                                    Result::rejected,  Result::timeout,    Result::cancelled,
                                    Result::aborted,   Result::superseded, Result::throttled};

std::size_t index(Result r) noexcept {
    return static_cast<std::size_t>(r);
}

// A family the registry does not keep: values the supervisor holds itself (its queue, its
// loopers' restarts, the ledger's counters), rendered with the same serializer.
prometheus::MetricFamily family(std::string name, std::string help, prometheus::MetricType type) {
    prometheus::MetricFamily f;
    f.name = std::move(name);
    f.help = std::move(help);
    f.type = type;
    return f;
}

void add(prometheus::MetricFamily& f, double value,
         std::vector<prometheus::ClientMetric::Label> labels = {}) {
    prometheus::ClientMetric m;
    m.label = std::move(labels);
    if (f.type == prometheus::MetricType::Counter)
        m.counter.value = value;
    else
        m.gauge.value = value;
    f.metric.push_back(std::move(m));
}

} // namespace

const std::vector<double>& Metrics::duration_buckets() {
    static const std::vector<double> b = {0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600};
    return b;
}

Metrics::Metrics(std::size_t max_keys)
    : max_keys_(max_keys ? max_keys : 1), registry_(std::make_shared<prometheus::Registry>()),
      events_(&prometheus::BuildCounter()
                   .Name("loopabull_events_total")
                   .Help("Events answered, by looper and protocol v1 result.")
                   .Register(*registry_)),
      jobs_(&prometheus::BuildCounter()
                 .Name("loopabull_jobs_total")
                 .Help("Jobs ended, by routing key (\"other\" beyond metrics.max_keys), route and "
                       "result.")
                 .Register(*registry_)),
      durations_(&prometheus::BuildHistogram()
                      .Name("loopabull_job_duration_seconds")
                      .Help("Time from a job's start to its end, by routing key.")
                      .Register(*registry_)),
      last_seen_(&prometheus::BuildGauge()
                      .Name("loopabull_routing_key_last_seen_timestamp_seconds")
                      .Help("When an event with this routing key last arrived (Unix time).")
                      .Register(*registry_)) {}

Metrics::~Metrics() = default;

void Metrics::event(const std::string& looper, Result result) {
    auto it = loopers_.find(looper);
    if (it == loopers_.end()) {
        std::array<prometheus::Counter*, kResults> counters{};
        for (auto r : kAllResults)
            counters[index(r)] =
                &events_->Add({{"looper", looper}, {"result", std::string(to_string(r))}});
        it = loopers_.emplace(looper, counters).first;
    }
    it->second[index(result)]->Increment();
}

Metrics::KeySeries& Metrics::series(const std::string& routing_key) {
    auto it = keys_.find(routing_key);
    if (it != keys_.end()) return it->second;
    // "other" itself is always allowed: it is where the keys beyond the bound go.
    bool full = keys_.size() - keys_.count(std::string(kOtherKey)) >= max_keys_;
    const std::string& key = full ? std::string(kOtherKey) : routing_key;
    if (full) {
        it = keys_.find(key);
        if (it != keys_.end()) return it->second;
    }
    KeySeries s;
    s.label = key;
    s.last_seen = &last_seen_->Add({{"routing_key", key}});
    s.duration = &durations_->Add({{"routing_key", key}}, duration_buckets());
    return keys_.emplace(key, std::move(s)).first->second;
}

void Metrics::key_seen(const std::string& routing_key, double now_seconds) {
    series(routing_key).last_seen->Set(now_seconds);
}

void Metrics::job_done(const std::string& routing_key, const std::string& route, Result result,
                       double duration_seconds) {
    auto& s = series(routing_key);
    auto it = s.jobs.find(route);
    if (it == s.jobs.end()) {
        std::array<prometheus::Counter*, kResults> counters{};
        for (auto r : kAllResults) {
            prometheus::Labels l{{"routing_key", s.label}, {"result", std::string(to_string(r))}};
            if (!route.empty()) l.emplace("route", route);
            counters[index(r)] = &jobs_->Add(l);
        }
        it = s.jobs.emplace(route, counters).first;
    }
    it->second[index(result)]->Increment();
    if (duration_seconds >= 0) s.duration->Observe(duration_seconds);
}

std::string Metrics::render(const MetricsSnapshot& snap) const {
    using prometheus::MetricType;
    auto families = registry_->Collect();
    auto queue =
        family("loopabull_queue_length", "Jobs queued, waiting for a slot.", MetricType::Gauge);
    add(queue, static_cast<double>(snap.queue_length));
    families.push_back(std::move(queue));
    auto running = family("loopabull_jobs_running", "Jobs running now.", MetricType::Gauge);
    add(running, static_cast<double>(snap.jobs_running));
    families.push_back(std::move(running));
    auto restarts =
        family("loopabull_looper_restarts_total",
               "Times a looper was restarted after it exited or failed.", MetricType::Counter);
    for (auto& l : snap.loopers)
        add(restarts, static_cast<double>(l.restarts), {{"looper", l.name}});
    families.push_back(std::move(restarts));
    if (snap.ledger) {
        std::pair<const char*, const char*> names[] = {
            {"loopabull_ledger_records_written_total", "Records committed to the ledger."},
            {"loopabull_ledger_records_dropped_total",
             "Records lost to a database fault or a full backlog."},
            {"loopabull_ledger_errors_total", "Failed ledger writes, opens or queries."},
            {"loopabull_ledger_rotations_total", "Corrupt ledger databases renamed aside."}};
        std::uint64_t values[] = {snap.ledger_written, snap.ledger_dropped, snap.ledger_errors,
                                  snap.ledger_rotations};
        for (std::size_t i = 0; i < std::size(names); ++i) {
            auto f = family(names[i].first, names[i].second, MetricType::Counter);
            add(f, static_cast<double>(values[i]));
            families.push_back(std::move(f));
        }
    }
    std::ostringstream out;
    prometheus::TextSerializer().Serialize(out, families);
    return out.str();
}

namespace {

bool name_char(char c, bool first) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
           (!first && c >= '0' && c <= '9');
}

// One line; "" on success, else what is wrong.
std::string parse_sample(std::string_view line, MetricSample& out) {
    std::size_t i = 0;
    while (i < line.size() && name_char(line[i], i == 0))
        ++i;
    if (i == 0) return "no metric name";
    out.name = std::string(line.substr(0, i));
    if (i < line.size() && line[i] == '{') {
        ++i;
        while (true) {
            if (i < line.size() && line[i] == '}') {
                ++i;
                break;
            }
            std::size_t start = i;
            while (i < line.size() && name_char(line[i], i == start))
                ++i;
            if (i == start) return "no label name";
            std::string name(line.substr(start, i - start));
            if (line.substr(i, 2) != "=\"") return "no =\" after label " + name;
            i += 2;
            std::string value;
            for (;; ++i) {
                if (i >= line.size()) return "unterminated value of label " + name;
                char c = line[i];
                if (c == '"') break;
                if (c != '\\') {
                    value += c;
                    continue;
                }
                if (++i >= line.size()) return "unterminated value of label " + name;
                switch (line[i]) {
                case '\\':
                    value += '\\';
                    break;
                case '"':
                    value += '"';
                    break;
                case 'n':
                    value += '\n';
                    break;
                default:
                    return "unknown escape in the value of label " + name;
                }
            }
            ++i; // the closing quote
            if (!out.labels.emplace(std::move(name), std::move(value)).second)
                return "a label named twice";
            if (i < line.size() && line[i] == ',') ++i;
        }
    }
    if (i >= line.size() || line[i] != ' ') return "no space before the value";
    auto v = line.substr(i + 1);
    if (v == "+Inf")
        out.value = HUGE_VAL;
    else if (v == "-Inf")
        out.value = -HUGE_VAL;
    else if (v == "NaN")
        out.value = std::nan("");
    else {
        auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out.value);
        if (ec != std::errc() || end != v.data() + v.size()) return "bad value";
    }
    return {};
}

} // namespace

std::optional<std::vector<MetricSample>> parse_metrics(std::string_view text, std::string* error) {
    std::vector<MetricSample> out;
    std::size_t number = 0;
    while (!text.empty()) {
        ++number;
        auto nl = text.find('\n');
        auto line = text.substr(0, nl);
        text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
        if (line.empty() || line[0] == '#') continue;
        MetricSample s;
        if (auto e = parse_sample(line, s); !e.empty()) {
            if (error) *error = "line " + std::to_string(number) + ": " + e;
            return std::nullopt;
        }
        out.push_back(std::move(s));
    }
    return out;
}

} // namespace loopabull
