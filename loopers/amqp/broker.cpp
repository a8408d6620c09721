// SPDX-License-Identifier: GPL-3.0-or-later
#include "broker.hpp"

#include "message.hpp"
#include "retry.hpp"

#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>

#include <sys/time.h>

#include <algorithm>

namespace loopabull::amqp {

namespace {

constexpr amqp_channel_t kChannel = 1;
constexpr int kFrameMax = 131072;

amqp_bytes_t bytes(const std::string& s) {
    return amqp_bytes_t{s.size(), const_cast<char*>(s.data())};
}

std::string str(amqp_bytes_t b) {
    return b.len ? std::string(static_cast<const char*>(b.bytes), b.len) : std::string();
}

std::string close_reason(const amqp_method_t& m) {
    if (m.id == AMQP_CONNECTION_CLOSE_METHOD) {
        auto* c = static_cast<amqp_connection_close_t*>(m.decoded);
        return "connection closed by the broker: " + std::to_string(c->reply_code) + " " +
               str(c->reply_text);
    }
    if (m.id == AMQP_CHANNEL_CLOSE_METHOD) {
        auto* c = static_cast<amqp_channel_close_t*>(m.decoded);
        return "channel closed by the broker: " + std::to_string(c->reply_code) + " " +
               str(c->reply_text);
    }
    return "unexpected method " + std::string(amqp_method_name(m.id));
}

std::string describe(const amqp_rpc_reply_t& r) {
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        return "ok";
    case AMQP_RESPONSE_NONE:
        return "no reply";
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        return amqp_error_string2(r.library_error);
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        return close_reason(r.reply);
    }
    return "unknown error";
}

timeval to_timeval(seconds s) {
    return timeval{static_cast<time_t>(s.count()), 0};
}

// Queue arguments as an AMQP table; the strings live in `args` for the call's duration.
struct ArgumentTable {
    explicit ArgumentTable(const nlohmann::json& args) {
        for (const auto& [key, v] : args.items()) {
            keys.push_back(key);
            if (v.is_string()) values.push_back(v.get<std::string>());
        }
        std::size_t s = 0, k = 0;
        for (const auto& [key, v] : args.items()) {
            amqp_table_entry_t e{bytes(keys[k++]), {}};
            if (v.is_string()) {
                e.value.kind = AMQP_FIELD_KIND_UTF8;
                e.value.value.bytes = bytes(values[s++]);
            } else if (v.is_boolean()) {
                e.value.kind = AMQP_FIELD_KIND_BOOLEAN;
                e.value.value.boolean = v.get<bool>();
            } else {
                e.value.kind = AMQP_FIELD_KIND_I64;
                e.value.value.i64 = v.get<std::int64_t>();
            }
            entries.push_back(e);
        }
    }
    amqp_table_t table() { return {static_cast<int>(entries.size()), entries.data()}; }

    std::vector<std::string> keys, values;
    std::vector<amqp_table_entry_t> entries;
};

} // namespace

Broker::Broker(const Options& options, const Endpoint& endpoint)
    : options_(options), conn_(amqp_new_connection()) {
    if (!conn_) throw BrokerError("out of memory");
    try {
        open_socket(endpoint);
        login(endpoint);
        setup();
    } catch (...) {
        close();
        amqp_destroy_connection(conn_);
        throw;
    }
}

Broker::~Broker() {
    close();
    amqp_destroy_connection(conn_);
}

void Broker::open_socket(const Endpoint& e) {
    amqp_socket_t* socket = e.tls ? amqp_ssl_socket_new(conn_) : amqp_tcp_socket_new(conn_);
    if (!socket) throw BrokerError("cannot create a socket");
    if (e.tls && options_.tls) {
        const auto& t = *options_.tls;
        if (!t.ca_cert.empty() && amqp_ssl_socket_set_cacert(socket, t.ca_cert.c_str()) != 0)
            throw BrokerError("cannot load tls.ca_cert " + t.ca_cert);
        if (!t.certfile.empty() &&
            amqp_ssl_socket_set_key(socket, t.certfile.c_str(), t.keyfile.c_str()) != 0)
            throw BrokerError("cannot load tls.certfile/tls.keyfile " + t.certfile);
        amqp_ssl_socket_set_verify_peer(socket, 1);
        amqp_ssl_socket_set_verify_hostname(socket, t.verify_hostname ? 1 : 0);
    }
    auto timeout = to_timeval(options_.connect_timeout);
    amqp_set_handshake_timeout(conn_, &timeout);
    amqp_set_rpc_timeout(conn_, &timeout);
    int rc = amqp_socket_open_noblock(socket, e.host.c_str(), e.port, &timeout);
    if (rc != AMQP_STATUS_OK)
        throw BrokerError("cannot connect to " + e.host + ":" + std::to_string(e.port) + ": " +
                          amqp_error_string2(rc));
}

