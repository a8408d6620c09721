# SPDX-License-Identifier: GPL-3.0-or-later
"""10,000 events for one routing key from 8 concurrent producers (loopabullctl submit) while
quick jobs run and the spool looper is killed and restarted twice: every event runs, only
events in flight at a restart run twice, and the spool ends empty (issue 13)."""
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import wait_until
from spool_helpers import CTL, events_left, spool_config

EVENTS = 10_000
PRODUCERS = 8
KEY = "org.example.burst"


def looper_pid(sup_pid):
    with open(f"/proc/{sup_pid}/task/{sup_pid}/children") as f:
        for pid in f.read().split():
            try:
                with open(f"/proc/{pid}/comm") as c:
                    if c.read().strip() == "spool":
                        return int(pid)
            except OSError:
                pass
    return None


@pytest.fixture
def fast_dir(workdir):
    """A tmpfs where there is one: each submit calls fsync twice, about 13 ms on this machine's
    disk, and the test is about counting, not about the disk."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield workdir
        return
    d = Path(tempfile.mkdtemp(dir=shm, prefix="loopabull-burst-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_burst_with_looper_restarts(workdir, supervisor, fast_dir):
    spool = fast_dir / "spool"
    spool.mkdir()
    record = workdir / "record"
    script = workdir / "record.sh"
    # One line per run with the event id, from the vars file (the last argument, "@PATH"); sh
    # alone, without a grep to start, to keep each job at a millisecond or two.
    script.write_text("#!/bin/sh\nfor a; do v=$a; done\n"
                      "while IFS= read -r l; do case $l in *loopabull_event_id*) "
                      f"echo \"$l\" >> {record};; esac; done < \"${{v#@}}\"\n")
    script.chmod(0o755)
    (workdir / "playbooks" / f"{KEY}.yml").write_text("- hosts: localhost\n")
    cfg = spool_config(workdir, spool, loglevel="info",
                       executor={"max_parallel": 4, "queue_size": 64})
    cfg["ansible"]["playbook_cmd"] = str(script)
    cfg["loopers"][0]["restart_delay"] = "100ms"
    sup = supervisor(cfg)
    body = workdir / "body.json"
    body.write_text('{"burst": true}\n')

    # Each producer a shell loop running the tool, as a cron job or a CI hook would.
    def producer(n):
        return subprocess.Popen(
            ["sh", "-c", f'i=0; while [ $i -lt {EVENTS // PRODUCERS} ]; do '
                         f'"{CTL}" submit --spool "{spool}" {KEY} "{body}" || exit 1; '
                         f'i=$((i + 1)); done'],
            stdout=open(workdir / f"ids.{n}", "w"))

    def runs():
        if not record.exists():
            return []
        return [l.rstrip('"').rsplit('"', 1)[1] for l in record.read_text().splitlines() if '"' in l]

    started = time.monotonic()
    producers = [producer(n) for n in range(PRODUCERS)]
    try:
        restarts = 0
        for threshold in (EVENTS // 3, 2 * EVENTS // 3):
            wait_until(lambda: len(runs()) >= threshold, 300, interval=0.2,
                       what=f"{threshold} runs")
            pid = looper_pid(sup.proc.pid)
            assert pid, "the spool looper is not running"
            os.kill(pid, signal.SIGKILL)
            restarts += 1
            wait_until(lambda: looper_pid(sup.proc.pid) not in (None, pid), 30,
                       what="the looper to be restarted")
        assert [p.wait() for p in producers] == [0] * PRODUCERS
    finally:
        for p in producers:
            if p.poll() is None:
                p.kill()
                p.wait()
    submitted = [i for n in range(PRODUCERS) for i in (workdir / f"ids.{n}").read_text().split()]
    assert len(set(submitted)) == EVENTS
    wait_until(lambda: set(runs()) >= set(submitted) and events_left(spool) == [], 300,
               interval=0.2, what="every event to run")
    elapsed = time.monotonic() - started
    counts = Counter(runs())
    twice = sum(1 for c in counts.values() if c > 1)
    print(f"\n{EVENTS} events, {PRODUCERS} producers, {restarts} looper restarts: "
          f"{len(counts)} distinct ran, {twice} ran twice, {elapsed:.1f} s")
    assert set(counts) == set(submitted)
    # In flight at a kill: the looper sends at most twice max_parallel events it has no
    # answer for (loopabull-spool(7)).
    assert twice <= restarts * 2 * 4
    assert max(counts.values()) <= 1 + restarts
    assert os.listdir(spool / "failed") == []
    assert [f for f in os.listdir(spool) if f != "failed"] == []
    assert sup.stop() == 0
