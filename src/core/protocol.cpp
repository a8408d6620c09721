// SPDX-License-Identifier: GPL-3.0-or-later
#include "core/protocol.hpp"

#include "core/routing.hpp"

#include "core/exact-json.hpp"
#include "core/log-safe.hpp"

#include <algorithm>
#include <cstring>

namespace loopabull {

namespace {

constexpr std::size_t kMaxIdLength = 256;
constexpr std::size_t kOverlongExcerpt = 64;
constexpr int kMaxNesting = 64;

// Deeply nested input would exhaust the stack of whatever walks it later (the vars-file writer,
// PyYAML in ansible-playbook), so it is refused before parsing.
bool too_deep(std::string_view line) {
    int depth = 0;
    bool in_string = false;
    for (std::size_t i = 0; i < line.size(); ++i) {
        char c = line[i];
        if (in_string) {
            if (c == '\\')
                ++i;
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '{' || c == '[') {
            if (++depth > kMaxNesting) return true;
        } else if (c == '}' || c == ']') {
            --depth;
        }
    }
    return false;
}

// An id is echoed back verbatim, so only types every language reads unambiguously are accepted.
std::optional<std::string> id_error(const json& id) {
    if (id.is_number_integer()) return std::nullopt;
    if (!id.is_string()) return "\"id\" must be a string or an integer";
    if (id.get_ref<const std::string&>().size() > kMaxIdLength)
        return "\"id\" is longer than 256 bytes";
    return std::nullopt;
}

ParsedEvent make_event(std::string key, json body, std::optional<json> id,
                       std::optional<std::string> dedup_id = std::nullopt) {
    if (auto err = routing_key_error(key))
        return Rejection{
            "invalid routing key '" + escape_for_log(key.substr(0, 300)) + "': " + *err, id};
    if (!body.is_object()) return Rejection{"\"body\" must be a JSON object", id};
    return Event{std::move(key), std::move(body), std::move(id), std::move(dedup_id)};
}

ParsedEvent from_object(json& obj) {
    std::optional<json> id;
    if (auto it = obj.find("id"); it != obj.end()) {
        if (auto err = id_error(*it)) return Rejection{*err, std::nullopt};
        id = std::move(*it);
    }
    auto key = obj.find("routing_key");
    if (key == obj.end()) return Rejection{"missing \"routing_key\"", id};
    if (!key->is_string()) return Rejection{"\"routing_key\" must be a string", id};
    std::optional<std::string> dedup_id;
    if (auto d = obj.find("dedup_id"); d != obj.end()) {
        if (!d->is_string() || d->get_ref<const std::string&>().empty() ||
            d->get_ref<const std::string&>().size() > kMaxIdLength)
            return Rejection{"\"dedup_id\" must be a non-empty string of at most 256 bytes", id};
        dedup_id = std::move(d->get_ref<std::string&>());
    }
    auto body = obj.find("body");
    json b = body == obj.end() ? json::object() : std::move(*body);
    return make_event(std::move(key->get_ref<std::string&>()), std::move(b), std::move(id),
                      std::move(dedup_id));
}

// The top-level "id" of an event too deep to parse into a tree, so that its rejection can still be
// answered: a looper that never hears of an event keeps it in flight, and enough of them stall
// it. nlohmann's SAX parser keeps no recursion of its own; this handler keeps only a depth.
class TopLevelId : public nlohmann::json_sax<json> {
  public:
    std::optional<json> id;

    bool null() override { return scalar(json()); }
    bool boolean(bool v) override { return scalar(v); }
    bool number_integer(number_integer_t v) override { return scalar(v); }
    bool number_unsigned(number_unsigned_t v) override { return scalar(v); }
    bool number_float(number_float_t v, const string_t&) override { return scalar(v); }
    bool string(string_t& v) override { return scalar(v); }
    bool binary(binary_t&) override { return scalar(json()); }
    bool start_object(std::size_t) override { return open(); }
    bool end_object() override { return close(); }
    bool start_array(std::size_t) override { return open(); }
    bool end_array() override { return close(); }
    bool key(string_t& k) override {
        id_next_ = depth_ == 1 && k == "id";
        return true;
    }
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
        return false;
    }

  private:
    int depth_ = 0;
    bool id_next_ = false;
    bool scalar(json v) {
        if (id_next_ && depth_ == 1) id = std::move(v);
        id_next_ = false;
        return true;
    }
    bool open() {
        id_next_ = false;
        ++depth_;
        return true;
    }
    bool close() {
        --depth_;
        return true;
    }
};

// The id of a line refused before parsing, when it has a usable one at the top level.
std::optional<json> id_of_unparsed(std::string_view line) {
    TopLevelId sax;
    json::sax_parse(line.begin(), line.end(), &sax);
    if (!sax.id || id_error(*sax.id)) return std::nullopt;
    return sax.id;
}

ParsedEvent from_array(json& arr) {
    if (arr.size() != 2 || !arr[0].is_string())
        return Rejection{"an array event must be [\"routing.key\", {body}]", std::nullopt};
    return make_event(std::move(arr[0].get_ref<std::string&>()), std::move(arr[1]), std::nullopt);
}

} // namespace

