// SPDX-License-Identifier: GPL-3.0-or-later
//
// fedmsg: the bundled looper that turns fedmsg messages (ZeroMQ PUB/SUB) into loopabull events.
//
// It connects a SUB socket to every endpoint of its config and subscribes to the topic prefixes.
// A fedmsg message is two frames, the topic and a JSON envelope {topic, msg, msg_id, timestamp,
// ...}; each becomes one event whose routing key is the topic and whose body is the whole
// envelope, as loopabull 0.0.x passed it to playbooks.
//
// PUB/SUB is at most once: a message published while we are not connected, or while we hold
// back because the supervisor's queue is full and ZeroMQ's high-water mark is reached, is gone.
// Answers are therefore only logged; use the amqp looper where nothing may be lost.

#include "core/config.hpp"
#include "kit/looper-kit.hpp"

#include <zmq.h>

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace kit = loopabull::kit;
using kit::log;
using kit::shortened;
using nlohmann::json;

// While this much is waiting for the supervisor, no message is taken from ZeroMQ: the supervisor
// is not reading (its queue is full), and ZeroMQ's own queue is bounded by the high-water mark.
constexpr std::size_t kOutboxBound = 1024 * 1024;
// Messages taken from ZeroMQ in one turn, so answers and signals are not starved by a flood.
constexpr int kBatch = 256;

struct Options {
    std::vector<std::string> endpoints;
    std::vector<std::string> topics{""}; // every topic
    int high_water_mark = 10000;
    int reconnect_ms = 1000;
    int reconnect_max_ms = 60000;
};

struct ConfigError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

std::vector<std::string> string_list(const json& value, const std::string& key, bool allow_empty) {
    std::vector<std::string> out;
    if (value.is_string()) {
        out.push_back(value.get<std::string>());
    } else if (value.is_array()) {
        for (std::size_t i = 0; i < value.size(); ++i) {
            if (!value[i].is_string())
                throw ConfigError("config." + key + "[" + std::to_string(i) + "]: not a string");
            out.push_back(value[i].get<std::string>());
        }
    } else {
        throw ConfigError("config." + key + ": expected a string or a list of strings");
    }
    if (out.empty()) throw ConfigError("config." + key + ": the list is empty");
    for (std::size_t i = 0; i < out.size(); ++i)
        if (out[i].empty() && !allow_empty)
            throw ConfigError("config." + key + "[" + std::to_string(i) + "]: empty");
    return out;
}

int milliseconds(const json& value, const std::string& key) {
    std::string error = "expected a duration such as 500ms or 2s";
    std::optional<loopabull::usec> us;
    if (value.is_string()) us = loopabull::parse_duration(value.get<std::string>(), &error);
    if (!us) throw ConfigError("config." + key + ": " + error);
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(*us).count();
    if (ms < 1 || ms > 24 * 3600 * 1000)
        throw ConfigError("config." + key + ": must be between 1ms and 24h");
    return static_cast<int>(ms);
}

Options parse_options(const json& config) {
    Options o;
    for (const auto& [key, value] : config.items()) {
        if (key == "endpoints")
            o.endpoints = string_list(value, key, false);
        else if (key == "topics")
            o.topics = string_list(value, key, true);
        else if (key == "high_water_mark" && value.is_number_unsigned() && value <= 10'000'000)
            o.high_water_mark = value.get<int>();
        else if (key == "high_water_mark")
            throw ConfigError("config.high_water_mark: expected a whole number up to 10000000");
        else if (key == "reconnect_interval")
            o.reconnect_ms = milliseconds(value, key);
        else if (key == "reconnect_interval_max")
            o.reconnect_max_ms = milliseconds(value, key);
        else
            throw ConfigError("config." + shortened(key) +
                              ": unknown key (known: endpoints, topics, high_water_mark, "
                              "reconnect_interval, reconnect_interval_max)");
    }
    if (o.endpoints.empty())
        throw ConfigError("config.endpoints: missing; name the fedmsg endpoints to connect to, "
                          "e.g. tcp://hub.fedoraproject.org:9940");
    return o;
}

using Context = std::unique_ptr<void, decltype(&zmq_ctx_term)>;
using Socket = std::unique_ptr<void, decltype(&zmq_close)>;

std::string zmq_error() {
    return zmq_strerror(zmq_errno());
}

void set_option(void* socket, int option, int value, const char* name) {
    if (zmq_setsockopt(socket, option, &value, sizeof value) != 0)
        throw std::runtime_error(std::string("cannot set ") + name + ": " + zmq_error());
}

