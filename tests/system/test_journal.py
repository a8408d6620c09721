# SPDX-License-Identifier: GPL-3.0-or-later
"""The journal looper in loopabull@.service on a booted systemd: a unit that fails runs a playbook
with the unit's name and result (systemd's "unit failed" message id), and a restart of loopabull in
the middle loses no entry and repeats none beyond the one in flight."""
import json
import time

from test_service import Service, wait_until

# SD_MESSAGE_UNIT_FAILURE_RESULT (sd-messages.h): "Unit entered failed state", fields UNIT and
# UNIT_RESULT; logged by PID 1 for every system unit that fails.
UNIT_FAILED = "d9b373ed55a64feb8242e02dbe79a49c"
INSTANCE = "watch"
RUNS = f"/var/lib/loopabull/{INSTANCE}/runs"

# Appends "UNIT RESULT" to RUNS, then waits while /run/hold-playbooks exists. Works with the body's
# keys at the top level or under `event` (the variable the supervisor may nest them in).
PLAYBOOK = """- hosts: localhost
  gather_facts: false
  vars:
    entry: "{{ event.fields if event is defined else fields }}"
  tasks:
    - ansible.builtin.shell: "echo {{ entry.UNIT | quote }} {{ entry.UNIT_RESULT | quote }} >> %s"
    - ansible.builtin.shell: "while [ -e /run/hold-playbooks ]; do sleep 0.2; done"
""" % RUNS


def start_watching(service, units):
    m = service.m
    m.write_file("/etc/systemd/system/loopabull@.service.d/60-journal.conf",
                 "[Service]\nSupplementaryGroups=systemd-journal\n")
    for unit in units:
        m.write_file(f"/etc/systemd/system/{unit}.service",
                     f"[Unit]\nDescription=fails on purpose\n[Service]\nType=oneshot\nExecStart=/bin/false\n")
        m.write_file(f"/srv/loopabull-test/playbooks/journal.unit.failed.{unit}-service.yml", PLAYBOOK)
    m.daemon_reload()
    cfg = {
        "loglevel": "debug",
        "routing_keys": ["all"],
        "loopers": [{"name": "failures", "command": ["journal"],
                     "config": {"matches": [f"MESSAGE_ID={UNIT_FAILED}"],
                                "routing_key": "journal.unit.failed.{UNIT}"}}],
        "ansible": {"playbooks_dir": "/srv/loopabull-test/playbooks", "layout": "name",
                    "cfg_file_path": "/srv/loopabull-test/ansible.cfg",
                    "inventory": "/srv/loopabull-test/inventory"},
        "executor": {"type": "direct", "max_parallel": 1, "timeout": "5min", "stop_timeout": "30s"},
    }
    m.write_file(f"{service.confdir}/{INSTANCE}.yml", json.dumps(cfg, indent=1), mode=0o640,
                 owner="root:loopabull")
    m.systemctl("start", f"loopabull@{INSTANCE}.service")
    wait_until(lambda: "following the journal from now" in service.journal(INSTANCE) or
               "resuming after" in service.journal(INSTANCE), what="the looper to follow the journal")


def runs(m):
    r = m.run(["cat", RUNS], check=False)
    return r.stdout.splitlines() if r.returncode == 0 else []


def fail(m, unit):
    m.systemctl("start", f"{unit}.service", check=False)
    m.wait_state(f"{unit}.service", ("failed",), fail_states=())


def test_failed_unit_runs_a_playbook_with_its_name_and_result(installed_machine, build_dir):
    service = Service(installed_machine, build_dir)
    m = service.m
    start_watching(service, ["boom"])
    fail(m, "boom")
    wait_until(lambda: runs(m), 120, what="the playbook of the failed unit")
    assert runs(m) == ["boom.service exit-code"]
    # The cursor is saved once the entry is answered.
    wait_until(lambda: m.run(["cat", f"/var/lib/loopabull/{INSTANCE}/journal-failures/cursor"],
                             check=False).stdout.startswith("s="), what="the saved cursor")


def test_restart_loses_and_repeats_nothing_beyond_the_entry_in_flight(installed_machine, build_dir):
    service = Service(installed_machine, build_dir)
    m = service.m
    units = ["a1", "a2", "a3", "a4"]
    start_watching(service, units)
    m.run(["touch", "/run/hold-playbooks"])
    for unit in units[:3]:
        fail(m, unit)
    # a1 is running (held), a2 and a3 wait in loopabull's queue.
    wait_until(lambda: runs(m) == ["a1.service exit-code"], 120, what="a1's playbook to start")
    time.sleep(1)
    # The restart drains: a2 and a3 are answered "cancelled" and stay before the cursor; a1 is
    # released while loopabull waits for it, so it may finish or be cancelled (stop_timeout).
    m.spawn(["sh", "-c", "sleep 2; rm -f /run/hold-playbooks"])
    m.systemctl("restart", f"loopabull@{INSTANCE}.service", timeout=120)
    fail(m, "a4")
    wait_until(lambda: {"a2", "a3", "a4"} <= {r.split(".")[0] for r in runs(m)}, 180,
               what="every entry to run after the restart")
    time.sleep(3)
    seen = [r.split(".")[0] for r in runs(m)]
    assert seen.count("a1") in (1, 2), seen          # the entry in flight may run again
    for unit in ("a2", "a3", "a4"):
        assert seen.count(unit) == 1, seen           # nothing else is lost or repeated
