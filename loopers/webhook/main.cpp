// SPDX-License-Identifier: GPL-3.0-or-later
//
// webhook: the bundled looper that receives authenticated HTTP(S) webhooks
// (man/loopabull-webhook.7).
//
// One thread: libmicrohttpd (what systemd-journal-remote uses for the same job) runs in
// "external select" mode on its epoll descriptor, polled with the supervisor's pipes and the stop
// signals. An accepted request is written to the spool in the state directory (fsync, rename,
// fsync of the directory) before the client hears 202, and leaves it only when loopabull has
// answered for it; what is there at start is sent again.

#include "kit/looper-kit.hpp"
#include "webhook/webhook.hpp"

#include <gnutls/gnutls.h>
#include <microhttpd.h>
#include <systemd/sd-daemon.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

namespace kit = loopabull::kit;
namespace wh = loopabull::webhook;
using kit::errno_text;
using kit::log;
using kit::shortened;
using loopabull::UniqueFd;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

// Events written to stdout but not yet taken by the supervisor, at most: past this the spool
// holds them (nothing is lost, the supervisor applies back-pressure).
constexpr std::size_t kOutboxBound = 256 * 1024;

std::string read_file(const std::string& path, std::size_t limit) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
    if (!fd) throw std::runtime_error("cannot open " + path + ": " + errno_text(errno));
    std::string data;
    char chunk[65536];
    for (;;) {
        ssize_t n = ::read(fd.get(), chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw std::runtime_error("cannot read " + path + ": " + errno_text(errno));
        if (n == 0) return data;
        data.append(chunk, static_cast<std::size_t>(n));
        if (data.size() > limit) throw std::runtime_error(path + " is larger than expected");
    }
}

std::string read_secret(const std::string& path) {
    std::string s;
    try {
        s = read_file(path, 64 * 1024);
    } catch (const std::exception& e) {
        throw wh::OptionError(e.what());
    }
    if (s.ends_with('\n')) s.pop_back();
    if (s.ends_with('\r')) s.pop_back();
    return s;
}

// One line per kind of refusal every 10 seconds at most, with the count of those not logged:
// a flood of bad requests cannot flood the journal.
class RateLog {
  public:
    void line(const std::string& kind, const std::string& text) {
        auto now = Clock::now();
        auto& s = state_[kind];
        if (s.logged && now - *s.logged < std::chrono::seconds(10)) {
            ++s.suppressed;
            return;
        }
        std::string more =
            s.suppressed ? " (and " + std::to_string(s.suppressed) + " more like it)" : "";
        log(text, more);
        s.logged = now;
        s.suppressed = 0;
    }

  private:
    struct State {
        std::optional<Clock::time_point> logged;
        unsigned long suppressed = 0;
    };
    std::map<std::string, State> state_;
};

RateLog g_ratelog;

// Token bucket per client address.
class ClientRates {
  public:
    ClientRates(double rate, double burst) : rate_(rate), burst_(burst) {}
    bool allow(const std::string& client) {
        if (rate_ <= 0) return true;
        auto now = Clock::now();
        if (buckets_.size() > 10000) prune(now);
        auto [it, fresh] = buckets_.try_emplace(client, Bucket{burst_, now});
        auto& b = it->second;
        if (!fresh) {
            double elapsed = std::chrono::duration<double>(now - b.at).count();
            b.tokens = std::min(burst_, b.tokens + elapsed * rate_);
            b.at = now;
        }
        if (b.tokens < 1) return false;
        b.tokens -= 1;
        return true;
    }

  private:
    struct Bucket {
        double tokens;
        Clock::time_point at;
    };
    void prune(Clock::time_point now) {
        std::erase_if(buckets_, [&](const auto& item) {
            return std::chrono::duration<double>(now - item.second.at).count() * rate_ >= burst_;
        });
    }
    double rate_, burst_;
    std::unordered_map<std::string, Bucket> buckets_;
};

