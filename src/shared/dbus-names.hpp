// SPDX-License-Identifier: GPL-3.0-or-later
// The names of the D-Bus API (org.loopabull.Loopabull1(5)) that the supervisor offers and
// loopabullctl(1) calls. Standard library only: the client needs nothing of the supervisor.
#pragma once

#include <string>
#include <string_view>

namespace loopabull {

inline constexpr const char* kBusNamePrefix = "org.loopabull.Loopabull1.";
inline constexpr const char* kBusObjectPath = "/org/loopabull/Loopabull1";
inline constexpr const char* kBusInterface = "org.loopabull.Loopabull1.Manager";
// The polkit action that CancelJob, Pause, Resume and Reload are checked against.
inline constexpr const char* kManageAction = "org.loopabull.loopabull1.manage";
// Errors of the interface (besides the standard org.freedesktop.DBus.Error.*).
inline constexpr const char* kErrorNoSuchJob = "org.loopabull.Loopabull1.NoSuchJob";
// ListHistory on an instance without a ledger (issue 17).
inline constexpr const char* kErrorHistoryOff = "org.loopabull.Loopabull1.HistoryOff";
inline constexpr const char* kErrorStopping = "org.loopabull.Loopabull1.Stopping";
// Reload() found problems in the file (listed in the message); the old configuration stays.
inline constexpr const char* kErrorInvalidConfiguration = "org.loopabull.Loopabull1.InvalidConfiguration";

// "org.loopabull.Loopabull1." + the instance in the bus-name alphabet. Bus-name elements are
// [A-Za-z0-9_-] and may not start with a digit ("1", as Fedora named its instances): every other
// byte, and a leading digit, becomes _XX (two lower-case hex digits).
inline std::string bus_name_for(std::string_view instance) {
    std::string out = kBusNamePrefix;
    for (std::size_t i = 0; i < instance.size(); ++i) {
        auto c = static_cast<unsigned char>(instance[i]);
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        bool digit = c >= '0' && c <= '9';
        if (alpha || c == '_' || c == '-' || (digit && i > 0)) {
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

} // namespace loopabull
