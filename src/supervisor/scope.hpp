// SPDX-License-Identifier: GPL-3.0-or-later
// Transient scopes over sd-bus, as systemd-run --scope makes them: subscribe to JobRemoved,
// call StartTransientUnit asynchronously, and report when the scope's job is done.
#pragma once

#include "core/config.hpp"
#include "supervisor/sd-ptr.hpp"

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace loopabull {

// "loopabull-INSTANCE-JOBID.scope", every byte outside the unit-name alphabet escaped as \xNN.
std::string scope_unit_name(const std::string& instance, std::uint64_t job);

struct ScopeProperties {
    std::string slice;
    std::string description;
    std::optional<std::uint64_t> memory_max;
    std::optional<std::uint64_t> tasks_max;
    std::optional<std::uint64_t> cpu_quota_per_sec_usec;
    usec runtime_max{};
    usec stop_timeout{};  // TimeoutStopUSec: SIGTERM to SIGKILL when stopped
    std::string binds_to; // the supervisor's own unit, when it runs in one
};

class ScopeManager {
  public:
    // Called once: no error when the scope exists and the process is in it.
    using Done = std::function<void(std::optional<std::string> error)>;

    explicit ScopeManager(sd_bus* bus);
    ScopeManager(const ScopeManager&) = delete;
    ScopeManager& operator=(const ScopeManager&) = delete;

    void start(const std::string& unit, pid_t pid, const ScopeProperties& props, Done done);
    // Stops every process of the scope (SIGTERM, then SIGKILL after its stop timeout).
    void stop(const std::string& unit);
    // At start: scopes of a previous run of this instance (after a crash) are stopped, and
    // waited for, so that no playbook of it goes on and no unit name is taken.
    void stop_stale(const std::string& instance, usec wait);

    // The unit the supervisor runs in, in the given manager, or "".
    static std::string own_unit(bool user_manager);

  private:
    static int on_reply(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept;
    static int on_job_removed(sd_bus_message* m, void* userdata, sd_bus_error* error) noexcept;
    void finish(std::uint64_t token, std::optional<std::string> error);
    std::vector<std::string> stale_scopes(const std::string& instance);

    struct Pending {
        std::string unit;
        std::string job_path;
        Done done;
        BusSlotPtr call;
    };

    sd_bus* bus_;
    BusSlotPtr match_;
    std::uint64_t next_token_ = 1;
    std::map<std::uint64_t, Pending> pending_;
};

} // namespace loopabull
