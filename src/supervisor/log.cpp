// SPDX-License-Identifier: GPL-3.0-or-later
#include "supervisor/log.hpp"

#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

namespace loopabull::log {

namespace {

thread_local const Fields* g_fields = nullptr;

int syslog_priority(spdlog::level::level_enum l) {
    switch (l) {
    case spdlog::level::trace:
    case spdlog::level::debug:
        return 7;
    case spdlog::level::info:
        return 6;
    case spdlog::level::warn:
        return 4;
    case spdlog::level::err:
        return 3;
    default:
        return 2;
    }
}

class JournalSink final : public spdlog::sinks::base_sink<spdlog::details::null_mutex> {
  protected:
    void sink_it_(const spdlog::details::log_msg& msg) override {
        std::vector<std::string> fields;
        fields.push_back("MESSAGE=" + std::string(msg.payload.data(), msg.payload.size()));
        fields.push_back("PRIORITY=" + std::to_string(syslog_priority(msg.level)));
        fields.push_back("SYSLOG_IDENTIFIER=loopabull");
        if (auto f = g_fields) {
            if (!f->looper.empty()) fields.push_back("LOOPABULL_LOOPER=" + std::string(f->looper));
            if (!f->job.empty()) fields.push_back("LOOPABULL_JOB=" + std::string(f->job));
            if (!f->routing_key.empty())
                fields.push_back("LOOPABULL_ROUTING_KEY=" + std::string(f->routing_key));
            if (!f->result.empty()) fields.push_back("LOOPABULL_RESULT=" + std::string(f->result));
            if (!f->message_id.empty())
                fields.push_back("MESSAGE_ID=" + std::string(f->message_id));
        }
        std::vector<iovec> iov;
        for (auto& s : fields)
            iov.push_back({s.data(), s.size()});
        sd_journal_sendv(iov.data(), static_cast<int>(iov.size()));
    }
    void flush_() override {}
};

// systemd sets JOURNAL_STREAM to "DEV:INODE" of the stream it connected to stderr.
bool stderr_is_journal() {
    const char* env = std::getenv("JOURNAL_STREAM");
    if (!env) return false;
    struct stat st {};
    if (fstat(STDERR_FILENO, &st) < 0) return false;
    unsigned long long dev = 0, ino = 0;
    if (std::sscanf(env, "%llu:%llu", &dev, &ino) != 2) return false;
    return st.st_dev == dev && st.st_ino == ino;
}

spdlog::level::level_enum to_spdlog(LogLevel l) {
    switch (l) {
    case LogLevel::debug:
        return spdlog::level::debug;
    case LogLevel::info:
        return spdlog::level::info;
    case LogLevel::warning:
        return spdlog::level::warn;
    case LogLevel::error:
        return spdlog::level::err;
    }
    return spdlog::level::info;
}

} // namespace

Scope::Scope(const Fields& f) noexcept : previous_(g_fields) {
    g_fields = &f;
}
Scope::~Scope() {
    g_fields = previous_;
}

void setup(LogLevel level) {
    bool journal = stderr_is_journal();
    spdlog::sink_ptr sink;
    if (journal)
        sink = std::make_shared<JournalSink>();
    else
        sink = std::make_shared<spdlog::sinks::stderr_sink_st>();
    auto logger = std::make_shared<spdlog::logger>("loopabull", sink);
    logger->set_pattern(journal ? "%v" : "%Y-%m-%d %H:%M:%S.%e %-7l %v");
    logger->flush_on(spdlog::level::trace);
    spdlog::set_default_logger(logger);
    set_level(level);
}

void set_level(LogLevel level) {
    spdlog::set_level(to_spdlog(level));
}

bool may_log(LogRateLimit& limit, std::string_view what, spdlog::level::level_enum level) {
    auto verdict = limit.check(std::chrono::steady_clock::now());
    if (verdict.suppressed)
        spdlog::log(level, "suppressed {} similar messages ({}) in the last seconds",
                    verdict.suppressed, what);
    return verdict.log;
}

} // namespace loopabull::log
