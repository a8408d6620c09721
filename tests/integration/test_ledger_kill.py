# SPDX-License-Identifier: GPL-3.0-or-later
"""The ledger survives a SIGKILL of the supervisor while it writes batches (issue 17): the next
start opens the same database (no corruption, nothing moved aside), every record committed before
the kill is still there, what is missing is at most the one batch that was in memory, and the log
says that the last run did not shut down cleanly and which record was the last."""
import json
import os
import signal
import sqlite3

from conftest import Supervisor, base_config, read_answers, scripted, wait_until

BATCH = 50
EVENTS = 3000


def recorded_ids(path):
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {json.loads(r[0]) for r in db.execute("SELECT event_id FROM jobs WHERE job_id > 0")}
    finally:
        db.close()


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
