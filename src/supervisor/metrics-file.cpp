// SPDX-License-Identifier: GPL-3.0-or-later
#include "supervisor/metrics-file.hpp"

#include "core/unique-fd.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace loopabull {

std::string replace_file(const std::string& path, std::string_view text, unsigned mode) {
    std::string tmp = path + ".tmp.XXXXXX"; // not "*.prom": node_exporter skips it
    UniqueFd fd(mkostemp(tmp.data(), O_CLOEXEC));
    if (!fd) return "cannot create " + tmp + ": " + std::strerror(errno);
    auto fail = [&](const char* what) {
        std::string e = std::string(what) + " " + tmp + ": " + std::strerror(errno);
        unlink(tmp.c_str());
        return e;
    };
    // mkostemp makes it 0600 whatever the umask: the collector must be able to read it.
    if (fchmod(fd.get(), mode) < 0) return fail("cannot chmod");
    std::size_t done = 0;
    while (done < text.size()) {
        ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            if (n == 0) errno = ENOSPC;
            return fail("cannot write");
        }
        done += static_cast<std::size_t>(n);
    }
    if (close(fd.release()) < 0) return fail("cannot write");
    if (rename(tmp.c_str(), path.c_str()) < 0) {
        std::string e = "cannot rename " + tmp + " to " + path + ": " + std::strerror(errno);
        unlink(tmp.c_str());
        return e;
    }
    return {};
}

MetricsFile::MetricsFile(sd_event* event, std::function<std::string()> render)
    : event_(event), render_(std::move(render)) {
    sd_event_source* s = nullptr;
    // One second of accuracy: the timer may share a wake-up with others (sd_event_add_time(3)).
    int r = sd_event_add_time(event_, &s, CLOCK_MONOTONIC, UINT64_MAX, 1000000, on_timer, this);
    if (r < 0)
        throw std::runtime_error(std::string("cannot add the metrics timer: ") + std::strerror(-r));
    timer_.reset(s);
    sd_event_source_set_description(s, "metrics-textfile");
    sd_event_source_set_enabled(s, SD_EVENT_OFF);
}

void MetricsFile::configure(const MetricsConfig& config) {
    bool changed = config.textfile != config_.textfile;
    config_ = config;
    if (changed) failing_ = false; // a new path's first error is logged
    if (!config_.textfile) {
        sd_event_source_set_enabled(timer_.get(), SD_EVENT_OFF);
        return;
    }
    write();
    arm();
}

void MetricsFile::arm() {
    sd_event_source_set_time_relative(timer_.get(),
                                      static_cast<uint64_t>(config_.interval.count()));
    sd_event_source_set_enabled(timer_.get(), SD_EVENT_ONESHOT);
}

bool MetricsFile::write() {
    if (!config_.textfile) return false;
    auto err = replace_file(*config_.textfile, render_(), 0644);
    if (err.empty()) {
        if (failing_) spdlog::info("metrics: writing {} again", *config_.textfile);
        failing_ = false;
        return true;
    }
    // Logged once per failing spell: a full disk must not fill the journal as well.
    if (!failing_)
        spdlog::error("metrics: {} (retried every {}s)", err, config_.interval.count() / 1000000);
    failing_ = true;
    return false;
}

int MetricsFile::on_timer(sd_event_source*, uint64_t, void* userdata) noexcept {
    auto* self = static_cast<MetricsFile*>(userdata);
    try {
        self->write();
    } catch (const std::exception& e) {
        spdlog::error("metrics: {}", e.what());
    }
    self->arm();
    return 0;
}

} // namespace loopabull
