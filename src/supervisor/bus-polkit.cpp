// SPDX-License-Identifier: GPL-3.0-or-later
// Who may call the methods that change something: root, the owner on the user bus, or whoever
// polkit allows (org.loopabull.loopabull1.manage; org.loopabull.loopabull1.replay for
// ReplayJob), asked asynchronously.
#include "supervisor/bus-api-object.hpp"

#include "core/log-safe.hpp"

#include "build-config.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstring>
#include <system_error>
#include <vector>

namespace loopabull::bus_detail {

// Decides now (root; the owner on the user bus; anyone else on the user bus is refused) or asks
// polkit and answers the call later. In the systemd way: the caller is identified by its unique
// bus name (polkit subject "system-bus-name"), never by a pid that could be reused.
int BusApi::authorize(sd_bus_message* m, Verb verb, JobId job, sd_bus_error* error) {
    const char* sender = sd_bus_message_get_sender(m);
    sd_bus_creds* raw = nullptr;
    int r = sender ? sd_bus_query_sender_creds(m, SD_BUS_CREDS_EUID, &raw) : -ENXIO;
    CredsPtr creds(raw);
    uid_t uid = 0;
    if (r >= 0) r = sd_bus_creds_get_euid(raw, &uid);
    if (r < 0) {
        if (manager_.may_log_refused_call())
            spdlog::warn("D-Bus API: {} refused: cannot tell who is calling: {}", verb_name(verb),
                         std::strerror(-r));
        return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED, "Cannot tell who is calling: access denied");
    }
    // The unique name comes from the bus daemon, but is text from outside all the same: escaped.
    std::string who = "uid " + std::to_string(uid) + " (" + escape_for_log(sender) + ")";
    if (uid == 0) return perform(m, verb, job, who, error);
    if (kind_ == BusKind::user) {
        if (uid == geteuid()) return perform(m, verb, job, who, error);
        if (manager_.may_log_refused_call())
            spdlog::warn("D-Bus API: {} by {} refused: on the user bus only uid {} may", verb_name(verb), who,
                         geteuid());
        return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                 "Access denied: only uid %u (which runs instance %s) may %s it",
                                 static_cast<unsigned>(geteuid()), manager_.instance().c_str(),
                                 verb_name(verb));
    }
    if (checks_.size() >= kMaxPendingChecks)
        return sd_bus_error_set(error, SD_BUS_ERROR_LIMITS_EXCEEDED,
                                "Too many authorization checks in progress; try again");

    auto check = std::make_unique<Check>();
    check->api = this;
    check->call.reset(sd_bus_message_ref(m));
    check->verb = verb;
    check->job = job;
    check->who = std::move(who);
    check->sender = sender;
    check->interactive = sd_bus_message_get_allow_interactive_authorization(m) > 0;
    r = ask_polkit(*check);
    if (r < 0) {
        if (manager_.may_log_refused_call())
            spdlog::warn("D-Bus API: {} by {} refused: cannot ask polkit: {}", verb_name(verb), check->who,
                         std::strerror(-r));
        return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED, "Cannot ask polkit: access denied");
    }
    checks_.push_back(std::move(check));
    return 1; // answered in on_polkit_reply
}

// Sends CheckAuthorization for `check`; on_polkit_reply gets the answer.
int BusApi::ask_polkit(Check& check) {
    sd_bus_message* q = nullptr;
    int r = sd_bus_message_new_method_call(bus_.get(), &q, kPolkitName, kPolkitPath, kPolkitInterface,
                                           "CheckAuthorization");
    if (r < 0) return r;
    BusMessagePtr query(q);
    std::string job_text = std::to_string(check.job);
    r = sd_bus_message_append(q, "(sa{sv})s", "system-bus-name", 1, "name", "s", check.sender.c_str(),
                              verb_action(check.verb));
    // The details let polkit rules tell instances and verbs apart: action.lookup("instance").
    if (r >= 0) r = sd_bus_message_open_container(q, 'a', "{ss}");
    if (r >= 0) {
        r = sd_bus_message_append(q, "{ss}", "instance", manager_.instance().c_str());
        if (r >= 0) r = sd_bus_message_append(q, "{ss}", "verb", verb_name(check.verb));
        if (r >= 0 && (check.verb == Verb::cancel || check.verb == Verb::body || check.verb == Verb::replay))
            r = sd_bus_message_append(q, "{ss}", "job", job_text.c_str());
    }
    if (r >= 0) r = sd_bus_message_close_container(q);
    // Flags: 1 = AllowUserInteraction, when the caller said it can wait for a password prompt.
    if (r >= 0) r = sd_bus_message_append(q, "us", check.interactive ? 1u : 0u, "");
    if (r < 0) return r;
    sd_bus_slot* slot = nullptr;
    r = sd_bus_call_async(bus_.get(), &slot, q, on_polkit_reply, &check,
                          check.interactive ? kInteractiveCheckTimeoutUsec : 0);
    if (r < 0) return r;
    check.slot.reset(slot);
    return 0;
}

