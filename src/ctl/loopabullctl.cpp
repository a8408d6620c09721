// SPDX-License-Identifier: GPL-3.0-or-later
// loopabullctl: status and control of a running loopabull instance, over its D-Bus API
// (org.loopabull.Loopabull1(5)), in the manner of systemctl. See loopabullctl(1).
#include "ctl/submit.hpp"
#include "ctl/history.hpp"
#include "ctl/ctl-routes.hpp"
#include "ctl/ctl-metrics.hpp"
#include "ctl/ctl-replay.hpp"
#include "shared/dbus-names.hpp"
#include "core/log-safe.hpp"

#include "build-config.h"

#include <nlohmann/json.hpp>
#include <systemd/sd-bus.h>

#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace {

using json = nlohmann::ordered_json;
using loopabull::kBusInterface;
using loopabull::kBusObjectPath;

// Exit statuses (documented in loopabullctl(1)).
enum Exit : int {
    kOk = 0,
    kFailed = 1,      // the call failed for another reason, or the bus cannot be reached
    kUsage = 2,       // bad command line
    kNotRunning = 3,  // no such instance on the bus
    kDenied = 4,      // access denied, or authentication required
    kNoSuchJob = 5,   // the job id is unknown (or finished too long ago)
    kNoReplay = 6,    // job --body, replay: no body recorded, or today's routing refuses it
};

constexpr const char* kUsageText = R"(Usage: loopabullctl [OPTIONS] [COMMAND]

Shows and controls a running loopabull instance through its D-Bus API.

Commands:
  status            state, counters, loopers and running jobs (the default)
  jobs              queued and running jobs
  job ID            one job, also one from before the last restart (the history)
  job ID --body     the event body recorded with a finished job (history.store_bodies)
  history [--key PATTERN] [--result R] [--since TIME] [--limit N]
                    finished jobs and rejected events from the history, newest first;
                    PATTERN is a shell glob on the routing key, TIME "6h", "@SECONDS"
                    or a UTC "YYYY-MM-DD[THH:MM[:SS]]"; N at most 10000 (default 100)
  metrics           counters, gauges and job durations in the Prometheus text format
                    (what metrics.textfile holds; --json: one object a sample)
  cancel ID         cancel a queued or running job
  replay ID         run the recorded event of a finished job again, through today's
                    routing, as a new job (history.store_bodies); prints the new job id
  pause             stop taking new events (running jobs go on)
  resume            take new events again
  reload            reload the configuration file (like systemctl reload)
  submit KEY [FILE|-]
                    write an event (a JSON object) into the instance's spool, or the
                    directory given with --spool DIR; prints the event id
  explain KEY [BODY-JSON|@FILE]
                    what the instance would do with this event now, and why:
                    routes, conditions, playbook, serialization, throttle, variables
                    (queues nothing; exit 0 would run, 1 would not)

Options:
  -i, --instance NAME   the instance (default: "default"); loopabull@NAME.service
      --user            talk to the user bus instead of the system bus
      --system          talk to the system bus (the default)
      --json            print JSON, for scripts
      --looper NAME     explain: the event comes from looper NAME (default: any)
      --no-ask-password do not ask for a password (no polkit agent is started)
  -h, --help            show this help
  -V, --version         show the version

cancel, pause, resume, reload and job --body need root or the polkit action
org.loopabull.loopabull1.manage, replay org.loopabull.loopabull1.replay; the other
commands are open to everyone.
Exit status: 0 success, 1 failure, 2 usage error, 3 instance not running,
4 access denied, 5 no such job, 6 no body recorded or replay refused.
See loopabullctl(1).
)";

struct Options {
    std::string instance = "default";
    bool user = false;
    bool json = false;
    bool ask_password = true;
    bool body = false; // job --body
    std::string command = "status";
    std::string looper; // explain
    std::vector<std::string> args;
    // history's filters
    std::string key, result, since;
    std::uint32_t limit = 100;
};

[[noreturn]] void usage_error(const std::string& msg);

// A typo must not read as "nothing failed": only protocol v1's results (loopabull-looper(7)).
void check_result(const std::string& result) {
    static constexpr const char* kResults[] = {"succeeded", "failed",  "unrouted",
                                               "rejected",  "timeout", "cancelled",
                                               "aborted",   "superseded", "throttled"};
    std::string list;
    for (auto r : kResults) {
        if (result == r) return;
        list += (list.empty() ? "" : ", ") + std::string(r);
    }
    usage_error("invalid --result '" + result + "': one of " + list);
}

