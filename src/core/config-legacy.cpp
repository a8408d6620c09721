// SPDX-License-Identifier: GPL-3.0-or-later
// The two dialects of the original loopabull: its README's (`plugin:`, `path_translator:`) and
// 0.0.7's (`plugins: {looper, translator}`), as Fedora's deployment rendered it.
#include "core/config-reader.hpp"

#include <sstream>

namespace loopabull::config_detail {

namespace {

// The original's keys, and the current dialect's ansible keys (so that a legacy file can be
// given one new setting without being converted).
const std::vector<std::string_view> kLegacyAnsibleKeys = {
    "playbooks_dir", "playbook_cmd",     "cfg_file_path", "inventory_path", "modules_dir",
    "layout",        "trusted_payloads", "environment",   "inventory",      "event_variable"};

void read_legacy_ansible(Reader& r, const YAML::Node& node, Config& c) {
    if (!r.mapping(node, "'ansible'", kLegacyAnsibleKeys)) return;
    read_playbooks_dir(r, node, c);
    if (auto v = node["playbook_cmd"]) {
        // The original's one string split on white space, or the current dialect's list.
        if (v.IsSequence()) {
            if (auto cmd = r.strings(v, "playbook_cmd", false)) c.ansible.playbook_cmd = *cmd;
        } else if (auto s = r.nonempty(v, "playbook_cmd")) {
            c.ansible.playbook_cmd = split_words(*s);
        }
    }
    if (c.ansible.playbook_cmd.empty()) c.ansible.playbook_cmd = {"/usr/bin/ansible-playbook"};
    resolve_playbook_cmd(r, node["playbook_cmd"] ? node["playbook_cmd"] : node,
                         c.ansible.playbook_cmd);
    if (auto v = node["cfg_file_path"]) read_cfg_file(r, v, c);
    if (node["inventory"] && node["inventory_path"])
        r.error(node["inventory"], "'inventory' and 'inventory_path' say the same: keep one");
    else if (auto v = node["inventory"])
        read_inventory(r, v, "inventory", c);
    if (auto v = node["inventory_path"]) read_inventory(r, v, "inventory_path", c);
    if (auto v = node["layout"]) read_layout(r, v, "layout", c);
    if (auto v = node["trusted_payloads"])
        c.ansible.trusted_payloads = r.boolean(v, "trusted_payloads").value_or(false);
    if (auto v = node["environment"]) read_environment(r, v, c);
    if (auto v = node["event_variable"]) read_event_variable(r, v, c);
    if (auto v = node["modules_dir"]) {
        // The original passed -M; ANSIBLE_LIBRARY means the same and suits any playbook_cmd.
        if (auto p = r.nonempty(v, "modules_dir"))
            c.ansible.environment.emplace_back("ANSIBLE_LIBRARY", r.path(*p));
    }
}

// A looper named in a legacy config is the bundled looper of that name.
void add_legacy_looper(Reader& r, const YAML::Node& at, const std::string& name, json options,
                       Config& c) {
    LooperConfig lc;
    lc.name = name;
    lc.command = {name};
    lc.config = std::move(options);
    if (name.find('/') != std::string::npos || !valid_looper_name(name)) {
        r.error(at, "invalid looper name '" + name + "'");
        return;
    }
    resolve_looper_command(r, at, lc);
    c.loopers.push_back(std::move(lc));
}

const std::vector<std::string_view> kReadmeKeys = {
    "plugin", "path_translator", "routing_keys", "ansible", "loglevel", "executor"};

// A legacy file may name its playbook layout once: by its translator or by ansible.layout.
void check_one_layout(Reader& r, const YAML::Node& root, const YAML::Node& translator,
                      std::string_view what) {
    auto a = root["ansible"];
    if (translator && a && a.IsMap() && a["layout"])
        r.error(a["layout"], "'layout' and '" + std::string(what) + "' say the same: keep one");
}

// What both legacy dialects share: loglevel, the required routing_keys and ansible.
void read_legacy_common(Reader& r, const YAML::Node& root, Config& c) {
    if (auto v = root["loglevel"]) read_loglevel(r, v, c);
    if (auto v = root["routing_keys"])
        read_routing_keys(r, v, c);
    else
        r.error(root, "missing 'routing_keys'");
    if (auto v = root["ansible"])
        read_legacy_ansible(r, v, c);
    else
        r.error(root, "missing the 'ansible' section");
    if (auto v = root["executor"]) read_executor(r, v, c);
}


void read_legacy_plugins(Reader& r, const YAML::Node& node, Config& c) {
    if (!r.mapping(node, "'plugins'", {"looper", "translator"})) return;
    auto looper = node["looper"];
    if (!looper)
        r.error(node, "'plugins' has no 'looper'");
    else if (looper.IsMap() && looper["name"]) {
        auto name = r.nonempty(looper["name"], "name");
        json options = r.to_json(looper);
        options.erase("name");
        if (name) add_legacy_looper(r, looper["name"], *name, std::move(options), c);
    } else {
        r.error(looper, "'plugins.looper' must be a mapping with a 'name'");
    }
    if (auto t = node["translator"]) {
        if (!r.mapping(t, "'plugins.translator'", {"name"})) return;
        if (t["name"]) read_layout(r, t["name"], "plugins.translator.name", c);
    }
}


} // namespace

std::vector<std::string> split_words(const std::string& s) {
    std::istringstream in(s);
    std::vector<std::string> words;
    for (std::string w; in >> w;)
        words.push_back(w);
    return words;
}

// The original loopabull passed each body key as an extra variable; its playbooks read them so.
void read_legacy_readme(Reader& r, const YAML::Node& root, Config& c) {
    c.dialect = "legacy-readme";
    c.ansible.event_variable.reset();
    r.mapping(root, "the configuration", kReadmeKeys);
    if (!root["plugin"])
        r.error(root, "missing 'plugin' (the looper to run)");
    else if (auto name = r.nonempty(root["plugin"], "plugin"))
        add_legacy_looper(r, root["plugin"], *name, json::object(), c);
    if (auto v = root["path_translator"]) read_layout(r, v, "path_translator", c);
    read_legacy_common(r, root, c);
    check_one_layout(r, root, root["path_translator"], "path_translator");
}

const std::vector<std::string_view> kLegacyKeys = {"loglevel", "routing_keys", "ansible",
                                                   "plugins", "executor"};

void read_legacy_007(Reader& r, const YAML::Node& root, Config& c) {
    c.dialect = "legacy-0.0.7";
    c.ansible.event_variable.reset();
    r.mapping(root, "the configuration", kLegacyKeys);
    read_legacy_plugins(r, root["plugins"], c);
    read_legacy_common(r, root, c);
    auto plugins = root["plugins"];
    check_one_layout(r, root, plugins.IsMap() ? plugins["translator"] : YAML::Node(),
                     "plugins.translator");
}

} // namespace loopabull::config_detail
