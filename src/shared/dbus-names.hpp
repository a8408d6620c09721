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
// The polkit action that ReplayJob is checked against (issue 17): running a recorded event again
// is a right of its own, apart from managing the instance. GetJobBody is checked against
// kManageAction: bodies are for those who may manage the instance.
inline constexpr const char* kReplayAction = "org.loopabull.loopabull1.replay";
// Errors of the interface (besides the standard org.freedesktop.DBus.Error.*).
inline constexpr const char* kErrorNoSuchJob = "org.loopabull.Loopabull1.NoSuchJob";
// ListHistory on an instance without a ledger (issue 17).
inline constexpr const char* kErrorHistoryOff = "org.loopabull.Loopabull1.HistoryOff";
// GetJobBody, ReplayJob: the job is in the history without a body (bodies are not stored, or it
// was over history.max_body_size: the message says which).
inline constexpr const char* kErrorNoBody = "org.loopabull.Loopabull1.NoBody";
// ReplayJob: the job has not finished, or today's routing does not run its event (unrouted,
// rejected, throttled, the queue is full: the message says which).
inline constexpr const char* kErrorReplayRefused = "org.loopabull.Loopabull1.ReplayRefused";
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
