# SPDX-License-Identifier: GPL-3.0-or-later
"""loopabull --migrate-config: the original's configurations (its examples and Fedora's
deployment template, rendered for this machine) become current-dialect configurations that
--check-config accepts and that run the same playbooks; and the legacy dialects take the
current dialect's executor: and ansible: keys beside their own."""
import os
import subprocess

import pytest
import yaml

from conftest import BIN, LOOPER_DIR, SCRIPTED, event, needs_ansible, read_answers, wait_until


def run(*args, looper_dir=LOOPER_DIR):
    env = {**os.environ, "LOOPABULL_LOOPER_DIR": str(looper_dir)}
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, env=env)


def effective(path, looper_dir=LOOPER_DIR):
    """What --check-config -v says the configuration does, less its first line (the dialect)."""
    r = run("--check-config", "-v", path, looper_dir=looper_dir)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()[1:]


def migrate(tmp_path, name, text, looper_dir=LOOPER_DIR):
    old = tmp_path / f"{name}.yml"
    old.write_text(text)
    r = run("--migrate-config", old, looper_dir=looper_dir)
    assert r.returncode == 0, r.stderr
    new = tmp_path / f"{name}.migrated.yml"
    new.write_text(r.stdout)
    check = run("--check-config", new, looper_dir=looper_dir)
    assert check.returncode == 0, check.stderr + "\n" + r.stdout
    assert "(loopabull dialect" in check.stdout
    return old, new, r.stdout


@pytest.fixture
def tree(tmp_path):
    """What the original's examples point at: playbooks, ansible.cfg, an inventory, TLS files,
    and a stand-in for Fedora's rbac-playbook (it runs ansible-playbook)."""
    (tmp_path / "examples" / "playbooks").mkdir(parents=True)
    (tmp_path / "examples" / "ansible.cfg").write_text("[defaults]\n")
    (tmp_path / "examples" / "inventory").write_text("localhost ansible_connection=local\n")
    for f in ("cacert.pem", "fedora-key.pem", "fedora-cert.pem"):
        (tmp_path / f).write_text("")
    rbac = tmp_path / "bin" / "rbac-playbook"
    rbac.parent.mkdir()
    rbac.write_text("#!/bin/sh\nexec ansible-playbook \"$@\"\n")
    rbac.chmod(0o755)
    return tmp_path


def test_fedmsg_rabbitmq_example(tree):
    # The original's examples/configs/fedmsg_rabbitmq_example.yml; the broker's host name and the
    # certificate paths are this machine's, and the empty password is given one (loopabull
    # 0.0.7's empty password is the amqp looper's business, issue 16 item 4).
    text = f"""loglevel: info

ansible:
  playbooks_dir: examples/playbooks
  cfg_file_path: examples/ansible.cfg
  playbook_cmd: /usr/bin/ansible-playbook

routing_keys:
    - org.fedoraproject.prod.ansible.playbook.start
    - org.fedoraproject.prod.buildsys.build.state.change

plugins:
  looper:
    name: fedmsgrabbitmq
    credentials:
        username: fedora
        password: fedora
    tls:
        ca_cert: "{tree}/cacert.pem"
        keyfile: "{tree}/fedora-key.pem"
        certfile: "{tree}/fedora-cert.pem"
    rabbitmq:
        host: localhost
        virtual_host: /public_pubsub
    routing_keys:
        - org.fedoraproject.prod.ansible.playbook.start
        - org.fedoraproject.prod.buildsys.build.state.change
    exchange:
        name: amq.topic
    channel_queue:
        name: 00000000-0000-0000-0000-000000000000
        durable: false
        auto_delete: true
        exclusive: true


  translator:
    name: rkname
"""
    old, new, out = migrate(tree, "fedmsg_rabbitmq_example", text)
    assert effective(old) == effective(new)
    doc = yaml.safe_load(out)
    assert doc["loopers"][0]["command"] == ["fedmsgrabbitmq"]
    assert doc["loopers"][0]["config"]["channel_queue"]["name"] == "00000000-0000-0000-0000-000000000000"
    assert doc["ansible"]["layout"] == "name"
    assert doc["ansible"]["playbook_cmd"] == ["/usr/bin/ansible-playbook"]
    # The changes of meaning are said where they happen.
    assert doc["ansible"]["event_variable"] == "top-level"
    assert doc["executor"] == {"type": "direct", "max_parallel": 4, "timeout": "1500s"}
    for needle in ("Changed: event variables", "Changed: root", "Changed: timeouts",
                   "Changed: parallel runs"):
        assert needle in out


