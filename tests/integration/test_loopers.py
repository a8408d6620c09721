# SPDX-License-Identifier: GPL-3.0-or-later
"""Looper processes: configuration hand-over, restarts with backoff, and no orphans."""
import json
import os
import signal
import time

from conftest import base_config, event, read_answers, scripted, wait_until


def true_config(workdir, loopers, **over):
    (workdir / "playbooks" / "good.key.yml").write_text("- hosts: localhost\n")
    return base_config(workdir, loopers,
                       ansible={"playbooks_dir": str(workdir / "playbooks"), "playbook_cmd": "/bin/true"},
                       **over)


def starts(marker):
    return [l.split() for l in marker.read_text().splitlines()] if marker.exists() else []


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


def test_config_reaches_looper_but_not_its_command_line(workdir, supervisor):
    marker = workdir / "marker"
    secret = "hunter2-secret-password"
    looper = scripted(marker=str(marker), password=secret)
    sup = supervisor(true_config(workdir, [looper]))
    wait_until(lambda: starts(marker), what="the looper to start")
    pid = int(starts(marker)[0][1])
    cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
    assert secret.encode() not in cmdline
    environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    assert b"LOOPABULL_PROTOCOL=1" in environ
    assert b"LOOPABULL_INSTANCE=test" in environ
    assert b"LOOPABULL_LOOPER=test" in environ
    assert not any(secret.encode() in e for e in environ)
    # The looper read its secret from the descriptor the environment points to.
    cfg_file = [e for e in environ if e.startswith(b"LOOPABULL_CONFIG_FILE=")][0].split(b"=", 1)[1]
    assert json.loads(open(f"/proc/{pid}/fd/3").read())["password"] == secret
    assert cfg_file == b"/proc/self/fd/3"
    assert sup.stop() == 0


def test_crashing_looper_is_restarted_with_growing_backoff_then_failed(workdir, supervisor):
    marker = workdir / "marker"
    good_marker = workdir / "good-marker"
    good_answers = workdir / "good-answers"
    fifo = workdir / "fifo"
    os.mkfifo(fifo)
    crasher = scripted("crasher", marker=str(marker), exit_after="emit", exit_code=3)
    crasher.update(restart_delay="100ms", restart_delay_max="5s", restart_limit=5)
    steady = scripted("steady", marker=str(good_marker), answers=str(good_answers), fifo=str(fifo))
    sup = supervisor(true_config(workdir, [crasher, steady]))
    sup.wait_log(r"looper crasher failed: it stopped 5 times", timeout=30)
    restarts = [l for l in sup.log.splitlines() if "looper crasher restarts in" in l]
    delays = [int(l.split("restarts in ")[1].split()[0]) for l in restarts]
    assert delays == [100, 200, 400, 800]
    assert len(starts(marker)) == 5
    assert "exited with status 3" in sup.log
    # The other looper and the supervisor carry on.
    with open(fifo, "w") as f:
        f.write(event("good.key", {}, id="still-working") + "\n")
        f.flush()
        wait_until(lambda: read_answers(good_answers), what="the steady looper's answer")
    assert read_answers(good_answers)[0]["result"] == "succeeded"
    assert len(starts(good_marker)) == 1
    assert sup.stop() == 0


def test_restarted_looper_runs_again_and_backoff_resets(workdir, supervisor):
    marker = workdir / "marker"
    crasher = scripted("once", marker=str(marker), exit_after="emit",
                       lines=[event("good.key", {}, id="e")])
    crasher.update(restart_delay="50ms", restart_delay_max="200ms", restart_limit=3)
    sup = supervisor(true_config(workdir, [crasher]))
    # It runs longer than restart_delay_max between crashes only sometimes; with a 200 ms
    # window and python start-up, it keeps restarting rather than failing.
    wait_until(lambda: len(starts(marker)) >= 3, what="three starts")
    assert sup.log.count("(good.key) succeeded") >= 2
    sup.stop()


def test_looper_dies_with_the_supervisor(workdir, supervisor):
    marker = workdir / "marker"
    sup = supervisor(true_config(workdir, [scripted(marker=str(marker))]))
    wait_until(lambda: starts(marker), what="the looper to start")
    pid = int(starts(marker)[0][1])
    assert pid_alive(pid)
    sup.kill()
    wait_until(lambda: not pid_alive(pid), 10, what="the looper to die with its supervisor")


def test_looper_gets_eof_and_exits_on_stop(workdir, supervisor):
    marker = workdir / "marker"
    sup = supervisor(true_config(workdir, [scripted(marker=str(marker))]))
    wait_until(lambda: starts(marker), what="the looper to start")
    pid = int(starts(marker)[0][1])
    t0 = time.monotonic()
    assert sup.stop() == 0
    assert time.monotonic() - t0 < 2, "the looper should exit on EOF, before any signal"
    assert not pid_alive(pid)
    assert "has not exited; sending" not in sup.log


def test_looper_ignoring_eof_is_terminated(workdir, supervisor):
    script = workdir / "stubborn.sh"
    script.write_text("#!/bin/sh\ntrap '' TERM\nexec 0</dev/null\nwhile :; do sleep 0.1; done\n")
    script.chmod(0o755)
    sup = supervisor(true_config(workdir, [{"name": "stubborn", "command": [str(script)]}]))
    assert sup.stop() == 0
    assert "sending SIGTERM" in sup.log and "sending SIGKILL" in sup.log


def test_unknown_bundled_looper_is_a_clear_error(workdir):
    import subprocess
    from conftest import BIN, LOOPER_DIR
    cfg = workdir / "c.yml"
    cfg.write_text("routing_keys: [all]\nloopers:\n  - name: x\n    command: [nosuchlooper]\n"
                   f"ansible:\n  playbooks_dir: {workdir / 'playbooks'}\n")
    r = subprocess.run([str(BIN), "--check-config", str(cfg)], capture_output=True, text=True,
                       env={**os.environ, "LOOPABULL_LOOPER_DIR": str(LOOPER_DIR)})
    assert r.returncode == 1
    assert (f"{cfg}:4:14: unknown looper 'nosuchlooper': not a bundled looper (bundled loopers: "
            "amqp, fedmsg, fedmsgrabbitmq, journal, spool, webhook) and not found in PATH (") in r.stderr
