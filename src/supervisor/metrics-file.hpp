// SPDX-License-Identifier: GPL-3.0-or-later
// metrics.textfile (issue 17): the Prometheus text (core/metrics.hpp) written every
// metrics.interval for node_exporter's textfile collector, from an sd-event timer.
//
// The file is replaced atomically (a temporary file in the same directory, then rename(2)), so
// that a scrape never reads half a file; node_exporter reads only names ending in ".prom", and
// the temporary name does not end so. Mode 0644: the collector runs as another user. No fsync:
// after a crash a stale or missing file is rewritten within one interval, and the numbers are
// gone with the process anyway.
#pragma once

#include "core/config.hpp"
#include "supervisor/sd-ptr.hpp"

#include <functional>
#include <string>

namespace loopabull {

class MetricsFile {
  public:
    // render: the text to write, called at every tick (the manager's metrics_text()).
    MetricsFile(sd_event* event, std::function<std::string()> render);
    MetricsFile(const MetricsFile&) = delete;
    MetricsFile& operator=(const MetricsFile&) = delete;

    // Applies the configuration: no textfile stops the timer (the file left is not removed: it
    // may be someone else's); a textfile is written now and then every interval.
    void configure(const MetricsConfig& config);
    // Writes the file now. Errors are logged once until a write succeeds again; false on error.
    bool write();

  private:
    static int on_timer(sd_event_source*, uint64_t, void* userdata) noexcept;
    void arm();

    sd_event* event_;
    std::function<std::string()> render_;
    MetricsConfig config_;
    SourcePtr timer_;
    bool failing_ = false; // the last write failed (and was logged)
};

// Replaces path with text atomically: a temporary file beside it (mode, O_CLOEXEC), rename(2).
// Returns "" on success, else what failed ("cannot create ...: No such file or directory").
std::string replace_file(const std::string& path, std::string_view text, unsigned mode);

} // namespace loopabull
