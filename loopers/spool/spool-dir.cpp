// SPDX-License-Identifier: GPL-3.0-or-later
#include "spool/spool-dir.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace loopabull::spool {

namespace {

constexpr mode_t kDirMode = 0750;

std::string octal(mode_t mode) {
    char text[8];
    std::snprintf(text, sizeof text, "%04o", static_cast<unsigned>(mode & 07777));
    return text;
}

} // namespace

std::optional<SpoolName> split_spool_name(const std::string& name) {
    if (name.empty() || name.front() == '.') return std::nullopt;
    auto dot = name.rfind('.');
    if (dot == std::string::npos) return std::nullopt;
    auto extension = name.substr(dot + 1);
    if (extension != "json" && extension != "yml" && extension != "yaml") return std::nullopt;
    auto at = name.find('@');
    auto end = at == std::string::npos || at > dot ? dot : at;
    return SpoolName{name.substr(0, end), extension};
}

std::variant<UniqueFd, std::string> open_own_directory(int spool_fd, const char* name,
                                                       uid_t owner) {
    constexpr int flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
    UniqueFd fd(::openat(spool_fd, name, flags));
    if (!fd && errno == ENOENT) {
        if (::mkdirat(spool_fd, name, kDirMode) != 0 && errno != EEXIST)
            return std::string("cannot create ") + name + "/: " + std::strerror(errno);
        fd = UniqueFd(::openat(spool_fd, name, flags));
    }
    if (!fd) {
        // With O_DIRECTORY, a symlink fails with ENOTDIR rather than ELOOP: look at what it is.
        int error = errno;
        struct stat st {};
        bool link = ::fstatat(spool_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode);
        if (link || error == ELOOP)
            return std::string(name) + "/ is a symbolic link; refusing to follow it";
        if (error == ENOTDIR) return std::string(name) + "/ is not a directory";
        errno = error;
        return std::string("cannot open ") + name + "/: " + std::strerror(errno);
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0)
        return std::string("cannot stat ") + name + "/: " + std::strerror(errno);
    if (st.st_uid != owner)
        return std::string(name) + "/ is owned by uid " + std::to_string(st.st_uid) +
               ", not by the looper's user (uid " + std::to_string(owner) + ")";
    return fd;
}

LayoutReport check_layout(const std::string& path, uid_t service_uid) {
    LayoutReport report;
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) {
        if (errno != ENOENT)
            report.errors.push_back("cannot stat " + path + ": " + std::strerror(errno));
        return report; // created at start, 0750, by the looper's user
    }
    if (S_ISLNK(st.st_mode) && ::stat(path.c_str(), &st) != 0) {
        report.errors.push_back(path + " is a dangling symbolic link");
        return report;
    }
    if (!S_ISDIR(st.st_mode)) {
        report.errors.push_back(path + " is not a directory");
        return report;
    }
    bool others_write = st.st_mode & (S_IWGRP | S_IWOTH);
    if (others_write && !(st.st_mode & S_ISVTX))
        report.warnings.push_back(path + " (mode " + octal(st.st_mode) +
                                  ") is writable by its group or others without the sticky bit: "
                                  "any of them can remove or replace other producers' events and "
                                  "failed/; chmod +t it (loopabull-spool(7), A SHARED SPOOL)");
    if (st.st_mode & S_IWOTH)
        report.warnings.push_back(path + " (mode " + octal(st.st_mode) +
                                  ") is writable by every user: anyone can submit events");
    if (st.st_uid != service_uid)
        report.warnings.push_back(path + " is owned by uid " + std::to_string(st.st_uid) +
                                  ", not by the service user (uid " + std::to_string(service_uid) +
                                  "): the looper must own it to remove and move producers' "
                                  "files when it has the sticky bit, and to create failed/");
    struct stat failed {};
    std::string failed_path = path + "/failed";
    if (::lstat(failed_path.c_str(), &failed) != 0) return report;
    if (S_ISLNK(failed.st_mode))
        report.warnings.push_back(failed_path + " is a symbolic link: the looper refuses to move "
                                                "events through it; remove it");
    else if (!S_ISDIR(failed.st_mode))
        report.warnings.push_back(failed_path + " is not a directory; remove it");
    else if (failed.st_uid != service_uid)
        report.warnings.push_back(failed_path + " is owned by uid " +
                                  std::to_string(failed.st_uid) +
                                  ", not by the service user (uid " + std::to_string(service_uid) +
                                  "): the looper refuses to move events into it");
    else if (failed.st_mode & (S_IWGRP | S_IWOTH))
        report.warnings.push_back(failed_path + " (mode " + octal(failed.st_mode) +
                                  ") is writable by its group or others; 0750 is enough");
    return report;
}

} // namespace loopabull::spool
