# SPDX-License-Identifier: GPL-3.0-or-later
"""Failures that must show: bundled loopers' own option checks in --check-config, a looper's
reason for exiting at warning level, and a supervisor whose every looper has failed (its
state, STATUS= and D-Bus say so, and it exits non-zero after exit_without_loopers)."""
import os
import re
import shutil
import socket
import subprocess

import pytest
import yaml

from conftest import BIN, LOOPER_DIR, Supervisor, base_config, wait_until


def check(workdir, cfg):
    f = workdir / "check.yml"
    f.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "LOOPABULL_LOOPER_DIR": str(LOOPER_DIR)}
    return f, subprocess.run([str(BIN), "--check-config", str(f)], capture_output=True, text=True,
                             env=env)


def test_check_config_runs_the_fedmsg_loopers_own_check(workdir):
    cfg = base_config(workdir, [{"name": "fm", "command": ["fedmsg"], "config": {"topics": ["a"]}}])
    f, r = check(workdir, cfg)
    assert r.returncode == 1
    assert (f"{f}: looper fm: fedmsg: config.endpoints: missing; name the fedmsg endpoints to "
            "connect to") in r.stderr, r.stderr
    cfg["loopers"][0]["config"]["endpoints"] = ["tcp://nowhere"]
    f, r = check(workdir, cfg)
    assert r.returncode == 1
    assert f"{f}: looper fm: fedmsg: config.endpoints[0] 'tcp://nowhere': " in r.stderr, r.stderr
    cfg["loopers"][0]["config"]["endpoints"] = ["tcp://127.0.0.1:9940"]
    f, r = check(workdir, cfg)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""


def test_check_config_runs_the_amqp_loopers_own_check(workdir):
    cfg = base_config(workdir, [{"name": "bus", "command": ["amqp"],
                                 "config": {"url": "amqp://localhost", "queue": "q", "no_such_option": 1}}])
    f, r = check(workdir, cfg)
    assert r.returncode == 1
    assert f"{f}: looper bus: " in r.stderr and "unknown option 'no_such_option'" in r.stderr, r.stderr
    del cfg["loopers"][0]["config"]["no_such_option"]
    f, r = check(workdir, cfg)
    assert r.returncode == 0, r.stderr


def test_check_config_runs_the_spool_loopers_own_check_with_its_arguments(workdir):
    not_a_dir = workdir / "afile"
    not_a_dir.write_text("")
    cfg = base_config(workdir, [{"name": "sp", "command": ["spool", str(not_a_dir)]}])
    f, r = check(workdir, cfg)
    assert r.returncode == 1
    assert f"{f}: looper sp: error: {not_a_dir} is not a directory" in r.stderr, r.stderr
    cfg["loopers"][0]["command"] = ["spool", str(workdir / "spool-to-be")]
    f, r = check(workdir, cfg)
    assert r.returncode == 0, r.stderr


def test_a_loopers_reason_is_logged_with_its_exit_at_warning(workdir, supervisor):
    # The reason is the looper's last line on stderr. Its own lines are logged at info, which
    # "loglevel: warning" hides; the exit and the failure carry it at warning and error.
    looper = {"name": "gone", "command": ["sh", "-c", "echo starting >&2; "
                                          "echo 'cannot reach the broker: connection refused' >&2; exit 3"],
              "restart_delay": "50ms", "restart_delay_max": "10s", "restart_limit": 2}
    sup = supervisor(base_config(workdir, [looper], exit_without_loopers="off"))
    sup.wait_log(r"looper gone failed: it stopped 2 times in a row", what="the looper to fail")
    log = sup.log
    assert re.search(r" warning +looper gone \(pid \d+\) exited with status 3; its last words: "
                     r"cannot reach the broker: connection refused\n", log), log
    assert re.search(r" error +looper gone failed: it stopped 2 times in a row .*; its last words: "
                     r"cannot reach the broker: connection refused\n", log), log
    assert re.search(r" error +every looper has failed: no events come in until a reload", log), log
    assert re.search(r" info +looper gone: starting\n", log)
    assert sup.stop() == 0


def test_every_looper_failed_exits_with_status_1(workdir, tmp_path):
    # A notify socket as systemd's: the STATUS= lines tell what the unit shows.
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    notify.bind(str(path))
    notify.settimeout(30)
    looper = {"name": "gone", "command": ["sh", "-c", "echo 'no such queue' >&2; exit 1"],
              "restart_delay": "50ms", "restart_delay_max": "10s", "restart_limit": 2}
    sup = Supervisor(workdir, base_config(workdir, [looper], exit_without_loopers="2s"),
                     env={"NOTIFY_SOCKET": str(path)})
    try:
        status = []
        while not any(s.startswith("STATUS=failed: every looper has failed") for s in status):
            status += notify.recv(4096).decode().splitlines()
        assert sup.proc.wait(30) == 1
        assert "every looper has been failed for exit_without_loopers: exiting with status 1" in sup.log
        assert "loopabull exits in 2 s unless a reload starts them again" in sup.log
    finally:
        if sup.proc.poll() is None:
            sup.kill()
        notify.close()
    # The same with a healthy looper beside it: it keeps running.
    healthy = {"name": "ok", "command": ["sh", "-c", "exec cat >/dev/null"]}
    other = workdir / "other"
    other.mkdir()
    shutil.copytree(workdir / "playbooks", other / "playbooks")
    sup = Supervisor(other, base_config(other, [looper, healthy], exit_without_loopers="1s"))
    try:
        sup.wait_log(r"looper gone failed", what="the looper to fail")
        with pytest.raises(subprocess.TimeoutExpired):
            sup.proc.wait(3)
        assert "every looper has failed" not in sup.log
        assert sup.stop() == 0
    finally:
        if sup.proc.poll() is None:
            sup.kill()


@pytest.mark.skipif(shutil.which("dbus-daemon") is None or shutil.which("busctl") is None,
                    reason="dbus-daemon (Debian's dbus) and busctl (systemd) are needed")
def test_dbus_state_says_failed_and_a_reload_brings_it_back(workdir):
    from test_dbus import Bus, bus_name
    bus = Bus()
    marker = workdir / "fixed"
    # Fails until the marker exists, then runs.
    looper = {"name": "flaky", "command": ["sh", "-c", f"test -e {marker} || exit 1; exec cat >/dev/null"],
              "restart_delay": "50ms", "restart_delay_max": "10s", "restart_limit": 2}
    sup = Supervisor(workdir, base_config(workdir, [looper], exit_without_loopers="off"),
                     env={"DBUS_SESSION_BUS_ADDRESS": bus.address}, args=["--bus=user"])
    try:
        name = bus_name("test")
        wait_until(lambda: bus.get(name, "State") == "failed", 30, what="State failed")
        marker.write_text("")
        import signal
        sup.signal(signal.SIGHUP)
        wait_until(lambda: bus.get(name, "State") == "running", 30, what="State running")
        assert "a looper runs again" in sup.log
        assert sup.stop() == 0
    finally:
        if sup.proc.poll() is None:
            sup.kill()
        bus.close()
