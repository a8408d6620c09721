// SPDX-License-Identifier: GPL-3.0-or-later
// Admission and ordering of jobs: a bounded FIFO in front of at most max_parallel running jobs,
// with per-value serialization and coalescing (routes' `serialize`, `coalesce`) and the
// throttle windows (routes' `throttle`). Pure logic: the manager asks it what to start and when
// to stop reading the loopers; time is passed in, never read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace loopabull {

using JobId = std::uint64_t;

class Scheduler {
  public:
    Scheduler(std::size_t max_parallel, std::size_t queue_size)
        : max_parallel_(max_parallel), queue_size_(queue_size) {}

    // Once full, the loopers are no longer read: back-pressure instead of unbounded memory.
    bool full() const noexcept { return queue_.size() >= queue_size_; }
    void enqueue(JobId id) { queue_.push_back({id, {}, false}); }

    // A job serialized on a value (an opaque key, see serial_key() in core/route.hpp): it starts
    // only while no other job with that key runs; jobs of one key start in arrival order. With
    // coalesce, a job of that key already waiting is replaced by this one (which takes its place
    // in the queue) and its id returned, to be answered `superseded`.
    std::optional<JobId> enqueue(JobId id, std::string serial, bool coalesce);

    // The next job to start, if a slot is free and a queued job's value is not running; it then
    // counts as running. Cost: the queued jobs up to the first that may start.
    std::optional<JobId> next();
    // A job that next() returned has ended: frees its slot and its value.
    void finished(JobId id);
    // The same for a job that holds no value (kept for callers that track no ids).
    void finished() noexcept;

    // Takes every job that has not started (stop, or cancel of a queued job).
    std::vector<JobId> take_queued();
    bool remove_queued(JobId id);

    // Serialization state for explain: whether a job with this key runs, and how many wait.
    bool serial_running(const std::string& serial) const { return running_serial_.count(serial); }
    std::size_t serial_waiting(const std::string& serial) const;

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
    struct Queued {
        JobId id;
        std::string serial;
        bool serialized;
    };
    std::deque<Queued> queue_;
    std::unordered_set<std::string> running_serial_;
    std::unordered_map<JobId, std::string> running_jobs_serial_; // serialized running jobs
    std::size_t running_ = 0;
    std::size_t max_parallel_;
    std::size_t queue_size_;
};

// Throttle windows: a value may be admitted once per window. Entries expire lazily; memory is
// bounded by the values seen within the longest window.
class Throttler {
  public:
    // Whether an event with this key (route and value) may run at now_usec (CLOCK_MONOTONIC);
    // when it may, the window starts now. window_usec > 0.
    bool admit(const std::string& key, std::uint64_t now_usec, std::uint64_t window_usec);
    // When the window of key ends, if one is open at now_usec (explain; admits nothing).
    std::optional<std::uint64_t> open_until(const std::string& key, std::uint64_t now_usec) const;
    std::size_t size() const noexcept { return until_.size(); }

  private:
    std::unordered_map<std::string, std::uint64_t> until_;
    std::size_t sweep_at_ = 1024;
};

} // namespace loopabull