[[noreturn]] void usage_error(const std::string& msg) {
    std::fprintf(stderr, "loopabullctl: %s\nTry 'loopabullctl --help'.\n", msg.c_str());
    std::exit(kUsage);
}

// The same rule as loopabull --instance.
bool valid_instance(const std::string& s) {
    return !s.empty() && s.size() <= 64 && s[0] != '.' && s[0] != '-' &&
           std::all_of(s.begin(), s.end(), [](char c) {
               return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
           });
}

std::uint64_t parse_job_id(const std::string& s) {
    std::uint64_t v = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || end != s.data() + s.size() || v == 0)
        usage_error("invalid job id '" + s + "': a positive integer, as 'loopabullctl jobs' shows");
    return v;
}

Options parse_args(int argc, char** argv) {
    enum { kUser = 0x100, kSystem, kJson, kNoAsk, kKey, kResult, kSince, kLimit, kLooper, kBody };
    static const option longopts[] = {{"instance", required_argument, nullptr, 'i'},
                                      {"user", no_argument, nullptr, kUser},
                                      {"system", no_argument, nullptr, kSystem},
                                      {"json", no_argument, nullptr, kJson},
                                      {"no-ask-password", no_argument, nullptr, kNoAsk},
                                      {"key", required_argument, nullptr, kKey},
                                      {"result", required_argument, nullptr, kResult},
                                      {"since", required_argument, nullptr, kSince},
                                      {"limit", required_argument, nullptr, kLimit},
                                      {"looper", required_argument, nullptr, kLooper},
                                      {"body", no_argument, nullptr, kBody},
                                      {"help", no_argument, nullptr, 'h'},
                                      {"version", no_argument, nullptr, 'V'},
                                      {nullptr, 0, nullptr, 0}};
    Options o;
    int c;
    while ((c = getopt_long(argc, argv, "i:hV", longopts, nullptr)) != -1) {
        switch (c) {
        case 'i': o.instance = optarg; break;
        case kUser: o.user = true; break;
        case kSystem: o.user = false; break;
        case kJson: o.json = true; break;
        case kNoAsk: o.ask_password = false; break;
        case kKey: o.key = optarg; break;
        case kResult: o.result = optarg; break;
        case kSince:
            if (!loopabull::ctl::parse_since(optarg, 1))
                usage_error(std::string("invalid --since '") + optarg +
                            "': give a duration back from now (30min, 24h, 7d), a time "
                            "(2026-11-30 or 2026-11-30T16:00:00, UTC) or @SECONDS");
            o.since = optarg;
            break;
        case kLimit: {
            std::string_view v(optarg);
            auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), o.limit);
            if (ec != std::errc() || end != v.data() + v.size() || o.limit == 0 || o.limit > 10000)
                usage_error(std::string("invalid --limit '") + optarg + "': 1 to 10000");
            break;
        }
        case kLooper: o.looper = optarg; break;
        case kBody: o.body = true; break;
        case 'h': std::fputs(kUsageText, stdout); std::exit(kOk);
        case 'V': std::printf("loopabullctl %s\n", LOOPABULL_VERSION); std::exit(kOk);
        default: usage_error("invalid arguments");
        }
    }
    if (!valid_instance(o.instance))
        usage_error("invalid instance name '" + o.instance + "': letters, digits, '_', '-' and '.' only");
    if (optind < argc) o.command = argv[optind++];
    for (; optind < argc; ++optind) o.args.emplace_back(argv[optind]);
    if (o.command == "explain") {
        if (o.args.empty() || o.args.size() > 2)
            usage_error("'explain' takes ROUTING_KEY [BODY-JSON|@FILE]");
        return o;
    }
    static const std::map<std::string, std::size_t> arity = {
        {"status", 0}, {"jobs", 0}, {"job", 1}, {"cancel", 1}, {"pause", 0}, {"resume", 0}, {"reload", 0}, {"history", 0},
        {"metrics", 0}, {"replay", 1}};
    auto it = arity.find(o.command);
    if (it == arity.end()) usage_error("unknown command '" + o.command + "'");
    if (o.args.size() != it->second)
        usage_error("'" + o.command + "' takes " +
                    (it->second ? "one argument, a job id" : std::string("no arguments")));
    if (!o.result.empty()) check_result(o.result);
    if (o.command != "history" && (!o.key.empty() || !o.result.empty() || !o.since.empty()))
        usage_error("--key, --result and --since are options of 'history'");
    if (o.body && o.command != "job") usage_error("--body is an option of 'job'");
    if (it->second) parse_job_id(o.args[0]); // before connecting: a usage error is a usage error
    return o;
}

