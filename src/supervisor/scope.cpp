// SPDX-License-Identifier: GPL-3.0-or-later
#include "supervisor/scope.hpp"

#include "supervisor/bus.hpp"
#include "supervisor/log.hpp"

#include <systemd/sd-daemon.h>
#include <systemd/sd-login.h>

#include <cstdlib>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <utility>

namespace loopabull {

namespace {

constexpr const char* kSystemd = "org.freedesktop.systemd1";
constexpr const char* kPath = "/org/freedesktop/systemd1";
constexpr const char* kManager = "org.freedesktop.systemd1.Manager";

struct Token {
    ScopeManager* self;
    std::uint64_t token;
};

int append_u64(sd_bus_message* m, const char* name, std::uint64_t v) {
    return sd_bus_message_append(m, "(sv)", name, "t", v);
}

// The properties of one scope; FIELD-NOTES section 4 lists what a scope accepts.
int append_properties(sd_bus_message* m, pid_t pid, const ScopeProperties& p) {
    int r = sd_bus_message_open_container(m, 'a', "(sv)");
    if (r >= 0)
        r = sd_bus_message_append(m, "(sv)", "PIDs", "au", 1, static_cast<std::uint32_t>(pid));
    if (r >= 0) r = sd_bus_message_append(m, "(sv)", "Slice", "s", p.slice.c_str());
    if (r >= 0) r = sd_bus_message_append(m, "(sv)", "Description", "s", p.description.c_str());
    if (r >= 0) r = sd_bus_message_append(m, "(sv)", "CollectMode", "s", "inactive-or-failed");
    if (r >= 0) r = sd_bus_message_append(m, "(sv)", "KillMode", "s", "control-group");
    if (r >= 0) r = sd_bus_message_append(m, "(sv)", "SendSIGKILL", "b", 1);
    if (r >= 0)
        r = append_u64(m, "RuntimeMaxUSec", static_cast<std::uint64_t>(p.runtime_max.count()));
    if (r >= 0)
        r = append_u64(m, "TimeoutStopUSec", static_cast<std::uint64_t>(p.stop_timeout.count()));
    if (r >= 0 && p.memory_max) r = append_u64(m, "MemoryMax", *p.memory_max);
    if (r >= 0 && p.tasks_max) r = append_u64(m, "TasksMax", *p.tasks_max);
    if (r >= 0 && p.cpu_quota_per_sec_usec)
        r = append_u64(m, "CPUQuotaPerSecUSec", *p.cpu_quota_per_sec_usec);
    // No playbook outlives the supervisor's unit (BindsTo). Before=, not After=: stop jobs run
    // in reverse order, so on "systemctl stop" the supervisor stops first and drains its
    // running jobs, and only then is the (by then empty) scope stopped.
    for (auto dep : {"BindsTo", "Before"})
        if (r >= 0 && !p.binds_to.empty())
            r = sd_bus_message_append(m, "(sv)", dep, "as", 1, p.binds_to.c_str());
    if (r >= 0) r = sd_bus_message_close_container(m);
    return r;
}

std::vector<std::string> list_units(sd_bus* bus, const std::string& pattern) {
    sd_bus_error error = SD_BUS_ERROR_NULL;
    sd_bus_message* reply = nullptr;
    int r = sd_bus_call_method(bus, kSystemd, kPath, kManager, "ListUnitsByPatterns", &error,
                               &reply, "asas", 0, 1, pattern.c_str());
    BusMessagePtr owned(reply);
    std::string err = r < 0 ? bus_error_text(&error, r) : "";
    sd_bus_error_free(&error);
    if (r < 0) throw std::runtime_error("listing units " + pattern + ": " + err);
    std::vector<std::string> names;
    r = sd_bus_message_enter_container(reply, 'a', "(ssssssouso)");
    const char* name = nullptr;
    while (r >= 0 &&
           (r = sd_bus_message_read(reply, "(ssssssouso)", &name, nullptr, nullptr, nullptr,
                                    nullptr, nullptr, nullptr, nullptr, nullptr, nullptr)) > 0)
        names.emplace_back(name);
    return names;
}

} // namespace

std::string scope_unit_name(const std::string& instance, std::uint64_t job) {
    std::string name = "loopabull-";
    for (unsigned char c : instance) {
        if (std::isalnum(c) || c == ':' || c == '_' || c == '.' || c == '-') {
            name += static_cast<char>(c);
        } else {
            static constexpr char hex[] = "0123456789abcdef";
            name += "\\x";
            name += hex[c >> 4];
            name += hex[c & 15];
        }
    }
    return name + "-" + std::to_string(job) + ".scope";
}

ScopeManager::ScopeManager(sd_bus* bus) : bus_(bus) {
    sd_bus_slot* slot = nullptr;
    // Matched before any call, as systemd-run does, so that no JobRemoved can be missed.
    int r = sd_bus_match_signal(bus_, &slot, kSystemd, kPath, kManager, "JobRemoved",
                                on_job_removed, this);
    if (r < 0) throw std::system_error(-r, std::generic_category(), "matching JobRemoved");
    match_.reset(slot);
}

void ScopeManager::start(const std::string& unit, pid_t pid, const ScopeProperties& props,
                         Done done) {
    sd_bus_message* m = nullptr;
    int r =
        sd_bus_message_new_method_call(bus_, &m, kSystemd, kPath, kManager, "StartTransientUnit");
    BusMessagePtr msg(m);
    if (r >= 0) r = sd_bus_message_append(m, "ss", unit.c_str(), "fail");
    if (r >= 0) r = append_properties(m, pid, props);
    if (r >= 0) r = sd_bus_message_append(m, "a(sa(sv))", 0);
    std::uint64_t token = next_token_++;
    auto& p = pending_[token];
    p.unit = unit;
    p.done = std::move(done);
    sd_bus_slot* slot = nullptr;
    auto* t = new Token{this, token};
    if (r >= 0) r = sd_bus_call_async(bus_, &slot, m, on_reply, t, 0);
    if (r < 0) {
        delete t;
        return finish(token, std::string("cannot call StartTransientUnit: ") + std::strerror(-r));
    }
    sd_bus_slot_set_destroy_callback(slot, [](void* ud) { delete static_cast<Token*>(ud); });
    p.call.reset(slot);
}

int ScopeManager::on_reply(sd_bus_message* m, void* userdata, sd_bus_error*) noexcept {
    auto [self, token] = *static_cast<Token*>(userdata);
    auto it = self->pending_.find(token);
    if (it == self->pending_.end()) return 0;
    if (const sd_bus_error* e = sd_bus_message_get_error(m)) {
        self->finish(token, "StartTransientUnit failed: " +
                                bus_error_text(e, sd_bus_message_get_errno(m)));
        return 0;
    }
    const char* path = nullptr;
    if (sd_bus_message_read(m, "o", &path) < 0) {
        self->finish(token, "StartTransientUnit: malformed reply");
        return 0;
    }
    it->second.job_path = path;
    return 0;
}

int ScopeManager::on_job_removed(sd_bus_message* m, void* userdata, sd_bus_error*) noexcept {
    auto self = static_cast<ScopeManager*>(userdata);
    std::uint32_t id = 0;
    const char *path = nullptr, *unit = nullptr, *result = nullptr;
    if (sd_bus_message_read(m, "uoss", &id, &path, &unit, &result) < 0) return 0;
    for (auto& [token, p] : self->pending_) {
        if (p.job_path != path) continue;
        std::string res(result);
        auto t = token;
        self->finish(t, res == "done"
                            ? std::nullopt
                            : std::optional<std::string>("the scope's job ended '" + res + "'"));
        return 0;
    }
    return 0;
}

void ScopeManager::finish(std::uint64_t token, std::optional<std::string> error) {
    auto node = pending_.extract(token);
    if (node.empty()) return;
    try {
        node.mapped().done(std::move(error));
    } catch (const std::exception& e) {
        spdlog::error("scope {}: {}", node.mapped().unit, e.what());
    }
}

void ScopeManager::stop(const std::string& unit) {
    int r = sd_bus_call_method_async(bus_, nullptr, kSystemd, kPath, kManager, "StopUnit", nullptr,
                                     nullptr, "ss", unit.c_str(), "replace");
    if (r < 0) spdlog::error("cannot stop {}: {}", unit, std::strerror(-r));
}

// The glob also matches other instances whose name extends ours ("releng-stg" for "releng"):
// only names with a job number right after our instance are ours.
std::vector<std::string> ScopeManager::stale_scopes(const std::string& instance) {
    auto prefix = scope_unit_name(instance, 0);
    prefix.erase(prefix.rfind("0.scope"));
    auto units = list_units(bus_, prefix + "*.scope");
    std::erase_if(units, [&](const std::string& u) {
        auto middle = std::string_view(u).substr(prefix.size());
        if (!middle.ends_with(".scope")) return true;
        middle.remove_suffix(6);
        return middle.empty() || middle.find_first_not_of("0123456789") != std::string_view::npos;
    });
    return units;
}

void ScopeManager::stop_stale(const std::string& instance, usec wait) {
    auto stale = stale_scopes(instance);
    if (stale.empty()) return;
    spdlog::warn("stopping {} scope(s) left by a previous run of instance {}", stale.size(),
                 instance);
    for (auto& unit : stale) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus_call_method(bus_, kSystemd, kPath, kManager, "StopUnit", &error, nullptr, "ss",
                           unit.c_str(), "replace");
        sd_bus_error_free(&error);
    }
    auto deadline = std::chrono::steady_clock::now() + wait;
    while (!stale_scopes(instance).empty()) {
        if (std::chrono::steady_clock::now() > deadline)
            throw std::runtime_error("scopes of a previous run of instance " + instance +
                                     " did not stop in time");
        // The event loop does not run yet: keep the watchdog fed while we wait.
        sd_notify(0, "WATCHDOG=1");
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
}

std::string ScopeManager::own_unit(bool user_manager) {
    char* unit = nullptr;
    int r = user_manager ? sd_pid_get_user_unit(0, &unit) : sd_pid_get_unit(0, &unit);
    if (r < 0) return {};
    std::string name(unit);
    std::free(unit);
    // Under a slice or a session scope only when run by hand: nothing to bind to then.
    if (!name.ends_with(".service")) return {};
    return name;
}

} // namespace loopabull
