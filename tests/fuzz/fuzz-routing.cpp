// SPDX-License-Identifier: GPL-3.0-or-later
// Routing keys and playbook lookup. The input is "L PATTERN \n KEY": L is 'd' for the directory
// layout (anything else: name), the pattern is matched against the key, and the key is looked up
// in a real playbooks directory that holds symlinks planted to escape it.
// Invariants: a key the grammar accepts makes a relative path without '/'-tricks; whatever the key
// (valid or not), nothing found lies outside the playbooks directory; pattern matching agrees
// with a simple reference matcher and stays fast (libFuzzer's -timeout catches blow-ups).
#include "core/routing.hpp"
#include "tests/routing-reference.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

using namespace loopabull;
namespace fs = std::filesystem;

namespace {

fs::path g_root;         // removed at exit
std::string g_playbooks; // g_root/playbooks, canonical
int g_dirfd = -1;

void check(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "invariant violated: %s\n", what);
        std::abort();
    }
}

void touch(const fs::path& p) {
    fs::create_directories(p.parent_path());
    std::ofstream(p) << "- hosts: localhost\n";
}

// Playbooks, a directory and a fifo where playbooks are looked for, and symlinks that point
// inside (allowed), outside (absolute, relative, through a directory link) and in a loop.
void make_playbooks() {
    char tmpl[] = "/tmp/loopabull-fuzz-routing-XXXXXX";
    check(mkdtemp(tmpl) != nullptr, "mkdtemp");
    g_root = tmpl;
    fs::path pb = g_root / "playbooks";
    touch(g_root / "outside.yml");
    for (auto rel : {"a.yml", "a.b.yml", "org.example.hello.yml", "a/b.yml", "a/b/c.yml",
                     "org/example/hello.yml", "-x.yml"})
        touch(pb / rel);
    fs::create_directories(pb / "dir.yml");
    check(mkfifo((pb / "fifo.yml").c_str(), 0600) == 0, "mkfifo");
    fs::create_symlink("/etc/passwd", pb / "evil.yml");
    fs::create_symlink("../outside.yml", pb / "up.yml");
    fs::create_symlink("..", pb / "up");
    fs::create_symlink("a.yml", pb / "alias.yml");
    fs::create_symlink("loop.yml", pb / "loop.yml");
    g_playbooks = fs::canonical(pb);
    g_dirfd = open(g_playbooks.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    check(g_dirfd >= 0, "open playbooks dir");
    std::atexit([] { fs::remove_all(g_root); });
}

using loopabull::test::reference_match;

std::vector<std::string> split(std::string_view s, char sep) {
    return loopabull::test::split_at(s, sep);
}

void check_grammar(std::string_view key, Layout layout) {
    if (routing_key_error(key)) return;
    check(!key.empty() && key.size() <= 255 && key.front() != '-', "valid key shape");
    check(key.find_first_of("/\\\0 ", 0, 4) == std::string_view::npos, "valid key characters");
    std::string rel = playbook_relative_path(key, layout);
    check(rel.front() != '/' && rel.ends_with(".yml"), "relative path ending in .yml");
    for (auto& part : split(rel, '/'))
        check(part != ".." && part != "." && !part.empty(), "no empty, '.' or '..' component");
}

void check_lookup(std::string_view key, Layout layout) {
    if (key.find('\0') != std::string_view::npos) return; // cannot be a path
    auto found = find_playbook(g_dirfd, g_playbooks, key, layout);
    if (found.status != PlaybookLookup::Status::found) return;
    check(found.path == g_playbooks + "/" + playbook_relative_path(key, layout), "path as told");
    std::error_code ec;
    auto real = fs::canonical(found.path, ec);
    check(!ec, "a found playbook exists");
    check(real.string().starts_with(g_playbooks + "/"), "found playbook lies beneath the dir");
    check(fs::is_regular_file(real), "found playbook is a regular file");
}

void check_pattern(std::string_view pattern, std::string_view key) {
    if (routing_pattern_error(pattern) || routing_key_error(key)) return;
    bool matches = routing_pattern_matches(pattern, key);
    check(matches == reference_match(pattern, key), "matching agrees with the reference");
    check(RoutingFilter({std::string(pattern)}).selects(key) == matches, "filter agrees");
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    make_playbooks();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    Layout layout = data[0] == 'd' ? Layout::directory : Layout::name;
    std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
    auto nl = rest.find('\n');
    std::string_view pattern = nl == std::string_view::npos ? "#" : rest.substr(0, nl);
    std::string_view key = nl == std::string_view::npos ? rest : rest.substr(nl + 1);
    check_grammar(key, layout);
    check_lookup(key, layout);
    check_pattern(pattern, key);
    return 0;
}
