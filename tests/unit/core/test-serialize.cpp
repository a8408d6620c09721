// SPDX-License-Identifier: GPL-3.0-or-later
// Properties of the scheduler's serialization, coalescing and throttling, checked on simulated
// runs (the scheduler is pure: a seeded random schedule of arrivals and completions drives it).
#include "core/scheduler.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

using namespace loopabull;

namespace {

struct JobRun {
    std::string value;
    std::uint64_t start = 0, end = 0;
};

} // namespace

// 1,000 events over 10 values under max_parallel 4: from the jobs' start and end times, no two
// jobs of one value ever overlap, every job runs, and the slots are used (more than one job runs
// at a time).
TEST(SerializeProperty, NeverTwoJobsOfOneValueAtOnce) {
    for (unsigned seed = 1; seed <= 5; ++seed) {
        std::mt19937 rng(seed);
        Scheduler s(4, 100000);
        std::map<JobId, JobRun> runs;
        std::vector<std::pair<std::uint64_t, JobId>> running; // (end time, id)
        std::uint64_t now = 0;
        JobId next_id = 1;
        std::size_t max_seen = 0;
        auto start_ready = [&] {
            while (auto id = s.next()) {
                runs[*id].start = now;
                running.push_back({now + 1 + rng() % 50, *id});
                max_seen = std::max(max_seen, running.size());
            }
        };
        while (next_id <= 1000 || !running.empty() || !s.idle()) {
            ++now;
            if (next_id <= 1000 && rng() % 2) {
                std::string v = "pkg" + std::to_string(rng() % 10);
                runs[next_id].value = v;
                s.enqueue(next_id++, v, false);
            }
            for (auto it = running.begin(); it != running.end();) {
                if (it->first <= now) {
                    runs[it->second].end = now;
                    s.finished(it->second);
                    it = running.erase(it);
                } else {
                    ++it;
                }
            }
            start_ready();
            ASSERT_LE(running.size(), 4u);
        }
        ASSERT_EQ(runs.size(), 1000u);
        EXPECT_GT(max_seen, 1u);
        std::map<std::string, std::vector<JobRun>> by_value;
        for (auto& [id, r] : runs) {
            ASSERT_GT(r.end, 0u) << "job " << id << " never ran";
            by_value[r.value].push_back(r);
        }
        for (auto& [v, list] : by_value) {
            std::sort(list.begin(), list.end(), [](auto& a, auto& b) { return a.start < b.start; });
            for (std::size_t i = 1; i < list.size(); ++i)
                ASSERT_LE(list[i - 1].end, list[i].start) << "value " << v << " ran twice at once";
        }
    }
}

// With coalescing, the last job of each value to run is the newest event of that value, and
// every event either runs or is superseded (exactly once).
TEST(CoalesceProperty, NewestOfEachValueRunsLast) {
    std::mt19937 rng(7);
    Scheduler s(4, 100000);
    std::map<JobId, std::string> value_of;
    std::map<std::string, JobId> newest, last_started;
    std::set<JobId> superseded, started;
    std::vector<std::pair<std::uint64_t, JobId>> running;
    std::uint64_t now = 0;
    JobId next_id = 1;
    while (next_id <= 1000 || !running.empty() || !s.idle()) {
        ++now;
        if (next_id <= 1000 && rng() % 3) {
            std::string v = "pkg" + std::to_string(rng() % 10);
            value_of[next_id] = v;
            newest[v] = next_id;
            if (auto old = s.enqueue(next_id, v, true)) {
                EXPECT_EQ(value_of[*old], v);
                EXPECT_TRUE(superseded.insert(*old).second);
            }
            ++next_id;
        }
        for (auto it = running.begin(); it != running.end();) {
            if (it->first <= now) {
                s.finished(it->second);
                it = running.erase(it);
            } else {
                ++it;
            }
        }
        while (auto id = s.next()) {
            EXPECT_FALSE(superseded.count(*id));
            started.insert(*id);
            last_started[value_of[*id]] = *id;
            running.push_back({now + 1 + rng() % 40, *id});
        }
    }
    EXPECT_EQ(started.size() + superseded.size(), 1000u);
    EXPECT_GT(superseded.size(), 0u);
    for (auto& [v, id] : newest)
        EXPECT_EQ(last_started[v], id) << v;
}

// A throttled value is admitted at most once per window, and again once the window has passed.
TEST(ThrottleProperty, AtMostOncePerWindow) {
    std::mt19937 rng(3);
    Throttler t;
    const std::uint64_t window = 1000;
    std::map<std::string, std::vector<std::uint64_t>> admitted;
    std::uint64_t now = 0;
    for (int i = 0; i < 20000; ++i) {
        now += rng() % 20;
        std::string v = "key" + std::to_string(rng() % 30);
        if (t.admit(v, now, window)) admitted[v].push_back(now);
    }
    for (auto& [v, times] : admitted) {
        ASSERT_GE(times.size(), 2u) << v;
        for (std::size_t i = 1; i < times.size(); ++i)
            EXPECT_GE(times[i] - times[i - 1], window) << v;
    }
    EXPECT_TRUE(t.open_until("key1", now) || !t.open_until("key1", now + window));
    EXPECT_FALSE(t.open_until("key1", now + window));
}

TEST(Throttler, ForgetsExpiredWindows) {
    Throttler t;
    for (int i = 0; i < 5000; ++i)
        t.admit("v" + std::to_string(i), std::uint64_t(i) * 10, 5);
    EXPECT_LT(t.size(), 2100u);
}

TEST(Scheduler, SerializedJobsOfOneValueWaitInOrder) {
    Scheduler s(4, 100);
    s.enqueue(1, "a", false);
    s.enqueue(2, "a", false);
    s.enqueue(3, "b", false);
    s.enqueue(4);
    EXPECT_EQ(s.next(), JobId{1});
    EXPECT_EQ(s.next(), JobId{3});
    EXPECT_EQ(s.next(), JobId{4});
    EXPECT_FALSE(s.next());
    EXPECT_TRUE(s.serial_running("a"));
    EXPECT_EQ(s.serial_waiting("a"), 1u);
    s.finished(1);
    EXPECT_EQ(s.next(), JobId{2});
}

TEST(Scheduler, CoalesceReplacesTheWaitingJobInPlace) {
    Scheduler s(1, 100);
    s.enqueue(1, "a", true);
    EXPECT_EQ(s.next(), JobId{1});
    EXPECT_FALSE(s.enqueue(2, "a", true));
    s.enqueue(3, "b", true);
    EXPECT_EQ(s.enqueue(4, "a", true), JobId{2});
    EXPECT_EQ(s.queued(), 2u);
    s.finished(1);
    EXPECT_EQ(s.next(), JobId{4});
}
