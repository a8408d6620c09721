// SPDX-License-Identifier: GPL-3.0-or-later
#include "retry.hpp"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace loopabull::amqp {

namespace {

std::string hex(const unsigned char* p, std::size_t n) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string out;
    out.reserve(2 * n);
    for (std::size_t i = 0; i < n; ++i) {
        out += digits[p[i] >> 4];
        out += digits[p[i] & 0xf];
    }
    return out;
}

std::string sha256_hex(std::string_view data) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) != 1)
        throw std::runtime_error("SHA-256 failed");
    return hex(md, len);
}

// "LEN:BYTES" for each field: no choice of field contents can make two fact sets encode alike.
void field(std::string& out, std::string_view s) {
    out += std::to_string(s.size());
    out += ':';
    out += s;
}

std::string errno_text() {
    return std::strerror(errno);
}

} // namespace

std::string retry_exchange(std::string_view queue) {
    return std::string(queue) + ".loopabull-retry";
}

std::string delay_name(std::string_view queue, std::chrono::seconds delay) {
    return std::string(queue) + ".loopabull-delay-" + std::to_string(delay.count()) + "s";
}

RetrySigner::RetrySigner(std::string key) : key_(std::move(key)) {
    if (key_.size() < kMinSecret)
        throw std::invalid_argument("the retry secret must be at least " +
                                    std::to_string(kMinSecret) + " bytes");
}

std::string RetrySigner::sign(const RetryFacts& f) const {
    std::string text = "loopabull-retry-v1";
    field(text, f.queue);
    field(text, f.routing_key);
    field(text, std::to_string(f.attempts));
    field(text, f.message_id);
    field(text, sha256_hex(f.body));
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (!HMAC(EVP_sha256(), key_.data(), static_cast<int>(key_.size()),
              reinterpret_cast<const unsigned char*>(text.data()), text.size(), md, &len))
        throw std::runtime_error("HMAC-SHA256 failed");
    return hex(md, len);
}

bool RetrySigner::verify(const RetryFacts& f, std::string_view signature) const {
    auto expected = sign(f);
    return signature.size() == expected.size() &&
           CRYPTO_memcmp(signature.data(), expected.data(), expected.size()) == 0;
}

std::string secret_file_name(std::string_view queue) {
    std::string out = "amqp-retry-secret-";
    for (char c : queue) {
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        out += ok ? c : '_';
    }
    // A queue named "." or ".." must not name a directory.
    return out;
}

std::optional<std::string> load_secret(const std::string& path, bool create, std::string* why) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 && errno == ENOENT && create) {
        unsigned char raw[32];
        if (getrandom(raw, sizeof raw, 0) != static_cast<ssize_t>(sizeof raw)) {
            *why = "cannot get random bytes for " + path + ": " + errno_text();
            return std::nullopt;
        }
        std::string secret = hex(raw, sizeof raw) + "\n";
        int w = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (w >= 0) {
            bool ok =
                ::write(w, secret.data(), secret.size()) == static_cast<ssize_t>(secret.size());
            ok = ::fsync(w) == 0 && ok;
            ::close(w);
            if (!ok) {
                *why = "cannot write " + path + ": " + errno_text();
                ::unlink(path.c_str());
                return std::nullopt;
            }
        } else if (errno != EEXIST) { // EEXIST: another instance made it first; read theirs
            *why = "cannot create " + path + ": " + errno_text();
            return std::nullopt;
        }
        fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    }
    if (fd < 0) {
        *why = "cannot open " + path + ": " + errno_text();
        return std::nullopt;
    }
    std::string data;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof buf)) > 0 && data.size() < 65536)
        data.append(buf, static_cast<std::size_t>(n));
    int err = errno;
    ::close(fd);
    if (n < 0) {
        *why = "cannot read " + path + ": " + std::strerror(err);
        return std::nullopt;
    }
    while (!data.empty() && (data.back() == '\n' || data.back() == '\r'))
        data.pop_back();
    if (data.size() < kMinSecret) {
        *why = path + " holds " + std::to_string(data.size()) + " bytes; a retry secret needs " +
               "at least " + std::to_string(kMinSecret);
        return std::nullopt;
    }
    return data;
}

Origin origin_of(const RetrySigner& signer, std::string_view queue, std::string_view exchange,
                 std::string_view routing_key, const nlohmann::json& properties,
                 std::string_view body, bool run_legacy) {
    Origin o{std::string(routing_key), 0, false, {}};
    const nlohmann::json* headers = nullptr;
    if (auto h = properties.find("headers"); h != properties.end() && h->is_object()) headers = &*h;
    if (exchange.empty() && routing_key == queue && headers) {
        auto k = headers->find(kLegacyRoutingKeyHeader);
        if (k != headers->end() && k->is_string()) {
            if (!run_legacy) {
                o.problem =
                    "it looks like a retry copy of loopabull before 0.2 (for routing key '" +
                    k->get<std::string>() + "', in its unsigned " + kLegacyRoutingKeyHeader +
                    " header); set legacy_retry_copies: run to run such copies";
                return o;
            }
            o.routing_key = k->get<std::string>();
            auto a = headers->find(kAttemptsHeader);
            bool counted =
                a != headers->end() && a->is_number_integer() && *a >= 1 && *a <= 1000000;
            o.attempts = counted ? a->get<int>() : 1;
            return o;
        }
    }
    // Whatever else reached the queue came through a binding an operator made (or the default
    // exchange, by the queue's own name): the broker routed it by this routing key, which is
    // therefore what decides the playbook, whatever its headers say.
    if (exchange != retry_exchange(queue)) return o;
    const nlohmann::json* attempts = nullptr;
    const nlohmann::json* signature = nullptr;
    if (headers) {
        if (auto a = headers->find(kAttemptsHeader); a != headers->end()) attempts = &*a;
        if (auto s = headers->find(kSignatureHeader); s != headers->end()) signature = &*s;
    }
    std::string message_id;
    if (auto m = properties.find("message_id"); m != properties.end() && m->is_string())
        message_id = m->get<std::string>();
    bool shaped = attempts && attempts->is_number_integer() && *attempts >= 1 &&
                  *attempts <= 1000000 && signature && signature->is_string();
    if (!shaped || !signer.verify({queue, routing_key, message_id, body, attempts->get<int>()},
                                  signature->get<std::string>())) {
        o.problem = "it came through loopabull's retry exchange '" + retry_exchange(queue) +
                    "' without a valid " + kSignatureHeader +
                    " (published there by someone else, or signed with another retry secret)";
        return o;
    }
    o.attempts = attempts->get<int>();
    o.copy = true;
    return o;
}

} // namespace loopabull::amqp
