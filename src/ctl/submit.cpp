// SPDX-License-Identifier: GPL-3.0-or-later
#include "ctl/submit.hpp"

#include "core/routing.hpp"
#include "core/unique-fd.hpp"

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace loopabull::ctl {

namespace {

// The spool looper refuses events larger than this (the supervisor's default line limit).
constexpr std::size_t kMaxBody = 1024 * 1024 - 1 - 512;

struct SubmitError {
    int status;
    std::string message;
};

std::string errno_text() {
    return std::strerror(errno);
}

std::string read_body(const std::string& file) {
    UniqueFd owned;
    int fd = STDIN_FILENO;
    if (file != "-") {
        owned = UniqueFd(::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
        if (!owned) throw SubmitError{1, "cannot open " + file + ": " + errno_text()};
        fd = owned.get();
    }
    std::string data;
    char chunk[65536];
    for (;;) {
        ssize_t n = ::read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw SubmitError{1, "cannot read " + file + ": " + errno_text()};
        if (n == 0) break;
        data.append(chunk, static_cast<std::size_t>(n));
        if (data.size() > kMaxBody)
            throw SubmitError{2, "the body is larger than " + std::to_string(kMaxBody) + " bytes"};
    }
    return data;
}

// The body is written as given once it is known to be one JSON object: re-serialising it would
// round integers beyond 64 bits.
std::string checked_body(const std::string& text) {
    if (text.find_first_not_of(" \t\r\n") == std::string::npos) return "{}\n";
    nlohmann::json body = nlohmann::json::parse(text, nullptr, false);
    if (body.is_discarded()) throw SubmitError{2, "the body is not valid JSON"};
    if (!body.is_object()) throw SubmitError{2, "the body is not a JSON object"};
    return text.back() == '\n' ? text : text + "\n";
}

void write_all(int fd, const std::string& data) {
    std::size_t done = 0;
    while (done < data.size()) {
        ssize_t n = ::write(fd, data.data() + done, data.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw SubmitError{1, "cannot write: " + errno_text()};
        done += static_cast<std::size_t>(n);
    }
}

std::uint64_t random64() {
    std::uint64_t value = 0;
    if (::getrandom(&value, sizeof value, 0) != sizeof value)
        throw SubmitError{1, "getrandom failed: " + errno_text()};
    return value;
}

} // namespace

std::string spool_file_name(std::string_view key, std::time_t now, long pid, std::uint64_t random) {
    std::tm utc{};
    ::gmtime_r(&now, &utc);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &utc);
    char unique[96];
    std::snprintf(unique, sizeof unique, "%s-%ld-%016" PRIx64, stamp, pid, random);
    return std::string(key) + kSpoolSeparator + unique + ".json";
}

int submit(const SubmitRequest& request) {
    try {
        if (auto error = routing_key_error(request.routing_key))
            throw SubmitError{2, "invalid routing key '" + request.routing_key + "': " + *error};
        std::string body = checked_body(read_body(request.file));
        UniqueFd dir(::open(request.spool_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (!dir)
            throw SubmitError{1,
                              "cannot open the spool " + request.spool_dir + ": " + errno_text()};
        std::string name =
            spool_file_name(request.routing_key, std::time(nullptr), ::getpid(), random64());
        // The looper ignores names starting with '.': it never sees the file half-written.
        std::string temporary = "." + name + ".tmp";
        UniqueFd file(::openat(dir.get(), temporary.c_str(),
                               O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640));
        if (!file)
            throw SubmitError{1, "cannot create " + request.spool_dir + "/" + temporary + ": " +
                                     errno_text()};
        try {
            write_all(file.get(), body);
            // fsync before the rename: after a crash the name never points to an empty file.
            if (::fsync(file.get()) != 0) throw SubmitError{1, "cannot fsync: " + errno_text()};
            file.reset();
            if (::renameat2(dir.get(), temporary.c_str(), dir.get(), name.c_str(),
                            RENAME_NOREPLACE) != 0)
                throw SubmitError{1, "cannot rename " + temporary + " to " + name + ": " +
                                         errno_text()};
        } catch (...) {
            ::unlinkat(dir.get(), temporary.c_str(), 0);
            throw;
        }
        // And the directory, so that the rename itself survives a crash.
        if (::fsync(dir.get()) != 0)
            throw SubmitError{1,
                              "cannot fsync the spool " + request.spool_dir + ": " + errno_text()};
        std::printf("%s\n", name.c_str());
        return 0;
    } catch (const SubmitError& e) {
        std::fprintf(stderr, "loopabullctl: submit: %s\n", e.message.c_str());
        return e.status;
    }
}

namespace {

bool takes_value(std::string_view arg) {
    return arg == "-i" || arg == "--instance" || arg == "--spool";
}

int usage(const std::string& message) {
    std::fprintf(stderr,
                 "loopabullctl: %s\nUsage: loopabullctl [-i INSTANCE | --spool DIR] submit "
                 "ROUTING_KEY [FILE|-]\n",
                 message.c_str());
    return 2;
}

// As loopabull's own check: the instance names a directory, so no '/' and no leading dot.
bool valid_instance(std::string_view s) {
    if (s.empty() || s.size() > 64 || s[0] == '.' || s[0] == '-') return false;
    for (char c : s)
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-' && c != '.')
            return false;
    return true;
}

} // namespace

bool is_submit_command(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        if (takes_value(arg)) {
            ++i;
            continue;
        }
        if (arg.starts_with("-")) continue;
        return arg == "submit";
    }
    return false;
}

int submit_main(int argc, char** argv) {
    std::string instance = "default", spool;
    std::vector<std::string> words;
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        if (takes_value(arg)) {
            if (i + 1 == argc) return usage(std::string(arg) + " needs a value");
            (arg == "--spool" ? spool : instance) = argv[++i];
        } else if (arg.starts_with("--instance=")) {
            instance = arg.substr(11);
        } else if (arg.starts_with("--spool=")) {
            spool = arg.substr(8);
        } else if (arg == "--user" || arg == "--system" || arg == "--no-ask-password") {
            // Options of the bus commands: submit needs no bus.
        } else if (arg.size() > 1 && arg.starts_with("-")) {
            return usage("unknown option '" + std::string(arg) + "' for submit");
        } else {
            words.emplace_back(arg);
        }
    }
    if (words.empty() || words.front() != "submit") return usage("expected the command submit");
    if (words.size() < 2 || words.size() > 3)
        return usage("submit takes a routing key and optionally a file");
    if (spool.empty()) {
        if (!valid_instance(instance))
            return usage("invalid instance name '" + instance +
                         "': letters, digits, '_', '-' and '.' only");
        spool = "/var/spool/loopabull/" + instance;
    }
    return submit({spool, words[1], words.size() == 3 ? words[2] : "-"});
}

} // namespace loopabull::ctl
