# SPDX-License-Identifier: GPL-3.0-or-later
"""The spool looper driven directly through protocol v1: how it settles every answer (also the
results added in 0.2, which the supervisor of this tree may not send yet), and its own
directories turned against it by whoever can write to the spool (issue 13, fault 5)."""
import os
import subprocess

import pytest

from conftest import LOOPER_DIR, wait_until
from spool_helpers import SpoolLooper, drop, events_left


@pytest.fixture
def spool(tmp_path):
    d = tmp_path / "spool"
    d.mkdir()
    return d


@pytest.fixture
def looper(spool, tmp_path):
    started = []

    def start(**kw):
        s = SpoolLooper(spool, tmp_path, **kw)
        started.append(s)
        return s
    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def run_one(lp, spool, name, result, **extra):
    drop(spool, name, {"n": 1})
    e = lp.event()
    assert e["id"] == name
    lp.answer(name, result, **extra)


@pytest.mark.parametrize("result", ["succeeded", "unrouted", "superseded", "throttled"])
def test_settled_results_remove_the_file(spool, looper, result):
    lp = looper()
    run_one(lp, spool, f"test.{result}.json", result)
    if result != "succeeded":
        lp.wait_log(f"{result}; removing it")
    wait_until(lambda: events_left(spool) == [], 10, what="the file to be removed")
    assert os.listdir(spool / "failed") == []


def test_unknown_result_is_treated_as_unrouted(spool, looper):
    lp = looper()
    run_one(lp, spool, "test.odd.json", "frobnicated")
    lp.wait_log('unknown result "frobnicated"; treating it as unrouted, removing it')
    assert events_left(spool) == [] and os.listdir(spool / "failed") == []


@pytest.mark.parametrize("result,extra,why", [
    ("aborted", {"reason": "cancelled by operator alice over D-Bus"},
     "aborted: cancelled by operator alice over D-Bus"),
    ("failed", {"exit_code": 2}, "failed (exit code 2)"),
    ("rejected", {"error": "no such playbook"}, "rejected: no such playbook"),
    ("timeout", {}, "timeout"),
])
def test_final_failures_go_to_failed_with_their_reason(spool, looper, result, extra, why):
    lp = looper()
    name = f"test.{result}@1.json"
    run_one(lp, spool, name, result, **extra)
    lp.wait_log("moving it to failed/")
    assert events_left(spool) == []
    assert (spool / "failed" / name).exists()
    assert (spool / "failed" / f"{name}.reason").read_text() == why + "\n"


def test_cancelled_stays_for_the_next_start(spool, looper):
    lp = looper()
    run_one(lp, spool, "test.drained.json", "cancelled")
    lp.no_event()
    assert events_left(spool) == ["test.drained.json"]
    assert lp.close() == 0
    lp2 = looper()
    assert lp2.event()["id"] == "test.drained.json"


def test_a_bad_file_goes_to_failed_with_the_reason(spool, looper):
    lp = looper()
    drop(spool, "test.bad.yml", "v: .inf\n")
    lp.wait_log("moving it to failed/")
    reason = (spool / "failed" / "test.bad.yml.reason").read_text()
    assert "infinite or not a number" in reason, reason


# ---- failed/ turned against the looper (fault 5) ----------------------------------------------

def failing_event_stays(lp, spool, name="test.fail.json"):
    run_one(lp, spool, name, "failed", exit_code=2)
    lp.wait_log(f'"{name}": cannot move it to failed/')
    assert events_left(spool) == [name]


def other_events_still_served(lp, spool):
    run_one(lp, spool, "test.other.json", "succeeded")
    wait_until(lambda: "test.other.json" not in events_left(spool), 10,
               what="the next event to be served")


def test_failed_replaced_by_a_symlink_before_start(spool, tmp_path, looper):
    target = tmp_path / "playbooks"
    target.mkdir()
    (spool / "failed").symlink_to(target)
    lp = looper()
    assert "failed/ is a symbolic link" in lp.log
    failing_event_stays(lp, spool)
    assert "failed/ is a symbolic link; refusing to follow it" in lp.log
    assert os.listdir(target) == []
    other_events_still_served(lp, spool)


def test_failed_replaced_by_a_symlink_while_running(spool, tmp_path, looper):
    target = tmp_path / "playbooks"
    target.mkdir()
    lp = looper()
    (spool / "failed").rmdir()
    (spool / "failed").symlink_to(target)
    failing_event_stays(lp, spool)
    assert os.listdir(target) == []
    other_events_still_served(lp, spool)


def test_failed_replaced_by_a_regular_file(spool, looper):
    (spool / "failed").write_text("")
    lp = looper()  # starts and keeps running
    failing_event_stays(lp, spool)
    assert "failed/ is not a directory" in lp.log
    other_events_still_served(lp, spool)
    assert lp.proc.poll() is None


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_failed_owned_by_another_user(spool, looper):
    (spool / "failed").mkdir()
    os.chown(spool / "failed", 65534, 65534)
    lp = looper()
    failing_event_stays(lp, spool)
    assert "failed/ is owned by uid 65534, not by the looper's user" in lp.log
    assert os.listdir(spool / "failed") == []
    other_events_still_served(lp, spool)


def test_reason_file_is_not_followed(spool, tmp_path, looper):
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    lp = looper()
    os.symlink(victim, spool / "failed" / "test.fail.json.reason")
    run_one(lp, spool, "test.fail.json", "failed", exit_code=1)
    lp.wait_log("cannot write failed/")
    assert victim.read_text() == "keep\n"
    assert (spool / "failed" / "test.fail.json").exists()


# ---- --check-config ---------------------------------------------------------------------------

def check(directory):
    return subprocess.run([str(LOOPER_DIR / "spool"), "--check-config", str(directory)],
                          capture_output=True, text=True)


def test_check_config_warns_about_an_unsafe_layout(spool, tmp_path):
    spool.chmod(0o750)
    r = check(spool)
    assert (r.returncode, r.stderr) == (0, "")
    spool.chmod(0o2770)
    r = check(spool)
    assert r.returncode == 0
    assert "writable by its group or others without the sticky bit" in r.stderr
    spool.chmod(0o3770)
    assert check(spool).stderr == ""
    (spool / "failed").symlink_to(tmp_path)
    r = check(spool)
    assert r.returncode == 0 and "failed is a symbolic link" in r.stderr
    (spool / "failed").unlink()
    (spool / "failed").mkdir(mode=0o770)
    (spool / "failed").chmod(0o770)
    assert "writable by its group or others; 0750 is enough" in check(spool).stderr
    f = tmp_path / "file"
    f.write_text("")
    r = check(f)
    assert r.returncode == 1 and "is not a directory" in r.stderr
    assert check(tmp_path / "not-yet").returncode == 0

