// SPDX-License-Identifier: GPL-3.0-or-later
// `loopabullctl metrics` (issue 17): prints GetMetrics()'s Prometheus text as it is, or as JSON.
// The D-Bus call is made by loopabullctl.cpp.
#pragma once

#include <string>

namespace loopabull::ctl {

// as_json: a JSON array of samples, {"name", "labels": {NAME: VALUE}, "value"}; a value that is
// not finite is written as the format writes it ("+Inf", "-Inf", "NaN"). Throws
// std::runtime_error when the text is not the format (a reply from something else).
void print_metrics(const std::string& text, bool as_json);

} // namespace loopabull::ctl
