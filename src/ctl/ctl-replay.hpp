// SPDX-License-Identifier: GPL-3.0-or-later
// `loopabullctl replay ID` and `loopabullctl job ID --body` (issue 17): the printing of what
// ReplayJob and GetJobBody (org.loopabull.Loopabull1(5)) answer. The D-Bus calls are made by
// loopabullctl.cpp.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace loopabull::ctl {

// "Job NEW queued: a replay of job OF." or, as JSON, {"id": NEW, "replay_of": OF}.
void print_replay(std::uint64_t new_id, std::uint64_t of, bool as_json);

// GetJobBody's JSON text, indented (also with --json: it is JSON already). Throws
// std::runtime_error when the text is not JSON (a reply from something else).
void print_body(const std::string& text);

// `loopabullctl job ID`'s lines from the job's ledger record (GetJobRecord: replay_of, body,
// body_size), each ending in a newline; "" for a null record or one without them.
std::string job_record_lines(const nlohmann::ordered_json& record);

} // namespace loopabull::ctl
