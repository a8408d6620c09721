// SPDX-License-Identifier: GPL-3.0-or-later
//
// journal: the bundled looper that turns systemd journal entries into events
// (man/loopabull-journal.7). It follows the journal with sd-journal, filtered like journalctl,
// and keeps its position (the journal cursor) in its state directory. The cursor moves past an
// entry only once loopabull has answered that entry and every one before it, so a restart
// resumes after the last entry known done: at least once, repeating at most what was in flight.

#include "journal/journal.hpp"
#include "kit/looper-kit.hpp"

#include <systemd/sd-journal.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <string>

namespace {

namespace kit = loopabull::kit;
namespace jl = loopabull::journal;
using kit::errno_text;
using kit::log;
using kit::shortened;
using loopabull::UniqueFd;
using nlohmann::json;

struct JournalCloser {
    void operator()(sd_journal* j) const noexcept { sd_journal_close(j); }
};
using JournalPtr = std::unique_ptr<sd_journal, JournalCloser>;

std::string sd_error(int r) {
    return std::strerror(r < 0 ? -r : r);
}

class Cursor {
  public:
    explicit Cursor(const std::string& dir) : dir_(dir) {
        if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
            throw std::runtime_error("cannot create " + dir + ": " + errno_text(errno));
        dirfd_ = UniqueFd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (!dirfd_) throw std::runtime_error("cannot open " + dir + ": " + errno_text(errno));
    }

    std::string load() const {
        UniqueFd fd(::openat(dirfd_.get(), "cursor", O_RDONLY | O_CLOEXEC));
        if (!fd) return {};
        char buf[4096];
        ssize_t n = ::read(fd.get(), buf, sizeof buf - 1);
        if (n <= 0) return {};
        std::string c(buf, static_cast<std::size_t>(n));
        while (!c.empty() && c.back() == '\n')
            c.pop_back();
        return c;
    }

    // Durable before it returns: a temporary file, fsync, rename, fsync of the directory.
    void save(const std::string& cursor) {
        if (cursor == saved_) return;
        UniqueFd fd(
            ::openat(dirfd_.get(), ".cursor.tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
        std::string text = cursor + "\n";
        if (!fd ||
            ::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()) ||
            ::fsync(fd.get()) != 0 ||
            ::renameat(dirfd_.get(), ".cursor.tmp", dirfd_.get(), "cursor") != 0 ||
            ::fsync(dirfd_.get()) != 0)
            throw std::runtime_error("cannot save the cursor in " + dir_ + ": " +
                                     errno_text(errno));
        saved_ = cursor;
    }

  private:
    std::string dir_;
    UniqueFd dirfd_;
    std::string saved_;
};

struct InFlight {
    std::string cursor;
    enum { pending, done, cancelled } state = pending;
};

class Follower {
  public:
    Follower(jl::Options options, Cursor& cursor)
        : options_(std::move(options)), template_(jl::KeyTemplate::parse(options_.routing_key)),
          cursor_(cursor) {}

    void open();
    void read_entries();
    void answer(std::string_view line);
    int fd() const { return sd_journal_get_fd(j_.get()); }
    int events() const { return sd_journal_get_events(j_.get()); }
    int timeout_ms() const;
    void process() { sd_journal_process(j_.get()); }
    kit::Outbox& out() { return out_; }

  private:
    void advance();
    void emit();

