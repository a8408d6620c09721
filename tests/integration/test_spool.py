# SPDX-License-Identifier: GPL-3.0-or-later
"""The bundled spool looper under the real supervisor with real ansible-playbook: the embedded
default of the quick start. An event file is removed only once its playbook has finished."""
import json
import os
import signal

from conftest import base_config, needs_ansible, wait_until

pytestmark = needs_ansible


def drop(spool, name, body):
    tmp = spool / f".{name}.tmp"
    tmp.write_text(json.dumps(body) if not isinstance(body, str) else body)
    os.rename(tmp, spool / name)


def spool_config(workdir, spool):
    return base_config(workdir, [{"name": "spool", "command": ["spool", str(spool)]}])


def events_left(spool):
    return sorted(f for f in os.listdir(spool) if not f.startswith(".") and f != "failed")


def test_dropped_files_run_and_are_removed_or_moved(workdir, supervisor):
    spool = workdir / "spool"
    out = str(workdir / "out")
    sup = supervisor(spool_config(workdir, spool))
    wait_until(lambda: spool.is_dir(), what="the spool directory")
    drop(spool, "test.record.json", {"out_dir": out, "payload": {"from": "json"}})
    drop(spool, "test.fail.yml", "reason: testing\n")
    drop(spool, "test.nothing.json", {})
    drop(spool, "bad.json", "{ not json")
    wait_until(lambda: events_left(spool) == [], 120, what="every file to be handled")
    failed = spool / "failed"
    assert sorted(f for f in os.listdir(failed) if not f.endswith(".reason")) == \
        ["bad.json", "test.fail.yml"]
    # Beside each, why it is there (loopabull-spool(7)).
    assert "not valid JSON" in (failed / "bad.json.reason").read_text()
    assert (failed / "test.fail.yml.reason").read_text().startswith("failed (exit code")
    recorded = [json.loads((workdir / "out" / f).read_text()) for f in os.listdir(out)]
    assert [r["payload"] for r in recorded] == [{"from": "json"}]
    assert recorded[0]["event_id"] == "test.record.json"
    assert sup.stop() == 0


def test_files_present_at_start_are_picked_up(workdir, supervisor):
    spool = workdir / "spool"
    spool.mkdir()
    out = str(workdir / "out")
    drop(spool, "test.record.json", {"out_dir": out, "payload": 1})
    drop(spool, "test.dir.layout.json", {"out_dir": out})
    cfg = spool_config(workdir, spool)
    sup = supervisor(cfg)
    wait_until(lambda: events_left(spool) == [], 120, what="the files to be handled")
    assert len(os.listdir(out)) == 1  # test.record.json ran; test.dir.layout has no "name" playbook
    assert sup.stop() == 0


def test_event_survives_a_supervisor_crash(workdir, supervisor):
    spool = workdir / "spool"
    spool.mkdir()
    started = workdir / "started"
    slow = workdir / "slow-playbook.sh"
    # Records each run, then takes long enough to be killed in the middle.
    slow.write_text(f"#!/bin/sh\necho run >> {started}\nsleep 30\n")
    slow.chmod(0o755)
    (workdir / "playbooks" / "crash.key.yml").write_text("- hosts: localhost\n")
    cfg = spool_config(workdir, spool)
    cfg["ansible"]["playbook_cmd"] = str(slow)
    drop(spool, "crash.key.json", {})
    sup = supervisor(cfg)
    wait_until(lambda: started.exists(), what="the job to start")
    sup.kill()
    # The job's process group dies with the supervisor; the event file is still there.
    assert events_left(spool) == ["crash.key.json"]
    slow.write_text(f"#!/bin/sh\necho run >> {started}\n")
    sup2 = supervisor(cfg)
    wait_until(lambda: events_left(spool) == [], 60, what="the event to run again")
    assert started.read_text().count("run") == 2
    assert os.listdir(workdir / "run" / "vars") == []
    assert sup2.stop() == 0


def test_events_too_deep_for_the_supervisor_do_not_stall_the_spool(workdir, supervisor):
    """The spool accepts bodies nested up to 128 levels, the supervisor lines up to 64. Such a
    file is rejected, and the rejection must be answered (its id is read without building the
    tree): unanswered, max_parallel * 2 of them filled every slot the looper keeps for events in
    flight, and no later file ran, across restarts too (found by a fresh user's test)."""
    spool = workdir / "spool"
    spool.mkdir()
    out = str(workdir / "out")
    for depth in (64, 65, 100, 127, 128):
        drop(spool, f"test.nothing@d{depth}.json", '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1))
    drop(spool, "test.record@after.json", {"out_dir": out, "payload": "after"})
    sup = supervisor(spool_config(workdir, spool))
    wait_until(lambda: events_left(spool) == [], 120, what="every file to be handled")
    # With the event's own level, a body of 64 levels is 65 in the line.
    failed = {f for f in os.listdir(spool / "failed") if not f.endswith(".reason")}
    assert failed == {f"test.nothing@d{d}.json" for d in (64, 65, 100, 127, 128)}, failed
    assert "nested deeper than 64" in (spool / "failed" / "test.nothing@d100.json.reason").read_text()
    assert [json.loads((workdir / "out" / f).read_text())["payload"] for f in os.listdir(out)] == ["after"]
    assert sup.stop() == 0