void Broker::login(const Endpoint& e) {
    auto heartbeat = static_cast<int>(options_.heartbeat.count());
    amqp_rpc_reply_t r =
        options_.sasl == Sasl::external
            ? amqp_login(conn_, e.vhost.c_str(), 0, kFrameMax, heartbeat, AMQP_SASL_METHOD_EXTERNAL,
                         e.username.c_str())
            : amqp_login(conn_, e.vhost.c_str(), 0, kFrameMax, heartbeat, AMQP_SASL_METHOD_PLAIN,
                         e.username.c_str(), e.password.c_str());
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        throw BrokerError("cannot log in to " + e.host + " vhost " + e.vhost + " as '" +
                          e.username + "': " + describe(r));
    open_ = true;
    amqp_channel_open(conn_, kChannel);
    check("opening the channel");
}

void Broker::check(const char* what) {
    amqp_rpc_reply_t r = amqp_get_rpc_reply(conn_);
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        throw BrokerError(std::string(what) + ": " + describe(r));
}

void Broker::setup() {
    const auto& q = options_.queue;
    ArgumentTable args(q.arguments);
    amqp_queue_declare(conn_, kChannel, bytes(q.name), 0, q.durable, q.exclusive, q.auto_delete,
                       args.table());
    check(("declaring queue '" + q.name + "'").c_str());
    for (const auto& b : options_.bindings) {
        for (const auto& key : b.routing_keys) {
            amqp_queue_bind(conn_, kChannel, bytes(q.name), bytes(b.exchange), bytes(key),
                            amqp_empty_table);
            check(("binding to exchange '" + b.exchange + "' with '" + key + "'").c_str());
        }
    }
    // Only retries need them: a broker that lets this user declare nothing but its queue (as
    // Fedora's public one does) still serves on_failure: reject or ack.
    if (options_.on_failure == OnFailure::retry) declare_retry_path();
    amqp_basic_qos(conn_, kChannel, 0, options_.prefetch, 0);
    check("setting the prefetch count");
    // Retries are published and then the original is acked; confirms make sure the copy is
    // stored before the original goes.
    amqp_confirm_select(conn_, kChannel);
    check("enabling publisher confirms");
    amqp_basic_consume(conn_, kChannel, bytes(q.name), amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    check(("consuming from queue '" + q.name + "'").c_str());
}

// Declared on every connection (declaring is idempotent), so that a broker that lost them, or
// a queue recreated by an operator, gets them back before the first retry is published.
void Broker::declare_retry_path() {
    const auto& q = options_.queue;
    auto back = retry_exchange(q.name);
    auto exchange = [this](const std::string& name) {
        amqp_exchange_declare(conn_, kChannel, bytes(name), amqp_cstring_bytes("fanout"), 0,
                              /*durable*/ 1, /*auto_delete*/ 0, /*internal*/ 0, amqp_empty_table);
        check(("declaring exchange '" + name + "'").c_str());
    };
    exchange(back);
    amqp_queue_bind(conn_, kChannel, bytes(q.name), bytes(back), amqp_empty_bytes,
                    amqp_empty_table);
    check(("binding queue '" + q.name + "' to exchange '" + back + "'").c_str());
    std::vector<seconds> delays = options_.retry_delays;
    std::sort(delays.begin(), delays.end());
    delays.erase(std::unique(delays.begin(), delays.end()), delays.end());
    for (auto d : delays) {
        auto name = delay_name(q.name, d);
        exchange(name);
        // The wait is the queue's: the broker dead-letters each message when its TTL ends, into
        // the retry exchange, keeping its routing key (no x-dead-letter-routing-key). One TTL per
        // queue, so the oldest message is always the first to expire (RabbitMQ only expires
        // messages at the head of a queue).
        nlohmann::json args = {{"x-message-ttl", static_cast<std::int64_t>(d.count()) * 1000},
                               {"x-dead-letter-exchange", back}};
        ArgumentTable table(args);
        amqp_queue_declare(conn_, kChannel, bytes(name), 0, /*durable*/ 1, 0, 0, table.table());
        check(("declaring delay queue '" + name + "'").c_str());
        amqp_queue_bind(conn_, kChannel, bytes(name), bytes(name), amqp_empty_bytes,
                        amqp_empty_table);
        check(("binding delay queue '" + name + "'").c_str());
    }
}

int Broker::fd() const {
    return amqp_get_sockfd(conn_);
}

bool Broker::buffered() const {
    return amqp_frames_enqueued(conn_) || amqp_data_in_buffer(conn_);
}

std::variant<std::monostate, Incoming, Confirm> Broker::next() {
    amqp_maybe_release_buffers(conn_);
    amqp_envelope_t envelope;
    timeval zero{0, 0};
    amqp_rpc_reply_t r = amqp_consume_message(conn_, &envelope, &zero, 0);
    if (r.reply_type == AMQP_RESPONSE_NORMAL) {
        Incoming in{envelope.delivery_tag, str(envelope.exchange), str(envelope.routing_key),
                    str(envelope.message.body), properties_to_json(envelope.message.properties)};
        amqp_destroy_envelope(&envelope);
        return in;
    }
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT)
        return std::monostate{};
    // Not a delivery: a confirm, or the broker closing something. The frame waits for us.
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
        r.library_error == AMQP_STATUS_UNEXPECTED_STATE)
        return method_frame();
    open_ = r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION && open_;
    throw BrokerError(describe(r));
}