    jl::Options options_;
    jl::KeyTemplate template_;
    Cursor& cursor_;
    JournalPtr j_;
    std::string skip_; // the saved cursor's entry, already answered, seen again after seeking
    std::deque<InFlight> in_flight_;
    kit::Outbox out_;
};

void Follower::open() {
    sd_journal* j = nullptr;
    int flags =
        (options_.user ? SD_JOURNAL_CURRENT_USER : SD_JOURNAL_SYSTEM) | SD_JOURNAL_LOCAL_ONLY;
    int r = sd_journal_open(&j, flags);
    if (r < 0) throw std::runtime_error("cannot open the journal: " + sd_error(r));
    j_.reset(j);
    for (const auto& m : options_.matches) {
        r = m == "+" ? sd_journal_add_disjunction(j) : sd_journal_add_match(j, m.data(), m.size());
        if (r < 0) throw std::runtime_error("match " + m + ": " + sd_error(r));
    }
    sd_journal_set_data_threshold(j, options_.max_field_size + 1);
    std::string saved = cursor_.load();
    if (!saved.empty() && sd_journal_seek_cursor(j, saved.c_str()) >= 0) {
        skip_ = saved;
        log("resuming after the saved cursor");
    } else if (options_.from_head) {
        sd_journal_seek_head(j);
        log("reading the journal from its start");
    } else {
        // From now: the entry before the tail is the position; saved at once, so entries that
        // arrive while we are down later are not skipped.
        sd_journal_seek_tail(j);
        if (sd_journal_previous(j) > 0) {
            char* c = nullptr;
            if (sd_journal_get_cursor(j, &c) >= 0) {
                cursor_.save(c);
                std::free(c);
            }
        } else {
            // No matching entry yet. A seek to the tail that no entry resolved makes the next
            // sd_journal_next() jump to the last entry there is by then, skipping every other
            // entry that came in meanwhile (three units failing at once gave only the third):
            // from the head instead, where the first matching entry is the first new one.
            sd_journal_seek_head(j);
        }
        log("following the journal from now");
    }
    // Makes the descriptor exist (inotify) before the first poll.
    if (sd_journal_get_fd(j) < 0)
        throw std::runtime_error("the journal gives no descriptor to wait on");
}

int Follower::timeout_ms() const {
    uint64_t t = 0;
    if (sd_journal_get_timeout(j_.get(), &t) < 0 || t == UINT64_MAX) return 1000;
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now =
        static_cast<uint64_t>(ts.tv_sec) * 1000000 + static_cast<uint64_t>(ts.tv_nsec) / 1000;
    return t <= now ? 0 : static_cast<int>(std::min<uint64_t>((t - now + 999) / 1000, 1000));
}

void Follower::read_entries() {
    sd_journal* j = j_.get();
    while (in_flight_.size() < options_.max_in_flight && out_.size() < 256 * 1024) {
        int r = sd_journal_next(j);
        if (r < 0) throw std::runtime_error("reading the journal: " + sd_error(r));
        if (r == 0) return;
        if (!skip_.empty()) {
            bool same = sd_journal_test_cursor(j, skip_.c_str()) > 0;
            skip_.clear();
            if (same) continue;
        }
        emit();
    }
}

void Follower::emit() {
    sd_journal* j = j_.get();
    char* c = nullptr;
    if (sd_journal_get_cursor(j, &c) < 0) return;
    std::string cursor(c);
    std::free(c);
    std::vector<std::pair<std::string, std::string>> fields;
    std::map<std::string, std::string> first;
    const void* data = nullptr;
    size_t length = 0;
    sd_journal_restart_data(j);
    while (sd_journal_enumerate_data(j, &data, &length) > 0) {
        std::string_view d(static_cast<const char*>(data), length);
        auto eq = d.find('=');
        if (eq == std::string_view::npos) continue;
        std::string name(d.substr(0, eq));
        fields.emplace_back(name, std::string(d.substr(eq + 1)));
        first.try_emplace(name, std::string(d.substr(eq + 1)));
    }
    json body = jl::entry_body(fields, options_.max_field_size);
    uint64_t usec = 0;
    if (sd_journal_get_realtime_usec(j, &usec) >= 0) body["realtime_usec"] = usec;
    body["cursor"] = cursor;
    std::string key = template_.expand(first);
    auto line = kit::event_line(key, body, cursor);
    if (!line) {
        body.erase("fields");
        body.erase("binary");
        body["truncated"] = "all fields: the entry is larger than an event line";
        line = kit::event_line(key, body, cursor);
    }
    in_flight_.push_back({cursor});
    if (!line) {
        log("skipping a journal entry that cannot become an event: ", shortened(cursor));
        in_flight_.back().state = InFlight::done;
        advance();
        return;
    }
    out_.push(std::move(*line));
}

void Follower::answer(std::string_view line) {
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) return;
    json a = json::parse(line, nullptr, false);
    auto id = a.is_object() ? kit::string_field(a, "id") : std::nullopt;
    if (!id) {
        log("ignoring an answer without a string id: ", shortened(line));
        return;
    }
    for (auto& f : in_flight_) {
        if (f.cursor != *id || f.state != InFlight::pending) continue;
        auto result = kit::string_field(a, "result").value_or("");
        // cancelled: loopabull is stopping; the cursor stays before this entry, which the next
        // start sends again. Every other result settles the entry (the journal cannot be retried).
        f.state = result == "cancelled" ? InFlight::cancelled : InFlight::done;
        if (result != "succeeded" && result != "unrouted" && result != "cancelled")
            log("entry ", shortened(*id, 60), ": ", result);
        advance();
        return;
    }
    log("ignoring an answer for ", shortened(*id), ", which is not in flight");
}

void Follower::advance() {
    std::string last;
    while (!in_flight_.empty() && in_flight_.front().state == InFlight::done) {
        last = std::move(in_flight_.front().cursor);
        in_flight_.pop_front();
    }
    if (!last.empty()) cursor_.save(last);
}

int start() {
    kit::check_protocol();
    auto signals = kit::stop_signals();
    auto options = jl::parse_options(kit::read_config(), kit::default_state_directory("journal"));
    Cursor cursor(options.state_directory);
    Follower follower(std::move(options), cursor);
    follower.open();
    kit::AnswerReader answers;
    auto on_answer = [&](std::string_view line) { follower.answer(line); };
    follower.read_entries();
    for (;;) {
        pollfd fds[] = {{signals.get(), POLLIN, 0},
                        {STDIN_FILENO, POLLIN, 0},
                        {follower.out().empty() ? -1 : STDOUT_FILENO, POLLOUT, 0},
                        {follower.fd(), static_cast<short>(follower.events()), 0}};
        if (::poll(fds, std::size(fds), follower.timeout_ms()) < 0) {
            if (errno == EINTR) continue;
            throw std::runtime_error("poll failed: " + errno_text(errno));
        }
        if (fds[0].revents) {
            log("stopping on a signal");
            return 0;
        }
        if (fds[1].revents && !answers.read(STDIN_FILENO, on_answer)) return 0;
        if (fds[2].revents) follower.out().flush(STDOUT_FILENO);
        follower.process();
        follower.read_entries();
    }
}

} // namespace

int main(int argc, char** argv) {
    if (argc > 1) {
        std::printf("usage: journal (configured through loopabull, man 7 loopabull-journal)\n");
        return std::string_view(argv[1]) == "--help" ? 0 : 2;
    }
    try {
        return start();
    } catch (const jl::OptionError& e) {
        log("journal: config: ", e.what());
        return 2;
    } catch (const std::exception& e) {
        log("journal: ", e.what());
        return 1;
    }
}
