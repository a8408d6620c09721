// SPDX-License-Identifier: GPL-3.0-or-later
// Admission and ordering of jobs: a bounded FIFO in front of at most max_parallel running jobs.
// Pure logic: the manager asks it what to start and when to stop reading the loopers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <vector>

namespace loopabull {

using JobId = std::uint64_t;

class Scheduler {
  public:
    Scheduler(std::size_t max_parallel, std::size_t queue_size)
        : max_parallel_(max_parallel), queue_size_(queue_size) {}

    // Once full, the loopers are no longer read: back-pressure instead of unbounded memory.
    bool full() const noexcept { return queue_.size() >= queue_size_; }
    void enqueue(JobId id) { queue_.push_back(id); }

    // The next job to start, if a slot is free; it then counts as running.
    std::optional<JobId> next();
    void finished() noexcept;

    // Takes every job that has not started (stop, or cancel of a queued job).
    std::vector<JobId> take_queued();
    bool remove_queued(JobId id);

    // Reload: new limits apply to jobs started from now on; running jobs are not touched.
    void set_limits(std::size_t max_parallel, std::size_t queue_size) noexcept {
        max_parallel_ = max_parallel;
        queue_size_ = queue_size;
    }

    std::size_t running() const noexcept { return running_; }
    std::size_t queued() const noexcept { return queue_.size(); }
    std::size_t max_parallel() const noexcept { return max_parallel_; }
    bool idle() const noexcept { return running_ == 0 && queue_.empty(); }

  private:
    std::deque<JobId> queue_;
    std::size_t running_ = 0;
    std::size_t max_parallel_;
    std::size_t queue_size_;
};

} // namespace loopabull
