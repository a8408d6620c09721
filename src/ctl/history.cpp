// SPDX-License-Identifier: GPL-3.0-or-later
// `loopabullctl history`: --since's grammar and the table (see history.hpp).
#include "ctl/history.hpp"

#include "core/config.hpp"
#include "core/log-safe.hpp"

#include <charconv>
#include <cstdio>
#include <ctime>
#include <string_view>
#include <vector>

namespace loopabull::ctl {

namespace {

std::optional<std::uint64_t> parse_utc(const std::string& s) {
    std::tm tm{};
    const char* end = nullptr;
    for (const char* fmt : {"%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M",
                            "%Y-%m-%d %H:%M", "%Y-%m-%d"}) {
        tm = {};
        end = strptime(s.c_str(), fmt, &tm);
        if (end && (*end == '\0' || (end[0] == 'Z' && end[1] == '\0'))) break;
        end = nullptr;
    }
    if (!end) return std::nullopt;
    std::tm asked = tm;
    time_t t = timegm(&tm);
    if (t < 0) return std::nullopt;
    // timegm() normalises what strptime() let through (February 30, second 60): refuse it.
    if (tm.tm_mday != asked.tm_mday || tm.tm_mon != asked.tm_mon || tm.tm_hour != asked.tm_hour ||
        tm.tm_min != asked.tm_min || tm.tm_sec != asked.tm_sec)
        return std::nullopt;
    return static_cast<std::uint64_t>(t) * 1000000;
}

// Error texts can quote what an event sent: control characters are shown escaped, as in the
// log, never sent to the terminal (--json has them JSON-escaped already).
std::string cell(const nlohmann::json& v) {
    if (v.is_null()) return "-";
    if (v.is_string()) return loggable(v.get_ref<const std::string&>());
    return v.dump();
}

std::string format_usec(const nlohmann::json& v) {
    if (!v.is_number_unsigned()) return "-";
    time_t t = static_cast<time_t>(v.get<std::uint64_t>() / 1000000);
    std::tm tm{};
    localtime_r(&t, &tm);
    char buf[64];
    std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
    return buf;
}

} // namespace

std::optional<std::uint64_t> parse_since(const std::string& text, std::uint64_t now_usec) {
    if (text.empty()) return std::nullopt;
    if (text[0] == '@') {
        std::uint64_t secs = 0;
        auto* b = text.data() + 1;
        auto* e = text.data() + text.size();
        auto [p, ec] = std::from_chars(b, e, secs);
        if (ec != std::errc() || p != e || b == e || secs > UINT64_MAX / 1000000)
            return std::nullopt;
        return secs * 1000000;
    }
    if (auto t = parse_utc(text)) return t;
    std::string err;
    if (auto d = parse_duration(text, &err)) {
        auto back = static_cast<std::uint64_t>(d->count());
        return back < now_usec ? now_usec - back : 0;
    }
    return std::nullopt;
}

void print_history(const nlohmann::json& records, bool as_json) {
    if (as_json) {
        std::printf("%s\n", records.dump(2).c_str());
        return;
    }
    if (records.empty()) {
        std::printf("No jobs in the history.\n");
        return;
    }
    std::vector<std::vector<std::string>> rows;
    rows.push_back({"JOB", "FINISHED", "RESULT", "EXIT", "ROUTING KEY", "LOOPER", "ERROR"});
    for (auto& r : records)
        rows.push_back({cell(r.value("id", nlohmann::json())), format_usec(r["finished_usec"]),
                        cell(r["result"]), cell(r.value("exit_code", nlohmann::json())),
                        cell(r["routing_key"]), cell(r["looper"]),
                        cell(r.value("error", nlohmann::json()))});
    std::vector<std::size_t> width(rows[0].size());
    for (auto& row : rows)
        for (std::size_t i = 0; i < row.size(); ++i)
            width[i] = std::max(width[i], row[i].size());
    for (auto& row : rows) {
        std::string out;
        for (std::size_t i = 0; i < row.size(); ++i) {
            out += row[i];
            if (i + 1 < row.size()) out += std::string(width[i] - row[i].size() + 1, ' ');
        }
        std::printf("%s\n", out.c_str());
    }
    std::printf("\n%zu record%s listed (newest first).\n", records.size(),
                records.size() == 1 ? "" : "s");
}

} // namespace loopabull::ctl
