// SPDX-License-Identifier: GPL-3.0-or-later
//
// amqp: the bundled looper that consumes a RabbitMQ (AMQP 0-9-1) queue, as Fedora Messaging
// deployments do, and acknowledges each message only once the supervisor has answered for it.
// Installed as `amqp` and as `fedmsgrabbitmq` (the 0.0.7 looper's name; both read the same
// options, see options.hpp and loopabull-amqp(7)).
//
// One thread: poll() waits on the broker's socket, the answers on stdin, stdout when events
// wait to be written, and a signalfd. rabbitmq-c reads ahead, so whatever it has buffered is
// drained before every poll().

#include "broker.hpp"
#include "message.hpp"
#include "options.hpp"
#include "policy.hpp"
#include "retry.hpp"

#include "kit/looper-kit.hpp"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <string_view>

namespace {

using namespace loopabull::amqp;
namespace kit = loopabull::kit;

// Every line this looper logs goes through redact() (options.hpp): whatever reaches it (a
// broker's error text, a host given as a URL by mistake) never carries a password.
template <typename... Parts> void log(const Parts&... parts) {
    std::string line;
    (line.append(std::string_view(parts)), ...);
    kit::log_line(redact(line));
}
using kit::shortened;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

// Heartbeats are sent and checked only when we call into rabbitmq-c: wake up at least this often.
constexpr int kTickMs = 1000;

Environment read_environment() {
    Environment env;
    if (const char* p = std::getenv("LOOPABULL_MAX_PARALLEL"))
        env.max_parallel = static_cast<unsigned>(std::strtoul(p, nullptr, 10));
    if (const char* t = std::getenv("LOOPABULL_JOB_TIMEOUT"); t && *t)
        env.job_timeout = seconds(std::strtoll(t, nullptr, 10));
    return env;
}

// Events wait here until stdout takes them; each remembers its connection, so events of a
// connection that died before they were written are dropped (the broker delivers them again).
class Output {
  public:
    void push(std::uint64_t generation, std::string line) {
        lines_.emplace_back(generation, std::move(line));
    }
    void drop_before(std::uint64_t generation) {
        std::erase_if(lines_, [generation](const auto& l) { return l.first < generation; });
    }
    bool pending() const { return pos_ < current_.size() || !lines_.empty(); }

    // At most PIPE_BUF bytes after POLLOUT: such a write never blocks.
    void flush(int fd) {
        if (pos_ == current_.size()) {
            if (lines_.empty()) return;
            current_ = std::move(lines_.front().second);
            lines_.pop_front();
            pos_ = 0;
        }
        std::size_t size = std::min<std::size_t>(current_.size() - pos_, PIPE_BUF);
        ssize_t n = ::write(fd, current_.data() + pos_, size);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
        if (n < 0)
            throw std::runtime_error(std::string("cannot write events: ") + std::strerror(errno));
        pos_ += static_cast<std::size_t>(n);
    }

  private:
    std::deque<std::pair<std::uint64_t, std::string>> lines_;
    std::string current_;
    std::size_t pos_ = 0;
};

class AmqpLooper {
  public:
    AmqpLooper(Options options, RetrySigner signer)
        : options_(std::move(options)), signer_(std::move(signer)),
          delay_(options_.reconnect_delay) {}

    int run(int signals);

  private:
    void connect();
    void lost(const std::string& reason);
    void drain();
    void on_delivery(Incoming in);
    void on_confirm(const Confirm& c);
    void on_answer(std::string_view line);
    void settle(Delivery d, const std::string& result, const json& answer);
    void finish_confirms();
    int poll_timeout() const;

