// SPDX-License-Identifier: GPL-3.0-or-later
// core/metrics: the Prometheus text the supervisor writes, the escaping of untrusted label
// values, and the bound on routing keys (a hostile looper must not grow memory without bound).
#include "core/metrics.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <sstream>
#include <string>

using namespace loopabull;

namespace {

bool has_line(const std::string& text, const std::string& line) {
    std::istringstream in(text);
    for (std::string l; std::getline(in, l);)
        if (l == line) return true;
    return false;
}

// The distinct routing_key label values in the text.
std::set<std::string> key_labels(const std::string& text) {
    std::set<std::string> out;
    const std::string mark = "routing_key=\"";
    for (auto p = text.find(mark); p != std::string::npos; p = text.find(mark, p + 1)) {
        auto start = p + mark.size();
        out.insert(text.substr(start, text.find('"', start) - start));
    }
    return out;
}

} // namespace

TEST(Metrics, CountsEventsJobsAndDurations) {
    Metrics m;
    m.key_seen("org.fedoraproject.prod.compose", 1700000000);
    m.event("amqp", Result::succeeded);
    m.event("amqp", Result::succeeded);
    m.event("amqp", Result::rejected);
    m.job_done("org.fedoraproject.prod.compose", "", Result::succeeded, 3.0);
    m.job_done("org.fedoraproject.prod.compose", "", Result::failed, 0.2);
    m.job_done("org.fedoraproject.prod.compose", "composes", Result::succeeded, -1);
    MetricsSnapshot s{.queue_length = 4, .jobs_running = 2, .loopers = {{"amqp", 3}}};
    auto t = m.render(s);
    EXPECT_TRUE(has_line(t, "# TYPE loopabull_events_total counter")) << t;
    EXPECT_TRUE(has_line(t, "loopabull_events_total{looper=\"amqp\",result=\"succeeded\"} 2")) << t;
    EXPECT_TRUE(has_line(t, "loopabull_events_total{looper=\"amqp\",result=\"rejected\"} 1"));
    // Every result has its series from the first event on, so that rate() sees the first one.
    EXPECT_TRUE(has_line(t, "loopabull_events_total{looper=\"amqp\",result=\"timeout\"} 0"));
    EXPECT_TRUE(has_line(t, "loopabull_jobs_total{result=\"failed\",routing_key="
                            "\"org.fedoraproject.prod.compose\"} 1"))
        << t;
    EXPECT_TRUE(has_line(t, "loopabull_jobs_total{result=\"succeeded\",route=\"composes\","
                            "routing_key=\"org.fedoraproject.prod.compose\"} 1"))
        << t;
    // Two observed (the job that never started is not): 0.2 and 3 seconds.
    EXPECT_TRUE(has_line(t, "loopabull_job_duration_seconds_count{routing_key="
                            "\"org.fedoraproject.prod.compose\"} 2"))
        << t;
    EXPECT_TRUE(has_line(t, "loopabull_job_duration_seconds_bucket{routing_key="
                            "\"org.fedoraproject.prod.compose\",le=\"0.5\"} 1"));
    EXPECT_TRUE(has_line(t, "loopabull_job_duration_seconds_bucket{routing_key="
                            "\"org.fedoraproject.prod.compose\",le=\"+Inf\"} 2"));
    EXPECT_TRUE(has_line(t, "loopabull_routing_key_last_seen_timestamp_seconds{routing_key="
                            "\"org.fedoraproject.prod.compose\"} 1700000000"))
        << t;
    EXPECT_TRUE(has_line(t, "loopabull_queue_length 4"));
    EXPECT_TRUE(has_line(t, "loopabull_jobs_running 2"));
    EXPECT_TRUE(has_line(t, "loopabull_looper_restarts_total{looper=\"amqp\"} 3"));
    EXPECT_EQ(t.find("loopabull_ledger_"), std::string::npos); // ledger off: not written
    EXPECT_EQ(t.back(), '\n');
}

TEST(Metrics, LedgerCounters) {
    Metrics m;
    MetricsSnapshot s{.loopers = {},
                      .ledger = true,
                      .ledger_written = 7,
                      .ledger_dropped = 1,
                      .ledger_errors = 2,
                      .ledger_rotations = 1};
    auto t = m.render(s);
    EXPECT_TRUE(has_line(t, "loopabull_ledger_records_written_total 7")) << t;
    EXPECT_TRUE(has_line(t, "loopabull_ledger_records_dropped_total 1"));
    EXPECT_TRUE(has_line(t, "loopabull_ledger_errors_total 2"));
    EXPECT_TRUE(has_line(t, "loopabull_ledger_rotations_total 1"));
}

