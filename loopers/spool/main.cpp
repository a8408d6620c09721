// SPDX-License-Identifier: GPL-3.0-or-later
//
// spool: the bundled looper that turns files dropped into a directory into loopabull events
// (loopabull-spool(7)).
//
//   spool [DIRECTORY]                 serve the spool
//   spool --check-config [DIRECTORY]  check the config and the directory's layout, then exit
//
// DIRECTORY comes from the argument, else from the key "directory" of the JSON config named by
// $LOOPABULL_CONFIG_FILE, else (under the supervisor) /var/spool/loopabull/$LOOPABULL_INSTANCE,
// which is what the legacy `plugin: spool` configs get since they have no place for options.
//
// Every regular file KEY.EXT or KEY@UNIQUE.EXT (EXT json, yml or yaml) is one event whose id is
// the whole file name; '@' cannot occur in a routing key, so any number of events for one key can
// wait side by side. No event is lost, whatever way a file arrives or changes:
// - a file is taken when it is complete: renamed in (IN_MOVED_TO), closed after writing
//   (IN_CLOSE_WRITE), hard-linked in (IN_CREATE of a file nobody opened: link(), or O_TMPFILE
//   and linkat(), whose close is reported under "#INODE"), or present at start (unless a
//   writer still holds it open: then its close);
// - what was read is remembered (device, inode, size and a digest of the content); a file
//   that changed while its event ran is not removed: its new content is a new event once the
//   current one is answered;
// - the answer settles the file: removed (succeeded, unrouted, superseded, throttled, and any
//   result this looper does not know, which protocol v1 says to treat as unrouted), moved to
//   failed/ with a NAME.reason file beside it (failed, timeout, rejected, aborted), or left for
//   the next start (cancelled: a drain interrupted it).
// failed/ is opened relative to the spool's descriptor without following symlinks and only
// when owned by our user; when it is not, the event file stays where it is, with one error in
// the log, and every other event is still served.

#include "core/routing.hpp"
#include "core/unique-fd.hpp"
#include "kit/looper-kit.hpp"
#include "spool/spool-dir.hpp"
#include "spool/yaml11.hpp"

#include <nlohmann/json.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace {

using loopabull::UniqueFd;
namespace kit = loopabull::kit;
namespace spool = loopabull::spool;
using kit::errno_text;
using kit::log;
using kit::UsageError;
using nlohmann::json;

constexpr std::size_t kMaxLine = kit::kMaxEventLine;
constexpr int kMaxDepth = 128;
constexpr int kMaxFailedSuffix = 10000;
constexpr mode_t kDirMode = 0750;
// A file created in the spool that nobody opened within this time came by link() or linkat():
// open(O_CREAT) reports IN_OPEN in the same system call as IN_CREATE.
constexpr auto kLinkGrace = std::chrono::milliseconds(500);

// A file that cannot become an event; it goes to failed/ with the reason.
struct BadFile : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Names and answers come from outside: control characters, invalid UTF-8 and quotes are
// escaped before they reach the log (a newline in a file name must not forge a log line).
std::string shown(std::string_view text) {
    std::string cut(text.substr(0, 200));
    std::string out = json(cut).dump(-1, ' ', true, json::error_handler_t::replace);
    if (text.size() > 200) out += "...";
    return out;
}

// ---- Reading event files --------------------------------------------------------------------

bool isBlank(std::string_view text) {
    return text.find_first_not_of(" \t\r\n") == std::string_view::npos;
}

std::string readAll(int fd, std::size_t limit) {
    std::string data;
    char chunk[65536];
    for (;;) {
        ssize_t n = ::read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw BadFile("cannot read: " + errno_text(errno));
        if (n == 0) return data;
        data.append(chunk, static_cast<std::size_t>(n));
        if (data.size() > limit) throw BadFile("larger than " + std::to_string(limit) + " bytes");
    }
}