// ---- sd-bus helpers ---------------------------------------------------------------------------

struct BusUnref {
    void operator()(sd_bus* b) const noexcept { sd_bus_flush_close_unref(b); }
};
struct MessageUnref {
    void operator()(sd_bus_message* m) const noexcept { sd_bus_message_unref(m); }
};
using Bus = std::unique_ptr<sd_bus, BusUnref>;
using Message = std::unique_ptr<sd_bus_message, MessageUnref>;

// A failed call, with what the user should be told and the exit status.
struct Failure {
    int status;
    std::string message;
};

// Reading a reply that does not have the documented signature: a version mismatch.
void check_read(int r) {
    if (r < 0) throw Failure{kFailed, std::string("unexpected reply from loopabull: ") + std::strerror(-r)};
}

class Client {
public:
    explicit Client(const Options& o) : o_(o), name_(loopabull::bus_name_for(o.instance)) {
        where_ = o.user ? "the user bus" : "the system bus";
        sd_bus* b = nullptr;
        int r = o.user ? sd_bus_open_user(&b) : sd_bus_open_system(&b);
        if (r < 0)
            throw Failure{kFailed, "cannot connect to " + where_ + ": " + std::strerror(-r)};
        bus_.reset(b);
        // Like systemctl: polkit may ask the user for a password (through an agent).
        sd_bus_set_allow_interactive_authorization(b, o.ask_password);
    }

    void set_timeout(std::uint64_t usec) { sd_bus_set_method_call_timeout(bus_.get(), usec); }

    // Calls a method of the manager; the arguments are appended by `fill`.
    template <class Fill>
    Message call(const char* interface, const char* member, Fill&& fill) {
        sd_bus_message* m = nullptr;
        int r = sd_bus_message_new_method_call(bus_.get(), &m, name_.c_str(), kBusObjectPath, interface, member);
        if (r < 0) throw Failure{kFailed, std::string("cannot build a call: ") + std::strerror(-r)};
        Message call(m);
        r = fill(m);
        if (r < 0) throw Failure{kFailed, std::string("cannot build a call: ") + std::strerror(-r)};
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus_message* reply = nullptr;
        r = sd_bus_call(bus_.get(), m, 0, &error, &reply);
        Message owned(reply);
        if (r < 0) {
            Failure f = failure(member, &error, r);
            sd_bus_error_free(&error);
            throw f;
        }
        return owned;
    }

    Message call(const char* member) {
        return call(kBusInterface, member, [](sd_bus_message*) { return 0; });
    }

    const std::string& name() const { return name_; }
    const std::string& where() const { return where_; }

private:
    Failure failure(const char* member, const sd_bus_error* e, int r) const {
        std::string msg = e && e->message ? e->message : std::strerror(-r);
        auto is = [&](const char* n) { return sd_bus_error_has_name(e, n) > 0; };
        if (is(SD_BUS_ERROR_SERVICE_UNKNOWN) || is(SD_BUS_ERROR_NAME_HAS_NO_OWNER))
            return {kNotRunning, "loopabull instance " + o_.instance + " is not running (no " + name_ +
                                     " on " + where_ + ")"};
        if (is(loopabull::kErrorNoSuchJob)) return {kNoSuchJob, msg};
        if (is(loopabull::kErrorNoBody) || is(loopabull::kErrorReplayRefused)) return {kNoReplay, msg};
        const char* action = std::string_view(member) == "ReplayJob" ? loopabull::kReplayAction
                                                                      : loopabull::kManageAction;
        if (is(SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED))
            return {kDenied, std::string("authentication required to ") + member + " instance " + o_.instance +
                                 " (polkit action " + action +
                                 "): run it as root, or on a terminal without --no-ask-password"};
        if (is(SD_BUS_ERROR_ACCESS_DENIED) || r == -EACCES || r == -EPERM) {
            static constexpr std::string_view kPrefix = "Access denied: ";
            if (msg.starts_with(kPrefix)) msg.erase(0, kPrefix.size());
            std::string hint = o_.user ? std::string()
                                       : std::string(" (") + member + " needs root or the polkit action " +
                                             action + ")";
            return {kDenied, "access denied: " + msg + hint};
        }
        if (is(SD_BUS_ERROR_NO_REPLY) || is(SD_BUS_ERROR_TIMEOUT) || r == -ETIMEDOUT)
            return {kFailed, "no answer from loopabull instance " + o_.instance + " (" + name_ +
                                 "): is it hung? " + msg};
        std::string name = e && e->name ? std::string(" (") + e->name + ")" : std::string();
        return {kFailed, std::string(member) + " failed: " + msg + name};
    }

