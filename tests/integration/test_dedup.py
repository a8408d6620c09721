# SPDX-License-Identifier: GPL-3.0-or-later
"""De-duplication (issue 17), through the real binary: a looper's `dedup: {window: W}` answers an
event whose id already succeeded within W with `succeeded` and "duplicate_of", without running
it; across a restart (the ledger); not outside the window; the same event arriving while its
job runs gets that job's outcome; and a ledger that cannot answer never costs the event.

The "playbook" is a shell script (playbook_cmd) that appends a line per run, so that a run is
counted where it happens; it waits for a gate file when the test asks it to."""
import contextlib
import json
import os
import sqlite3
import time

from conftest import Supervisor, base_config, read_answers, scripted, wait_until

RUNNER = """#!/bin/sh
# Arguments: PLAYBOOK -e @VARS. Each run appends its vars file name; dedup.gate.yml waits.
case "$1" in
*/dedup.gate.yml) while [ ! -e GATE ]; do sleep 0.05; done ;;
esac
echo "$1" >> RUNS
"""


def dedup_config(tmp, window="24h", **looper_over):
    fifo = tmp / "events.fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    for key in ("dedup.ok", "dedup.gate"):
        (tmp / "playbooks" / f"{key}.yml").write_text("- hosts: localhost\n")
    runner = tmp / "runner"
    runner.write_text(RUNNER.replace("RUNS", str(tmp / "runs")).replace("GATE", str(tmp / "gate")))
    runner.chmod(0o755)
    looper = scripted(fifo=str(fifo), answers=str(tmp / "answers"))
    looper["dedup"] = {"window": window}
    looper.update(looper_over)
    cfg = base_config(tmp, [looper], history={"path": str(tmp / "history.sqlite"),
                                              "flush_interval": "1min"})
    cfg["ansible"]["playbook_cmd"] = str(runner)
    return cfg


class Feed:
    def __init__(self, tmp, cfg):
        self.tmp = tmp
        self.sup = Supervisor(tmp, cfg)
        self.fifo = open(tmp / "events.fifo", "w")

    def send(self, key, id, **extra):
        self.fifo.write(json.dumps({"routing_key": key, "id": id, "body": {}, **extra}) + "\n")
        self.fifo.flush()

    def answers(self, id):
        return [a for a in read_answers(self.tmp / "answers") if a["id"] == id]

    def wait_answers(self, id, n=1):
        wait_until(lambda: len(self.answers(id)) >= n, 30, what=f"{n} answer(s) for {id}")
        return self.answers(id)

    def stop(self):
        self.fifo.close()
        assert self.sup.stop() == 0


@contextlib.contextmanager
def feeding(tmp, cfg):
    """A Feed whose supervisor must stop cleanly at the end of the block (killed on failure)."""
    feed = Feed(tmp, cfg)
    try:
        yield feed
        feed.stop()
    finally:
        if feed.sup.proc.poll() is None:
            feed.sup.kill()


def ledger_rows(tmp):
    """(job_id, event_id, result, error, dedup_key) of every record, oldest first."""
    with sqlite3.connect(tmp / "history.sqlite") as db:
        return db.execute("SELECT job_id, event_id, result, error, dedup_key FROM jobs "
                          "ORDER BY seq").fetchall()


def runs(tmp):
    p = tmp / "runs"
    return p.read_text().splitlines() if p.exists() else []


def test_the_same_event_twice_runs_once_also_across_a_restart(workdir, supervisor):
    cfg = dedup_config(workdir)
    with feeding(workdir, cfg) as feed:
        feed.send("dedup.ok", "e-1")
        [first] = feed.wait_answers("e-1")
        assert first["result"] == "succeeded" and "duplicate_of" not in first
        feed.send("dedup.ok", "e-1")
        second = feed.wait_answers("e-1", 2)[1]
        assert second == {"id": "e-1", "result": "succeeded", "exit_code": None,
                          "duplicate_of": 1}
        assert len(runs(workdir)) == 1
        feed.sup.wait_log(r"event \"e-1\" already succeeded as job 1 within the dedup window")
        # Another id runs.
        feed.send("dedup.ok", "e-2")
        feed.wait_answers("e-2")
        assert len(runs(workdir)) == 2
    # The duplicate has a record of its own, without a job, naming job 1.
    assert ledger_rows(workdir)[1] == (0, '"e-1"', "succeeded", "duplicate of job 1, which "
                                       "succeeded within the dedup window: not run again", "")
    # A new supervisor on the same ledger: the redelivered event is still a duplicate.
    (workdir / "answers").unlink()
    with feeding(workdir, cfg) as feed:
        feed.send("dedup.ok", "e-2")
        assert feed.wait_answers("e-2")[0]["duplicate_of"] == 2
        assert len(runs(workdir)) == 2