    Options options_;
    RetrySigner signer_;
    Ledger ledger_;
    std::unique_ptr<Broker> broker_;
    std::map<std::uint64_t, std::uint64_t> confirms_; // publish seq -> tag of the original
    std::size_t endpoint_ = 0;
    seconds delay_;
    Clock::time_point next_attempt_{};
    Output out_;
};

void AmqpLooper::connect() {
    const Endpoint& e = options_.endpoints[endpoint_ % options_.endpoints.size()];
    try {
        broker_ = std::make_unique<Broker>(options_, e);
        log("consuming queue '", options_.queue.name, "' on ", e.host, ":", std::to_string(e.port),
            " vhost ", e.vhost, " (prefetch ", std::to_string(options_.prefetch), ")");
        delay_ = options_.reconnect_delay;
    } catch (const BrokerError& err) {
        ++endpoint_;
        log(err.what(), "; trying again in ", std::to_string(delay_.count()), "s");
        next_attempt_ = Clock::now() + delay_;
        delay_ = std::min(delay_ * 2, options_.reconnect_delay_max);
    }
}

// Delivery tags die with their channel: forget them all, never ack one on a later connection.
// The next attempt goes to the next address of urls: the lost node is the suspect one, and a node
// cut off the network answers no SYN, so trying it first costs a whole connect_timeout
// (measured in tests/system/test_amqp_cluster.py). With one address nothing changes.
void AmqpLooper::lost(const std::string& reason) {
    ++endpoint_;
    broker_.reset();
    confirms_.clear();
    auto dropped = ledger_.new_generation();
    out_.drop_before(ledger_.generation());
    log("connection lost: ", reason, "; ", std::to_string(dropped),
        " unanswered message(s) go back to the queue; reconnecting in ",
        std::to_string(delay_.count()), "s");
    next_attempt_ = Clock::now() + delay_;
    delay_ = std::min(delay_ * 2, options_.reconnect_delay_max);
}

void AmqpLooper::drain() {
    try {
        // Bounded, in case rabbitmq-c ever reports buffered bytes it cannot make a frame of
        // yet: the next poll() tick comes back here.
        for (int idle = 0; idle < 16;) {
            auto item = broker_->next();
            if (auto* in = std::get_if<Incoming>(&item))
                on_delivery(std::move(*in));
            else if (auto* c = std::get_if<Confirm>(&item))
                on_confirm(*c);
            else if (!broker_->buffered())
                return;
            else
                ++idle;
        }
    } catch (const BrokerError& e) {
        lost(e.what());
    }
}

void AmqpLooper::on_delivery(Incoming in) {
    auto origin = origin_of(signer_, options_.queue.name, in.exchange, in.routing_key,
                            in.properties, in.body, options_.run_legacy_copies);
    auto id = event_id(ledger_.generation(), in.tag);
    std::string key = origin.routing_key;
    std::string why = origin.problem;
    std::optional<std::string> line;
    if (why.empty())
        line = event_line(&key, in.body, in.properties, id,
                          options_.envelope ? &*options_.envelope : nullptr, &why);
    if (!line) {
        log("message ", id, " (", shortened(key), ", message id ",
            shortened(in.properties.value("message_id", "none")), "): ", shortened(why, 400),
            "; rejecting it without requeue");
        broker_->reject(in.tag, false);
        return;
    }
    ledger_.add(Delivery{in.tag, origin.attempts, std::move(key), std::move(origin.routing_key),
                         std::move(in.body), std::move(in.properties)});
    out_.push(ledger_.generation(), std::move(*line));
}

void AmqpLooper::on_confirm(const Confirm& c) {
    auto end = c.multiple ? confirms_.upper_bound(c.seq) : confirms_.find(c.seq);
    auto begin = c.multiple ? confirms_.begin() : end;
    if (!c.multiple && end != confirms_.end()) ++end;
    for (auto it = begin; it != end; it = confirms_.erase(it)) {
        if (c.ack) {
            broker_->ack(it->second);
        } else {
            log("the broker refused to store a retry copy; requeueing the original");
            broker_->reject(it->second, true);
        }
    }
}

void AmqpLooper::on_answer(std::string_view line) {
    json answer = json::parse(line, nullptr, false);
    if (!answer.is_object() || !answer.contains("id") || !answer["id"].is_string()) {
        log("ignoring an answer without a string id: ", shortened(line));
        return;
    }
    auto id = answer["id"].get<std::string>();
    auto result = answer.value("result", std::string());
    auto taken = ledger_.take(id);
    if (taken.lookup == Ledger::Lookup::stale)
        log("answer for ", id, " (", result,
            ") came after its connection was lost; ignoring it: "
            "the broker delivers that message again");
    else if (taken.lookup == Ledger::Lookup::unknown)
        log("ignoring an answer for ", shortened(id), ", which is not in flight");
    else
        settle(std::move(*taken.delivery), result, answer);
}

void AmqpLooper::settle(Delivery d, const std::string& result, const json& answer) {
    Action action = decide(result, d.attempts, options_);
    std::string what = "message " + event_id(ledger_.generation(), d.tag) + " (" +
                       shortened(d.routing_key) + ", message id " +
                       shortened(d.properties.value("message_id", "none")) + ")";
    std::string why;
    for (const char* field : {"reason", "error"})
        if (auto it = answer.find(field); it != answer.end() && it->is_string())
            why += "; " + shortened(it->get<std::string>());
    auto delay = action == Action::retry ? retry_delay(d.attempts + 1, options_) : std::nullopt;
    // Every settlement but a plain success is logged, with the reason: nothing is acked
    // silently (an unrouted or unknown answer loses the message for good).
    if (result != "succeeded")
        log(what, ": ", known_result(result) ? result : "'" + shortened(result) + "'",
            known_result(result) ? "" : " (a result this looper does not know: as unrouted)",
            " (attempt ", std::to_string(d.attempts + 1), "); ", action_name(action),
            delay ? " in " + std::to_string(delay->count()) + "s" : std::string(), why);
    try {
        switch (action) {
        case Action::ack:
            return broker_->ack(d.tag);
        case Action::reject:
            return broker_->reject(d.tag, false);
        case Action::requeue:
            return broker_->reject(d.tag, true);
        case Action::retry: {
            auto message_id = d.properties.value("message_id", std::string());
            auto signature =
                signer_.sign({options_.queue.name, d.amqp_key, message_id, d.body, d.attempts + 1});
            RetryProperties props(d.properties, d.attempts + 1, signature);
            auto exchange = delay ? delay_name(options_.queue.name, *delay)
                                  : retry_exchange(options_.queue.name);
            confirms_[broker_->publish_copy(exchange, d.amqp_key, d.body, props)] = d.tag;
            return;
        }
        }
    } catch (const BrokerError& e) {
        lost(e.what());
    }
}

int AmqpLooper::poll_timeout() const {
    if (broker_) return kTickMs;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(next_attempt_ - Clock::now());
    return static_cast<int>(std::clamp<long long>(left.count(), 0, kTickMs));
}

// A retry copy the broker has not confirmed yet has an original that is still unacknowledged:
// closing now would put the original back while the copy may be stored, and both would run.
// So a stop waits (briefly: a stuck broker must not hold up a stop) for those confirms.
void AmqpLooper::finish_confirms() {
    auto deadline = Clock::now() + std::chrono::seconds(5);
    while (broker_ && !confirms_.empty() && Clock::now() < deadline) {
        pollfd fd{broker_->fd(), POLLIN, 0};
        if (!broker_->buffered()) ::poll(&fd, 1, 100);
        drain();
    }
}

int AmqpLooper::run(int signals) {
    // While disconnected every id is stale: lost() started a new generation.
    kit::AnswerReader answers;
    auto on_answer = [this](std::string_view line) {
        if (!line.empty()) this->on_answer(line);
    };
    for (;;) {
        if (!broker_ && Clock::now() >= next_attempt_) connect();
        if (broker_) drain();
        pollfd fds[] = {{signals, POLLIN, 0},
                        {STDIN_FILENO, POLLIN, 0},
                        {broker_ ? broker_->fd() : -1, POLLIN, 0},
                        {out_.pending() ? STDOUT_FILENO : -1, POLLOUT, 0}};
        if (::poll(fds, std::size(fds), poll_timeout()) < 0) {
            if (errno == EINTR) continue;
            throw std::runtime_error(std::string("poll failed: ") + std::strerror(errno));
        }
        if (fds[0].revents) {
            log("stopping on a signal; unanswered messages go back to the queue");
            finish_confirms();
            return 0;
        }
        if (fds[1].revents && !answers.read(STDIN_FILENO, on_answer)) {
            finish_confirms();
            return 0;
        }
        if (fds[3].revents) out_.flush(STDOUT_FILENO);
    }
}

// The key of retry copies (retry.hpp): the configured file (every instance consuming the queue
// must be given the same one), else one made in systemd's $STATE_DIRECTORY on first use, else
// (no state directory: not under systemd) one for this process only, with a warning.
std::string retry_secret(const Options& options, bool check_only) {
    std::string path = options.retry_secret_file;
    bool create = false;
    if (path.empty()) {
        if (const char* dirs = std::getenv("STATE_DIRECTORY"); dirs && *dirs) {
            std::string_view first(dirs);
            first = first.substr(0, first.find(':'));
            path = std::string(first) + "/" + secret_file_name(options.queue.name);
            create = true;
        }
    }
    if (path.empty()) {
        if (!check_only)
            log("warning: no 'retry_secret_file' and no $STATE_DIRECTORY: retry copies are signed "
                "with a key of this process only, so a copy still waiting when the looper "
                "restarts is refused (dead-lettered); give 'retry_secret_file'");
        unsigned char raw[32];
        if (getrandom(raw, sizeof raw, 0) != static_cast<ssize_t>(sizeof raw))
            throw std::runtime_error(std::string("getrandom failed: ") + std::strerror(errno));
        return std::string(reinterpret_cast<const char*>(raw), sizeof raw);
    }
    std::string why;
    if (check_only && create) return std::string(kMinSecret, 'x'); // made at the first start
    auto secret = load_secret(path, create, &why);
    if (!secret) throw std::runtime_error("retry secret: " + why);
    return *secret;
}

int start(bool check_only) {
    kit::check_protocol();
    auto options = parse_options(kit::read_config(), read_environment());
    for (const auto& w : options.warnings)
        log("warning: ", w);
    RetrySigner signer(retry_secret(options, check_only));
    if (check_only) return 0;
    auto signals = kit::stop_signals();
    AmqpLooper looper(std::move(options), std::move(signer));
    return looper.run(signals.get());
}

} // namespace

int main(int argc, char** argv) {
    bool check_only = argc == 2 && std::string_view(argv[1]) == "--check-config";
    if (argc > 1 && !check_only) {
        std::printf("usage: %s [--check-config] (configured by the JSON file named by "
                    "$LOOPABULL_CONFIG_FILE; see loopabull-amqp(7))\n",
                    argv[0]);
        return std::string_view(argv[1]) == "--help" ? 0 : 2;
    }
    try {
        return start(check_only);
    } catch (const ConfigError& e) {
        log("invalid config: ", e.what());
        return 1;
    } catch (const std::exception& e) {
        log(e.what());
        return 1;
    }
}