    const Options& o_;
    std::string name_, where_;
    Bus bus_;
};

// ---- what the API returns ---------------------------------------------------------------------

struct LooperRow {
    std::string name, state;
    std::uint32_t pid = 0, restarts = 0;
    std::uint64_t events = 0;
};

struct JobRow {
    std::uint64_t id = 0;
    std::string routing_key, state, unit, looper;
    std::uint64_t started_usec = 0;
};

struct JobDetail {
    std::uint64_t id = 0;
    std::string routing_key, state, unit, looper;
    std::uint64_t queued_usec = 0, started_usec = 0, finished_usec = 0;
    std::string result;
    std::int32_t exit_code = -1;
    std::string error; // why it did not succeed
};

struct Status {
    std::map<std::string, std::string> text;     // Instance, Version, State
    std::map<std::string, std::uint64_t> number;  // the counters
};

Status get_status(Client& c) {
    auto reply = c.call("org.freedesktop.DBus.Properties", "GetAll",
                        [](sd_bus_message* m) { return sd_bus_message_append(m, "s", kBusInterface); });
    sd_bus_message* m = reply.get();
    Status s;
    check_read(sd_bus_message_enter_container(m, 'a', "{sv}"));
    for (;;) {
        int r = sd_bus_message_enter_container(m, 'e', "sv");
        check_read(r);
        if (r == 0) break;
        const char* name = nullptr;
        check_read(sd_bus_message_read(m, "s", &name));
        std::string key(name);
        char type = 0;
        const char* contents = nullptr;
        check_read(sd_bus_message_peek_type(m, &type, &contents));
        if (contents && std::strcmp(contents, "s") == 0) {
            const char* v = nullptr;
            check_read(sd_bus_message_read(m, "v", "s", &v));
            s.text[key] = v;
        } else if (contents && std::strcmp(contents, "t") == 0) {
            std::uint64_t v = 0;
            check_read(sd_bus_message_read(m, "v", "t", &v));
            s.number[key] = v;
        } else if (contents && std::strcmp(contents, "u") == 0) {
            std::uint32_t v = 0;
            check_read(sd_bus_message_read(m, "v", "u", &v));
            s.number[key] = v;
        } else {
            check_read(sd_bus_message_skip(m, "v"));
        }
        check_read(sd_bus_message_exit_container(m));
    }
    check_read(sd_bus_message_exit_container(m));
    return s;
}

// Calls a List* method and reads its array of structs; read_row reads one struct (its D-Bus
// type is row_type) and returns sd_bus_message_read's result: 0 at the end of the array.
template <class Row, class ReadRow>
std::vector<Row> read_list(Client& c, const char* method, const char* row_type, ReadRow read_row) {
    auto reply = c.call(method);
    sd_bus_message* m = reply.get();
    std::vector<Row> out;
    check_read(sd_bus_message_enter_container(m, 'a', row_type));
    for (;;) {
        Row row;
        int r = read_row(m, row_type, row);
        check_read(r);
        if (r == 0) break;
        out.push_back(std::move(row));
    }
    return out;
}

std::vector<LooperRow> list_loopers(Client& c) {
    return read_list<LooperRow>(c, "ListLoopers", "(ssuut)",
                                [](sd_bus_message* m, const char* type, LooperRow& row) {
        const char *name = nullptr, *state = nullptr;
        int r = sd_bus_message_read(m, type, &name, &state, &row.pid, &row.restarts, &row.events);
        if (r > 0) {
            row.name = name;
            row.state = state;
        }
        return r;
    });
}

std::vector<JobRow> list_jobs(Client& c) {
    return read_list<JobRow>(c, "ListJobs", "(tsssts)",
                             [](sd_bus_message* m, const char* type, JobRow& row) {
        const char *key = nullptr, *state = nullptr, *unit = nullptr, *looper = nullptr;
        int r = sd_bus_message_read(m, type, &row.id, &key, &state, &unit, &row.started_usec, &looper);
        if (r > 0) {
            row.routing_key = key;
            row.state = state;
            row.unit = unit;
            row.looper = looper;
        }
        return r;
    });
}

