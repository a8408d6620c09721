// SPDX-License-Identifier: GPL-3.0-or-later
// `loopabullctl submit`: writes one event into a spool directory the way the spool looper
// needs it (loopabull-spool(7)): a unique name, written under a dot name, fsynced, renamed in.
#pragma once

#include <cstdint>
#include <ctime>
#include <string>
#include <string_view>

namespace loopabull::ctl {

// The separator between the routing key and the unique part of a spool file name. The
// routing-key grammar (core/routing.hpp: dot-separated words of [A-Za-z0-9_-]) cannot contain
// it, so the key is everything before the first '@' whatever the unique part holds.
inline constexpr char kSpoolSeparator = '@';

// KEY@YYYYMMDDTHHMMSSZ-PID-RANDOM.json: UTC time (so names sort in submission order, which is
// the order the looper reads files present at its start), the process id and 64 random bits
// (so 8 producers in the same second never collide).
std::string spool_file_name(std::string_view key, std::time_t now, long pid, std::uint64_t random);

struct SubmitRequest {
    std::string spool_dir;   // the directory the spool looper watches
    std::string routing_key; // checked against the routing-key grammar
    std::string file = "-";  // the body: a JSON object in this file, "-" for stdin
};

// Whether argv's command word (its first argument that is neither an option nor an option's
// value) is "submit": loopabullctl's main hands those command lines to submit_main.
bool is_submit_command(int argc, char** argv);

// `loopabullctl [-i NAME | --spool DIR] submit KEY [FILE|-]`, options before or after the word
// submit. -i NAME means the spool looper's default directory /var/spool/loopabull/NAME.
// Returns the exit status (2 on a usage error, with the reason on stderr).
int submit_main(int argc, char** argv);

// Validates and writes the event; prints the event id (the file name) on stdout. Returns the
// exit status of loopabullctl(1): 0, 1 (I/O error, message on stderr) or 2 (bad key or body).
int submit(const SubmitRequest& request);

} // namespace loopabull::ctl
