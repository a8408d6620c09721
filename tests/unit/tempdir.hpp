// SPDX-License-Identifier: GPL-3.0-or-later
// A temporary directory for one test, removed with everything in it when the test ends.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <system_error>

namespace loopabull::test {

class TempDir {
  public:
    TempDir() {
        auto templ = (std::filesystem::temp_directory_path() / "loopabull-test-XXXXXX").string();
        if (!mkdtemp(templ.data())) throw std::system_error(errno, std::generic_category(), templ);
        path_ = templ;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    const std::filesystem::path& path() const noexcept { return path_; }
    std::string operator/(std::string_view rel) const { return (path_ / rel).string(); }

    // Writes a file, creating the directories above it; returns its absolute path.
    std::string write(std::string_view rel, std::string_view content, mode_t mode = 0644) const {
        auto file = path_ / rel;
        std::filesystem::create_directories(file.parent_path());
        std::ofstream(file, std::ios::binary | std::ios::trunc) << content;
        if (chmod(file.c_str(), mode) < 0)
            throw std::system_error(errno, std::generic_category(), file.string());
        return file.string();
    }
    std::string executable(std::string_view rel) const {
        return write(rel, "#!/bin/sh\nexit 0\n", 0755);
    }
    std::string mkdir(std::string_view rel) const {
        std::filesystem::create_directories(path_ / rel);
        return (path_ / rel).string();
    }
    // Creates rel as a symbolic link holding target (which is not resolved).
    std::string symlink(std::string_view target, std::string_view rel) const {
        auto link = path_ / rel;
        std::filesystem::create_directories(link.parent_path());
        std::filesystem::create_symlink(target, link);
        return link.string();
    }

  private:
    std::filesystem::path path_;
};

} // namespace loopabull::test