JobDetail get_job(Client& c, std::uint64_t id) {
    auto reply = c.call(kBusInterface, "GetJob", [id](sd_bus_message* m) { return sd_bus_message_append(m, "t", id); });
    JobDetail j;
    const char *key = nullptr, *state = nullptr, *unit = nullptr, *looper = nullptr, *result = nullptr;
    check_read(sd_bus_message_read(reply.get(), "tsssstttsi", &j.id, &key, &state, &unit, &looper,
                                   &j.queued_usec, &j.started_usec, &j.finished_usec, &result, &j.exit_code));
    // error: added in 0.2; an older supervisor does not send it.
    const char* error = nullptr;
    if (sd_bus_message_peek_type(reply.get(), nullptr, nullptr) > 0) {
        check_read(sd_bus_message_read(reply.get(), "s", &error));
        j.error = error;
    }
    j.routing_key = key;
    j.state = state;
    j.unit = unit;
    j.looper = looper;
    j.result = result;
    return j;
}

// ---- output -----------------------------------------------------------------------------------

std::string format_time(std::uint64_t usec) {
    if (usec == 0) return "-";
    time_t t = static_cast<time_t>(usec / 1000000);
    struct tm tm{};
    localtime_r(&t, &tm);
    char buf[64];
    if (strftime(buf, sizeof buf, "%a %Y-%m-%d %H:%M:%S %Z", &tm) == 0) return "-";
    return buf;
}