def test_rkdir_example_and_the_packaged_default(tree):
    # The original's examples/configs/rkdir_example.yml and systemd/loopabull.yml (README
    # dialect, the fedmsg plugin, which read its endpoints from /etc/fedmsg.d).
    rkdir = """ansible:
  playbooks_dir: examples/playbooks
  cfg_file_path: examples/ansible.cfg
  playbook_cmd: /usr/bin/ansible-playbook

routing_keys:
    - org.fedoraproject.dev.logger.hello_world

plugin: fedmsg
path_translator: rkdirectory
"""
    old, new, out = migrate(tree, "rkdir_example", rkdir)
    doc = yaml.safe_load(out)
    assert doc["ansible"]["layout"] == "directory"
    assert doc["loopers"] == [{"name": "fedmsg", "command": ["fedmsg"],
                               "config": {"endpoints": ["tcp://hub.fedoraproject.org:9940"]}}]
    assert "/etc/fedmsg.d" in out
    packaged = """# Loopabull config file
plugin: fedmsg
routing_keys:
  - routingkey1
  - routingkey2
ansible:
  playbooks_dir: examples/playbooks
  inventory_path: examples/inventory
"""
    old, new, out = migrate(tree, "loopabull", packaged)
    doc = yaml.safe_load(out)
    assert doc["ansible"]["inventory"] == "examples/inventory"
    assert doc["routing_keys"] == ["routingkey1", "routingkey2"]
    new_lines = effective(new)
    assert f"inventory: {tree}/examples/inventory" in new_lines


def test_fedmsg_example_of_the_original_is_refused_with_the_reason(tree):
    # examples/configs/fedmsg_example.yml says playbook_dir, which 0.0.x did not read either
    # (it required playbooks_dir): the migration stops where loading stops.
    old = tree / "fedmsg_example.yml"
    old.write_text("ansible:\n  playbook_dir: examples/playbooks\n  inventory_path: examples/inventory\n\n"
                   "routing_keys:\n    - org.fedoraproject.prod.ansible.playbook.start\n\nplugin: fedmsg")
    r = run("--migrate-config", old)
    assert r.returncode == 1
    assert f"{old}:2:3: unknown key 'playbook_dir' in 'ansible'; did you mean 'playbooks_dir'?" in r.stderr


def fedora_template(tree, n):
    """Fedora infrastructure's loopabull config template as rendered for instance n (0.0.7
    dialect, rbac-playbook, the fedmsgrabbitmq looper on the local broker's durable queue)."""
    return f"""# loopabull@{n}, rendered from Fedora infrastructure's template
loglevel: info
routing_keys:
  - org.fedoraproject.prod.buildsys.build.state.change
  - org.fedoraproject.prod.pungi.compose.status.change
ansible:
  playbooks_dir: {tree}/examples/playbooks
  cfg_file_path: {tree}/examples/ansible.cfg
  playbook_cmd: {tree}/bin/rbac-playbook
plugins:
  looper:
    name: fedmsgrabbitmq
    rabbitmq:
      host: localhost
    routing_keys:
      - org.fedoraproject.prod.buildsys.build.state.change
      - org.fedoraproject.prod.pungi.compose.status.change
    channel_queue:
      name: workers
      durable: true
      exclusive: false
      auto_delete: false
  translator:
    name: rkname
"""


def test_fedora_template(tree):
    for n in (1, 5):
        old, new, out = migrate(tree, f"loopabull-{n}", fedora_template(tree, n))
        assert effective(old) == effective(new)
        doc = yaml.safe_load(out)
        assert doc["ansible"]["playbook_cmd"] == [f"{tree}/bin/rbac-playbook"]
        assert "rbac-playbook lets members of groups run chosen playbooks as root" in out
        assert doc["loopers"][0]["config"]["channel_queue"] == {
            "name": "workers", "durable": True, "exclusive": False, "auto_delete": False}


def test_current_dialect_is_not_migrated(tree):
    f = tree / "current.yml"
    f.write_text(f"routing_keys: [all]\nloopers: [{{name: s, command: [spool, {tree}/spool]}}]\n"
                 f"ansible: {{playbooks_dir: {tree}/examples/playbooks}}\n")
    r = run("--migrate-config", f)
    assert r.returncode == 1
    assert f"{f}: already in the current dialect: nothing to migrate" in r.stderr


