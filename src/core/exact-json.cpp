// SPDX-License-Identifier: GPL-3.0-or-later
#include "core/exact-json.hpp"

#include <cmath>
#include <vector>

namespace loopabull {

namespace {

using json = nlohmann::json;

// Builds the tree as nlohmann's own DOM parser does (a duplicate key keeps its last value), with
// number_float seeing the literal's text.
class ExactSax {
  public:
    explicit ExactSax(json& root) : root_(root) {}

    bool null() { return put(nullptr); }
    bool boolean(bool v) { return put(v); }
    bool number_integer(json::number_integer_t v) { return put(v); }
    bool number_unsigned(json::number_unsigned_t v) { return put(v); }
    bool number_float(json::number_float_t v, const std::string& text) {
        if (text.find_first_of(".eE") == std::string::npos)
            return put(json::binary(json::binary_t::container_type(text.begin(), text.end()),
                                    kBigIntegerSubtype));
        if (!std::isfinite(v)) {
            error_ = "number overflow parsing '" + text + "'";
            return false;
        }
        return put(v);
    }
    bool string(std::string& v) { return put(std::move(v)); }
    bool binary(json::binary_t&) { return false; } // JSON text has no binary values
    bool start_object(std::size_t) { return open(json::object()); }
    bool key(std::string& k) {
        slot_ = &(*stack_.back())[k];
        return true;
    }
    bool end_object() { return close(); }
    bool start_array(std::size_t) { return open(json::array()); }
    bool end_array() { return close(); }
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) {
        error_ = e.what();
        return false;
    }

    const std::string& error() const { return error_; }

  private:
    json* place(json&& v) {
        if (stack_.empty()) {
            root_ = std::move(v);
            return &root_;
        }
        if (stack_.back()->is_array()) {
            stack_.back()->push_back(std::move(v));
            return &stack_.back()->back();
        }
        *slot_ = std::move(v);
        return slot_;
    }
    template <typename T> bool put(T&& v) {
        place(json(std::forward<T>(v)));
        return true;
    }
    bool open(json&& container) {
        stack_.push_back(place(std::move(container)));
        return true;
    }
    bool close() {
        stack_.pop_back();
        return true;
    }

    json& root_;
    std::vector<json*> stack_;
    json* slot_ = nullptr;
    std::string error_;
};

} // namespace

std::optional<json> parse_exact_json(std::string_view text, std::string* error) {
    json root;
    ExactSax sax(root);
    bool ok = json::sax_parse(text.begin(), text.end(), &sax);
    if (!ok) {
        if (error) *error = sax.error().empty() ? "malformed JSON" : sax.error();
        return std::nullopt;
    }
    return root;
}

bool is_big_integer(const json& v) noexcept {
    return v.is_binary() && v.get_binary().has_subtype() &&
           v.get_binary().subtype() == kBigIntegerSubtype;
}

std::string big_integer_text(const json& v) {
    auto& bytes = v.get_binary();
    return std::string(bytes.begin(), bytes.end());
}

namespace {

// A line break and the indentation of depth, when pretty-printing (indent > 0).
void newline(std::string& out, int indent, int depth) {
    if (indent <= 0) return;
    out += '\n';
    out.append(static_cast<std::size_t>(indent * depth), ' ');
}

void dump_at(std::string& out, const json& v, int indent, int depth) {
    bool container = v.is_object() || v.is_array();
    if (container && v.empty()) {
        out += v.is_object() ? "{}" : "[]";
        return;
    }
    switch (v.type()) {
    case json::value_t::object: {
        out += '{';
        bool first = true;
        for (auto& [k, item] : v.items()) {
            if (!first) out += ',';
            first = false;
            newline(out, indent, depth + 1);
            out += json(k).dump(-1, ' ', false, json::error_handler_t::replace);
            out += indent > 0 ? ": " : ":";
            dump_at(out, item, indent, depth + 1);
        }
        newline(out, indent, depth);
        out += '}';
        break;
    }
    case json::value_t::array:
        out += '[';
        for (std::size_t i = 0; i < v.size(); ++i) {
            if (i) out += ',';
            newline(out, indent, depth + 1);
            dump_at(out, v[i], indent, depth + 1);
        }
        newline(out, indent, depth);
        out += ']';
        break;
    case json::value_t::binary: // only big integers: JSON text has no binary values
        out += is_big_integer(v) ? big_integer_text(v) : "null";
        break;
    default:
        out += v.dump(-1, ' ', false, json::error_handler_t::replace);
    }
}

} // namespace

void dump_exact_json(std::string& out, const json& v, int indent) {
    dump_at(out, v, indent, 0);
}

std::string dump_exact_json(const json& v, int indent) {
    std::string out;
    dump_exact_json(out, v, indent);
    return out;
}

} // namespace loopabull