int BusApi::on_polkit_reply(sd_bus_message* reply, void* userdata, sd_bus_error*) noexcept {
    auto* check = static_cast<Check*>(userdata);
    auto* self = check->api;
    // Ours from here on; sd-bus holds its own reference to the slot while this runs.
    std::unique_ptr<Check> own;
    for (auto it = self->checks_.begin(); it != self->checks_.end(); ++it)
        if (it->get() == check) {
            own = std::move(*it);
            self->checks_.erase(it);
            break;
        }
    if (!own) return 0;
    sd_bus_message* call = own->call.get();
    const char* verb = verb_name(own->verb);
    BusError error;
    int r = 0;
    try {
        const sd_bus_error* e = sd_bus_message_get_error(reply);
        if (e) {
            // polkit unreachable, or it failed: nobody can say yes, so it is no. (polkit also
            // refuses to answer a process that is neither root nor the action's owner, the user
            // named by org.freedesktop.policykit.owner in the .policy file.)
            if (self->manager_.may_log_refused_call())
                spdlog::warn("D-Bus API: {} by {} refused: polkit did not answer: {} ({})", verb, own->who,
                             e->message ? e->message : "", e->name ? e->name : "");
            sd_bus_error_setf(&error.e, SD_BUS_ERROR_ACCESS_DENIED,
                              "Access denied: the authorization check failed (polkit: %s)",
                              e->message ? e->message : "no answer");
        } else {
            int authorized = 0, challenge = 0;
            r = sd_bus_message_enter_container(reply, 'r', "bba{ss}");
            if (r >= 0) r = sd_bus_message_read(reply, "bb", &authorized, &challenge);
            if (r < 0) {
                if (self->manager_.may_log_refused_call())
                    spdlog::warn("D-Bus API: {} by {} refused: unreadable answer from polkit", verb, own->who);
                sd_bus_error_set(&error.e, SD_BUS_ERROR_ACCESS_DENIED,
                                 "Access denied: unreadable answer from polkit");
            } else if (authorized) {
                r = self->perform(call, own->verb, own->job, own->who + ", authorized by polkit", &error.e);
                if (r < 0 && !sd_bus_error_is_set(&error.e)) sd_bus_error_set_errno(&error.e, r);
            } else if (challenge) {
                if (self->manager_.may_log_refused_call())
                    spdlog::warn("D-Bus API: {} by {} refused: polkit wants interactive authentication", verb,
                                 own->who);
                sd_bus_error_set(&error.e, SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED,
                                 "Interactive authentication required.");
            } else {
                if (self->manager_.may_log_refused_call())
                    spdlog::warn("D-Bus API: {} by {} refused by polkit", verb, own->who);
                sd_bus_error_setf(&error.e, SD_BUS_ERROR_ACCESS_DENIED,
                                  "Access denied: not authorized to %s instance %s (polkit action %s)", verb,
                                  self->manager_.instance().c_str(), verb_action(own->verb));
            }
        }
    } catch (const std::exception& e) {
        sd_bus_error_set(&error.e, SD_BUS_ERROR_FAILED, e.what());
    }
    if (sd_bus_error_is_set(&error.e)) {
        r = sd_bus_reply_method_error(call, &error.e);
        if (r < 0) spdlog::debug("D-Bus API: cannot answer {}: {}", verb, std::strerror(-r));
    }
    return 0;
}

// Does what was asked and sends the (empty) reply; on failure sets *error and returns < 0.
int BusApi::perform(sd_bus_message* m, Verb verb, JobId job, const std::string& who, sd_bus_error* error) {
    if (verb != Verb::cancel && verb != Verb::body && manager_.state() == ManagerState::stopping)
        return sd_bus_error_setf(error, kErrorStopping, "Instance %s is stopping", manager_.instance().c_str());
    switch (verb) {
    case Verb::cancel: {
        // Checked again: the job may have finished while polkit was asked.
        auto info = manager_.job(job);
        if (!info || info->state == "finished") return no_such_job(job, error);
        spdlog::info("D-Bus API: cancel of job {} by {}", job, who);
        if (!manager_.cancel_job(job, who))
            return sd_bus_error_setf(error, SD_BUS_ERROR_FAILED, "Job %" PRIu64 " could not be cancelled",
                                     static_cast<std::uint64_t>(job));
        break;
    }
    case Verb::pause:
        spdlog::info("D-Bus API: pause by {}", who);
        manager_.pause();
        break;
    case Verb::resume:
        spdlog::info("D-Bus API: resume by {}", who);
        manager_.resume();
        break;
    case Verb::body: {
        auto found = manager_.job_body(job);
        if (auto* why = std::get_if<ReplayRefusal>(&found)) return refused(*why, error);
        spdlog::info("D-Bus API: body of job {} read by {}", job, who);
        return sd_bus_reply_method_return(m, "s", std::get<std::string>(found).c_str());
    }
    case Verb::replay: {
        auto done = manager_.replay_job(job, who);
        if (auto* why = std::get_if<ReplayRefusal>(&done)) {
            if (manager_.may_log_refused_call())
                spdlog::warn("D-Bus API: replay of job {} by {} refused: {}", job, who,
                             escape_for_log(why->message));
            return refused(*why, error);
        }
        return sd_bus_reply_method_return(m, "t", static_cast<std::uint64_t>(std::get<JobId>(done)));
    }
    case Verb::reload:
        spdlog::info("D-Bus API: reload by {}", who);
        if (auto problems = manager_.reload(); !problems.empty()) {
            std::string text = "The configuration was not reloaded:";
            for (auto& p : problems) text += (&p == &problems.front() ? " " : "; ") + p;
            return sd_bus_error_set(error, kErrorInvalidConfiguration, text.c_str());
        }
        break;
    }
    return sd_bus_reply_method_return(m, "");
}

} // namespace loopabull::bus_detail
