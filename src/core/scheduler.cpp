// SPDX-License-Identifier: GPL-3.0-or-later
#include "core/scheduler.hpp"

#include <algorithm>

namespace loopabull {

std::optional<JobId> Scheduler::enqueue(JobId id, std::string serial, bool coalesce) {
    if (coalesce) {
        auto it = std::find_if(queue_.begin(), queue_.end(),
                               [&](const Queued& q) { return q.serialized && q.serial == serial; });
        if (it != queue_.end()) {
            JobId replaced = it->id;
            it->id = id;
            return replaced;
        }
    }
    queue_.push_back({id, std::move(serial), true});
    return std::nullopt;
}

std::optional<JobId> Scheduler::next() {
    if (running_ >= max_parallel_) return std::nullopt;
    for (auto it = queue_.begin(); it != queue_.end(); ++it) {
        if (it->serialized && running_serial_.count(it->serial)) continue;
        JobId id = it->id;
        if (it->serialized) {
            running_serial_.insert(it->serial);
            running_jobs_serial_.emplace(id, std::move(it->serial));
        }
        queue_.erase(it);
        ++running_;
        return id;
    }
    return std::nullopt;
}

void Scheduler::finished(JobId id) {
    if (auto it = running_jobs_serial_.find(id); it != running_jobs_serial_.end()) {
        running_serial_.erase(it->second);
        running_jobs_serial_.erase(it);
    }
    finished();
}

void Scheduler::finished() noexcept {
    if (running_ > 0) --running_;
}

std::vector<JobId> Scheduler::take_queued() {
    std::vector<JobId> ids;
    for (auto& q : queue_)
        ids.push_back(q.id);
    queue_.clear();
    return ids;
}

bool Scheduler::remove_queued(JobId id) {
    auto it =
        std::find_if(queue_.begin(), queue_.end(), [&](const Queued& q) { return q.id == id; });
    if (it == queue_.end()) return false;
    queue_.erase(it);
    return true;
}

std::size_t Scheduler::serial_waiting(const std::string& serial) const {
    return static_cast<std::size_t>(
        std::count_if(queue_.begin(), queue_.end(),
                      [&](const Queued& q) { return q.serialized && q.serial == serial; }));
}

bool Throttler::admit(const std::string& key, std::uint64_t now_usec, std::uint64_t window_usec) {
    if (until_.size() >= sweep_at_) {
        std::erase_if(until_, [&](const auto& e) { return e.second <= now_usec; });
        sweep_at_ = std::max<std::size_t>(1024, until_.size() * 2);
    }
    auto [it, inserted] = until_.try_emplace(key, now_usec + window_usec);
    if (inserted) return true;
    if (it->second > now_usec) return false;
    it->second = now_usec + window_usec;
    return true;
}

std::optional<std::uint64_t> Throttler::open_until(const std::string& key,
                                                   std::uint64_t now_usec) const {
    auto it = until_.find(key);
    if (it == until_.end() || it->second <= now_usec) return std::nullopt;
    return it->second;
}

} // namespace loopabull
