// SPDX-License-Identifier: GPL-3.0-or-later
#include "core/scheduler.hpp"

#include <algorithm>

namespace loopabull {

std::optional<JobId> Scheduler::next() {
    if (queue_.empty() || running_ >= max_parallel_) return std::nullopt;
    JobId id = queue_.front();
    queue_.pop_front();
    ++running_;
    return id;
}

void Scheduler::finished() noexcept {
    if (running_ > 0) --running_;
}

std::vector<JobId> Scheduler::take_queued() {
    std::vector<JobId> ids(queue_.begin(), queue_.end());
    queue_.clear();
    return ids;
}

bool Scheduler::remove_queued(JobId id) {
    auto it = std::find(queue_.begin(), queue_.end(), id);
    if (it == queue_.end()) return false;
    queue_.erase(it);
    return true;
}

} // namespace loopabull
