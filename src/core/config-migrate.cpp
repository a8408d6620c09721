// SPDX-License-Identifier: GPL-3.0-or-later
// The legacy dialects rewritten in the current one. The file is first loaded as it is (so a
// migration never starts from a file loopabull would refuse), then its YAML is walked again
// to write the new text: values are kept as written (relative paths stay relative, looper
// options keep their keys), only the places change. The result is loaded once more before it
// is returned, so what --migrate-config prints always passes --check-config.
#include "core/config-migrate.hpp"

#include "core/config-reader.hpp"

#include <yaml-cpp/yaml.h>

#include "build-config.h"

#include <filesystem>
#include <sstream>

namespace loopabull {

namespace {

using config_detail::split_words;

// One scalar as YAML writes it (quoted where a plain scalar would change its meaning).
std::string scalar(const std::string& s) {
    YAML::Emitter e;
    e << s;
    return e.c_str();
}

// A node as it was written: a scalar that was quoted (or tagged) stays a quoted string, a plain
// one stays plain, so the looper options that reach the looper as JSON keep their types
// (a quoted "5" is a string, a plain 5 a number: see scalar_to_json in the reader).
void emit(YAML::Emitter& e, const YAML::Node& n) {
    if (n.IsMap()) {
        e << YAML::BeginMap;
        for (auto it = n.begin(); it != n.end(); ++it) {
            e << YAML::Key << it->first.Scalar() << YAML::Value;
            emit(e, it->second);
        }
        e << YAML::EndMap;
    } else if (n.IsSequence()) {
        e << YAML::BeginSeq;
        for (auto item : n)
            emit(e, item);
        e << YAML::EndSeq;
    } else if (!n.IsDefined() || n.IsNull()) {
        e << YAML::Null;
    } else if (n.Tag() != "?") {
        e << YAML::DoubleQuoted << n.Scalar();
    } else {
        e << n.Scalar();
    }
}

// A node in block style, every line indented by `indent` spaces, ending in a newline.
std::string block(const YAML::Node& node, int indent) {
    YAML::Emitter e;
    e.SetIndent(2);
    emit(e, node);
    std::istringstream in(e.c_str());
    std::string out;
    for (std::string line; std::getline(in, line);)
        out += std::string(static_cast<std::size_t>(indent), ' ') + line + "\n";
    return out;
}

// "key: value" for scalars and empty collections, "key:\n  block" for the rest.
std::string entry(const std::string& key, const YAML::Node& value, int indent) {
    std::string pad(static_cast<std::size_t>(indent), ' ');
    if (value.IsMap() && value.size() == 0) return pad + key + ": {}\n";
    if (value.IsSequence() && value.size() == 0) return pad + key + ": []\n";
    if (value.IsScalar() || value.IsNull()) {
        YAML::Emitter e;
        emit(e, value);
        return pad + key + ": " + e.c_str() + "\n";
    }
    return pad + key + ":\n" + block(value, indent + 2);
}

// Comment lines, each starting with "# " at the given indentation.
std::string comment(const std::string& text, int indent) {
    std::string pad(static_cast<std::size_t>(indent), ' ');
    std::istringstream in(text);
    std::string out;
    for (std::string line; std::getline(in, line);)
        out += pad + "#" + (line.empty() ? "" : " ") + line + "\n";
    return out;
}

std::string layout_name(const std::string& translator) {
    if (translator == "rkdirectory" || translator == "directory") return "directory";
    return "name";
}

std::string flow_list(const std::vector<std::string>& items) {
    std::string out = "[";
    for (const auto& s : items)
        out += (out.size() > 1 ? ", " : "") + scalar(s);
    return out + "]";
}

// Keys of the current dialect that a legacy ansible section may already have (config-legacy.cpp
// accepts them there) and that move over as they are; layout, inventory and environment merge
// with their legacy spellings below.
constexpr const char* kCopiedAnsibleKeys[] = {"trusted_payloads", "event_variable"};

std::string looper_section(const std::string& name, const YAML::Node& options,
                           const std::string& origin) {
    std::string out = "loopers:\n";
    out += comment(origin, 2);
    out += "  - name: " + scalar(name) + "\n";
    out += "    command: [" + scalar(name) + "]\n";
    YAML::Node config = options ? YAML::Clone(options) : YAML::Node(YAML::NodeType::Map);
    // 0.0.x's fedmsg plugin read its endpoints from fedmsg's own configuration (/etc/fedmsg.d);
    // the bundled fedmsg looper needs them here.
    if (name == "fedmsg" && !config["endpoints"]) {
        out += comment("Changed: 0.0.x took the fedmsg endpoints from fedmsg's own configuration\n"
                       "(/etc/fedmsg.d); the fedmsg looper needs them here. This is Fedora's\n"
                       "public hub: put yours (loopabull-fedmsg(7)).",
                       4);
        config["endpoints"].push_back("tcp://hub.fedoraproject.org:9940");
    }
    out += entry("config", config, 4);
    return out;
}

std::string ansible_section(const YAML::Node& a, const std::string& translator,
                            const std::string& translator_origin) {
    std::string out = "ansible:\n";
    out += "  playbooks_dir: " + scalar(a["playbooks_dir"].Scalar()) + "\n";
    if (a["layout"]) {
        out += entry("layout", a["layout"], 2);
    } else {
        out += comment("Was " + translator_origin + ": " + translator + ".", 2);
        out += "  layout: " + layout_name(translator) + "\n";
    }
    if (auto cmd = a["playbook_cmd"]) {
        std::vector<std::string> words;
        if (cmd.IsScalar()) {
            words = split_words(cmd.Scalar());
            out += comment("Was one string split on white space; now a list (no shell either way).",
                           2);
        } else {
            for (auto w : cmd)
                words.push_back(w.Scalar());
        }
        if (!words.empty() && std::filesystem::path(words[0]).filename() == "rbac-playbook")
            out += comment(
                "rbac-playbook lets members of groups run chosen playbooks as root through\n"
                "sudo. loopabull runs playbooks with no_new_privs, so sudo cannot raise\n"
                "privileges, and it refuses to run them as root itself (executor.allow_root).\n"
                "Give the automation user the access the playbooks need, or run loopabull as\n"
                "root with allow_root: true as 0.0.7 did (see the README, \"Coming from\n"
                "loopabull 0.0.7\").",
                2);
        out += "  playbook_cmd: " + flow_list(words) + "\n";
    }
    if (auto v = a["cfg_file_path"]) out += entry("cfg_file_path", v, 2);
    if (auto v = a["inventory_path"]) {
        out += comment("Was inventory_path.", 2);
        out += entry("inventory", v, 2);
    } else if (auto inv = a["inventory"]) {
        out += entry("inventory", inv, 2);
    }
    for (const char* key : kCopiedAnsibleKeys)
        if (auto v = a[key]) out += entry(key, v, 2);
    YAML::Node env =
        a["environment"] ? YAML::Clone(a["environment"]) : YAML::Node(YAML::NodeType::Map);
    if (auto m = a["modules_dir"]) {
        out += comment("modules_dir was ansible-playbook -M: ANSIBLE_LIBRARY means the same.", 2);
        env["ANSIBLE_LIBRARY"] = m.Scalar();
    }
    if (env.size() > 0) out += entry("environment", env, 2);
    if (!a["event_variable"]) {
        out += comment(
            "Changed: event variables. The original gave each key of an event's body to the\n"
            "playbook as a variable of its own (the legacy dialects still do); the current\n"
            "dialect puts the body under one variable, `event`, so that an event cannot set\n"
            "Ansible's own variables. top-level keeps the original form, and the playbooks run\n"
            "unchanged; to move on, change them to read event.KEY and drop this line.",
            2);
        out += "  event_variable: top-level\n";
    }
    return out;
}

std::string executor_section(const YAML::Node& e) {
    std::string out = "executor:\n";
    out += comment(
        "Changed: root. 0.0.7 ran playbooks as whatever user ran it, root included; loopabull\n"
        "refuses to run them as root unless allow_root: true, and runs them sandboxed\n"
        "(no_new_privs, seccomp). loopabull@.service runs as the user loopabull.",
        2);
    if (e && e.IsMap())
        for (auto it = e.begin(); it != e.end(); ++it)
            out += entry(it->first.Scalar(), it->second, 2);
    if (!e || !e["type"]) out += "  type: direct\n";
    if (!e || !e["max_parallel"]) {
        out +=
            comment("Changed: parallel runs. 0.0.7 ran one playbook at a time; loopabull runs up\n"
                    "to max_parallel at once (4, also for the old file): 1 keeps the original's\n"
                    "order, if the playbooks rely on it.",
                    2);
        out += "  max_parallel: 4\n";
    }
    if (!e || !e["timeout"]) {
        out += comment(
            "Changed: timeouts. 0.0.7 waited for a playbook for ever; now a job that runs\n"
            "longer is stopped (its whole process group) and answered \"timeout\". With an AMQP\n"
            "broker, keep it below the broker's consumer_timeout (30min by default).",
            2);
        // The default, which the old file gets too (whole seconds).
        auto s = std::chrono::duration_cast<std::chrono::seconds>(ExecutorConfig{}.timeout);
        out += "  timeout: " + std::to_string(s.count()) + "s\n";
    }
    return out;
}

} // namespace

Migration migrate_config(const std::string& path, const LoadOptions& options) {
    auto load = load_config(path, options);
    if (!load.config) return {std::nullopt, std::move(load.errors)};
    const Config& c = *load.config;
    if (c.dialect == "loopabull")
        return {std::nullopt, {{path, 0, 0, "already in the current dialect: nothing to migrate"}}};

    YAML::Node root = YAML::LoadFile(path);
    std::string out;
    out += comment("Converted by loopabull " LOOPABULL_VERSION " (--migrate-config) from " + path +
                       ",\n"
                       "written in the dialect of " +
                       std::string(c.dialect == "legacy-0.0.7" ? "loopabull 0.0.7 (plugins:)"
                                                               : "the original README (plugin:)") +
                       ". Read the comments that start with \"Changed:\".\n"
                       "Relative paths are relative to this file's directory: keep it beside the "
                       "old one.",
                   0);
    if (auto v = root["loglevel"]) out += entry("loglevel", v, 0);
    out += entry("routing_keys", root["routing_keys"], 0);

    std::string translator = "rkname", translator_origin = "the default translator";
    if (c.dialect == "legacy-0.0.7") {
        auto looper = root["plugins"]["looper"];
        YAML::Node opts(YAML::NodeType::Map);
        for (auto it = looper.begin(); it != looper.end(); ++it)
            if (it->first.Scalar() != "name") opts[it->first.Scalar()] = it->second;
        out += looper_section(looper["name"].Scalar(), opts,
                              "Was plugins.looper; its other keys are now the looper's config.");
        if (auto t = root["plugins"]["translator"]; t && t["name"]) {
            translator = t["name"].Scalar();
            translator_origin = "plugins.translator.name";
        }
    } else {
        out += looper_section(root["plugin"].Scalar(), YAML::Node(),
                              "Was plugin: the bundled looper of that name.");
        if (auto t = root["path_translator"]) {
            translator = t.Scalar();
            translator_origin = "path_translator";
        }
    }
    out += ansible_section(root["ansible"], translator, translator_origin);
    out += executor_section(root["executor"]);

    // What is printed must load: a failure here is a bug of the migration, not of the file.
    auto check = parse_config(out, path, options);
    if (!check.config) {
        std::vector<ConfigError> errors;
        for (auto& e : check.errors)
            errors.push_back({path, 0, 0, "the migrated configuration does not load: " + e.str()});
        return {std::nullopt, std::move(errors)};
    }
    return {std::move(out), {}};
}

} // namespace loopabull