std::string format_duration(std::uint64_t from, std::uint64_t to) {
    if (from == 0 || to < from) return {};
    double s = static_cast<double>(to - from) / 1e6;
    char buf[64];
    if (s < 1) std::snprintf(buf, sizeof buf, "%dms", static_cast<int>(s * 1000));
    else if (s < 60) std::snprintf(buf, sizeof buf, "%.1fs", s);
    else if (s < 3600) std::snprintf(buf, sizeof buf, "%dmin %ds", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
    else std::snprintf(buf, sizeof buf, "%dh %dmin", static_cast<int>(s) / 3600, static_cast<int>(s) / 60 % 60);
    return buf;
}

std::uint64_t now_usec() {
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1000000 + static_cast<std::uint64_t>(ts.tv_nsec) / 1000;
}

json null_if(bool none, json value) { return none ? json(nullptr) : std::move(value); }

json to_json(const LooperRow& l) {
    return {{"name", l.name}, {"state", l.state}, {"pid", null_if(l.pid == 0, l.pid)},
            {"restarts", l.restarts}, {"events", l.events}};
}

json to_json(const JobRow& j) {
    return {{"id", j.id},
            {"routing_key", j.routing_key},
            {"state", j.state},
            {"unit", null_if(j.unit.empty(), j.unit)},
            {"started_usec", null_if(j.started_usec == 0, j.started_usec)},
            {"looper", j.looper}};
}

json to_json(const JobDetail& j) {
    return {{"id", j.id},
            {"routing_key", j.routing_key},
            {"state", j.state},
            {"unit", null_if(j.unit.empty(), j.unit)},
            {"looper", j.looper},
            {"queued_usec", null_if(j.queued_usec == 0, j.queued_usec)},
            {"started_usec", null_if(j.started_usec == 0, j.started_usec)},
            {"finished_usec", null_if(j.finished_usec == 0, j.finished_usec)},
            {"result", null_if(j.result.empty(), j.result)},
            {"exit_code", null_if(j.exit_code < 0, j.exit_code)},
            {"error", null_if(j.error.empty(), j.error)}};
}

void print_json(const json& j) { std::printf("%s\n", j.dump(2).c_str()); }

// A table with columns as wide as their widest cell, like systemctl list-jobs. Cells are shown
// as the log shows outside text: control characters escaped.
void print_table(const std::vector<std::string>& header, std::vector<std::vector<std::string>> rows) {
    for (auto& row : rows)
        for (auto& c : row) c = loopabull::loggable(c);
    std::vector<std::size_t> width(header.size());
    for (std::size_t i = 0; i < header.size(); ++i) width[i] = header[i].size();
    for (auto& row : rows)
        for (std::size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
    auto line = [&](const std::vector<std::string>& cells) {
        std::string out;
        for (std::size_t i = 0; i < cells.size(); ++i) {
            out += cells[i];
            if (i + 1 < cells.size()) out += std::string(width[i] - cells[i].size() + 1, ' ');
        }
        std::printf("%s\n", out.c_str());
    };
    line(header);
    for (auto& row : rows) line(row);
}

std::vector<std::string> job_cells(const JobRow& j) {
    return {std::to_string(j.id), j.state, j.routing_key, j.looper,
            j.started_usec ? format_time(j.started_usec) : "-", j.unit.empty() ? "-" : j.unit};
}

int cmd_status(Client& c, const Options& o) {
    auto s = get_status(c);
    auto loopers = list_loopers(c);
    auto jobs = list_jobs(c);
    auto n = [&](const char* k) { return s.number.count(k) ? s.number[k] : 0; };
    if (o.json) {
        json j = {{"instance", s.text["Instance"]},
                  {"bus_name", c.name()},
                  {"version", s.text["Version"]},
                  {"state", s.text["State"]},
                  {"events_received", n("EventsReceived")},
                  {"events_rejected", n("EventsRejected")},
                  {"events_superseded", n("EventsSuperseded")},
                  {"events_throttled", n("EventsThrottled")},
                  {"events_duplicate", n("EventsDuplicate")},
                  {"jobs_queued", n("JobsQueued")},
                  {"jobs_running", n("JobsRunning")},
                  {"jobs_succeeded", n("JobsSucceeded")},
                  {"jobs_failed", n("JobsFailed")},
                  {"warm_runner", s.text["WarmRunner"]},
                  {"warm_runner_memory", n("WarmRunnerMemory")},
                  {"loopers", json::array()},
                  {"jobs", json::array()}};
        for (auto& l : loopers) j["loopers"].push_back(to_json(l));
        for (auto& job : jobs) j["jobs"].push_back(to_json(job));
        print_json(j);
        return kOk;
    }
    std::printf("loopabull instance %s (%s on %s)\n", s.text["Instance"].c_str(), c.name().c_str(),
                c.where().c_str());
    std::printf("    State: %s\n", s.text["State"].c_str());
    std::printf("  Version: %s\n", s.text["Version"].c_str());
    // Superseded, throttled and duplicate events were answered without a run of their own
    // (routes' serial and throttle, de-duplication): the rest of "received" is in Jobs.
    std::printf("   Events: %" PRIu64 " received, %" PRIu64 " rejected, %" PRIu64
                " superseded, %" PRIu64 " throttled, %" PRIu64 " duplicate\n",
                n("EventsReceived"), n("EventsRejected"), n("EventsSuperseded"),
                n("EventsThrottled"), n("EventsDuplicate"));
    std::printf("     Jobs: %" PRIu64 " running, %" PRIu64 " queued, %" PRIu64 " succeeded, %" PRIu64
                " failed\n",
                n("JobsRunning"), n("JobsQueued"), n("JobsSucceeded"), n("JobsFailed"));
    if (s.text.count("WarmRunner")) {
        auto rss = n("WarmRunnerMemory");
        std::printf("     Warm: %s%s\n", s.text["WarmRunner"].c_str(),
                    rss ? (", " + std::to_string(rss >> 20) + " MiB resident").c_str() : "");
    }
    if (loopers.empty()) std::printf("  Loopers: none\n");
    for (std::size_t i = 0; i < loopers.size(); ++i) {
        auto& l = loopers[i];
        std::string pid = l.pid ? "pid " + std::to_string(l.pid) : std::string("no process");
        std::printf("%s%s: %s (%s, %" PRIu64 " events, %u restarts)\n", i == 0 ? "  Loopers: " : "           ",
                    l.name.c_str(), l.state.c_str(), pid.c_str(), l.events, l.restarts);
    }
    std::vector<std::vector<std::string>> rows;
    std::size_t queued = 0;
    for (auto& j : jobs) {
        if (j.state != "running") {
            ++queued;
            continue;
        }
        rows.push_back({std::to_string(j.id), j.routing_key, j.looper, format_time(j.started_usec),
                        format_duration(j.started_usec, now_usec()), j.unit.empty() ? "-" : j.unit});
    }
    std::printf("\n");
    if (rows.empty()) std::printf("No running jobs.\n");
    else print_table({"ID", "ROUTING KEY", "LOOPER", "STARTED", "RUNNING FOR", "UNIT"}, rows);
    if (queued) std::printf("%zu queued job%s: see 'loopabullctl jobs'.\n", queued, queued == 1 ? "" : "s");
    return kOk;
}

int cmd_jobs(Client& c, const Options& o) {
    auto jobs = list_jobs(c);
    if (o.json) {
        json j = json::array();
        for (auto& job : jobs) j.push_back(to_json(job));
        print_json(j);
        return kOk;
    }
    if (jobs.empty()) {
        std::printf("No jobs.\n");
        return kOk;
    }
    std::vector<std::vector<std::string>> rows;
    for (auto& j : jobs) rows.push_back(job_cells(j));
    print_table({"ID", "STATE", "ROUTING KEY", "LOOPER", "STARTED", "UNIT"}, rows);
    std::printf("\n%zu job%s listed.\n", jobs.size(), jobs.size() == 1 ? "" : "s");
    return kOk;
}

// Routes (issue 14): the route, serialization value and replacing job; empty from an instance
// older than GetJobRouting.
loopabull::ctl::JobRouting get_job_routing(Client& c, std::uint64_t id) {
    loopabull::ctl::JobRouting r;
    try {
        auto reply = c.call(kBusInterface, "GetJobRouting", [id](sd_bus_message* m) {
            return sd_bus_message_append(m, "t", id);
        });
        const char *route = nullptr, *value = nullptr;
        check_read(sd_bus_message_read(reply.get(), "sst", &route, &value, &r.superseded_by));
        r.route = route;
        r.serialize_value = value;
    } catch (const Failure&) {
    }
    return r;
}

// Issue 17: the job's ledger record (GetJobRecord); null when the instance keeps no history,
// has not recorded the job yet (queued, running), or is older than GetJobRecord.
json get_job_record(Client& c, std::uint64_t id) {
    try {
        auto reply = c.call(kBusInterface, "GetJobRecord", [id](sd_bus_message* m) {
            return sd_bus_message_append(m, "t", id);
        });
        const char* text = nullptr;
        check_read(sd_bus_message_read(reply.get(), "s", &text));
        auto record = json::parse(text, nullptr, false);
        return record.is_object() ? record : json();
    } catch (const Failure&) {
        return json();
    }
}

int cmd_job(Client& c, const Options& o) {
    auto j = get_job(c, parse_job_id(o.args[0]));
    auto record = j.state == "finished" ? get_job_record(c, j.id) : json();
    if (o.json) {
        auto out = to_json(j);
        if (record.is_object())
            for (auto key : {"replay_of", "body", "body_size"})
                if (record.contains(key)) out[key] = record[key];
        auto routing = get_job_routing(c, j.id);
        if (!routing.route.empty()) out["route"] = routing.route;
        if (!routing.serialize_value.empty()) out["serialize_value"] = routing.serialize_value;
        if (routing.superseded_by) out["superseded_by"] = routing.superseded_by;
        print_json(out);
        return kOk;
    }
    std::printf("         Job: %" PRIu64 "\n", j.id);
    std::printf(" Routing key: %s\n", j.routing_key.c_str());
    std::printf("       State: %s\n", j.state.c_str());
    std::printf("      Result: %s\n", j.result.empty() ? "-" : j.result.c_str());
    std::printf("   Exit code: %s\n", j.exit_code < 0 ? "-" : std::to_string(j.exit_code).c_str());
    if (!j.error.empty()) std::printf("       Error: %s\n", loopabull::loggable(j.error).c_str());
    std::printf("      Looper: %s\n", j.looper.c_str());
    std::printf("        Unit: %s\n", j.unit.empty() ? "-" : j.unit.c_str());
    std::printf("      Queued: %s\n", format_time(j.queued_usec).c_str());
    std::printf("     Started: %s\n", format_time(j.started_usec).c_str());
    std::string took = format_duration(j.started_usec, j.finished_usec);
    std::printf("    Finished: %s%s\n", format_time(j.finished_usec).c_str(),
                j.finished_usec && !took.empty() ? (" (ran " + took + ")").c_str() : "");
    std::fputs(loopabull::ctl::job_routing_lines(get_job_routing(c, j.id)).c_str(), stdout);
    std::fputs(loopabull::ctl::job_record_lines(record).c_str(), stdout);
    return kOk;
}

int cmd_history(Client& c, const Options& o) {
    std::uint64_t since = o.since.empty() ? 0 : loopabull::ctl::parse_since(o.since, now_usec()).value_or(0);
    auto reply = c.call(kBusInterface, "ListHistory", [&](sd_bus_message* m) {
        return sd_bus_message_append(m, "sstu", o.key.c_str(), o.result.c_str(), since, o.limit);
    });
    const char* text = nullptr;
    check_read(sd_bus_message_read(reply.get(), "s", &text));
    auto records = json::parse(text, nullptr, false);
    if (!records.is_array()) throw Failure{kFailed, "unexpected reply from loopabull: not a JSON array"};
    loopabull::ctl::print_history(records, o.json);
    return kOk;
}

int cmd_metrics(Client& c, const Options& o) {
    auto reply = c.call(kBusInterface, "GetMetrics", [](sd_bus_message*) { return 0; });
    const char* text = nullptr;
    check_read(sd_bus_message_read(reply.get(), "s", &text));
    loopabull::ctl::print_metrics(text, o.json);
    return kOk;
}

// ---- polkit agent -----------------------------------------------------------------------------

// As systemctl does: on a terminal, a text agent that can ask for the password, registered
// before the call (pkttyagent --notify-fd closes the pipe once it is ready).
class Agent {
public:
    static std::unique_ptr<Agent> start_if_useful(const Options& o) {
        static constexpr const char* kPath = "/usr/bin/pkttyagent";
        if (!o.ask_password || o.user || geteuid() == 0 || !isatty(STDIN_FILENO) || access(kPath, X_OK) < 0)
            return nullptr;
        int fds[2];
        if (pipe2(fds, O_CLOEXEC) < 0) return nullptr;
        pid_t pid = fork();
        if (pid < 0) {
            close(fds[0]);
            close(fds[1]);
            return nullptr;
        }
        if (pid == 0) {
            close(fds[0]);
            fcntl(fds[1], F_SETFD, 0);
            std::string fd = std::to_string(fds[1]);
            execl(kPath, kPath, "--notify-fd", fd.c_str(), "--fallback", static_cast<char*>(nullptr));
            _exit(127);
        }
        close(fds[1]);
        pollfd p{fds[0], POLLIN, 0};
        poll(&p, 1, 10000); // EOF (or its death) once it has registered
        close(fds[0]);
        auto a = std::make_unique<Agent>();
        a->pid_ = pid;
        return a;
    }
    ~Agent() {
        if (pid_ <= 0) return;
        kill(pid_, SIGTERM);
        waitpid(pid_, nullptr, 0);
    }

private:
    pid_t pid_ = -1;
};

int cmd_manage(Client& c, const Options& o) {
    std::unique_ptr<Agent> agent = Agent::start_if_useful(o);
    // A human may be typing a password.
    if (agent) c.set_timeout(5ull * 60 * 1000 * 1000);
    if (o.command == "job") { // --body
        std::uint64_t id = parse_job_id(o.args[0]);
        auto reply = c.call(kBusInterface, "GetJobBody", [id](sd_bus_message* m) { return sd_bus_message_append(m, "t", id); });
        const char* text = nullptr;
        check_read(sd_bus_message_read(reply.get(), "s", &text));
        loopabull::ctl::print_body(text);
    } else if (o.command == "replay") {
        std::uint64_t id = parse_job_id(o.args[0]);
        auto reply = c.call(kBusInterface, "ReplayJob", [id](sd_bus_message* m) { return sd_bus_message_append(m, "t", id); });
        std::uint64_t new_id = 0;
        check_read(sd_bus_message_read(reply.get(), "t", &new_id));
        loopabull::ctl::print_replay(new_id, id, o.json);
    } else if (o.command == "cancel") {
        std::uint64_t id = parse_job_id(o.args[0]);
        c.call(kBusInterface, "CancelJob", [id](sd_bus_message* m) { return sd_bus_message_append(m, "t", id); });
    } else if (o.command == "pause") {
        c.call("Pause");
    } else if (o.command == "resume") {
        c.call("Resume");
    } else {
        c.call("Reload");
    }
    return kOk;
}

} // namespace

int main(int argc, char** argv) {
    // submit writes into a spool directory and needs no bus (ctl/submit.hpp).
    if (loopabull::ctl::is_submit_command(argc, argv))
        return loopabull::ctl::submit_main(argc, argv);
    Options o = parse_args(argc, argv);
    try {
        Client c(o);
        if (o.command == "status") return cmd_status(c, o);
        if (o.command == "jobs") return cmd_jobs(c, o);
        if (o.command == "job" && !o.body) return cmd_job(c, o);
        if (o.command == "history") return cmd_history(c, o);
        if (o.command == "metrics") return cmd_metrics(c, o);
        if (o.command == "explain")
            return loopabull::ctl::cmd_explain(o.args, o.looper, o.json, [&](const std::string& key, const std::string& body,
                                                                  const std::string& looper) {
                auto reply = c.call(kBusInterface, "Explain", [&](sd_bus_message* m) {
                    return sd_bus_message_append(m, "sss", key.c_str(), body.c_str(), looper.c_str());
                });
                int would_run = 0;
                const char *text = nullptr, *json = nullptr;
                check_read(sd_bus_message_read(reply.get(), "bss", &would_run, &text, &json));
                return loopabull::ctl::ExplainReply{would_run != 0, text, json};
            });
        return cmd_manage(c, o);
    } catch (const Failure& f) {
        std::fprintf(stderr, "loopabullctl: %s\n", f.message.c_str());
        return f.status;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "loopabullctl: %s\n", e.what());
        return kFailed;
    }
}
