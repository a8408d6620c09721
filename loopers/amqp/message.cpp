// SPDX-License-Identifier: GPL-3.0-or-later
#include "message.hpp"

#include "retry.hpp"

#include <openssl/evp.h>

#include <cstring>
#include <memory>

namespace loopabull::amqp {

namespace {

using nlohmann::json;

// The supervisor's default max_line_length is 1 MiB; one byte under leaves room for '\n'.
constexpr std::size_t kMaxLine = 1024 * 1024 - 1;
// The protocol allows 64 levels in an event; the event and its body take two of them.
constexpr int kMaxBodyDepth = 60;

std::string str(amqp_bytes_t b) {
    return b.len ? std::string(static_cast<const char*>(b.bytes), b.len) : std::string();
}

json field_to_json(const amqp_field_value_t& f);

json array_to_json(const amqp_array_t& a) {
    json out = json::array();
    for (int i = 0; i < a.num_entries; ++i)
        out.push_back(field_to_json(a.entries[i]));
    return out;
}

json field_to_json(const amqp_field_value_t& f) {
    switch (f.kind) {
    case AMQP_FIELD_KIND_BOOLEAN:
        return f.value.boolean != 0;
    case AMQP_FIELD_KIND_I8:
        return f.value.i8;
    case AMQP_FIELD_KIND_U8:
        return f.value.u8;
    case AMQP_FIELD_KIND_I16:
        return f.value.i16;
    case AMQP_FIELD_KIND_U16:
        return f.value.u16;
    case AMQP_FIELD_KIND_I32:
        return f.value.i32;
    case AMQP_FIELD_KIND_U32:
        return f.value.u32;
    case AMQP_FIELD_KIND_I64:
        return f.value.i64;
    case AMQP_FIELD_KIND_U64:
    case AMQP_FIELD_KIND_TIMESTAMP:
        return f.value.u64;
    case AMQP_FIELD_KIND_F32:
        return f.value.f32;
    case AMQP_FIELD_KIND_F64:
        return f.value.f64;
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES:
        return str(f.value.bytes);
    case AMQP_FIELD_KIND_ARRAY:
        return array_to_json(f.value.array);
    case AMQP_FIELD_KIND_TABLE:
        return table_to_json(f.value.table);
    default: // void, decimal
        return nullptr;
    }
}

struct TooDeep {};

json parse_body(std::string_view body, std::string* why) {
    // Returning false from the callback would only drop the deep part; throwing drops it all.
    auto limit = [](int depth, json::parse_event_t, json&) {
        if (depth > kMaxBodyDepth) throw TooDeep();
        return true;
    };
    try {
        return json::parse(body, limit);
    } catch (const TooDeep&) {
        *why = "the body is nested deeper than " + std::to_string(kMaxBodyDepth) + " levels";
        return json(json::value_t::discarded);
    } catch (const json::exception& e) {
        *why = std::string("the body is not JSON: ") + e.what();
        return json(json::value_t::discarded);
    }
}

} // namespace

json table_to_json(const amqp_table_t& table) {
    json out = json::object();
    for (int i = 0; i < table.num_entries; ++i)
        out[str(table.entries[i].key)] = field_to_json(table.entries[i].value);
    return out;
}

json properties_to_json(const amqp_basic_properties_t& p) {
    json out = json::object();
    auto flag = [&p](amqp_flags_t f) { return (p._flags & f) != 0; };
    if (flag(AMQP_BASIC_CONTENT_TYPE_FLAG)) out["content_type"] = str(p.content_type);
    if (flag(AMQP_BASIC_CONTENT_ENCODING_FLAG)) out["content_encoding"] = str(p.content_encoding);
    if (flag(AMQP_BASIC_MESSAGE_ID_FLAG)) out["message_id"] = str(p.message_id);
    if (flag(AMQP_BASIC_CORRELATION_ID_FLAG)) out["correlation_id"] = str(p.correlation_id);
    if (flag(AMQP_BASIC_TYPE_FLAG)) out["type"] = str(p.type);
    if (flag(AMQP_BASIC_APP_ID_FLAG)) out["app_id"] = str(p.app_id);
    if (flag(AMQP_BASIC_PRIORITY_FLAG)) out["priority"] = p.priority;
    if (flag(AMQP_BASIC_TIMESTAMP_FLAG)) out["timestamp"] = p.timestamp;
    if (flag(AMQP_BASIC_HEADERS_FLAG)) out["headers"] = table_to_json(p.headers);
    return out;
}

std::string dedup_id(std::string_view routing_key, std::string_view body, const json& properties) {
    if (auto m = properties.find("message_id"); m != properties.end() && m->is_string()) {
        const auto& text = m->get_ref<const std::string&>();
        if (!text.empty() && text.size() <= 200) return text;
    }
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    const char nul = 0;
    if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1 ||
        EVP_DigestUpdate(ctx.get(), routing_key.data(), routing_key.size()) != 1 ||
        EVP_DigestUpdate(ctx.get(), &nul, 1) != 1 ||
        EVP_DigestUpdate(ctx.get(), body.data(), body.size()) != 1 ||
        EVP_DigestFinal_ex(ctx.get(), md, &len) != 1)
        throw std::bad_alloc(); // EVP fails only when it cannot allocate
    std::string out = "sha256:";
    static constexpr char kDigits[] = "0123456789abcdef";
    for (unsigned i = 0; i < len; ++i) {
        out += kDigits[md[i] >> 4];
        out += kDigits[md[i] & 0xf];
    }
    return out;
}