bool valid_utf8(std::string_view s) noexcept {
    auto p = reinterpret_cast<const unsigned char*>(s.data());
    auto end = p + s.size();
    while (p < end) {
        if (*p < 0x80) {
            ++p;
            continue;
        }
        int n;
        unsigned cp;
        if ((*p & 0xE0) == 0xC0)
            n = 1, cp = *p & 0x1F;
        else if ((*p & 0xF0) == 0xE0)
            n = 2, cp = *p & 0x0F;
        else if ((*p & 0xF8) == 0xF0)
            n = 3, cp = *p & 0x07;
        else
            return false;
        if (end - p <= n) return false;
        for (int i = 1; i <= n; ++i) {
            if ((p[i] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (p[i] & 0x3F);
        }
        // Overlong forms, surrogates and values past U+10FFFF are not UTF-8.
        static constexpr unsigned min_for_len[] = {0, 0x80, 0x800, 0x10000};
        if (cp < min_for_len[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        p += n + 1;
    }
    return true;
}

ParsedEvent parse_event(std::string_view line) {
    if (line.find('\0') != std::string_view::npos)
        return Rejection{"line contains a NUL byte", std::nullopt};
    if (!valid_utf8(line)) return Rejection{"line is not valid UTF-8", std::nullopt};
    if (too_deep(line)) return Rejection{"nested deeper than 64 levels", id_of_unparsed(line)};
    // Integers beyond 64 bits stay exact (exact-json.hpp), as Python's json module keeps them.
    std::string error;
    auto doc = parse_exact_json(line, &error);
    if (!doc) return Rejection{"malformed JSON: " + error, std::nullopt};
    if (doc->is_object()) return from_object(*doc);
    if (doc->is_array()) return from_array(*doc);
    return Rejection{"an event must be a JSON object or a [routing_key, body] array", std::nullopt};
}

std::string_view to_string(Result r) noexcept {
    switch (r) {
    case Result::succeeded:
        return "succeeded";
    case Result::failed:
        return "failed";
    case Result::unrouted:
        return "unrouted";
    case Result::rejected:
        return "rejected";
    case Result::timeout:
        return "timeout";
    case Result::superseded:
        return "superseded";
    case Result::throttled:
        return "throttled";
    case Result::cancelled:
        return "cancelled";
    case Result::aborted:
        return "aborted";
    }
    return "failed";
}

// Written directly rather than through a json tree: one answer per event is the hot path. The
// keys come in the order nlohmann's object gave them (sorted), as the man page shows.
std::string format_answer(const json& id, Result result, std::optional<int> exit_code,
                          std::string_view reason, std::optional<std::uint64_t> duplicate_of) {
    std::string line;
    // Replacement keeps an answer writable even when a reason quotes broken input.
    std::string quoted = reason.empty()
                             ? std::string()
                             : json(reason).dump(-1, ' ', false, json::error_handler_t::replace);
    line.reserve(64 + 2 * quoted.size());
    line += '{';
    if (duplicate_of) line += "\"duplicate_of\":" + std::to_string(*duplicate_of) + ',';
    if (!quoted.empty()) line += "\"error\":" + quoted + ',';
    line += "\"exit_code\":";
    line += exit_code ? std::to_string(*exit_code) : "null";
    line += ",\"id\":";
    if (id.is_number_integer())
        line += id.is_number_unsigned() ? std::to_string(id.get<std::uint64_t>())
                                        : std::to_string(id.get<std::int64_t>());
    else
        line += id.dump(-1, ' ', false, json::error_handler_t::replace);
    if (!quoted.empty()) line += ",\"reason\":" + quoted;
    line += ",\"result\":\"";
    line += to_string(result);
    line += "\"}\n";
    return line;
}

std::span<char> LineReader::prepare(std::size_t want) {
    compact();
    if (buf_.size() < filled_ + want) buf_.resize(filled_ + want);
    return {buf_.data() + filled_, buf_.size() - filled_};
}

void LineReader::commit(std::size_t n) {
    filled_ += n;
}

std::size_t LineReader::partial_bytes() const noexcept {
    if (discarding_) return 0;
    std::string_view held(buf_.data() + start_, filled_ - start_);
    auto nl = held.rfind('\n');
    return nl == std::string_view::npos ? held.size() : held.size() - nl - 1;
}

bool LineReader::has_line() const noexcept {
    const char* from = buf_.data() + start_;
    const char* end = buf_.data() + filled_;
    auto nl =
        static_cast<const char*>(std::memchr(from, '\n', static_cast<std::size_t>(end - from)));
    // While discarding, the first newline only ends the overlong line; a line needs another.
    if (nl && discarding_)
        nl = static_cast<const char*>(
            std::memchr(nl + 1, '\n', static_cast<std::size_t>(end - nl - 1)));
    return nl != nullptr;
}

void LineReader::compact() {
    if (start_ == 0) return;
    std::memmove(buf_.data(), buf_.data() + start_, filled_ - start_);
    filled_ -= start_;
    start_ = 0;
}

std::optional<LineReader::Line> LineReader::next() {
    const char* base = buf_.data();
    if (discarding_) {
        auto nl = static_cast<const char*>(std::memchr(base + start_, '\n', filled_ - start_));
        if (!nl) {
            start_ = filled_ = 0;
            return std::nullopt;
        }
        start_ = static_cast<std::size_t>(nl - base) + 1;
        discarding_ = false;
        scan_ = 0;
    }
    auto from = base + start_ + scan_;
    auto nl = static_cast<const char*>(std::memchr(from, '\n', filled_ - start_ - scan_));
    if (nl) {
        std::size_t len = static_cast<std::size_t>(nl - base) - start_;
        Line line{{base + start_, std::min(len, len > max_line_ ? kOverlongExcerpt : len)},
                  len > max_line_};
        start_ += len + 1;
        scan_ = 0;
        return line;
    }
    scan_ = filled_ - start_;
    if (scan_ <= max_line_) return std::nullopt;
    Line line{{base + start_, std::min(kOverlongExcerpt, scan_)}, true};
    discarding_ = true;
    start_ = filled_ = 0;
    scan_ = 0;
    return line;
}

} // namespace loopabull
