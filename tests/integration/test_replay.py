# SPDX-License-Identifier: GPL-3.0-or-later
"""Stored event bodies and replay (issue 17): history.store_bodies, GetJobBody, ReplayJob,
`loopabullctl job ID --body` and `loopabullctl replay ID`, through the real binary on a private
dbus-daemon (the bus fixture of test_dbus.py). The replay test runs Debian's ansible-playbook; the others
a stand-in playbook command, since what they check ends before a playbook matters."""
import json
import os
import sqlite3
import subprocess

import pytest

import test_dbus
from test_dbus import bus, bus_name, _h  # noqa: F401 (bus: the private dbus-daemon fixture)

Supervisor, base_config, event, read_answers, scripted, wait_until = (
    _h.Supervisor, _h.base_config, _h.event, _h.read_answers, _h.scripted, _h.wait_until)

pytestmark = test_dbus.pytestmark

# Writes what the playbook got: loopabull's variables and the event, to out_dir/JOB_ID.json.
RECORD = """- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - copy:
        dest: "{{ event.out_dir }}/{{ loopabull_job_id }}.json"
        content: "{{ {'job_id': loopabull_job_id, 'replay_of': loopabull_replay_of | default(None),
                      'event_id': loopabull_event_id | default(None), 'event': event} | to_json }}"
"""


class Instance:
    def __init__(self, bus, sup, name, fifo, answers):
        self.bus, self.sup, self.name, self.answers = bus, sup, name, answers
        self.bus_name = bus_name(name)
        self._fifo = open(fifo, "w")

    def send(self, key, body, id):
        self._fifo.write(event(key, body, id=id) + "\n")
        self._fifo.flush()

    def answer(self, id):
        wait_until(lambda: any(a["id"] == id for a in read_answers(self.answers)), 60,
                   what=f"the answer to event {id}")
        return next(a for a in read_answers(self.answers) if a["id"] == id)

    def ctl(self, *args, user=None):
        return self.bus.ctl("-i", self.name, *args, user=user)

    def finished(self, job):
        """GetJob's result once the job has finished."""
        def result():
            r = self.bus.call(self.bus_name, "GetJob", "t", job)
            return r[8] if r[2] == "finished" else None
        wait_until(result, 60, what=f"job {job} to finish")
        return result()


@pytest.fixture
def instance(workdir, bus):
    """start(name, history, playbook_cmd=None, looper={...}, **config) -> Instance, in
    workdir/NAME; its config is inst.cfg (write it with inst.sup.write_config, then reload)."""
    started = []

    def start(name, history, playbook_cmd=None, looper=None, **over):
        d = workdir / name
        (d / "playbooks").mkdir(parents=True)
        (d / "playbooks" / "replay.record.yml").write_text(RECORD)
        fifo, answers = d / "events.fifo", d / "answers"
        os.mkfifo(fifo)
        ansible = {"playbooks_dir": str(d / "playbooks")}
        if playbook_cmd:
            ansible["playbook_cmd"] = playbook_cmd
        cfg = base_config(d, [{**scripted(fifo=str(fifo), answers=str(answers)), **(looper or {})}],
                          ansible=ansible, history={"flush_interval": "50ms", **history}, **over)
        sup = Supervisor(d, cfg, instance=name, env={"DBUS_SESSION_BUS_ADDRESS": bus.address},
                         args=["--bus=user"])
        inst = Instance(bus, sup, name, fifo, answers)
        inst.cfg = cfg
        started.append(inst)
        return inst
    yield start
    for inst in started:
        inst._fifo.close()
        if inst.sup.proc.poll() is None:
            inst.sup.kill()