def test_outside_the_window_it_runs_again_and_dedup_id_wins_over_id(workdir, supervisor):
    with feeding(workdir, dedup_config(workdir, window="1s")) as feed:
        # Two deliveries of one message: ids differ, dedup_id is the same.
        feed.send("dedup.ok", "d-1", dedup_id="msg-A")
        feed.wait_answers("d-1")
        feed.send("dedup.ok", "d-2", dedup_id="msg-A")
        assert feed.wait_answers("d-2")[0]["duplicate_of"] == 1
        assert len(runs(workdir)) == 1
        time.sleep(1.2)  # the window is 1 s: the success is now older than it
        feed.send("dedup.ok", "d-3", dedup_id="msg-A")
        a = feed.wait_answers("d-3")[0]
        assert a["result"] == "succeeded" and "duplicate_of" not in a
        assert len(runs(workdir)) == 2


def test_a_duplicate_of_a_running_job_gets_its_outcome(workdir, supervisor):
    with feeding(workdir, dedup_config(workdir)) as feed:
        feed.send("dedup.gate", "g-1")
        wait_until(lambda: feed.sup.log.count("started: dedup.gate") == 1, 30, what="the job")
        feed.send("dedup.gate", "g-1")
        feed.sup.wait_log("is a duplicate of job 1, which has not ended")
        assert feed.answers("g-1") == []
        (workdir / "gate").touch()
        answers = feed.wait_answers("g-1", 2)
        assert answers[0]["result"] == "succeeded" and "duplicate_of" not in answers[0]
        assert answers[1] == {"id": "g-1", "result": "succeeded", "exit_code": None,
                              "duplicate_of": 1}
        assert len(runs(workdir)) == 1
    assert ledger_rows(workdir)[1] == (0, '"g-1"', "succeeded", "duplicate of job 1, which was "
                                       "running: answered with its outcome", "")


def test_a_ledger_that_cannot_answer_never_costs_the_event(workdir, supervisor):
    """Another process holds the database locked (SQLite's exclusive lock, as a backup tool or
    an sqlite3 shell may): the ledger cannot be asked, so the event runs, every time, and the
    log says why; a duplicate run is better than a lost event. The successes kept in memory
    meanwhile are found, before and after the lock is gone."""
    db = sqlite3.connect(workdir / "history.sqlite", isolation_level=None)
    db.execute("PRAGMA locking_mode=EXCLUSIVE")
    db.execute("BEGIN EXCLUSIVE")
    db.execute("CREATE TABLE holder (x)")
    try:
        with feeding(workdir, dedup_config(workdir)) as feed:
            feed.send("dedup.ok", "l-1")
            feed.wait_answers("l-1")
            feed.send("dedup.ok", "l-2")
            answers = feed.answers("l-1") + feed.wait_answers("l-2")
            assert [a["result"] for a in answers] == ["succeeded", "succeeded"]
            assert len(runs(workdir)) == 2
            for id in ("l-1", "l-2"):
                feed.sup.wait_log(r"de-duplication could not ask the ledger \(the database .* "
                                  rf"cannot be opened\); running event \"{id}\"")
            # The successes wait in memory for the database, and are asked there first.
            feed.send("dedup.ok", "l-1")
            assert feed.wait_answers("l-1", 2)[1]["duplicate_of"] == 1
            db.execute("ROLLBACK")
            db.close()
            db = None
            feed.send("dedup.ok", "l-2")
            assert feed.wait_answers("l-2", 2)[1]["duplicate_of"] == 2
            assert len(runs(workdir)) == 2
    finally:
        if db is not None:
            db.close()


def test_dedup_needs_history_and_a_window_within_its_retention(workdir, supervisor):
    import subprocess
    from conftest import BIN
    cfg = dedup_config(workdir)
    cfg["history"] = {"enabled": False}
    (workdir / "off.yml").write_text(json.dumps(cfg))
    cfg["history"] = {"max_age": "1h"}
    (workdir / "short.yml").write_text(json.dumps(cfg))
    for name, text in (("off.yml", "history.enabled: false"),
                       ("short.yml", "longer than 'history.max_age'")):
        r = subprocess.run([str(BIN), "--check-config", str(workdir / name)], capture_output=True,
                           text=True)
        assert r.returncode != 0 and text in r.stdout + r.stderr, r
