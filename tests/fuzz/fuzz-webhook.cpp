// SPDX-License-Identifier: GPL-3.0-or-later
// The webhook looper's handling of untrusted requests. The input is
// "TEMPLATE \n (NAME: VALUE \n)* \n BODY": a routing-key template, request headers, a raw body.
// Invariants: every event made has a key the routing-key grammar accepts (so no request can reach
// a playbook outside playbooks_dir); an alertmanager split gives one event per alert or none;
// HMAC authentication with a secret the input cannot know never passes; nothing crashes, leaks
// or recurses without bound on deep JSON.
#include "core/routing.hpp"
#include "webhook/webhook.hpp"

#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>
#include <string_view>

using namespace loopabull;
using namespace loopabull::webhook;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view in(reinterpret_cast<const char*>(data), size);
    auto nl = in.find('\n');
    if (nl == std::string_view::npos) return 0;
    std::string_view template_text = in.substr(0, nl);
    in.remove_prefix(nl + 1);
    std::map<std::string, std::string> headers;
    while (!in.empty()) {
        nl = in.find('\n');
        std::string_view line = in.substr(0, nl);
        in.remove_prefix(nl == std::string_view::npos ? in.size() : nl + 1);
        if (line.empty()) break;
        auto colon = line.find(':');
        if (colon == std::string_view::npos) continue;
        std::string name(line.substr(0, colon));
        for (auto& c : name)
            c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        headers[name] = std::string(line.substr(colon + 1));
    }
    auto lookup = [&headers](std::string_view name) -> std::optional<std::string> {
        std::string key(name);
        for (auto& c : key)
            c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        auto it = headers.find(key);
        if (it == headers.end()) return std::nullopt;
        return it->second;
    };
    std::string_view body = in;

    try {
        (void)parse_listen(template_text);
    } catch (const OptionError&) {
    }
    Endpoint e;
    try {
        e.routing_key = KeyTemplate::parse(template_text);
    } catch (const OptionError&) {
        return 0;
    }
    for (bool split : {false, true}) {
        e.split_alerts = split;
        auto made = make_events(e, lookup, body);
        if (made.error.empty() == made.events.empty()) std::abort();
        for (const auto& ev : made.events)
            if (routing_key_error(ev.routing_key)) std::abort();
    }
    Auth auth{AuthKind::hmac, "X-Sig",   "sha256",
              Encoding::hex,  "sha256=", "a secret the fuzzer cannot guess 7f3a9c"};
    if (!authenticate(auth, lookup, body).has_value()) std::abort();
    auth.kind = AuthKind::bearer;
    auth.header = "Authorization";
    if (!authenticate(auth, lookup, body).has_value()) std::abort();
    return 0;
}