@test_dbus._h.needs_ansible
def test_a_restart_keeps_the_body_and_replay_runs_the_playbook_again(instance, workdir):
    """The body outlives a restart; the replay runs the real playbook with loopabull_replay_of
    and the body under `event`, is recorded as a replay, answers no looper, and dedup (on for
    this looper) neither swallows it nor forgets the original."""
    ledger, out = workdir / "history.sqlite", workdir / "out"
    # An integer beyond 64 bits stays exact in the stored body and in the replay's variables.
    body = {"out_dir": str(out), "n": 1, "text": "héllo", "big": 123456789012345678901234567890123}
    hist = {"path": str(ledger), "store_bodies": True}
    first = instance("replay-a", hist, looper={"dedup": {"window": "1h"}})
    first.send("replay.record", body, "a")
    assert first.answer("a")["result"] == "succeeded"
    assert first.sup.stop() == 0
    assert json.loads((out / "1.json").read_text())["replay_of"] is None

    second = instance("replay-b", hist, looper={"dedup": {"window": "1h"}})
    r = second.ctl("job", "1", "--body")
    assert r.returncode == 0 and json.loads(r.stdout) == body, r
    r = second.ctl("replay", "1", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == {"id": 2, "replay_of": 1}, r
    assert second.finished(2) == "succeeded"
    got = json.loads((out / "2.json").read_text())
    assert got == {"job_id": "2", "replay_of": "1", "event_id": "a", "event": body}
    records = {r["id"]: r for r in json.loads(second.ctl("history", "--json").stdout)}
    assert records[2]["replay_of"] == 1 and records[2]["body"] == "stored"
    assert records[1]["replay_of"] is None and records[1]["body_size"] == len(
        json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
    assert "job 2 (replay.record) queued: a replay of job 1, asked by uid 0" in second.sup.log
    job = json.loads(second.ctl("job", "2", "--json").stdout)
    assert (job["replay_of"], job["body"], job["body_size"]) == (1, "stored", records[2]["body_size"])
    assert "   Replay of: job 1\n" in second.ctl("job", "2").stdout
    # The redelivered original is still a duplicate of job 1; the replay answered nobody.
    second.send("replay.record", body, "a")
    dup = second.answer("a")
    assert (dup["result"], dup["duplicate_of"]) == ("succeeded", 1), dup
    assert [a["id"] for a in read_answers(second.answers)] == ["a"]
    # Text output.
    r = second.ctl("replay", "1")
    assert r.returncode == 0 and r.stdout == "Job 3 queued: a replay of job 1.\n", r
    assert second.finished(3) == "succeeded"


def test_replay_is_refused_without_a_stored_body(instance, workdir):
    """Each reason is named: bodies not stored, a body over max_body_size, a job not in the
    history, one removed by retention (with its body). Nothing runs. Turning store_bodies off
    removes the kept bodies."""
    off = instance("replay-off", {"path": str(workdir / "off.sqlite")}, playbook_cmd=["/bin/true"])
    off.send("replay.record", {}, "a")
    off.answer("a")
    name, message = off.bus.call_error(off.bus_name, "ReplayJob", "uint64:1")
    assert name == "org.loopabull.Loopabull1.NoBody", message
    assert "history.store_bodies is false" in message
    r = off.ctl("job", "1", "--body")
    assert r.returncode == 6 and "event bodies are not stored" in r.stderr, r

    capped = instance("replay-cap", {"path": str(workdir / "cap.sqlite"), "store_bodies": True,
                                     "max_body_size": "100B", "max_jobs": 1},
                      playbook_cmd=["/bin/true"])
    capped.send("replay.record", {"big": "x" * 200}, "big")
    capped.answer("big")
    [rec] = json.loads(capped.ctl("history", "--json").stdout)
    assert (rec["body"], rec["body_size"]) == ("too_large", 210)
    r = capped.ctl("replay", "1")
    assert r.returncode == 6 and "its 210 bytes are over history.max_body_size (100)" in r.stderr, r
    r = capped.ctl("replay", "7")
    assert r.returncode == 5 and "no job 7 in the history" in r.stderr, r
    capped.send("replay.record", {}, "small")  # job 2; max_jobs 1 prunes job 1 and its row
    capped.answer("small")
    wait_until(lambda: [r["id"] for r in json.loads(capped.ctl("history", "--json").stdout)] == [2],
               10, what="job 1 to be pruned")
    r = capped.ctl("replay", "1")
    assert r.returncode == 5 and "removed by retention" in r.stderr, r
    with sqlite3.connect(workdir / "cap.sqlite") as db:
        assert db.execute("SELECT job_id, body FROM bodies").fetchall() == [(2, "{}")]
    assert capped.bus.call(capped.bus_name, "ListJobs") == [[]]
    # Turned off, the bodies kept go at the next start.
    assert capped.sup.stop() == 0
    again = instance("replay-cap-off", {"path": str(workdir / "cap.sqlite")})
    assert "store_bodies is false: removed 1 stored event bodies" in again.sup.log
    with sqlite3.connect(workdir / "cap.sqlite") as db:
        assert db.execute("SELECT job_id, size, body FROM bodies").fetchall() == [(2, None, None)]


def test_a_replay_goes_through_todays_routing(instance, workdir):
    """Today's routes decide: a throttle that holds the recorded value refuses the replay; a
    new route sends it to another playbook; a key today's routing_keys drop is refused."""
    route = {"name": "chatty", "keys": ["replay.record"], "playbook": "replay.record.yml",
             "throttle": {"per": "/n", "once_within": "1h"}}
    inst = instance("replay-routes", {"path": str(workdir / "routes.sqlite"), "store_bodies": True},
                    playbook_cmd=["/bin/true"], routes=[route])
    (workdir / "replay-routes" / "playbooks" / "today.yml").write_text("- hosts: localhost\n")
    inst.send("replay.record", {"n": 1}, "a")
    assert inst.answer("a")["result"] == "succeeded"
    r = inst.ctl("replay", "1")
    assert r.returncode == 6 and "throttled by route 'chatty'" in r.stderr, r

    def reload(**change):
        inst.sup.write_config({**inst.cfg, **change})
        assert inst.ctl("reload").returncode == 0

    reload(routes=[{"name": "today", "keys": ["replay.*"], "playbook": "today.yml"}])
    r = inst.ctl("replay", "1", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["id"] == 2, r
    assert inst.finished(2) == "succeeded"
    rec = json.loads(inst.ctl("history", "--json", "--limit", "1").stdout)[0]
    assert (rec["id"], rec["route"], rec["replay_of"]) == (2, "today", 1)
    assert rec["playbook"].endswith("/today.yml")
    reload(routes=[], routing_keys=["other.*"])
    r = inst.ctl("replay", "1")
    assert r.returncode == 6 and "today's routing does not run job 1's event (unrouted)" in r.stderr, r


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_an_unprivileged_caller_may_neither_read_nor_replay_a_body(instance, workdir):
    """On the user bus only the instance's user (and root) may; a refused replay runs nothing."""
    inst = instance("replay-priv", {"path": str(workdir / "priv.sqlite"), "store_bodies": True},
                    playbook_cmd=["/bin/true"])
    inst.send("replay.record", {"secret": "s3cret"}, "a")
    inst.answer("a")
    for method in ("GetJobBody", "ReplayJob"):
        name, message = inst.bus.call_error(inst.bus_name, method, "uint64:1", user="nobody")
        assert name == "org.freedesktop.DBus.Error.AccessDenied", (method, name, message)
    r = inst.ctl("job", "1", "--body", user="nobody")
    assert r.returncode == 4 and "s3cret" not in r.stdout + r.stderr, r
    r = inst.ctl("replay", "1", user="nobody")
    assert r.returncode == 4 and "access denied" in r.stderr, r
    assert inst.sup.log.count("refused: on the user bus only uid 0 may") == 4
    # The readable history says a body is there, never what it holds.
    [rec] = json.loads(inst.ctl("history", "--json", user="nobody").stdout)
    assert rec["body"] == "stored" and "s3cret" not in json.dumps(rec)
    assert inst.bus.call(inst.bus_name, "ListJobs") == [[]]


def test_history_shows_what_an_event_sent_escaped(instance, workdir):
    """An error text may quote what the event sent (here a body key that top-level mode refuses):
    `history` and `job` print control characters escaped, as the log does, never raw to the
    terminal (a fresh user's test found them raw)."""
    inst = instance("replay-esc", {"path": str(workdir / "esc.sqlite")}, playbook_cmd=["/bin/true"])
    inst.cfg["ansible"]["event_variable"] = "top-level"
    inst.sup.write_config(inst.cfg)
    assert inst.ctl("reload").returncode == 0
    inst.send("replay.record", {"ansible_\x1b[31mRED\r\nFAKE": 1}, "esc")
    assert inst.answer("esc")["result"] == "rejected"
    wait_until(lambda: json.loads(inst.ctl("history", "--json").stdout), 10, what="the record")
    text = inst.ctl("history").stdout
    assert "\x1b" not in text and "\r" not in text and "FAKE" in text, repr(text)
    assert len(text.splitlines()) == 4, repr(text)  # header, one record, blank, count


@pytest.mark.parametrize("args,needle", [
    (["--result", "foo"], "invalid --result 'foo': one of succeeded, failed,"),
    (["--result", "SUCCEEDED"], "invalid --result 'SUCCEEDED'"),
    (["--since", "2026-02-30"], "invalid --since '2026-02-30': give a duration"),
    (["--since", "2026-11-30T16:52:60"], "invalid --since"),
    (["--since", "1y"], "invalid --since '1y'"),
])
def test_history_refuses_filters_that_match_nothing_by_mistake(args, needle):
    """A typo in a filter must not read as "nothing failed" (exit 0, no records): it is a usage
    error (exit 2), said before any bus is asked."""
    r = subprocess.run([str(test_dbus.CTL), "-i", "nosuch", "history", *args],
                       capture_output=True, text=True)
    assert r.returncode == 2 and needle in r.stderr, r