def test_legacy_dialects_take_executor_and_ansible_keys(tree):
    base = (f"routing_keys: [all]\nansible:\n  playbooks_dir: {tree}/examples/playbooks\n"
            "  inventory_path: examples/inventory\n  environment: {FOO: bar}\n  trusted_payloads: false\n"
            "executor:\n  max_parallel: 7\n  timeout: 5min\n")
    for dialect, head in (("legacy-0.0.7", "plugins:\n  looper: {name: fedmsg, endpoints: [tcp://127.0.0.1:1]}\n"),
                          ("legacy-readme", "plugin: spool\n")):
        f = tree / f"{dialect}.yml"
        f.write_text(head + base)
        r = run("--check-config", "-v", f)
        assert r.returncode == 0, r.stderr
        assert f"({dialect} dialect" in r.stdout
        assert "max_parallel: 7" in r.stdout and "timeout: 300s" in r.stdout
        assert 'environment: {"FOO":"bar"}' in r.stdout
        _, new, out = migrate(tree, dialect + "-m", head + base)
        doc = yaml.safe_load(out)
        assert doc["executor"]["max_parallel"] == 7 and doc["executor"]["timeout"] == "5min"
        assert "max_parallel: 4" not in out
    # Two spellings of one setting are refused, not guessed between.
    f = tree / "both.yml"
    f.write_text("plugin: spool\n" + base.replace("  environment:", "  inventory: examples/inventory\n  environment:"))
    r = run("--check-config", f)
    assert r.returncode == 1
    assert "'inventory' and 'inventory_path' say the same: keep one" in r.stderr
    # Keys that are not the current dialect's ansible or executor keys stay unknown.
    f.write_text("plugin: spool\n" + base + "loopers: []\n")
    r = run("--check-config", f)
    assert r.returncode == 1 and "mixes the legacy" in r.stderr


@needs_ansible
def test_migrated_config_runs_the_same_playbook(tree, tmp_path):
    # A 0.0.7 file whose looper is a test looper installed as a bundled one; it also sets the
    # current dialect's executor.allow_root (CI runs as root). Old and new run the playbook
    # test.dir.layout with the body's out_dir as a top-level variable.
    from pathlib import Path
    playbooks = Path(__file__).parent / "playbooks"
    looper_dir = tmp_path / "loopers"
    looper_dir.mkdir()
    (looper_dir / "scripted").symlink_to(SCRIPTED)
    results = {}
    for name in ("old", "new"):
        out = tmp_path / f"out-{name}"
        out.mkdir()
        answers = tmp_path / f"answers-{name}"
        legacy = {"loglevel": "info", "routing_keys": ["test.dir.layout"],
                  "ansible": {"playbooks_dir": str(playbooks), "playbook_cmd": "ansible-playbook",
                              "inventory_path": "localhost,"},
                  "plugins": {"looper": {"name": "scripted", "answers": str(answers),
                                         "lines": [event("test.dir.layout", {"out_dir": str(out)}, id="l")],
                                         # Types survive: a quoted "5" stays a string.
                                         "quoted": "5", "count": 5, "none": None},
                              "translator": {"name": "rkdirectory"}},
                  "executor": {"allow_root": True}}
        text = yaml.safe_dump(legacy)
        if name == "new":
            old_file, new_file, text = migrate(tmp_path, "run", text, looper_dir=looper_dir)
            lines = effective(new_file, looper_dir)
            assert lines == effective(old_file, looper_dir)
            assert any('"count":5' in line and '"quoted":"5"' in line and '"none":null' in line
                       for line in lines), lines
        work = tmp_path / name
        work.mkdir()
        (work / "loopabull.yml").write_text(text)
        proc = subprocess.Popen([str(BIN), str(work / "loopabull.yml")], cwd=work,
                                env={**os.environ, "LOOPABULL_LOOPER_DIR": str(looper_dir)},
                                stdout=open(work / "log", "w"), stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: read_answers(answers), 120, what=f"the answer ({name})")
        finally:
            proc.terminate()
            proc.wait(30)
        results[name] = (read_answers(answers), (out / "layout-1.txt").read_text())
    assert results["old"] == results["new"] == (
        [{"id": "l", "result": "succeeded", "exit_code": 0}], "test.dir.layout\n")