// Label values are escaped as the exposition format says: \\ for backslash, \" for a double
// quote, \n for a newline. A value that is not escaped would let an event's author forge series.
TEST(Metrics, EscapesLabelValues) {
    Metrics m;
    m.key_seen("a\\b\"c\nloopabull_jobs_running 99", 1);
    auto t = m.render({});
    EXPECT_TRUE(has_line(t, "loopabull_routing_key_last_seen_timestamp_seconds{routing_key="
                            "\"a\\\\b\\\"c\\nloopabull_jobs_running 99\"} 1"))
        << t;
    EXPECT_FALSE(has_line(t, "loopabull_jobs_running 99\"} 1"));
    EXPECT_TRUE(has_line(t, "loopabull_jobs_running 0"));
}

// The attack: a looper sends ever new routing keys. Beyond max_keys they share "other".
TEST(Metrics, BoundsRoutingKeys) {
    Metrics m(10);
    for (int i = 0; i < 100000; ++i) {
        auto key = "attacker.key" + std::to_string(i);
        m.key_seen(key, i);
        m.job_done(key, "", Result::succeeded, 1);
    }
    EXPECT_EQ(m.keys(), 11u); // ten keys and "other"
    auto t = m.render({});
    auto labels = key_labels(t);
    EXPECT_EQ(labels.size(), 11u);
    EXPECT_TRUE(labels.count("other"));
    EXPECT_TRUE(labels.count("attacker.key0"));
    EXPECT_FALSE(labels.count("attacker.key10"));
    EXPECT_TRUE(has_line(t, "loopabull_jobs_total{result=\"succeeded\",routing_key=\"other\"} "
                            "99990"))
        << t.substr(0, 2000);
    EXPECT_LT(t.size(), 64u * 1024); // the text stays small too
    // A key seen before the bound was reached keeps its own series.
    m.job_done("attacker.key3", "", Result::failed, 1);
    EXPECT_TRUE(has_line(
        m.render({}), "loopabull_jobs_total{result=\"failed\",routing_key=\"attacker.key3\"} 1"));
}

TEST(Metrics, LoweredBoundKeepsExistingKeys) {
    Metrics m(3);
    m.key_seen("a", 1);
    m.key_seen("b", 1);
    m.set_max_keys(1);
    m.key_seen("a", 2);
    m.key_seen("c", 2);
    EXPECT_EQ(m.keys(), 3u); // a, b, other
}

// What render() writes reads back: every sample, the label values unescaped.
TEST(Metrics, ParsesWhatItWrites) {
    Metrics m;
    const std::string hostile = "a\\b\"c\nd";
    m.key_seen(hostile, 5);
    m.job_done(hostile, "r", Result::succeeded, 0.7);
    std::string err;
    auto samples = parse_metrics(m.render({.queue_length = 3, .jobs_running = 0, .loopers = {}}), &err);
    ASSERT_TRUE(samples) << err;
    auto find = [&](const std::string& name, const std::map<std::string, std::string>& labels) {
        for (auto& s : *samples)
            if (s.name == name && s.labels == labels) return s.value;
        return -1.0;
    };
    EXPECT_EQ(find("loopabull_routing_key_last_seen_timestamp_seconds", {{"routing_key", hostile}}),
              5);
    EXPECT_EQ(find("loopabull_jobs_total",
                   {{"routing_key", hostile}, {"route", "r"}, {"result", "succeeded"}}),
              1);
    EXPECT_EQ(
        find("loopabull_job_duration_seconds_bucket", {{"routing_key", hostile}, {"le", "+Inf"}}),
        1);
    EXPECT_EQ(find("loopabull_queue_length", {}), 3);
}

TEST(Metrics, ParserRefusesMalformedLines) {
    std::string err;
    EXPECT_FALSE(parse_metrics("# HELP x y\nx{a=\"b} 1\n", &err));
    EXPECT_EQ(err, "line 2: unterminated value of label a");
    EXPECT_FALSE(parse_metrics("x{a=\"\\q\"} 1\n", &err));
    EXPECT_FALSE(parse_metrics("x 1 2 3\n", &err));
    EXPECT_FALSE(parse_metrics("{a=\"b\"} 1\n", &err));
    auto ok = parse_metrics("x +Inf\n\ny{a=\"1\",b=\"2\"} -0.5\n", &err);
    ASSERT_TRUE(ok) << err;
    ASSERT_EQ(ok->size(), 2u);
    EXPECT_TRUE(std::isinf((*ok)[0].value));
    EXPECT_EQ((*ok)[1].value, -0.5);
}