std::optional<std::string> event_line(std::string* key, std::string_view body,
                                      const json& properties, std::string_view id,
                                      const Envelope* envelope, std::string* why) {
    // Before the envelope changes *key: the key the broker delivered the message with.
    auto dedup = dedup_id(*key, body, properties);
    json msg = parse_body(body, why);
    if (msg.is_discarded()) return std::nullopt;
    if (envelope) {
        // fedmsg-rabbitmq-serializer's {"topic": T, "body": FEDMSG}: T chooses the playbook,
        // FEDMSG is what the playbook sees as msg (as loopabull 0.0.5/0.0.6 gave it).
        auto k = msg.is_object() ? msg.find(envelope->routing_key) : msg.end();
        auto b = msg.is_object() ? msg.find(envelope->body) : msg.end();
        if (k == msg.end() || !k->is_string() || k->get<std::string>().empty() || b == msg.end()) {
            *why = "the body is not an envelope with a non-empty string '" + envelope->routing_key +
                   "' and a '" + envelope->body + "'";
            return std::nullopt;
        }
        *key = k->get<std::string>();
        json inner = std::move(*b);
        msg = std::move(inner);
    }
    const std::string& routing_key = *key;
    // The original handed playbooks {"msg": body}; fedora-messaging's consumers also see the
    // topic, headers and message id.
    json event_body = {{"msg", std::move(msg)}, {"topic", routing_key}};
    if (auto h = properties.find("headers"); h != properties.end()) event_body["headers"] = *h;
    if (auto m = properties.find("message_id"); m != properties.end()) event_body["id"] = *m;
    json event = {{"routing_key", routing_key},
                  {"id", id},
                  {"dedup_id", std::move(dedup)},
                  {"body", std::move(event_body)}};
    // Header strings are not checked by the broker; the supervisor refuses invalid UTF-8.
    std::string line = event.dump(-1, ' ', false, json::error_handler_t::replace);
    if (line.size() > kMaxLine) {
        *why = "the event would be larger than " + std::to_string(kMaxLine) + " bytes";
        return std::nullopt;
    }
    return line + '\n';
}

RetryProperties::RetryProperties(const json& p, int attempts, std::string_view signature) {
    auto set = [&](const char* key, amqp_flags_t f, amqp_bytes_t& field) {
        if (auto it = p.find(key); it != p.end() && it->is_string()) {
            field = bytes(it->get<std::string>());
            props_._flags |= f;
        }
    };
    set("content_type", AMQP_BASIC_CONTENT_TYPE_FLAG, props_.content_type);
    set("content_encoding", AMQP_BASIC_CONTENT_ENCODING_FLAG, props_.content_encoding);
    set("message_id", AMQP_BASIC_MESSAGE_ID_FLAG, props_.message_id);
    set("correlation_id", AMQP_BASIC_CORRELATION_ID_FLAG, props_.correlation_id);
    set("type", AMQP_BASIC_TYPE_FLAG, props_.type);
    set("app_id", AMQP_BASIC_APP_ID_FLAG, props_.app_id);
    // Signed or unsigned: JSON read back from a file does not say which.
    if (auto it = p.find("priority");
        it != p.end() && it->is_number_integer() && *it >= 0 && *it <= 255) {
        props_.priority = it->get<std::uint8_t>();
        props_._flags |= AMQP_BASIC_PRIORITY_FLAG;
    }
    if (auto it = p.find("timestamp"); it != p.end() && it->is_number_integer() && *it >= 0) {
        props_.timestamp = it->get<std::uint64_t>();
        props_._flags |= AMQP_BASIC_TIMESTAMP_FLAG;
    }
    json headers = p.value("headers", json::object());
    headers.erase("x-delivery-count");
    headers.erase("x-death");
    headers.erase("x-loopabull-routing-key"); // what loopabull before 0.2 trusted: never again
    headers[kAttemptsHeader] = attempts;
    headers[kSignatureHeader] = std::string(signature);
    props_.headers = table(headers);
    props_.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    props_._flags |= AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
}

amqp_bytes_t RetryProperties::bytes(const std::string& s) {
    const auto& kept = strings_.emplace_back(s);
    return amqp_bytes_t{kept.size(), const_cast<char*>(kept.data())};
}

amqp_table_t RetryProperties::table(const json& object) {
    auto& entries = entries_.emplace_back();
    for (const auto& [key, v] : object.items())
        entries.push_back(amqp_table_entry_t{bytes(key), value(v)});
    return amqp_table_t{static_cast<int>(entries.size()), entries.data()};
}

amqp_field_value_t RetryProperties::value(const json& v) {
    amqp_field_value_t f{};
    if (v.is_boolean()) {
        f.kind = AMQP_FIELD_KIND_BOOLEAN;
        f.value.boolean = v.get<bool>();
    } else if (v.is_number_integer()) {
        f.kind = AMQP_FIELD_KIND_I64;
        f.value.i64 = v.get<std::int64_t>();
    } else if (v.is_number_float()) {
        f.kind = AMQP_FIELD_KIND_F64;
        f.value.f64 = v.get<double>();
    } else if (v.is_string()) {
        f.kind = AMQP_FIELD_KIND_UTF8;
        f.value.bytes = bytes(v.get<std::string>());
    } else if (v.is_object()) {
        f.kind = AMQP_FIELD_KIND_TABLE;
        f.value.table = table(v);
    } else if (v.is_array()) {
        auto& items = arrays_.emplace_back();
        for (const auto& item : v)
            items.push_back(value(item));
        f.kind = AMQP_FIELD_KIND_ARRAY;
        f.value.array = amqp_array_t{static_cast<int>(items.size()), items.data()};
    } else {
        f.kind = AMQP_FIELD_KIND_VOID;
    }
    return f;
}

} // namespace loopabull::amqp