Socket subscriber(void* context, const Options& o) {
    Socket socket(zmq_socket(context, ZMQ_SUB), &zmq_close);
    if (!socket) throw std::runtime_error("cannot create a SUB socket: " + zmq_error());
    set_option(socket.get(), ZMQ_LINGER, 0, "ZMQ_LINGER");
    set_option(socket.get(), ZMQ_RCVHWM, o.high_water_mark, "ZMQ_RCVHWM");
    set_option(socket.get(), ZMQ_RECONNECT_IVL, o.reconnect_ms, "ZMQ_RECONNECT_IVL");
    set_option(socket.get(), ZMQ_RECONNECT_IVL_MAX, o.reconnect_max_ms, "ZMQ_RECONNECT_IVL_MAX");
    // A publisher is untrusted: a message larger than an event can be is refused by ZeroMQ
    // before it is buffered (the peer is disconnected and reconnected).
    int64_t max_size = kit::kMaxEventLine;
    if (zmq_setsockopt(socket.get(), ZMQ_MAXMSGSIZE, &max_size, sizeof max_size) != 0)
        throw std::runtime_error("cannot set ZMQ_MAXMSGSIZE: " + zmq_error());
    for (const auto& topic : o.topics)
        if (zmq_setsockopt(socket.get(), ZMQ_SUBSCRIBE, topic.data(), topic.size()) != 0)
            throw std::runtime_error("cannot subscribe to '" + shortened(topic) +
                                     "': " + zmq_error());
    for (std::size_t i = 0; i < o.endpoints.size(); ++i)
        if (zmq_connect(socket.get(), o.endpoints[i].c_str()) != 0)
            throw ConfigError("config.endpoints[" + std::to_string(i) + "] '" +
                              shortened(o.endpoints[i]) + "': " + zmq_error());
    return socket;
}

// One received message: its frames, at most the first two kept (topic, envelope).
struct Frames {
    std::vector<std::string> parts;
    std::size_t count = 0;
};

// nullopt when nothing is waiting.
std::optional<Frames> receive(void* socket) {
    Frames frames;
    int more = 1;
    while (more) {
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, socket, ZMQ_DONTWAIT) < 0) {
            int error = zmq_errno();
            zmq_msg_close(&msg);
            if (error == EAGAIN && frames.count == 0) return std::nullopt;
            if (error == EINTR || error == EAGAIN) continue; // the rest of a message is atomic
            throw std::runtime_error(std::string("cannot receive: ") + zmq_strerror(error));
        }
        if (frames.parts.size() < 2)
            frames.parts.emplace_back(static_cast<const char*>(zmq_msg_data(&msg)),
                                      zmq_msg_size(&msg));
        ++frames.count;
        more = zmq_msg_more(&msg);
        zmq_msg_close(&msg);
    }
    return frames;
}

class Fedmsg {
  public:
    explicit Fedmsg(void* socket) : socket_(socket) {}
    void take_messages();
    void answer(std::string_view line);
    kit::Outbox& outbox() { return out_; }
    bool holding_back() const { return out_.size() > kOutboxBound; }

  private:
    void add(const Frames& frames);
    std::string next_id(const json& envelope);

    void* socket_;
    kit::Outbox out_;
    unsigned long long count_ = 0;
};

void Fedmsg::take_messages() {
    for (int i = 0; i < kBatch && !holding_back(); ++i) {
        auto frames = receive(socket_);
        if (!frames) return;
        add(*frames);
    }
}

// The envelope's msg_id names the event in the supervisor's log and the playbook's
// loopabull_event_id; a counter keeps it unique when a publisher repeats or omits one.
std::string Fedmsg::next_id(const json& envelope) {
    std::string id = std::to_string(++count_);
    auto msg_id = kit::string_field(envelope, "msg_id");
    if (msg_id && !msg_id->empty() && msg_id->size() <= 128) id = *msg_id + "#" + id;
    return id;
}

void Fedmsg::add(const Frames& frames) {
    if (frames.count != 2) {
        log("dropping a message of ", std::to_string(frames.count),
            " frames (fedmsg sends two: topic and envelope)");
        return;
    }
    const std::string& topic = frames.parts[0];
    json envelope;
    try {
        envelope = kit::parse_untrusted_json(frames.parts[1]);
    } catch (const std::exception& e) {
        log("dropping a message on '", shortened(topic), "': not JSON: ", shortened(e.what()));
        return;
    }
    if (!envelope.is_object()) {
        log("dropping a message on '", shortened(topic), "': the envelope is not a JSON object");
        return;
    }
    auto line = kit::event_line(topic, envelope, next_id(envelope));
    if (!line) {
        log("dropping a message on '", shortened(topic), "': invalid UTF-8 or too large");
        return;
    }
    out_.push(std::move(*line));
}