std::variant<std::monostate, Incoming, Confirm> Broker::method_frame() {
    amqp_frame_t frame;
    int rc = amqp_simple_wait_frame(conn_, &frame);
    if (rc != AMQP_STATUS_OK) {
        open_ = false;
        throw BrokerError(amqp_error_string2(rc));
    }
    if (frame.frame_type != AMQP_FRAME_METHOD) return std::monostate{};
    const auto& m = frame.payload.method;
    switch (m.id) {
    case AMQP_BASIC_ACK_METHOD: {
        auto* a = static_cast<amqp_basic_ack_t*>(m.decoded);
        return Confirm{a->delivery_tag, true, a->multiple != 0};
    }
    case AMQP_BASIC_NACK_METHOD: {
        auto* n = static_cast<amqp_basic_nack_t*>(m.decoded);
        return Confirm{n->delivery_tag, false, n->multiple != 0};
    }
    case AMQP_CHANNEL_CLOSE_METHOD:
        amqp_channel_close_ok_t ok;
        amqp_send_method(conn_, frame.channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
        throw BrokerError(close_reason(m));
    case AMQP_CONNECTION_CLOSE_METHOD: {
        amqp_connection_close_ok_t ok;
        amqp_send_method(conn_, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
        open_ = false;
        throw BrokerError(close_reason(m));
    }
    case AMQP_BASIC_CANCEL_METHOD:
        throw BrokerError("the broker cancelled our consumer (was the queue deleted?)");
    default:
        return std::monostate{};
    }
}

void Broker::ack(std::uint64_t tag) {
    if (int rc = amqp_basic_ack(conn_, kChannel, tag, 0); rc != AMQP_STATUS_OK)
        throw BrokerError(std::string("cannot acknowledge: ") + amqp_error_string2(rc));
}

void Broker::reject(std::uint64_t tag, bool requeue) {
    if (int rc = amqp_basic_reject(conn_, kChannel, tag, requeue); rc != AMQP_STATUS_OK)
        throw BrokerError(std::string("cannot reject: ") + amqp_error_string2(rc));
}

std::uint64_t Broker::publish_copy(const std::string& exchange, const std::string& routing_key,
                                   const std::string& body, const RetryProperties& props) {
    int rc = amqp_basic_publish(conn_, kChannel, bytes(exchange), bytes(routing_key), 0, 0,
                                props.get(), bytes(body));
    if (rc != AMQP_STATUS_OK)
        throw BrokerError(std::string("cannot publish a retry: ") + amqp_error_string2(rc));
    return ++published_;
}

void Broker::close() noexcept {
    if (!open_) return;
    open_ = false;
    // Bounded: a dead broker must not hold up a restart.
    timeval t{2, 0};
    amqp_set_rpc_timeout(conn_, &t);
    amqp_connection_close(conn_, AMQP_REPLY_SUCCESS);
}

} // namespace loopabull::amqp