// The body as one line of JSON text: .json as written (big integers stay exact), .yml/.yaml as
// `ansible-playbook -e @file` types it (spool/yaml11.hpp). Ansible's loader tries JSON first for
// every file, so a .yml file that is valid JSON is JSON.
std::string bodyText(const std::string& extension, const std::string& text) {
    if (isBlank(text)) return "{}";
    spool::Limits limits{kMaxLine, kMaxDepth};
    std::string body;
    try {
        if (extension == "json") {
            body = spool::compact_json(text, limits);
        } else {
            try {
                body = spool::compact_json(text, limits);
            } catch (const spool::Unrepresentable&) {
                body = spool::yaml_to_json(text, limits);
            }
        }
    } catch (const spool::Unrepresentable& e) {
        throw BadFile(e.what());
    }
    if (body.empty() || body.front() != '{')
        throw BadFile(extension == "json" ? "not a JSON object" : "not a YAML mapping");
    return body;
}

std::string eventLine(std::string_view key, const std::string& body, const std::string& id) {
    constexpr auto strict = json::error_handler_t::strict;
    std::string line;
    try {
        line = "{\"routing_key\":" + json(key).dump(-1, ' ', false, strict) + ",\"body\":" + body +
               ",\"id\":" + json(id).dump(-1, ' ', false, strict) + "}\n";
    } catch (const json::exception&) {
        throw BadFile("the file name is not valid UTF-8");
    }
    if (line.size() > kMaxLine + 1)
        throw BadFile("the event is larger than " + std::to_string(kMaxLine) + " bytes");
    return line;
}

// What a file was when it was read. Content, not times: a rewrite of the same size within one
// tick of the file system's coarse clock leaves mtime as it was, and `touch` changes nothing
// that matters.
struct Snapshot {
    dev_t dev = 0;
    ino_t ino = 0;
    off_t size = 0;
    std::size_t digest = 0;
    bool same(const Snapshot& o) const {
        return dev == o.dev && ino == o.ino && size == o.size && digest == o.digest;
    }
};

struct Loaded {
    std::string text;
    Snapshot snapshot;
};

