// SPDX-License-Identifier: GPL-3.0-or-later
// Only the D-Bus vtable of the manager and what it needs.
#include "loopabull/manager-bus.hpp"

#include "loopabull/bus.hpp"

#include <spdlog/spdlog.h>

#include <system_error>

namespace loopabull {

namespace {

constexpr const char* kPath = "/org/loopabull/Loopabull1";
constexpr const char* kInterface = "org.loopabull.Loopabull1.Manager";

class BusApi final : public ManagerObserver {
public:
    BusApi(Manager& m, BusKind kind) : manager_(m) {
        bus_ = open_bus(kind, m.event(), "api");
        name_ = bus_name_for(m.instance());
        int r = sd_bus_request_name(bus_.get(), name_.c_str(), 0);
        if (r < 0) throw std::system_error(-r, std::generic_category(), "taking the bus name " + name_);
        spdlog::info("D-Bus API on {} as {} {}", kind == BusKind::system ? "the system bus" : "the user bus",
                     name_, kPath);
    }

    void job_new(const JobInfo&) override {}
    void job_removed(const JobInfo&) override {}
    void properties_changed() override {}

private:
    Manager& manager_;
    BusPtr bus_;
    std::string name_;
};

} // namespace

std::string bus_name_for(const std::string& instance) {
    // Bus-name elements are [A-Za-z0-9_-] and may not start with a digit ("1", as Fedora named
    // its instances): every other byte, and a leading digit, becomes _XX.
    std::string out = "org.loopabull.Loopabull1.";
    for (std::size_t i = 0; i < instance.size(); ++i) {
        unsigned char c = static_cast<unsigned char>(instance[i]);
        bool ok = std::isalpha(c) || c == '_' || c == '-' || (std::isdigit(c) && i > 0);
        if (ok) {
            out += static_cast<char>(c);
        } else {
            static constexpr char hex[] = "0123456789abcdef";
            out += '_';
            out += hex[c >> 4];
            out += hex[c & 15];
        }
    }
    return out;
}

std::unique_ptr<ManagerObserver> make_bus_api(Manager& manager, BusKind kind) {
    return std::make_unique<BusApi>(manager, kind);
}

} // namespace loopabull