// Delivery ids (or signatures) seen within the replay window. Bounded: the oldest go first.
class ReplayCache {
  public:
    explicit ReplayCache(std::chrono::seconds window) : window_(window) {}
    std::optional<std::string> seen(const std::string& key) {
        expire();
        auto it = ids_.find(key);
        if (it == ids_.end()) return std::nullopt;
        return it->second;
    }
    void add(const std::string& key, const std::string& event_id) {
        if (window_.count() == 0) return;
        if (ids_.size() >= 100000) {
            ids_.erase(order_.front().second);
            order_.pop_front();
        }
        if (ids_.emplace(key, event_id).second) order_.emplace_back(Clock::now(), key);
    }

  private:
    void expire() {
        auto now = Clock::now();
        while (!order_.empty() && now - order_.front().first > window_) {
            ids_.erase(order_.front().second);
            order_.pop_front();
        }
    }
    std::chrono::seconds window_;
    std::unordered_map<std::string, std::string> ids_;
    std::deque<std::pair<Clock::time_point, std::string>> order_;
};

// ---- The spool ------------------------------------------------------------------------------

void fsync_dir(int dir) {
    if (::fsync(dir) != 0)
        throw std::runtime_error("fsync of the spool directory: " + errno_text(errno));
}

class Spool {
  public:
    explicit Spool(const std::string& state) {
        make_dir(state);
        path_ = state + "/spool";
        make_dir(path_);
        make_dir(path_ + "/failed");
        dir_ = UniqueFd(::open(path_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        failed_ = UniqueFd(::open((path_ + "/failed").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (!dir_ || !failed_)
            throw std::runtime_error("cannot open " + path_ + ": " + errno_text(errno));
    }
    const std::string& path() const { return path_; }

    // The lines of one request, each in ID.json: written to a temporary name, fsync'ed, renamed,
    // then the directory fsync'ed once. Throws on failure (the client then hears 503, and the
    // files already written are removed).
    void write(const std::vector<std::pair<std::string, std::string>>& events) {
        std::vector<std::string> done;
        try {
            for (const auto& [id, line] : events) {
                std::string tmp = "." + id + ".tmp";
                UniqueFd fd(::openat(dir_.get(), tmp.c_str(),
                                     O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
                if (!fd)
                    throw std::runtime_error("cannot create " + tmp + ": " + errno_text(errno));
                std::string_view rest = line;
                while (!rest.empty()) {
                    ssize_t n = ::write(fd.get(), rest.data(), rest.size());
                    if (n < 0 && errno == EINTR) continue;
                    if (n <= 0) {
                        ::unlinkat(dir_.get(), tmp.c_str(), 0);
                        throw std::runtime_error("cannot write " + tmp + ": " + errno_text(errno));
                    }
                    rest.remove_prefix(static_cast<std::size_t>(n));
                }
                if (::fsync(fd.get()) != 0 ||
                    ::renameat(dir_.get(), tmp.c_str(), dir_.get(), (id + ".json").c_str()) != 0) {
                    int err = errno;
                    ::unlinkat(dir_.get(), tmp.c_str(), 0);
                    throw std::runtime_error("cannot spool " + id + ": " + errno_text(err));
                }
                done.push_back(id);
            }
            fsync_dir(dir_.get());
        } catch (...) {
            for (const auto& id : done)
                remove(id);
            throw;
        }
    }

    void remove(const std::string& id) {
        if (::unlinkat(dir_.get(), (id + ".json").c_str(), 0) != 0 && errno != ENOENT)
            log("cannot remove ", id, " from the spool: ", errno_text(errno));
    }

    void move_to_failed(const std::string& id, const std::string& why) {
        std::string name = id + ".json";
        if (::renameat(dir_.get(), name.c_str(), failed_.get(), name.c_str()) != 0) {
            log("cannot move ", id, " to failed/: ", errno_text(errno));
            return;
        }
        std::string reason = name + ".reason";
        UniqueFd fd(::openat(failed_.get(), reason.c_str(),
                             O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
        if (fd) (void)!::write(fd.get(), why.data(), why.size());
    }

    // (id, line) of every spooled event, oldest first (ids sort by time).
    std::vector<std::pair<std::string, std::string>> load() {
        std::vector<std::string> names;
        UniqueFd copy(::openat(dir_.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        std::unique_ptr<DIR, int (*)(DIR*)> d(copy ? ::fdopendir(copy.get()) : nullptr, ::closedir);
        if (!d) throw std::runtime_error("cannot list " + path_ + ": " + errno_text(errno));
        copy.release();
        while (const dirent* e = ::readdir(d.get())) {
            std::string_view n(e->d_name);
            if (n.starts_with(".") && n.ends_with(".tmp")) ::unlinkat(dir_.get(), e->d_name, 0);
            if (!n.starts_with(".") && n.ends_with(".json"))
                names.emplace_back(n.substr(0, n.size() - 5));
        }
        std::sort(names.begin(), names.end());
        std::vector<std::pair<std::string, std::string>> out;
        for (auto& id : names) {
            try {
                std::string line = read_file(path_ + "/" + id + ".json", kit::kMaxEventLine + 1);
                if (!line.ends_with('\n')) throw std::runtime_error("truncated");
                out.emplace_back(id, std::move(line));
            } catch (const std::exception& e) {
                log("spooled event ", id, " is unreadable (", e.what(), "); moving it to failed/");
                move_to_failed(id, e.what());
            }
        }
        return out;
    }

  private:
    static void make_dir(const std::string& p) {
        if (::mkdir(p.c_str(), 0700) != 0 && errno != EEXIST)
            throw std::runtime_error("cannot create " + p + ": " + errno_text(errno));
    }
    std::string path_;
    UniqueFd dir_, failed_;
};

// ---- Requests -------------------------------------------------------------------------------

struct Request {
    const wh::Endpoint* endpoint = nullptr;
    std::string client;
    std::string body;
    Clock::time_point started = Clock::now();
    bool handled = false; // a response is queued, or the request waits for its answers
    // Synchronous mode: the connection is suspended until every event is answered.
    MHD_Connection* connection = nullptr;
    std::string request_id;
    std::vector<std::string> ids;
    json results = json::array();
    Clock::time_point deadline;
    std::optional<std::pair<unsigned, std::string>> ready; // status and body once resumed
};

class Server {
  public:
    Server(wh::Options options, Spool& spool)
        : options_(std::move(options)), spool_(spool),
          rates_(options_.limits.rate, options_.limits.rate_burst),
          replays_(options_.limits.replay_window) {}

    ~Server() {
        for (auto* d : daemons_)
            MHD_stop_daemon(d);
    }

    void start();
    void loop(int signals);
    void resend_spool();

    // MHD callbacks.
    MHD_Result handle(MHD_Connection* c, const char* url, const char* method, const char* data,
                      size_t* size, void** cls);

  private:
    MHD_Result respond(MHD_Connection* c, Request* r, unsigned status, const json& body,
                       const char* why = nullptr, const std::string& detail = {});
    MHD_Result accept(MHD_Connection* c, Request* r);
    bool client_cert_ok(MHD_Connection* c);
    void answer(std::string_view line);
    void pump();
    void finish_sync(Request* r, bool timed_out);
    std::string new_id();

    wh::Options options_;
    Spool& spool_;
    ClientRates rates_;
    ReplayCache replays_;
    std::vector<MHD_Daemon*> daemons_;
    std::string cert_, key_, ca_;
    kit::Outbox out_;
    std::deque<std::pair<std::string, std::string>> to_send_; // spooled, not yet written
    std::unordered_map<std::string, Request*> in_flight_;     // id -> sync request or nullptr
    std::size_t spooled_ = 0;
    std::vector<Request*> waiting_; // suspended synchronous requests
    unsigned long counter_ = 0;
};

std::string client_address(MHD_Connection* c) {
    const auto* info = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!info || !info->client_addr) return "?";
    char host[INET6_ADDRSTRLEN] = "?";
    const sockaddr* sa = info->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr, host, sizeof host);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr, host,
                  sizeof host);
    return host;
}

wh::KeyTemplate::Headers header_lookup(MHD_Connection* c) {
    return [c](std::string_view name) -> std::optional<std::string> {
        // MHD compares header names case-insensitively.
        const char* v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, std::string(name).c_str());
        if (!v) return std::nullopt;
        return std::string(v);
    };
}

std::string iso_now() {
    char buf[32];
    std::time_t t = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&t, &tm);
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

std::string Server::new_id() {
    char stamp[32];
    std::time_t t = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&t, &tm);
    std::strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
    unsigned char rnd[4] = {};
    (void)!getrandom(rnd, sizeof rnd, 0);
    char out[80];
    std::snprintf(out, sizeof out, "%s-%06lu-%02x%02x%02x%02x", stamp, ++counter_ % 1000000, rnd[0],
                  rnd[1], rnd[2], rnd[3]);
    return out;
}

MHD_Result Server::respond(MHD_Connection* c, Request* r, unsigned status, const json& body,
                           const char* why, const std::string& detail) {
    if (r) r->handled = true;
    if (why) {
        std::string path = r && r->endpoint ? r->endpoint->path : "";
        g_ratelog.line(std::to_string(status) + why,
                       "refused " + std::to_string(status) + " (" + why + ") to " +
                           (r ? r->client : "?") + (path.empty() ? "" : " on " + path) +
                           (detail.empty() ? "" : ": " + shortened(detail)));
    }
    std::string text = body.dump() + "\n";
    MHD_Response* resp =
        MHD_create_response_from_buffer(text.size(), text.data(), MHD_RESPMEM_MUST_COPY);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", "application/json");
    if (status == MHD_HTTP_TOO_MANY_REQUESTS || status == MHD_HTTP_SERVICE_UNAVAILABLE)
        MHD_add_response_header(resp, "Retry-After", "1");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED) MHD_add_response_header(resp, "Allow", "POST");
    MHD_Result rc = MHD_queue_response(c, status, resp);
    MHD_destroy_response(resp);
    return rc;
}

bool Server::client_cert_ok(MHD_Connection* c) {
    if (options_.tls.client_ca.empty()) return true;
    const auto* info = MHD_get_connection_info(c, MHD_CONNECTION_INFO_GNUTLS_SESSION);
    if (!info || !info->tls_session) return false;
    unsigned status = 0;
    auto session = static_cast<gnutls_session_t>(info->tls_session);
    return gnutls_certificate_verify_peers2(session, &status) == 0 && status == 0;
}

MHD_Result Server::handle(MHD_Connection* c, const char* url, const char* method, const char* data,
                          size_t* size, void** cls) {
    auto* r = static_cast<Request*>(*cls);
    if (!r) {
        r = new Request;
        *cls = r;
        r->client = client_address(c);
        for (const auto& e : options_.endpoints)
            if (e.path == url) r->endpoint = &e;
        if (!r->endpoint)
            return respond(c, r, MHD_HTTP_NOT_FOUND, {{"error", "no such endpoint"}}, "no endpoint",
                           url);
        if (std::string_view(method) != "POST")
            return respond(c, r, MHD_HTTP_METHOD_NOT_ALLOWED, {{"error", "only POST"}}, "method",
                           method);
        if (!rates_.allow(r->client))
            return respond(c, r, MHD_HTTP_TOO_MANY_REQUESTS, {{"error", "too many requests"}},
                           "rate");
        if (!client_cert_ok(c))
            return respond(c, r, MHD_HTTP_FORBIDDEN,
                           {{"error", "a client certificate is required"}}, "client certificate");
        if (const char* length =
                MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length")) {
            char* end = nullptr;
            unsigned long long n = std::strtoull(length, &end, 10);
            if (n > options_.limits.max_body)
                return respond(c, r, MHD_HTTP_CONTENT_TOO_LARGE, {{"error", "body too large"}},
                               "body size", "Content-Length " + std::to_string(n));
        }
        return MHD_YES;
    }
    if (*size) {
        if (r->handled) { // a refusal already queued: ignore the rest
            *size = 0;
            return MHD_YES;
        }
        if (Clock::now() - r->started > options_.limits.request_timeout) {
            g_ratelog.line("timeout",
                           "closing a request from " + r->client + ": slower than request_timeout");
            return MHD_NO;
        }
        if (r->body.size() + *size > options_.limits.max_body) {
            g_ratelog.line("body size",
                           "closing a request from " + r->client + ": body larger than max_body");
            return MHD_NO; // chunked: MHD cannot answer in the middle of a body
        }
        r->body.append(data, *size);
        *size = 0;
        return MHD_YES;
    }
    if (r->ready) {
        auto [status, text] = *r->ready;
        r->ready.reset();
        return respond(c, r, status, json::parse(text));
    }
    if (r->handled) return MHD_YES;
    return accept(c, r);
}

MHD_Result Server::accept(MHD_Connection* c, Request* r) {
    if (Clock::now() - r->started > options_.limits.request_timeout)
        return respond(c, r, MHD_HTTP_REQUEST_TIMEOUT, {{"error", "request too slow"}}, "timeout");
    const auto& ep = *r->endpoint;
    auto headers = header_lookup(c);
    // Authentication first: nothing of an unauthenticated request is parsed or kept.
    if (auto error = wh::authenticate(ep.auth, headers, r->body)) {
        bool missing = error->starts_with("no ");
        return respond(c, r, missing ? MHD_HTTP_UNAUTHORIZED : MHD_HTTP_FORBIDDEN,
                       {{"error", missing ? "authentication required" : "authentication failed"}},
                       "authentication", *error);
    }
    auto replay = wh::replay_key(ep, headers);
    if (replay) {
        if (auto previous = replays_.seen(*replay))
            return respond(c, r, MHD_HTTP_CONFLICT,
                           {{"error", "already delivered"}, {"id", *previous}}, "replay",
                           "same delivery as " + *previous);
    }
    auto made = wh::make_events(ep, headers, r->body);
    if (!made.error.empty())
        return respond(c, r, MHD_HTTP_BAD_REQUEST, {{"error", made.error}}, "bad request",
                       made.error);
    if (spooled_ + made.events.size() > options_.limits.max_spooled)
        return respond(c, r, MHD_HTTP_SERVICE_UNAVAILABLE, {{"error", "the spool is full"}},
                       "spool full");

    // What a playbook sees besides the payload: the request's headers, minus the credential.
    json hdrs = json::object();
    std::pair<json*, const wh::Endpoint*> collect{&hdrs, &ep};
    MHD_get_connection_values(
        c, MHD_HEADER_KIND,
        [](void* cls, MHD_ValueKind, const char* key, const char* value) -> MHD_Result {
            auto* h = static_cast<std::pair<json*, const wh::Endpoint*>*>(cls);
            std::string name(key);
            std::transform(name.begin(), name.end(), name.begin(),
                           [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
            std::string auth = h->second->auth.header;
            std::transform(auth.begin(), auth.end(), auth.begin(),
                           [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
            if (name == auth || name == "authorization" || name == "cookie") return MHD_YES;
            (*h->first)[name] = value ? value : "";
            return MHD_YES;
        },
        &collect);
    std::string request_id = new_id();
    std::vector<std::pair<std::string, std::string>> lines;
    std::size_t n = 0;
    for (auto& e : made.events) {
        std::string id =
            made.events.size() == 1 ? request_id : request_id + "-" + std::to_string(++n);
        json body = {{"payload", std::move(e.payload)},
                     {"headers", hdrs},
                     {"endpoint", ep.path},
                     {"remote_addr", r->client},
                     {"received_at", iso_now()},
                     {"request_id", request_id}};
        auto line = kit::event_line(e.routing_key, body, id);
        if (!line)
            return respond(
                c, r, MHD_HTTP_CONTENT_TOO_LARGE,
                {{"error", "the event would exceed the supervisor's line limit, or is not UTF-8"}},
                "event size");
        lines.emplace_back(std::move(id), std::move(*line));
    }
    try {
        spool_.write(lines);
    } catch (const std::exception& e) {
        log("cannot spool a request from ", r->client, ": ", e.what());
        return respond(c, r, MHD_HTTP_SERVICE_UNAVAILABLE, {{"error", "cannot store the event"}});
    }
    if (replay) replays_.add(*replay, request_id);
    spooled_ += lines.size();
    json ids = json::array();
    for (auto& [id, line] : lines) {
        ids.push_back(id);
        r->ids.push_back(id);
        in_flight_[id] = ep.synchronous ? r : nullptr;
        to_send_.emplace_back(id, std::move(line));
    }
    pump();
    if (ep.synchronous) {
        r->handled = true;
        r->connection = c;
        r->request_id = request_id;
        r->deadline = Clock::now() + ep.sync_timeout;
        waiting_.push_back(r);
        MHD_suspend_connection(c);
        return MHD_YES;
    }
    return respond(c, r, MHD_HTTP_ACCEPTED, {{"id", request_id}, {"events", ids}});
}

void Server::finish_sync(Request* r, bool timed_out) {
    std::erase(waiting_, r);
    json body;
    unsigned status = MHD_HTTP_OK;
    if (timed_out) {
        status = MHD_HTTP_ACCEPTED;
        body = {{"id", r->request_id}, {"events", r->ids}, {"detail", "still running"}};
        for (const auto& id : r->ids)
            if (auto it = in_flight_.find(id); it != in_flight_.end()) it->second = nullptr;
    } else if (r->results.size() == 1) {
        body = r->results[0];
    } else {
        body = {{"id", r->request_id}, {"results", r->results}};
    }
    r->ready = std::make_pair(status, body.dump());
    MHD_resume_connection(r->connection);
}

void Server::pump() {
    while (out_.size() < kOutboxBound && !to_send_.empty()) {
        out_.push(std::move(to_send_.front().second));
        to_send_.pop_front();
    }
}

void Server::answer(std::string_view line) {
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) return;
    json a = json::parse(line, nullptr, false);
    auto id = a.is_object() ? kit::string_field(a, "id") : std::nullopt;
    if (!id) {
        log("ignoring an answer without a string id: ", shortened(line));
        return;
    }
    auto it = in_flight_.find(*id);
    if (it == in_flight_.end()) {
        log("ignoring an answer for ", shortened(*id), ", which is not in flight");
        return;
    }
    std::string result = kit::string_field(a, "result").value_or("");
    std::string reason =
        kit::string_field(a, "reason").value_or(kit::string_field(a, "error").value_or(""));
    Request* sync = it->second;
    in_flight_.erase(it);
    if (result == "cancelled") {
        // loopabull is stopping: the event stays spooled and is sent again at the next start.
        --spooled_;
    } else {
        --spooled_;
        if (result == "failed" || result == "timeout" || result == "rejected" ||
            result == "aborted") {
            log(*id, ": ", result, reason.empty() ? "" : ": " + shortened(reason),
                "; moving it to failed/");
            spool_.move_to_failed(*id, result + (reason.empty() ? "" : ": " + reason) + "\n");
        } else {
            // succeeded, unrouted, superseded, throttled, and results this looper does not know
            // (protocol: treated as unrouted, settled).
            spool_.remove(*id);
        }
    }
    if (sync) {
        json r = {{"id", *id}, {"result", result}};
        if (!reason.empty()) r["reason"] = reason;
        sync->results.push_back(r);
        if (sync->results.size() == sync->ids.size()) finish_sync(sync, false);
    }
}

void Server::resend_spool() {
    auto events = spool_.load();
    for (auto& [id, line] : events) {
        in_flight_[id] = nullptr;
        to_send_.emplace_back(id, std::move(line));
    }
    spooled_ = events.size();
    if (!events.empty()) log("sending ", std::to_string(events.size()), " spooled event(s) again");
    pump();
}

MHD_Result on_access(void* cls, MHD_Connection* c, const char* url, const char* method, const char*,
                     const char* data, size_t* size, void** con_cls) noexcept {
    try {
        return static_cast<Server*>(cls)->handle(c, url, method, data, size, con_cls);
    } catch (const std::exception& e) {
        log("request failed: ", e.what());
        return MHD_NO;
    }
}

void on_completed(void*, MHD_Connection*, void** con_cls, MHD_RequestTerminationCode) noexcept {
    delete static_cast<Request*>(*con_cls);
    *con_cls = nullptr;
}

void on_mhd_log(void*, const char* fmt, va_list ap) noexcept {
    char buf[512];
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    std::string text(buf);
    while (!text.empty() && text.back() == '\n')
        text.pop_back();
    // MHD's own refusals (headers too large, malformed requests, connection limits).
    g_ratelog.line("mhd:" + text.substr(0, 24), "http: " + text);
}

void Server::start() {
    const auto& l = options_.limits;
    if (options_.tls.enabled()) {
        cert_ = read_file(options_.tls.certfile, 1 << 20);
        key_ = read_file(options_.tls.keyfile, 1 << 20);
        if (!options_.tls.client_ca.empty()) ca_ = read_file(options_.tls.client_ca, 1 << 20);
    }
    char** names = nullptr;
    int nfds = sd_listen_fds_with_names(0, &names);
    std::map<std::string, int> passed;
    for (int i = 0; i < std::max(nfds, 0); ++i) {
        passed[names[i]] = SD_LISTEN_FDS_START + i;
        std::free(names[i]);
    }
    std::free(names);
    for (const auto& text : options_.listen) {
        auto a = wh::parse_listen(text);
        unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
        if (options_.tls.enabled()) flags |= MHD_USE_TLS;
        sockaddr_storage ss{};
        int listen_fd = -1;
        if (!a.fd_name.empty()) {
            auto it = passed.find(a.fd_name);
            if (it == passed.end())
                throw std::runtime_error("listen: no socket named " + a.fd_name +
                                         " was passed (FileDescriptorName= in the .socket unit)");
            listen_fd = it->second;
            ::fcntl(listen_fd, F_SETFD, FD_CLOEXEC);
            ::fcntl(listen_fd, F_SETFL, ::fcntl(listen_fd, F_GETFL) | O_NONBLOCK);
        } else {
            addrinfo hints{};
            hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
            hints.ai_socktype = SOCK_STREAM;
            addrinfo* res = nullptr;
            std::string port = std::to_string(a.port);
            if (getaddrinfo(a.host.c_str(), port.c_str(), &hints, &res) != 0 || !res)
                throw std::runtime_error("listen: " + text + " is not a numeric address");
            std::memcpy(&ss, res->ai_addr, res->ai_addrlen);
            freeaddrinfo(res);
            if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
        }
        // The logger first, or MHD logs the options' own errors to stderr its own way.
        std::vector<MHD_OptionItem> opts = {
            {MHD_OPTION_EXTERNAL_LOGGER, reinterpret_cast<intptr_t>(&on_mhd_log), nullptr},
            {MHD_OPTION_CONNECTION_LIMIT, l.max_connections, nullptr},
            {MHD_OPTION_PER_IP_CONNECTION_LIMIT, l.max_connections_per_client, nullptr},
            {MHD_OPTION_CONNECTION_TIMEOUT, static_cast<intptr_t>(l.idle_timeout.count()), nullptr},
            // The per-connection pool holds the request line and headers: its size is the
            // header limit (MHD answers 431 beyond it); a little more for the response's headers.
            {MHD_OPTION_CONNECTION_MEMORY_LIMIT, static_cast<intptr_t>(l.max_header + 4096),
             nullptr},
            {MHD_OPTION_NOTIFY_COMPLETED, reinterpret_cast<intptr_t>(&on_completed), nullptr},
            {MHD_OPTION_STRICT_FOR_CLIENT, 1, nullptr},
        };
        if (listen_fd >= 0)
            opts.push_back({MHD_OPTION_LISTEN_SOCKET, listen_fd, nullptr});
        else
            opts.push_back({MHD_OPTION_SOCK_ADDR, 0, &ss});
        if (options_.tls.enabled()) {
            opts.push_back({MHD_OPTION_HTTPS_MEM_CERT, 0, cert_.data()});
            opts.push_back({MHD_OPTION_HTTPS_MEM_KEY, 0, key_.data()});
            if (!ca_.empty()) opts.push_back({MHD_OPTION_HTTPS_MEM_TRUST, 0, ca_.data()});
        }
        opts.push_back({MHD_OPTION_END, 0, nullptr});
        MHD_Daemon* d = MHD_start_daemon(flags, 0, nullptr, nullptr, &on_access, this,
                                         MHD_OPTION_ARRAY, opts.data(), MHD_OPTION_END);
        if (!d)
            throw std::runtime_error("cannot listen on " + text + " (in use, or a bad TLS key?)");
        daemons_.push_back(d);
        const auto* info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
        log("listening on ", text, " (port ", std::to_string(info ? info->port : 0), ")",
            options_.tls.enabled() ? " with TLS" : "",
            ca_.empty() ? "" : ", client certificates required");
    }
}

void Server::loop(int signals) {
    kit::AnswerReader answers;
    auto on_answer = [this](std::string_view line) { answer(line); };
    for (;;) {
        std::vector<pollfd> fds = {{signals, POLLIN, 0},
                                   {STDIN_FILENO, POLLIN, 0},
                                   {out_.empty() ? -1 : STDOUT_FILENO, POLLOUT, 0}};
        int timeout = 1000;
        for (auto* d : daemons_) {
            const auto* info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_EPOLL_FD);
            fds.push_back({info->epoll_fd, POLLIN, 0});
            MHD_UNSIGNED_LONG_LONG ms = 0;
            if (MHD_get_timeout(d, &ms) == MHD_YES)
                timeout = std::min<int>(timeout, static_cast<int>(ms));
        }
        if (!waiting_.empty()) timeout = std::min(timeout, 100);
        if (::poll(fds.data(), fds.size(), timeout) < 0) {
            if (errno == EINTR) continue;
            throw std::runtime_error("poll failed: " + errno_text(errno));
        }
        if (fds[0].revents) {
            log("stopping on a signal");
            break;
        }
        if (fds[1].revents && !answers.read(STDIN_FILENO, on_answer)) break;
        if (fds[2].revents) out_.flush(STDOUT_FILENO);
        pump();
        auto now = Clock::now();
        for (auto* r : std::vector<Request*>(waiting_))
            if (now >= r->deadline) finish_sync(r, true);
        for (auto* d : daemons_)
            MHD_run(d);
    }
    // Clients held for an answer hear 202: their events are spooled and will run.
    for (auto* r : std::vector<Request*>(waiting_))
        finish_sync(r, true);
    for (auto* d : daemons_)
        MHD_run(d);
}

int start() {
    kit::check_protocol();
    auto signals = kit::stop_signals();
    json config = kit::read_config();
    const char* creds = std::getenv("CREDENTIALS_DIRECTORY");
    auto options = wh::parse_options(config, creds ? creds : "",
                                     kit::default_state_directory("webhook"), read_secret);
    Spool spool(options.state_directory);
    Server server(std::move(options), spool);
    server.resend_spool();
    server.start();
    server.loop(signals.get());
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    if (argc > 1) {
        std::printf("usage: webhook (configured through loopabull, man 7 loopabull-webhook)\n");
        return std::string_view(argv[1]) == "--help" ? 0 : 2;
    }
    try {
        return start();
    } catch (const wh::OptionError& e) {
        log("webhook: config: ", e.what());
        return 2;
    } catch (const std::exception& e) {
        log("webhook: ", e.what());
        return 1;
    }
}