// O_NONBLOCK: a FIFO dropped in must not hang us; O_NOFOLLOW: nor may a symlink expose files
// the writer could not read itself. nullopt when the file is gone.
std::optional<Loaded> readFile(int dir, const std::string& name) {
    UniqueFd fd(
        ::openat(dir, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
    if (!fd && errno == ENOENT) return std::nullopt;
    if (!fd && errno == ELOOP) throw BadFile("is a symbolic link");
    if (!fd) throw BadFile("cannot open: " + errno_text(errno));
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) throw BadFile("cannot stat: " + errno_text(errno));
    if (!S_ISREG(st.st_mode)) throw BadFile("not a regular file");
    Loaded loaded;
    loaded.text = readAll(fd.get(), kMaxLine);
    loaded.snapshot =
        Snapshot{st.st_dev, st.st_ino, st.st_size, std::hash<std::string>{}(loaded.text)};
    return loaded;
}

// The file as it is now, for comparing with what was read; nullopt when gone or unreadable.
std::optional<Snapshot> snapshotOf(int dir, const std::string& name) {
    try {
        auto loaded = readFile(dir, name);
        if (!loaded) return std::nullopt;
        return loaded->snapshot;
    } catch (const BadFile&) {
        return std::nullopt;
    }
}

// A file that some process still holds open for writing: one whose writer began before we
// watched the spool (or before an inotify overflow), whose IN_CLOSE_WRITE is still to come.
// fcntl(2), "Leases": a read lease is refused with EAGAIN exactly while the file is open for
// writing (measured on ext4 and overlayfs). Taking one needs us to own the file or CAP_LEASE;
// where it cannot be taken, the file counts as complete, as a file present at start always did.
// The lease is released at once; a writer opening the file meanwhile breaks it with SIGIO,
// which main() ignores.
std::optional<ino_t> openForWriting(int dir, const std::string& name) {
    UniqueFd fd(
        ::openat(dir, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
    struct stat st {};
    if (!fd || ::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) return std::nullopt;
    if (::fcntl(fd.get(), F_SETLEASE, F_RDLCK) == 0) {
        ::fcntl(fd.get(), F_SETLEASE, F_UNLCK);
        return std::nullopt;
    }
    if (errno != EAGAIN) return std::nullopt;
    return st.st_ino;
}

// ---- The spool ------------------------------------------------------------------------------

using Clock = std::chrono::steady_clock;

UniqueFd openDirectory(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd) throw std::runtime_error("cannot open " + path + ": " + errno_text(errno));
    return fd;
}

// Like mkdir -p, but every directory it creates gets kDirMode: spooled events may hold secrets.
void makeDirectories(const std::string& path) {
    for (auto slash = path.find('/', 1);; slash = path.find('/', slash + 1)) {
        auto prefix = path.substr(0, slash);
        if (::mkdir(prefix.c_str(), kDirMode) != 0 && errno != EEXIST)
            throw std::runtime_error("cannot create " + prefix + ": " + errno_text(errno));
        if (slash == std::string::npos) return;
    }
}

class Spool {
  public:
    Spool(std::string path, std::size_t maxInFlight)
        : path_(std::move(path)), dir_(openDirectory(path_)), maxInFlight_(maxInFlight) {
        // Created now so that an operator sees it; a problem with it is logged when an event
        // needs it, and never stops the looper.
        auto failed = failedDir();
        if (auto* error = std::get_if<std::string>(&failed)) log("warning: ", *error);
    }

    const std::string& path() const { return path_; }
    int fd() const { return dir_.get(); }
    std::size_t waiting() const { return queue_.size(); }
    bool hasPending() const { return !created_.empty(); }

    void scan();
    void arrived(const std::string& name); // complete: renamed in, closed, linked, at start
    void listed(const std::string& name);  // at start or after an inotify overflow
    void created(const std::string& name);
    void opened(const std::string& name);
    void closedTemporary(ino_t ino);
    void checkCreated();
    void produce();
    bool hasOutput() const { return !out_.empty(); }
    void flush(int fd) { out_.flush(fd); }
    void answer(std::string_view line);

  private:
    struct Flight {
        Snapshot snapshot;
        bool changed = false; // a complete new version arrived while the event ran
    };
    struct Created {
        ino_t ino = 0;
        Clock::time_point at;
        bool opened = false;
        bool listed = false; // found open for writing by a listing: asked again every tick
    };

    std::variant<UniqueFd, std::string> failedDir() {
        return spool::open_own_directory(dir_.get(), "failed", ::geteuid());
    }
    void enqueue(const std::string& name);
    void process(const std::string& name);
    std::string load(const std::string& name, Snapshot& snapshot);
    void settle(const std::string& name, const Flight& flight, const json& answer);
    void finish(const std::string& name, const std::string& result, const json& answer);
    void remove(const std::string& name);
    void moveToFailed(const std::string& name, const std::string& reason);

    std::string path_;
    UniqueFd dir_;
    std::deque<std::string> queue_;
    std::unordered_set<std::string> queued_;
    std::unordered_map<std::string, Flight> inFlight_;
    std::unordered_map<std::string, Created> created_;
    std::size_t maxInFlight_;
    kit::Outbox out_;
};

void Spool::scan() {
    // A fresh descriptor, because readdir keeps its position in it and closedir closes it.
    UniqueFd copy(::openat(dir_.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    std::unique_ptr<DIR, int (*)(DIR*)> dir(copy ? ::fdopendir(copy.get()) : nullptr, ::closedir);
    if (!dir) throw std::runtime_error("cannot list " + path_ + ": " + errno_text(errno));
    copy.release();
    std::vector<std::string> names;
    while (const dirent* entry = ::readdir(dir.get()))
        names.emplace_back(entry->d_name);
    // Names of the producer tool start with the UTC time: sorted, older events go first.
    std::sort(names.begin(), names.end());
    for (auto& name : names)
        listed(name);
}

// Found by a listing: complete, unless it is still being written; then its close queues it.
void Spool::listed(const std::string& name) {
    if (!spool::split_spool_name(name)) return;
    auto created = created_.find(name);
    if (created != created_.end() && created->second.opened) return;
    if (auto ino = openForWriting(dir_.get(), name)) {
        created_[name] = Created{*ino, Clock::now(), true, true};
        return;
    }
    arrived(name);
}

// A complete version of the file is there. While its event runs, it is compared with what was
// read, and queued again only once the answer came.
void Spool::arrived(const std::string& name) {
    if (!spool::split_spool_name(name)) return;
    created_.erase(name);
    auto flight = inFlight_.find(name);
    if (flight == inFlight_.end()) {
        enqueue(name);
        return;
    }
    auto now = snapshotOf(dir_.get(), name);
    if (now && !now->same(flight->second.snapshot)) flight->second.changed = true;
}

// IN_CREATE: open(O_CREAT) or link(). A file with another name already is complete (ln); else
// it is complete when closed after writing, or when nobody opened it (link, linkat).
void Spool::created(const std::string& name) {
    if (!spool::split_spool_name(name)) return;
    struct stat st {};
    if (::fstatat(dir_.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return;
    if (S_ISREG(st.st_mode) && st.st_nlink > 1) {
        arrived(name);
        return;
    }
    created_[name] = Created{st.st_ino, Clock::now(), false};
}

void Spool::opened(const std::string& name) {
    auto it = created_.find(name);
    if (it != created_.end()) it->second.opened = true;
}

// An O_TMPFILE file is closed under the name "#INODE" once it has been linked in.
void Spool::closedTemporary(ino_t ino) {
    for (auto it = created_.begin(); it != created_.end(); ++it) {
        if (it->second.ino != ino) continue;
        std::string name = it->first;
        arrived(name); // erases it
        return;
    }
}

void Spool::checkCreated() {
    auto now = Clock::now();
    std::vector<std::string> ready;
    for (auto it = created_.begin(); it != created_.end();) {
        struct stat st {};
        bool gone = ::fstatat(dir_.get(), it->first.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 ||
                    st.st_ino != it->second.ino;
        if (gone) { // removed, or replaced (its own events follow)
            it = created_.erase(it);
            continue;
        }
        // A writer found by a listing may have opened the file before we watched: its close
        // is not always reported to us (measured for O_TMPFILE under ASan), so ask again.
        if (it->second.listed ? !openForWriting(dir_.get(), it->first)
                              : !it->second.opened && now - it->second.at >= kLinkGrace)
            ready.push_back(it->first);
        ++it;
    }
    for (auto& name : ready)
        arrived(name);
}

void Spool::enqueue(const std::string& name) {
    if (!queued_.insert(name).second) return;
    queue_.push_back(name);
}

// Only one event is buffered at a time, and at most maxInFlight_ are sent and not answered:
// the others wait on disk, not in the pipe or the supervisor's queue, so that a restart of the
// looper runs again only those few (measured: 1116 of 10,000 events ran twice over two restarts
// without the bound, with the pipe and a queue of 64 full).
void Spool::produce() {
    while (!hasOutput() && !queue_.empty() && inFlight_.size() < maxInFlight_) {
        std::string name = std::move(queue_.front());
        queue_.pop_front();
        queued_.erase(name);
        process(name);
    }
}

void Spool::process(const std::string& name) {
    if (inFlight_.contains(name)) return; // compared again when its answer comes
    try {
        Snapshot snapshot;
        std::string line = load(name, snapshot);
        if (line.empty()) return;
        inFlight_[name] = Flight{snapshot};
        out_.push(std::move(line));
    } catch (const BadFile& e) {
        log(shown(name), ": ", e.what(), "; moving it to failed/");
        moveToFailed(name, std::string("rejected by the spool looper: ") + e.what());
    }
}

// The event line, or "" when the file is gone.
std::string Spool::load(const std::string& name, Snapshot& snapshot) {
    auto parts = spool::split_spool_name(name);
    if (auto error = loopabull::routing_key_error(parts->key))
        throw BadFile("the routing key of the name is invalid: " + *error);
    auto loaded = readFile(dir_.get(), name);
    if (!loaded) return "";
    snapshot = loaded->snapshot;
    return eventLine(parts->key, bodyText(parts->extension, loaded->text), name);
}

void Spool::answer(std::string_view line) {
    if (isBlank(line)) return;
    json answer = json::parse(line, nullptr, false);
    auto id = answer.is_object() ? kit::string_field(answer, "id") : std::nullopt;
    if (!id) {
        log("ignoring an answer without a string id: ", shown(line));
        return;
    }
    auto node = inFlight_.extract(*id);
    if (node.empty()) {
        log("ignoring an answer for ", shown(*id), ", which is not in flight");
        return;
    }
    settle(*id, node.mapped(), answer);
}

std::string describe(const std::string& result, const json& answer) {
    std::string text = result;
    auto code = answer.find("exit_code");
    if (code != answer.end() && code->is_number_integer())
        text += " (exit code " + code->dump() + ")";
    for (const char* field : {"reason", "error"})
        if (auto why = kit::string_field(answer, field)) text += ": " + *why;
    return text;
}

void Spool::settle(const std::string& name, const Flight& flight, const json& answer) {
    auto result = kit::string_field(answer, "result").value_or("");
    if (result == "cancelled") return; // a drain interrupted it: the next start delivers it again
    if (created_.contains(name)) {
        // Replaced by a file still being written: its close (or the link grace) queues it.
        log(shown(name), ": ", shown(result),
            "; a new file of that name is being written, "
            "which will be a new event");
        return;
    }
    auto now = snapshotOf(dir_.get(), name);
    if (!now) {
        log(shown(name), ": ", shown(result), ", but the file is already gone");
    } else if (flight.changed) {
        log(shown(name), ": ", shown(result),
            "; the file was replaced or rewritten while its "
            "event ran: the new content is a new event");
        enqueue(name);
    } else if (!now->same(flight.snapshot)) {
        // Being rewritten in place right now: its IN_CLOSE_WRITE queues the new content.
        log(shown(name), ": ", shown(result),
            "; the file is being rewritten: the new content "
            "will be a new event");
    } else {
        finish(name, result, answer);
    }
}

void Spool::finish(const std::string& name, const std::string& result, const json& answer) {
    if (result == "succeeded") {
        remove(name);
    } else if (result == "unrouted" || result == "superseded" || result == "throttled") {
        log(shown(name), ": ", describe(result, answer), "; removing it");
        remove(name);
    } else if (result == "failed" || result == "timeout" || result == "rejected" ||
               result == "aborted") {
        std::string why = describe(result, answer);
        log(shown(name), ": ", shown(why), "; moving it to failed/");
        moveToFailed(name, why);
    } else {
        // Protocol v1: a result a looper does not know is settled as unrouted, never retried.
        log(shown(name), ": unknown result ", shown(result),
            "; treating it as unrouted, removing it");
        remove(name);
    }
}

void Spool::remove(const std::string& name) {
    if (::unlinkat(dir_.get(), name.c_str(), 0) != 0 && errno != ENOENT)
        log(shown(name), ": cannot remove: ", errno_text(errno));
}

// RENAME_NOREPLACE makes picking a free name race-free; file systems without it fall back to
// checking first. Beside the file, TARGET.reason says why it is there.
void Spool::moveToFailed(const std::string& name, const std::string& reason) {
    auto opened = failedDir();
    if (auto* error = std::get_if<std::string>(&opened)) {
        log(shown(name), ": cannot move it to failed/: ", *error, "; leaving it in the spool");
        return;
    }
    int failed = std::get<UniqueFd>(opened).get();
    for (int suffix = 0; suffix < kMaxFailedSuffix; ++suffix) {
        std::string target = suffix == 0 ? name : name + "." + std::to_string(suffix);
        int rc = ::renameat2(dir_.get(), name.c_str(), failed, target.c_str(), RENAME_NOREPLACE);
        if (rc != 0 && errno == EINVAL) {
            if (::faccessat(failed, target.c_str(), F_OK, AT_SYMLINK_NOFOLLOW) == 0) continue;
            rc = ::renameat(dir_.get(), name.c_str(), failed, target.c_str());
        }
        if (rc != 0 && errno == EEXIST) continue;
        if (rc != 0) {
            log(shown(name), ": cannot move it to failed/: ", errno_text(errno));
            return;
        }
        std::string note = target + ".reason";
        UniqueFd fd(::openat(failed, note.c_str(),
                             O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0640));
        std::string text = reason + "\n";
        if (!fd || ::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()))
            log(shown(name), ": cannot write failed/", shown(note), ": ", errno_text(errno));
        return;
    }
    log(shown(name), ": cannot move it to failed/: too many files of that name there");
}

// ---- Setup ----------------------------------------------------------------------------------

json readConfig() {
    json config = kit::read_config();
    for (const auto& item : config.items())
        if (item.key() != "directory") log("ignoring unknown config key ", shown(item.key()));
    return config;
}

std::string defaultDirectory() {
    const char* instance = std::getenv("LOOPABULL_INSTANCE");
    if (!instance) throw UsageError("no DIRECTORY given");
    std::string_view name(instance);
    if (name.empty() || name == "." || name == ".." || name.find('/') != std::string_view::npos)
        throw std::runtime_error("cannot derive a spool directory from instance " + shown(name));
    return "/var/spool/loopabull/" + std::string(name);
}

std::string chooseDirectory(const std::vector<std::string>& args) {
    if (args.size() > 1) throw UsageError("too many arguments");
    json config = readConfig();
    if (args.size() == 1) return args[0];
    auto it = config.find("directory");
    if (it == config.end()) return defaultDirectory();
    if (!it->is_string() || it->get<std::string>().empty())
        throw std::runtime_error("config key 'directory' must be a non-empty string");
    return it->get<std::string>();
}

UniqueFd watch(const Spool& spool) {
    UniqueFd fd(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
    if (!fd) throw std::runtime_error("cannot create inotify instance: " + errno_text(errno));
    constexpr uint32_t mask = IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE | IN_OPEN | IN_DELETE_SELF |
                              IN_MOVE_SELF | IN_ONLYDIR | IN_EXCL_UNLINK;
    if (::inotify_add_watch(fd.get(), spool.path().c_str(), mask) < 0)
        throw std::runtime_error("cannot watch " + spool.path() + ": " + errno_text(errno));
    return fd;
}

// ---- Main loop ------------------------------------------------------------------------------

// "#12345": the name inotify reports for an O_TMPFILE file (the kernel's d_tmpfile name).
std::optional<ino_t> temporaryInode(std::string_view name) {
    if (name.size() < 2 || name[0] != '#') return std::nullopt;
    ino_t ino = 0;
    for (char c : name.substr(1)) {
        if (c < '0' || c > '9') return std::nullopt;
        ino = ino * 10 + static_cast<ino_t>(c - '0');
    }
    return ino;
}

void readInotify(int fd, Spool& spool) {
    alignas(inotify_event) char buffer[65536];
    for (;;) {
        ssize_t n = ::read(fd, buffer, sizeof buffer);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return;
        if (n <= 0) throw std::runtime_error("cannot read inotify events: " + errno_text(errno));
        for (char* p = buffer; p < buffer + n;) {
            const auto* event = reinterpret_cast<const inotify_event*>(p);
            p += sizeof(inotify_event) + event->len;
            if (event->mask & IN_Q_OVERFLOW) {
                log("inotify queue overflowed; rescanning ", spool.path());
                spool.scan();
                continue;
            }
            if (event->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED | IN_UNMOUNT))
                throw std::runtime_error(spool.path() + " was removed or moved away");
            if (event->len == 0) continue;
            std::string name(event->name);
            if (event->mask & IN_CREATE) spool.created(name);
            if (event->mask & IN_OPEN) spool.opened(name);
            if (event->mask & IN_MOVED_TO) spool.arrived(name);
            if (event->mask & IN_CLOSE_WRITE) {
                if (auto ino = temporaryInode(name))
                    spool.closedTemporary(*ino);
                else
                    spool.arrived(name);
            }
        }
    }
}

// While we hold the directory open, inotify only reports its removal once we close it, so a
// removed spool directory is noticed by its link count instead.
void checkStillThere(const Spool& spool) {
    struct stat st {};
    if (::fstat(spool.fd(), &st) != 0 || st.st_nlink == 0)
        throw std::runtime_error(spool.path() + " was removed");
}

int run(Spool& spool, int inotify, int signals) {
    constexpr int kCheckIntervalMs = 5000;
    constexpr int kCreatedIntervalMs = 100;
    kit::AnswerReader answers;
    auto onAnswer = [&spool](std::string_view line) { spool.answer(line); };
    for (;;) {
        checkStillThere(spool);
        spool.checkCreated();
        spool.produce();
        pollfd fds[] = {{signals, POLLIN, 0},
                        {STDIN_FILENO, POLLIN, 0},
                        {inotify, POLLIN, 0},
                        {spool.hasOutput() ? STDOUT_FILENO : -1, POLLOUT, 0}};
        int timeout = spool.hasPending() ? kCreatedIntervalMs : kCheckIntervalMs;
        if (::poll(fds, std::size(fds), timeout) < 0) {
            if (errno == EINTR) continue;
            throw std::runtime_error("poll failed: " + errno_text(errno));
        }
        if (fds[0].revents) {
            log("stopping on a signal");
            return 0;
        }
        if (fds[1].revents && !answers.read(STDIN_FILENO, onAnswer)) return 0;
        if (fds[2].revents) readInotify(inotify, spool);
        if (fds[3].revents) spool.flush(STDOUT_FILENO);
    }
}

// --check-config: what `loopabull --check-config` shows for this looper. Problems that stop the
// looper are errors (exit 1); a layout others can interfere with is a warning.
int check(const std::vector<std::string>& args) {
    std::string directory = chooseDirectory(args);
    auto report = spool::check_layout(directory, ::geteuid());
    for (const auto& warning : report.warnings)
        log("warning: ", warning);
    for (const auto& error : report.errors)
        log("error: ", error);
    return report.errors.empty() ? 0 : 1;
}

// Twice the supervisor's job slots: enough queued to keep every slot busy while answers come.
std::size_t maxInFlight() {
    const char* text = std::getenv("LOOPABULL_MAX_PARALLEL");
    unsigned long slots = text ? std::strtoul(text, nullptr, 10) : 0;
    if (slots == 0 || slots > 4096) slots = 4;
    return 2 * slots;
}

int start(const std::vector<std::string>& args) {
    kit::check_protocol();
    // A lease break (openForWriting) signals SIGIO, whose default action would end us.
    ::signal(SIGIO, SIG_IGN);
    auto signals = kit::stop_signals();
    std::string directory = chooseDirectory(args);
    makeDirectories(directory);
    Spool spool(directory, maxInFlight());
    // Watch before listing, so a file arriving in between is seen at least once.
    auto inotify = watch(spool);
    spool.scan();
    log("watching ", spool.path(), " (", std::to_string(spool.waiting()), " files waiting)");
    return run(spool, inotify.get(), signals.get());
}

} // namespace

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    bool checkOnly = !args.empty() && args[0] == "--check-config";
    if (checkOnly) args.erase(args.begin());
    if (!args.empty() && (args[0] == "--help" || args[0] == "-h")) {
        std::printf("usage: spool [--check-config] [DIRECTORY]  (see loopabull-spool(7))\n");
        return 0;
    }
    try {
        return checkOnly ? check(args) : start(args);
    } catch (const UsageError& e) {
        log("spool: ", e.what(), "; usage: spool [--check-config] DIRECTORY");
        return 2;
    } catch (const std::exception& e) {
        log("spool: ", e.what());
        return 1;
    }
}
