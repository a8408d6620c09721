// SPDX-License-Identifier: GPL-3.0-or-later
//
// spool: the bundled looper that turns files dropped into a directory into loopabull events.
//
//   spool [DIRECTORY]
//
// DIRECTORY comes from the argument, else from the key "directory" of the JSON config named by
// $LOOPABULL_CONFIG_FILE, else (under the supervisor) /var/spool/loopabull/$LOOPABULL_INSTANCE,
// which is what the legacy `plugin: spool` configs get since they have no place for options.
//
// Every regular file DIRECTORY/ROUTING_KEY.json (a JSON object) or ROUTING_KEY.yml/.yaml (a YAML
// mapping) is one event whose id is the file name. Writers must make a file appear complete:
// write it elsewhere on the same file system or under a name starting with '.', then rename it
// in. A file written in place is read when it is closed, which is only safe while we run: one
// being written when we start is read half-written.
// An empty file is an event with an empty body, so `touch DIR/org.example.hello.json` is enough.
//
// When the supervisor answers, the file is removed (succeeded, unrouted), moved to
// DIRECTORY/failed/ (failed, timeout, rejected; a name already there gets a .1, .2... suffix), or
// left for the next start (cancelled). A file that cannot be turned into an event goes straight
// to failed/, with the reason on stderr.

#include "kit/looper-kit.hpp"

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <memory>
#include <optional>
#include <poll.h>
#include <stdexcept>
#include <string>
#include <string_view>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace {

using loopabull::UniqueFd;
namespace kit = loopabull::kit;
using kit::errno_text;
using kit::log;
using kit::shortened;
using kit::UsageError;
using nlohmann::json;

constexpr std::size_t kMaxLine = kit::kMaxEventLine;
constexpr int kMaxDepth = 128;
constexpr int kMaxFailedSuffix = 10000;
constexpr mode_t kDirMode = 0750;

// A file that cannot become an event; it goes to failed/.
struct BadFile : std::runtime_error {
    using std::runtime_error::runtime_error;
};

bool isWordChar(char c, bool first) {
    bool alnum = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    return alnum || c == '_' || (!first && c == '-');
}

// The spec grammar: 1-255 bytes, dot-separated words of [A-Za-z0-9_][A-Za-z0-9_-]*.
bool isRoutingKey(std::string_view key) {
    if (key.empty() || key.size() > 255) return false;
    bool wordStart = true;
    for (char c : key) {
        if (c == '.') {
            if (wordStart) return false;
            wordStart = true;
        } else if (!isWordChar(c, wordStart)) {
            return false;
        } else {
            wordStart = false;
        }
    }
    return !wordStart;
}

struct SpoolName {
    std::string_view key;
    std::string_view extension;
};

// nullopt means "not meant for us": temp files and files of other types are left alone.
std::optional<SpoolName> splitName(std::string_view name) {
    if (name.empty() || name.front() == '.') return std::nullopt;
    auto dot = name.rfind('.');
    if (dot == std::string_view::npos) return std::nullopt;
    auto extension = name.substr(dot + 1);
    if (extension != "json" && extension != "yml" && extension != "yaml") return std::nullopt;
    return SpoolName{name.substr(0, dot), extension};
}

// ---- YAML to JSON ---------------------------------------------------------------------------
//
// Plain scalars are typed with the YAML 1.2 core schema (what yaml-cpp implements); quoted or
// explicitly tagged scalars stay strings. .inf and .nan stay strings because JSON has no such
// numbers, and so do integers too large for 64 bits, so no value is silently changed.

bool isYamlFloat(std::string_view s) {
    std::size_t i = 0;
    auto digits = [&] {
        std::size_t start = i;
        while (i < s.size() && s[i] >= '0' && s[i] <= '9')
            ++i;
        return i - start;
    };
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    std::size_t count = digits();
    if (i < s.size() && s[i] == '.') {
        ++i;
        count += digits();
    }
    if (count == 0) return false;
    if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
        ++i;
        if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
        if (digits() == 0) return false;
    }
    return i == s.size();
}

