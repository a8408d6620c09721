# SPDX-License-Identifier: GPL-3.0-or-later
"""The ledger survives a SIGKILL of the supervisor while it writes batches (issue 17): the next
start opens the same database (no corruption, nothing moved aside), every record committed before
the kill is still there, what is missing is at most the one batch that was in memory, and the log
says that the last run did not shut down cleanly and which record was the last."""
import contextlib
import json
import os
import re
import resource
import signal
import sqlite3
import time

from conftest import Supervisor, base_config, read_answers, scripted, wait_until

BATCH = 50
EVENTS = 3000


@contextlib.contextmanager
def read_only(path):
    """The ledger opened read-only, as an operator's sqlite3 would, closed on the way out."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        yield db
    finally:
        db.close()


def recorded_ids(path):
    with read_only(path) as db:
        return {json.loads(r[0]) for r in db.execute("SELECT event_id FROM jobs WHERE job_id > 0")}


def test_sigkill_while_the_ledger_writes_batches_loses_at_most_the_last(workdir):
    (workdir / "playbooks" / "kill.fast.yml").write_text("- hosts: localhost\n")
    ledger = workdir / "history.sqlite"
    answers = workdir / "answers"
    lines = [json.dumps({"routing_key": "kill.fast", "id": f"k-{i}"}) for i in range(EVENTS)]
    marker = workdir / "looper-started"
    cfg = base_config(workdir, [scripted(lines=lines, answers=str(answers), marker=str(marker))],
                      history={"path": str(ledger), "batch_size": BATCH,
                               "flush_interval": "1min"},
                      loglevel="info")
    cfg["ansible"]["playbook_cmd"] = "/bin/true"
    cfg["executor"]["max_parallel"] = 4
    sup = Supervisor(workdir, cfg)
    try:
        # Mid-stream: several batches written, more jobs running and finishing.
        wait_until(lambda: ledger.exists() and len(recorded_ids(ledger)) >= 5 * BATCH, 120,
                   what="several batches in the ledger")
        sup.signal(signal.SIGKILL)
        sup.proc.wait()
    finally:
        if sup.proc.poll() is None:
            sup.kill()
    before = recorded_ids(ledger)
    assert before <= {f"k-{i}" for i in range(EVENTS)}
    # Every job the looper was answered for ran to its end, and its record was queued before the
    # answer was written. The looper reads what is left in its pipe, then sees EOF and exits.
    pid = int(marker.read_text().split()[1])
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 30, what="the looper to exit")
    answered = {a["id"] for a in read_answers(answers) if a["result"] == "succeeded"}
    lost = answered - before
    assert len(lost) < BATCH, f"{len(lost)} answered jobs not recorded, batch_size {BATCH}"

    # The next start: the same database opens; nothing is corrupt; the hole is reported.
    cfg["loopers"] = [scripted()]
    again = Supervisor(workdir, cfg)
    try:
        again.wait_log(r"running with \d+ looper", count=2)
        again.wait_log(r"history: the last run did not shut down cleanly \(killed or crashed\)"
                       r".*the last record in .* is #\d+ \(job \d+")
        assert "is corrupt" not in again.log
        assert not list(workdir.glob("history.sqlite.corrupt-*"))
        db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            db.close()
        assert recorded_ids(ledger) >= before
        assert again.stop() == 0
    finally:
        if again.proc.poll() is None:
            again.kill()
    # A clean stop is not reported as a crash at the next start.
    third = Supervisor(workdir, cfg)
    try:
        third.wait_log(r"running with \d+ looper", count=3)
        assert third.stop() == 0
    finally:
        if third.proc.poll() is None:
            third.kill()
    assert third.log.count("did not shut down cleanly") == 1


def test_a_ledger_readable_by_others_is_set_to_0600(workdir):
    """The ledger holds event ids and error texts: readable by the service user alone. A new
    one is created 0600; one that is not (made by hand, restored from a backup) is set to 0600,
    with its -wal, and the log says so."""
    ledger = workdir / "history.sqlite"
    db = sqlite3.connect(ledger)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE other (x)")
    os.chmod(ledger, 0o644)
    os.chmod(f"{ledger}-wal", 0o644)
    cfg = base_config(workdir, [scripted()], history={"path": str(ledger)})
    sup = Supervisor(workdir, cfg)
    try:
        sup.wait_log(r"history: .*history\.sqlite had mode 0644; set to 0600")
        sup.wait_log(r"history: .*history\.sqlite-wal had mode 0644; set to 0600")
        for path in (ledger, workdir / "history.sqlite-wal", workdir / "history.sqlite-shm"):
            assert os.stat(path).st_mode & 0o777 == 0o600, path
        assert sup.stop() == 0
    finally:
        db.close()
        if sup.proc.poll() is None:
            sup.kill()
    assert os.stat(ledger).st_mode & 0o777 == 0o600


def test_a_ledger_from_before_gets_partial_indexes_and_keeps_its_records(workdir):
    """Ledgers written before the insert path was made cheaper have full indexes on job_id and
    (looper, dedup_key); the next start replaces them with partial ones (rejected and unrouted
    events, job_id 0, and records without a dedup key are not indexed) and keeps every record:
    job ids go on from the last recorded one, and a job is found by its id."""
    ledger = workdir / "history.sqlite"
    db = sqlite3.connect(ledger)
    now = int(time.time() * 1e6)  # within retention (max_age)
    db.executescript(f"""
        CREATE TABLE jobs (seq INTEGER PRIMARY KEY, job_id INTEGER NOT NULL,
            event_id TEXT NOT NULL, looper TEXT NOT NULL, routing_key TEXT NOT NULL,
            route TEXT NOT NULL, playbook TEXT NOT NULL, playbook_sha256 TEXT NOT NULL,
            user TEXT NOT NULL, queued_usec INTEGER NOT NULL, started_usec INTEGER NOT NULL,
            finished_usec INTEGER NOT NULL, result TEXT NOT NULL, exit_code INTEGER,
            unit TEXT NOT NULL, error TEXT NOT NULL, dedup_key TEXT NOT NULL DEFAULT '');
        CREATE INDEX jobs_job_id ON jobs(job_id);
        CREATE INDEX jobs_finished ON jobs(finished_usec);
        CREATE INDEX jobs_dedup ON jobs(looper, dedup_key);
        INSERT INTO jobs VALUES (1, 41, '"old"', 'test', 'old.key', '', '/p.yml', '', 'root',
            {now - 3}, {now - 2}, {now - 1}, 'succeeded', 0, '', '', '"old"');
        INSERT INTO jobs VALUES (2, 0, '"junk"', 'test', 'x', '', '', '', 'root',
            {now}, 0, {now}, 'unrouted', NULL, '', 'no playbook', '');
    """)
    db.close()
    (workdir / "playbooks" / "new.key.yml").write_text("- hosts: localhost\n")
    answers = workdir / "answers"
    cfg = base_config(workdir, [scripted(lines=[json.dumps({"routing_key": "new.key", "id": "n"})],
                                         answers=str(answers))],
                      history={"path": str(ledger), "flush_interval": "50ms"})
    cfg["ansible"]["playbook_cmd"] = "/bin/true"
    sup = Supervisor(workdir, cfg)
    try:
        sup.wait_log(r"job 42 queued: new\.key")  # after the ledger's last job, 41
        wait_until(lambda: [a["result"] for a in read_answers(answers)] == ["succeeded"], 30,
                   what="the answer")
        assert sup.stop() == 0
    finally:
        if sup.proc.poll() is None:
            sup.kill()
    with read_only(ledger) as db:
        indexes = dict(db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                                  "AND tbl_name = 'jobs'"))
        assert set(indexes) == {"jobs_finished", "jobs_job", "jobs_dedup_key"}, indexes
        assert "WHERE job_id > 0" in indexes["jobs_job"]
        assert "WHERE dedup_key != ''" in indexes["jobs_dedup_key"]
        rows = db.execute("SELECT job_id, result FROM jobs ORDER BY seq").fetchall()
        assert rows == [(41, "succeeded"), (0, "unrouted"), (42, "succeeded")]
        # The lookups the supervisor makes use the partial indexes.
        plan = " ".join(r[3] for r in db.execute(
            "EXPLAIN QUERY PLAN SELECT job_id FROM jobs WHERE job_id = 41 AND job_id > 0"))
        assert "jobs_job" in plan, plan


def test_a_ledger_that_cannot_grow_never_stops_events(workdir):
    """A full disk, as the supervisor sees it: once it runs, its files may not grow past 256 KiB
    (RLIMIT_FSIZE on its process only, SIGXFSZ ignored: writes fail as on a full file system).
    Every event is a record (record_unrouted); the batches that cannot be written are dropped,
    logged and counted, every event is still answered, and the supervisor stops cleanly."""
    ledger = workdir / "history.sqlite"
    answers = workdir / "answers"
    events = 6000  # about 800 KB of records
    lines = [json.dumps({"routing_key": "full.none", "id": f"f-{i}"}) for i in range(events)]
    cfg = base_config(workdir, [scripted(lines=lines, answers=str(answers))],
                      history={"path": str(ledger), "batch_size": 200, "record_unrouted": True},
                      loglevel="info")
    sup = Supervisor(workdir, cfg, preexec=lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN))
    try:
        # The looper has started (its answers file is not limited); the supervisor's files are.
        resource.prlimit(sup.proc.pid, resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))
        wait_until(lambda: len(read_answers(answers)) == events, 60, what="every answer")
        assert {a["result"] for a in read_answers(answers)} == {"unrouted"}
        sup.wait_log(r"history: writing a batch failed on .*: .*; \d+ record\(s\) lost")
        assert sup.stop() == 0
        # A fault that repeats is logged at most five times a minute, then counted.
        assert len(re.findall(r"record\(s\) lost", sup.log)) <= 5, sup.log[-3000:]
        assert re.search(r"suppressed \d+ similar messages \(lost batches\)", sup.log), sup.log[-3000:]
    finally:
        if sup.proc.poll() is None:
            sup.kill()
    with read_only(ledger) as db:
        kept = db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    assert kept < events


def test_a_locked_ledger_keeps_its_records_until_it_is_free(workdir):
    """Another process holds the ledger's write lock (an operator's sqlite3 shell, a backup):
    the records wait in memory, retried without stalling the event loop, and are all written
    once the lock is gone; nothing is lost (a fresh user's test lost them at the first retry)."""
    ledger = workdir / "history.sqlite"
    fifo, answers = workdir / "events.fifo", workdir / "answers"
    os.mkfifo(fifo)
    cfg = base_config(workdir, [scripted(fifo=str(fifo), answers=str(answers))],
                      history={"path": str(ledger), "flush_interval": "50ms", "record_unrouted": True},
                      loglevel="info")
    sup = Supervisor(workdir, cfg)
    try:
        with open(fifo, "w") as events:
            def send(i):
                events.write(json.dumps({"routing_key": "locked.none", "id": f"l-{i}"}) + "\n")
                events.flush()
            send(0)
            wait_until(lambda: ledger.exists() and count(ledger) == 1, 10, what="the first record")
            holder = sqlite3.connect(ledger, isolation_level=None)
            holder.execute("BEGIN EXCLUSIVE")
            for i in range(1, 6):
                send(i)
            wait_until(lambda: len(read_answers(answers)) == 6, 10, what="every answer, locked")
            sup.wait_log(r"history: .*history\.sqlite is locked by another process: \d+ record\(s\) kept")
            holder.execute("ROLLBACK")
            holder.close()
            wait_until(lambda: count(ledger) == 6, 10, what="the kept records")
            sup.wait_log(r"history: .*history\.sqlite is writable again")
        assert sup.stop() == 0
    finally:
        if sup.proc.poll() is None:
            sup.kill()
    assert "record(s) lost" not in sup.log


def count(ledger):
    with read_only(ledger) as db:
        return db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