// Only failures are worth a line: there is nothing to acknowledge on PUB/SUB.
void Fedmsg::answer(std::string_view line) {
    json answer = json::parse(line, nullptr, false);
    if (!answer.is_object()) {
        log("ignoring an answer that is not a JSON object: ", shortened(line));
        return;
    }
    auto result = kit::string_field(answer, "result").value_or("?");
    if (result == "succeeded" || result == "unrouted") return;
    std::string text = "event " + shortened(kit::string_field(answer, "id").value_or("?")) + ": " +
                       shortened(result);
    if (auto error = kit::string_field(answer, "error")) text += ": " + shortened(*error);
    log(text);
}

// ZeroMQ's descriptor is edge-triggered and only says "look again": messages are taken until
// receive() finds none, every turn, so none waits for an edge that already passed.
int run(Fedmsg& looper, void* socket, int signals) {
    kit::AnswerReader answers;
    auto on_answer = [&looper](std::string_view line) { looper.answer(line); };
    for (;;) {
        looper.take_messages();
        zmq_pollitem_t items[] = {
            {nullptr, signals, ZMQ_POLLIN, 0},
            {nullptr, STDIN_FILENO, ZMQ_POLLIN, 0},
            {socket, 0, static_cast<short>(looper.holding_back() ? 0 : ZMQ_POLLIN), 0},
            {nullptr, looper.outbox().empty() ? -1 : STDOUT_FILENO, ZMQ_POLLOUT, 0}};
        if (zmq_poll(items, std::size(items), -1) < 0) {
            if (zmq_errno() == EINTR) continue;
            throw std::runtime_error("poll failed: " + zmq_error());
        }
        if (items[0].revents) {
            log("stopping on a signal");
            return 0;
        }
        if (items[1].revents && !answers.read(STDIN_FILENO, on_answer)) return 0;
        if (items[3].revents) looper.outbox().flush(STDOUT_FILENO);
    }
}

// Appends piece by piece: `" " + std::string&&` inserts at the front of the temporary, which
// GCC 12 at -O3 flags with a false -Wrestrict (GCC bug 105329) after inlining.
std::string describe(const Options& o) {
    std::string text = "subscribed to";
    for (const auto& t : o.topics) {
        if (t.empty()) {
            text += " (every topic)";
            continue;
        }
        text += " '";
        text += shortened(t);
        text += '\'';
    }
    text += " at";
    for (const auto& e : o.endpoints) {
        text += ' ';
        text += shortened(e);
    }
    return text;
}

// check_only (--check-config, which loopabull --check-config runs): the options are read and
// the socket is set up as for a run, so a bad endpoint is reported too (zmq_connect parses it;
// it does not wait for a peer), then the looper exits without reading or sending anything.
int start(bool check_only) {
    kit::check_protocol();
    // Before ZeroMQ starts its threads: they inherit the blocked signals.
    auto signals = kit::stop_signals();
    Options options = parse_options(kit::read_config());
    Context context(zmq_ctx_new(), &zmq_ctx_term);
    if (!context) throw std::runtime_error("cannot create a ZeroMQ context: " + zmq_error());
    Socket socket = subscriber(context.get(), options);
    if (check_only) return 0;
    log(describe(options));
    Fedmsg looper(socket.get());
    return run(looper, socket.get(), signals.get());
}

} // namespace

int main(int argc, char** argv) {
    if (argc == 2 && (std::string_view(argv[1]) == "--help" || std::string_view(argv[1]) == "-h")) {
        std::printf("usage: fedmsg [--check-config]\n(run by loopabull; configured by the "
                    "looper's config, see loopabull-fedmsg(7))\n");
        return 0;
    }
    bool check_only = argc == 2 && std::string_view(argv[1]) == "--check-config";
    if (argc > 1 && !check_only) {
        log("fedmsg: takes no arguments but --check-config; it is configured by the looper's "
            "config");
        return 2;
    }
    try {
        return start(check_only);
    } catch (const ConfigError& e) {
        log("fedmsg: ", e.what());
        return 2;
    } catch (const std::exception& e) {
        log("fedmsg: ", e.what());
        return 1;
    }
}