std::optional<json> yamlInteger(std::string_view s) {
    int base = 10;
    bool negative = !s.empty() && s.front() == '-';
    if (s.starts_with("0x") || s.starts_with("0o")) {
        base = s[1] == 'x' ? 16 : 8;
        s.remove_prefix(2);
    } else if (!s.empty() && (s.front() == '+' || s.front() == '-')) {
        s.remove_prefix(1);
    }
    if (s.empty()) return std::nullopt;
    std::uint64_t value = 0;
    auto [end, error] = std::from_chars(s.data(), s.data() + s.size(), value, base);
    if (error != std::errc() || end != s.data() + s.size()) return std::nullopt;
    if (!negative) return json(value);
    if (value > std::uint64_t(INT64_MAX) + 1) return std::nullopt;
    return json(static_cast<std::int64_t>(0 - value));
}

json plainScalar(const std::string& s) {
    if (s == "true" || s == "True" || s == "TRUE") return true;
    if (s == "false" || s == "False" || s == "FALSE") return false;
    if (auto integer = yamlInteger(s)) return *integer;
    // Integers too large for 64 bits match the float pattern too, but must stay exact.
    if (isYamlFloat(s) && s.find_first_of(".eE") != std::string::npos) {
        double value = std::strtod(s.c_str(), nullptr);
        if (std::isfinite(value)) return value;
    }
    return s;
}

class YamlToJson {
  public:
    json convert(const YAML::Node& node, int depth = 0) {
        if (depth > kMaxDepth) throw BadFile("nested deeper than " + std::to_string(kMaxDepth));
        charge(4);
        switch (node.Type()) {
        case YAML::NodeType::Map:
            return mapping(node, depth);
        case YAML::NodeType::Sequence:
            return sequence(node, depth);
        case YAML::NodeType::Scalar:
            return scalar(node);
        default:
            return nullptr;
        }
    }

  private:
    // Aliases can make a small file expand enormously; counting a lower bound of the JSON size
    // as we go stops that long before memory runs out.
    void charge(std::size_t bytes) {
        if (bytes > budget_)
            throw BadFile("body larger than " + std::to_string(kMaxLine) + " bytes");
        budget_ -= bytes;
    }

    json scalar(const YAML::Node& node) {
        charge(node.Scalar().size());
        if (node.Tag() == "?") return plainScalar(node.Scalar());
        return node.Scalar();
    }

    json sequence(const YAML::Node& node, int depth) {
        json result = json::array();
        for (const auto& item : node)
            result.push_back(convert(item, depth + 1));
        return result;
    }

    json mapping(const YAML::Node& node, int depth) {
        json result = json::object();
        for (const auto& item : node) {
            if (!item.first.IsScalar()) throw BadFile("a mapping key is not a string");
            const std::string& key = item.first.Scalar();
            charge(key.size() + 4);
            if (result.contains(key)) throw BadFile("duplicate key '" + shortened(key) + "'");
            result[key] = convert(item.second, depth + 1);
        }
        return result;
    }

    std::size_t budget_ = kMaxLine;
};

// ---- Reading event files --------------------------------------------------------------------

bool isBlank(std::string_view text) {
    return text.find_first_not_of(" \t\r\n") == std::string_view::npos;
}

json parseJson(const std::string& text) {
    try {
        return kit::parse_untrusted_json(text, kMaxDepth);
    } catch (const std::exception& e) {
        throw BadFile(e.what());
    }
}

json parseYaml(const std::string& text) {
    try {
        return YamlToJson().convert(YAML::Load(text));
    } catch (const YAML::Exception& e) {
        throw BadFile(e.what());
    }
}

