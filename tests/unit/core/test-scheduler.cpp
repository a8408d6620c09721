// SPDX-License-Identifier: GPL-3.0-or-later
// The scheduler: a bounded FIFO in front of at most max_parallel running jobs.
#include "core/scheduler.hpp"

#include <gtest/gtest.h>

#include <vector>

using namespace loopabull;

namespace {

void enqueue(Scheduler& s, std::initializer_list<JobId> ids) {
    for (auto id : ids)
        s.enqueue(id);
}

// Starts jobs until no slot is free or nothing is queued; returns them in start order.
std::vector<JobId> start_all(Scheduler& s) {
    std::vector<JobId> started;
    while (auto id = s.next())
        started.push_back(*id);
    return started;
}

} // namespace

TEST(Scheduler, StartsIdleAndEmpty) {
    Scheduler s(2, 10);
    EXPECT_TRUE(s.idle());
    EXPECT_FALSE(s.full());
    EXPECT_EQ(s.running(), 0u);
    EXPECT_EQ(s.queued(), 0u);
    EXPECT_EQ(s.max_parallel(), 2u);
    EXPECT_FALSE(s.next().has_value());
}

TEST(Scheduler, StartsJobsInFifoOrder) {
    Scheduler s(100, 100);
    enqueue(s, {5, 3, 9, 1, 7});
    EXPECT_EQ(start_all(s), (std::vector<JobId>{5, 3, 9, 1, 7}));
    EXPECT_EQ(s.running(), 5u);
    EXPECT_EQ(s.queued(), 0u);
}

TEST(Scheduler, NeverRunsMoreThanMaxParallel) {
    Scheduler s(3, 100);
    enqueue(s, {1, 2, 3, 4, 5, 6, 7});
    EXPECT_EQ(start_all(s), (std::vector<JobId>{1, 2, 3}));
    EXPECT_EQ(s.running(), 3u);
    EXPECT_EQ(s.queued(), 4u);

    s.finished();
    EXPECT_EQ(start_all(s), (std::vector<JobId>{4}));
    s.finished();
    s.finished();
    EXPECT_EQ(start_all(s), (std::vector<JobId>{5, 6}));
    EXPECT_EQ(s.running(), 3u);
    for (int i = 0; i < 3; ++i)
        s.finished();
    EXPECT_EQ(start_all(s), (std::vector<JobId>{7}));
    s.finished();
    EXPECT_TRUE(s.idle());
}

TEST(Scheduler, RunningNeverExceedsMaxParallelUnderChurn) {
    Scheduler s(4, 1000);
    JobId id = 0;
    std::vector<JobId> started;
    for (int round = 0; round < 50; ++round) {
        for (int i = 0; i < 3; ++i)
            s.enqueue(++id);
        for (auto j : start_all(s))
            started.push_back(j);
        ASSERT_LE(s.running(), 4u);
        if (round % 2) s.finished();
    }
    for (std::size_t i = 0; i < started.size(); ++i)
        ASSERT_EQ(started[i], i + 1);
}

TEST(Scheduler, FinishedWhenNothingRunsStaysAtZero) {
    Scheduler s(1, 1);
    s.finished();
    EXPECT_EQ(s.running(), 0u);
    s.enqueue(1);
    EXPECT_EQ(s.next(), JobId{1});
    EXPECT_FALSE(s.next().has_value());
}

TEST(Scheduler, FullAtQueueSize) {
    Scheduler s(1, 3);
    enqueue(s, {1, 2});
    EXPECT_FALSE(s.full());
    s.enqueue(3);
    EXPECT_TRUE(s.full());
    // Starting one frees a place in the queue.
    EXPECT_EQ(s.next(), JobId{1});
    EXPECT_FALSE(s.full());
    // Running jobs do not count against the queue.
    s.enqueue(4);
    EXPECT_TRUE(s.full());
    EXPECT_EQ(s.running(), 1u);
}

TEST(Scheduler, TakeQueuedLeavesRunningJobs) {
    Scheduler s(2, 10);
    enqueue(s, {1, 2, 3, 4, 5});
    start_all(s);
    EXPECT_EQ(s.take_queued(), (std::vector<JobId>{3, 4, 5}));
    EXPECT_EQ(s.queued(), 0u);
    EXPECT_EQ(s.running(), 2u);
    EXPECT_FALSE(s.idle());
    EXPECT_FALSE(s.next().has_value());
    EXPECT_TRUE(s.take_queued().empty());
}

TEST(Scheduler, RemoveQueuedKeepsTheOrderOfTheRest) {
    Scheduler s(1, 10);
    enqueue(s, {1, 2, 3, 4});
    EXPECT_EQ(s.next(), JobId{1});
    EXPECT_TRUE(s.remove_queued(3));
    EXPECT_FALSE(s.remove_queued(3));
    EXPECT_FALSE(s.remove_queued(1)); // running, not queued
    EXPECT_FALSE(s.remove_queued(42));
    EXPECT_EQ(s.queued(), 2u);
    EXPECT_EQ(s.take_queued(), (std::vector<JobId>{2, 4}));
}

TEST(Scheduler, SetLimitsAppliesToLaterStarts) {
    Scheduler s(4, 100);
    enqueue(s, {1, 2, 3, 4, 5, 6, 7, 8});
    EXPECT_EQ(start_all(s).size(), 4u);

    s.set_limits(2, 100); // lower: running jobs stay, no new start until below 2
    EXPECT_EQ(s.max_parallel(), 2u);
    EXPECT_EQ(s.running(), 4u);
    EXPECT_FALSE(s.next().has_value());
    s.finished();
    s.finished();
    EXPECT_FALSE(s.next().has_value());
    s.finished();
    EXPECT_EQ(start_all(s), (std::vector<JobId>{5}));

    s.set_limits(5, 100); // higher: more start at once
    EXPECT_EQ(start_all(s), (std::vector<JobId>{6, 7, 8}));
    EXPECT_EQ(s.running(), 5u);
}

TEST(Scheduler, SetLimitsChangesWhenTheQueueIsFull) {
    Scheduler s(1, 10);
    enqueue(s, {1, 2, 3});
    EXPECT_FALSE(s.full());
    s.set_limits(1, 3);
    EXPECT_TRUE(s.full());
    s.set_limits(1, 2); // smaller than what waits: full, nothing dropped
    EXPECT_TRUE(s.full());
    EXPECT_EQ(s.queued(), 3u);
    s.set_limits(1, 4);
    EXPECT_FALSE(s.full());
}
