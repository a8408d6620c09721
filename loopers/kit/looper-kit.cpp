// SPDX-License-Identifier: GPL-3.0-or-later
#include "kit/looper-kit.hpp"

#include <fcntl.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>

namespace loopabull::kit {

namespace {

constexpr std::size_t kMaxConfigSize = 1024 * 1024;

std::string read_all(int fd, std::size_t limit) {
    std::string data;
    char chunk[65536];
    for (;;) {
        ssize_t n = ::read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw std::runtime_error(errno_text(errno));
        if (n == 0) return data;
        data.append(chunk, static_cast<std::size_t>(n));
        if (data.size() > limit)
            throw std::runtime_error("larger than " + std::to_string(limit) + " bytes");
    }
}

} // namespace

std::string errno_text(int error) {
    return std::strerror(error);
}

void log_line(std::string_view text) {
    std::string line(text);
    line += '\n';
    std::string_view rest = line;
    while (!rest.empty()) {
        ssize_t n = ::write(STDERR_FILENO, rest.data(), rest.size());
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return; // nowhere left to complain to
        rest.remove_prefix(static_cast<std::size_t>(n));
    }
}

std::string shortened(std::string_view text, std::size_t max) {
    if (text.size() <= max) return std::string(text);
    return std::string(text.substr(0, max)) + "...";
}

std::string default_state_directory(std::string_view kind) {
    const char* state = std::getenv("STATE_DIRECTORY");
    const char* looper = std::getenv("LOOPABULL_LOOPER");
    if (!state || !*state || !looper || !*looper) return {};
    std::string_view name(looper);
    if (name.find('/') != std::string_view::npos || name == "." || name == "..") return {};
    std::string_view dirs(state);
    return std::string(dirs.substr(0, dirs.find(':'))) + "/" + std::string(kind) + "-" +
           std::string(name);
}

void check_protocol() {
    const char* protocol = std::getenv("LOOPABULL_PROTOCOL");
    if (protocol && std::string_view(protocol) != "1")
        throw std::runtime_error(std::string("unsupported protocol version ") + protocol);
}

json read_config() {
    const char* path = std::getenv("LOOPABULL_CONFIG_FILE");
    if (!path || !*path) return json::object();
    UniqueFd fd(::open(path, O_RDONLY | O_CLOEXEC));
    if (!fd)
        throw std::runtime_error(std::string("cannot open config ") + path + ": " +
                                 errno_text(errno));
    json config;
    try {
        config = json::parse(read_all(fd.get(), kMaxConfigSize));
    } catch (const std::exception& e) {
        throw std::runtime_error(std::string("bad config ") + path + ": " + e.what());
    }
    if (!config.is_object()) throw std::runtime_error("the config is not a JSON object");
    return config;
}

json parse_untrusted_json(std::string_view text, int max_depth) {
    auto limit_depth = [max_depth](int depth, json::parse_event_t, json&) {
        if (depth > max_depth)
            throw std::runtime_error("nested deeper than " + std::to_string(max_depth));
        return true;
    };
    try {
        return json::parse(text, limit_depth);
    } catch (const json::exception& e) {
        throw std::runtime_error(e.what());
    }
}

std::optional<std::string> string_field(const json& object, const char* key) {
    auto it = object.find(key);
    if (it == object.end() || !it->is_string()) return std::nullopt;
    return it->get<std::string>();
}

UniqueFd stop_signals() {
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    if (::sigprocmask(SIG_BLOCK, &mask, nullptr) != 0)
        throw std::runtime_error("cannot block signals: " + errno_text(errno));
    UniqueFd fd(::signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK));
    if (!fd) throw std::runtime_error("cannot create signalfd: " + errno_text(errno));
    ::signal(SIGPIPE, SIG_IGN);
    return fd;
}

bool AnswerReader::read(int fd, const Handler& handle) {
    char chunk[65536];
    ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) return true;
        throw std::runtime_error("cannot read answers: " + errno_text(errno));
    }
    if (n == 0) return false;
    feed(std::string_view(chunk, static_cast<std::size_t>(n)), handle);
    return true;
}

void AnswerReader::feed(std::string_view data, const Handler& handle) {
    for (auto newline = data.find('\n'); newline != std::string_view::npos;
         newline = data.find('\n')) {
        append(data.substr(0, newline));
        if (!skipping_) handle(std::string_view(buffer_));
        buffer_.clear();
        skipping_ = false;
        data.remove_prefix(newline + 1);
    }
    append(data);
}

void AnswerReader::append(std::string_view data) {
    if (skipping_) return;
    if (buffer_.size() + data.size() <= max_line_) {
        buffer_.append(data);
        return;
    }
    log("ignoring an answer longer than ", std::to_string(max_line_), " bytes");
    buffer_.clear();
    skipping_ = true;
}

void Outbox::flush(int fd) {
    ssize_t n = ::write(fd, data_.data() + pos_, size());
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
    if (n < 0) throw std::runtime_error("cannot write events: " + errno_text(errno));
    pos_ += static_cast<std::size_t>(n);
    if (empty()) {
        data_.clear();
        pos_ = 0;
    }
}

std::optional<std::string> event_line(std::string_view key, const json& body, std::string_view id) {
    constexpr auto strict = json::error_handler_t::strict;
    std::string line;
    try {
        line = "{\"routing_key\":" + json(key).dump(-1, ' ', false, strict) +
               ",\"body\":" + body.dump(-1, ' ', false, strict) +
               ",\"id\":" + json(id).dump(-1, ' ', false, strict) + "}";
    } catch (const json::exception&) {
        return std::nullopt; // invalid UTF-8
    }
    if (line.size() > kMaxEventLine) return std::nullopt;
    return line + '\n';
}

} // namespace loopabull::kit