json parseBody(std::string_view extension, const std::string& text) {
    if (isBlank(text)) return json::object();
    bool isJson = extension == "json";
    json body = isJson ? parseJson(text) : parseYaml(text);
    if (!body.is_object()) throw BadFile(isJson ? "not a JSON object" : "not a YAML mapping");
    return body;
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

std::string eventLine(std::string_view key, const json& body, const std::string& id) {
    auto line = kit::event_line(key, body, id);
    if (!line)
        throw BadFile("invalid UTF-8, or an event larger than " + std::to_string(kMaxLine) +
                      " bytes");
    return std::move(*line);
}

// Which file an event was made from, so a file replaced while its job ran is not deleted unseen.
struct Identity {
    dev_t dev = 0;
    ino_t ino = 0;
    bool operator==(const Identity&) const = default;
};

struct Event {
    std::string line;
    Identity identity;
};

// ---- The spool directory --------------------------------------------------------------------

UniqueFd openDirectory(int parent, const char* path) {
    UniqueFd fd(::openat(parent, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd)
        throw std::runtime_error(std::string("cannot open ") + path + ": " + errno_text(errno));
    return fd;
}

void makeDirectory(int parent, const std::string& path) {
    if (::mkdirat(parent, path.c_str(), kDirMode) == 0 || errno == EEXIST) return;
    throw std::runtime_error("cannot create " + path + ": " + errno_text(errno));
}

// Like mkdir -p, but every directory it creates gets kDirMode: spooled events may hold secrets.
void makeDirectories(const std::string& path) {
    for (auto slash = path.find('/', 1); slash != std::string::npos;
         slash = path.find('/', slash + 1)) {
        makeDirectory(AT_FDCWD, path.substr(0, slash));
    }
    makeDirectory(AT_FDCWD, path);
}

class Spool {
  public:
    explicit Spool(std::string path)
        : path_(std::move(path)), dir_(openDirectory(AT_FDCWD, path_.c_str())) {
        openFailed();
    }

    const std::string& path() const { return path_; }
    int fd() const { return dir_.get(); }
    std::size_t waiting() const { return queue_.size(); }

    void scan();
    void enqueue(std::string name);
    void produce();
    bool hasOutput() const { return !out_.empty(); }
    void flush(int fd) { out_.flush(fd); }
    void answer(std::string_view line);

  private:
    void openFailed();
    void process(const std::string& name);
    std::optional<Event> load(const std::string& name);
    void settle(const std::string& name, Identity identity, const json& answer);
    void finish(const std::string& name, const std::string& result, const json& answer);
    bool tryMoveToFailed(const std::string& name, const std::string& target);
    void moveToFailed(const std::string& name);

    std::string path_;
    UniqueFd dir_;
    UniqueFd failed_;
    std::deque<std::string> queue_;
    std::unordered_set<std::string> queued_;
    std::unordered_map<std::string, Identity> inFlight_;
    kit::Outbox out_;
};

void Spool::openFailed() {
    makeDirectory(dir_.get(), "failed");
    failed_ = openDirectory(dir_.get(), "failed");
}

void Spool::scan() {
    // A fresh descriptor, because readdir keeps its position in it and closedir closes it.
    UniqueFd copy(::openat(dir_.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    std::unique_ptr<DIR, int (*)(DIR*)> dir(copy ? ::fdopendir(copy.get()) : nullptr, ::closedir);
    if (!dir) throw std::runtime_error("cannot list " + path_ + ": " + errno_text(errno));
    copy.release();
    std::vector<std::string> names;
    while (const dirent* entry = ::readdir(dir.get()))
        names.emplace_back(entry->d_name);
    std::sort(names.begin(), names.end());
    for (auto& name : names)
        enqueue(std::move(name));
}

void Spool::enqueue(std::string name) {
    if (!splitName(name) || queued_.contains(name)) return;
    queued_.insert(name);
    queue_.push_back(std::move(name));
}

// Only one event is buffered at a time: when the supervisor stops reading, files stay on disk
// instead of piling up in memory.
void Spool::produce() {
    while (!hasOutput() && !queue_.empty()) {
        std::string name = std::move(queue_.front());
        queue_.pop_front();
        queued_.erase(name);
        process(name);
    }
}

void Spool::process(const std::string& name) {
    if (inFlight_.contains(name)) return; // re-examined when its answer comes
    try {
        auto event = load(name);
        if (!event) return;
        inFlight_[name] = event->identity;
        out_.push(std::move(event->line));
    } catch (const BadFile& e) {
        log(name, ": ", e.what(), "; moving it to failed/");
        moveToFailed(name);
    }
}

std::optional<Event> Spool::load(const std::string& name) {
    auto parts = splitName(name);
    if (!isRoutingKey(parts->key)) throw BadFile("the name is not a valid routing key");
    // O_NONBLOCK: a FIFO dropped in must not hang us; O_NOFOLLOW: nor may a symlink expose
    // files the writer could not read itself.
    UniqueFd fd(::openat(dir_.get(), name.c_str(),
                         O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
    if (!fd && errno == ENOENT) return std::nullopt;
    if (!fd && errno == ELOOP) throw BadFile("is a symbolic link");
    if (!fd) throw BadFile("cannot open: " + errno_text(errno));
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) throw BadFile("cannot stat: " + errno_text(errno));
    if (!S_ISREG(st.st_mode)) throw BadFile("not a regular file");
    json body = parseBody(parts->extension, readAll(fd.get(), kMaxLine));
    return Event{eventLine(parts->key, body, name), Identity{st.st_dev, st.st_ino}};
}

// A pipe write of at most PIPE_BUF bytes after POLLOUT never blocks, whether or not the
// supervisor made our stdout non-blocking.
void Spool::answer(std::string_view line) {
    if (isBlank(line)) return;
    json answer = json::parse(line, nullptr, false);
    auto id = answer.is_object() ? kit::string_field(answer, "id") : std::nullopt;
    if (!id) {
        log("ignoring an answer without a string id: ", shortened(line));
        return;
    }
    auto node = inFlight_.extract(*id);
    if (node.empty()) {
        log("ignoring an answer for ", shortened(*id), ", which is not in flight");
        return;
    }
    settle(*id, node.mapped(), answer);
}

std::optional<Identity> identityOf(int dir, const std::string& name) {
    struct stat st {};
    if (::fstatat(dir, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return std::nullopt;
    return Identity{st.st_dev, st.st_ino};
}

void Spool::settle(const std::string& name, Identity identity, const json& answer) {
    auto result = kit::string_field(answer, "result").value_or("");
    if (result == "cancelled") return; // left on disk; the next start delivers it again
    auto current = identityOf(dir_.get(), name);
    if (!current) {
        log(name, ": ", result, ", but the file is already gone");
    } else if (*current != identity) {
        log(name, ": replaced while its event ran; queueing the new file");
        enqueue(name);
    } else {
        finish(name, result, answer);
    }
}

std::string describe(const std::string& result, const json& answer) {
    std::string text = result;
    auto code = answer.find("exit_code");
    if (code != answer.end() && code->is_number_integer())
        text += " (exit code " + code->dump() + ")";
    if (auto error = kit::string_field(answer, "error")) text += ": " + shortened(*error);
    return text;
}

void Spool::finish(const std::string& name, const std::string& result, const json& answer) {
    if (result == "succeeded" || result == "unrouted") {
        if (result == "unrouted")
            log(name, ": unrouted (no playbook, or not in routing_keys); removing it");
        if (::unlinkat(dir_.get(), name.c_str(), 0) != 0 && errno != ENOENT)
            log(name, ": cannot remove: ", errno_text(errno));
    } else if (result == "failed" || result == "timeout" || result == "rejected") {
        log(name, ": ", describe(result, answer), "; moving it to failed/");
        moveToFailed(name);
    } else {
        log(name, ": unknown result '", shortened(result), "'; leaving it for the next start");
    }
}

// RENAME_NOREPLACE makes picking a free name race-free; file systems without it fall back to
// checking first.
bool Spool::tryMoveToFailed(const std::string& name, const std::string& target) {
    int rc = ::renameat2(dir_.get(), name.c_str(), failed_.get(), target.c_str(), RENAME_NOREPLACE);
    if (rc != 0 && errno == EINVAL) {
        if (::faccessat(failed_.get(), target.c_str(), F_OK, AT_SYMLINK_NOFOLLOW) == 0) {
            errno = EEXIST;
            return false;
        }
        rc = ::renameat(dir_.get(), name.c_str(), failed_.get(), target.c_str());
    }
    return rc == 0;
}

void Spool::moveToFailed(const std::string& name) {
    bool reopened = false;
    for (int suffix = 0; suffix < kMaxFailedSuffix; ++suffix) {
        std::string target = suffix == 0 ? name : name + "." + std::to_string(suffix);
        if (tryMoveToFailed(name, target)) return;
        if (errno == EEXIST) continue;
        if (errno == ENOENT && !reopened && identityOf(dir_.get(), name)) {
            openFailed(); // someone removed failed/ under us
            reopened = true;
            --suffix;
            continue;
        }
        log(name, ": cannot move it to failed/: ", errno_text(errno));
        return;
    }
    log(name, ": cannot move it to failed/: too many files of that name there");
}

// ---- Setup ----------------------------------------------------------------------------------

json readConfig() {
    json config = kit::read_config();
    for (const auto& item : config.items())
        if (item.key() != "directory")
            log("ignoring unknown config key '", shortened(item.key()), "'");
    return config;
}

std::string defaultDirectory() {
    const char* instance = std::getenv("LOOPABULL_INSTANCE");
    if (!instance) throw UsageError("no DIRECTORY given");
    std::string_view name(instance);
    if (name.empty() || name == "." || name == ".." || name.find('/') != std::string_view::npos)
        throw std::runtime_error("cannot derive a spool directory from instance '" +
                                 shortened(name) + "'");
    return "/var/spool/loopabull/" + std::string(name);
}

std::string chooseDirectory(int argc, char** argv) {
    if (argc > 2) throw UsageError("too many arguments");
    json config = readConfig();
    if (argc == 2) return argv[1];
    auto it = config.find("directory");
    if (it == config.end()) return defaultDirectory();
    if (!it->is_string() || it->get<std::string>().empty())
        throw std::runtime_error("config key 'directory' must be a non-empty string");
    return it->get<std::string>();
}

UniqueFd watch(const Spool& spool) {
    UniqueFd fd(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
    if (!fd) throw std::runtime_error("cannot create inotify instance: " + errno_text(errno));
    constexpr uint32_t mask =
        IN_MOVED_TO | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_EXCL_UNLINK;
    if (::inotify_add_watch(fd.get(), spool.path().c_str(), mask) < 0)
        throw std::runtime_error("cannot watch " + spool.path() + ": " + errno_text(errno));
    return fd;
}

// ---- Main loop ------------------------------------------------------------------------------

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
            } else if (event->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED | IN_UNMOUNT)) {
                throw std::runtime_error(spool.path() + " was removed or moved away");
            } else if (event->len > 0) {
                spool.enqueue(event->name);
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
    kit::AnswerReader answers;
    auto onAnswer = [&spool](std::string_view line) { spool.answer(line); };
    for (;;) {
        checkStillThere(spool);
        spool.produce();
        pollfd fds[] = {{signals, POLLIN, 0},
                        {STDIN_FILENO, POLLIN, 0},
                        {inotify, POLLIN, 0},
                        {spool.hasOutput() ? STDOUT_FILENO : -1, POLLOUT, 0}};
        if (::poll(fds, std::size(fds), kCheckIntervalMs) < 0) {
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

int start(int argc, char** argv) {
    kit::check_protocol();
    auto signals = kit::stop_signals();
    std::string directory = chooseDirectory(argc, argv);
    makeDirectories(directory);
    Spool spool(directory);
    // Watch before listing, so a file arriving in between is seen at least once.
    auto inotify = watch(spool);
    spool.scan();
    log("watching ", spool.path(), " (", std::to_string(spool.waiting()), " files waiting)");
    return run(spool, inotify.get(), signals.get());
}

} // namespace

int main(int argc, char** argv) {
    if (argc == 2 && (std::string_view(argv[1]) == "--help" || std::string_view(argv[1]) == "-h")) {
        std::printf("usage: spool [DIRECTORY]\n");
        return 0;
    }
    try {
        return start(argc, argv);
    } catch (const UsageError& e) {
        log("spool: ", e.what(), "; usage: spool DIRECTORY");
        return 2;
    } catch (const std::exception& e) {
        log("spool: ", e.what());
        return 1;
    }
}
