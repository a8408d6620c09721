# SPDX-License-Identifier: GPL-3.0-or-later
"""The D-Bus API (org.loopabull.Loopabull1(5)) and loopabullctl(1), through the real binary.

Each test runs a private dbus-daemon whose policy allows everything, on a socket of its own, and
loopabull with --bus=user and DBUS_SESSION_BUS_ADDRESS pointing at it. Clients are Debian's
busctl (systemd), dbus-send (dbus) and the loopabullctl of the build. Playbooks are a small
script (playbook_cmd), so that jobs take the time a test wants; the ansible-playbook path is
covered by the other tests and by tests/system/test_service.py.
"""
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml


def _helpers():
    """This directory's conftest.py. "from conftest import" is not enough: when pytest collects
    tests/system as well (pytest tests/integration/test_dbus.py tests/system/...), the module
    named conftest is the last one loaded, that of tests/system."""
    here = Path(__file__).resolve().parent
    mod = sys.modules.get("conftest")
    if mod is not None and Path(mod.__file__).resolve().parent == here:
        return mod
    spec = importlib.util.spec_from_file_location("loopabull_integration_conftest", here / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_h = _helpers()
BIN, BUILD, LOOPER_DIR, ROOT = _h.BIN, _h.BUILD, _h.LOOPER_DIR, _h.ROOT
Supervisor, base_config, event, read_answers, scripted, wait_until = (
    _h.Supervisor, _h.base_config, _h.event, _h.read_answers, _h.scripted, _h.wait_until)

CTL = Path(os.environ.get("LOOPABULLCTL_BIN", BUILD / "src" / "loopabullctl")).resolve()
MAN_PAGE = ROOT / "man" / "org.loopabull.Loopabull1.5"
OBJECT = "/org/loopabull/Loopabull1"
IFACE = "org.loopabull.Loopabull1.Manager"

pytestmark = pytest.mark.skipif(shutil.which("dbus-daemon") is None or shutil.which("busctl") is None,
                                reason="dbus-daemon (Debian's dbus) and busctl (systemd) are needed")

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""

# The playbook command: what a job does is chosen by its playbook's name.
FAKE_PLAYBOOK = """#!/bin/sh
case "$1" in
  *slow*) exec sleep 60 ;;
  *fail*) exit 3 ;;
esac
exit 0
"""


def bus_name(instance):
    """The documented escaping: bytes outside [A-Za-z0-9_-], and a leading digit, become _XX."""
    out = ""
    for i, c in enumerate(instance.encode()):
        ch = chr(c)
        if (ch.isascii() and ch.isalpha()) or ch in "_-" or (ch.isdigit() and i > 0):
            out += ch
        else:
            out += "_%02x" % c
    return "org.loopabull.Loopabull1." + out


class Bus:
    """A private dbus-daemon and the clients that talk to it."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="loopabull-bus-"))
        self.dir.chmod(0o755)  # an unprivileged user connects too
        socket = self.dir / "socket"
        conf = self.dir / "bus.conf"
        conf.write_text(BUS_CONFIG.format(socket=socket))
        self._err = open(self.dir / "dbus-daemon.log", "wb")
        self.proc = subprocess.Popen(["dbus-daemon", f"--config-file={conf}", "--print-address", "--nofork"],
                                     stdout=subprocess.PIPE, stderr=self._err)
        self.address = self.proc.stdout.readline().decode().strip()
        assert self.address.startswith("unix:"), f"dbus-daemon said {self.address!r}"
        self.env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": self.address}
        self.monitors = []

    def close(self):
        for m in self.monitors:
            m.kill()
            m.wait()
        self.proc.terminate()
        self.proc.wait(10)
        self._err.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def run(self, cmd, user=None, check=True, timeout=30):
        if user:
            cmd = ["runuser", "-u", user, "--", "env", f"DBUS_SESSION_BUS_ADDRESS={self.address}", *cmd]
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"{cmd} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r

    def busctl(self, *args, user=None, check=True):
        return self.run(["busctl", "--user", *args], user=user, check=check)

    def call(self, name, method, signature="", *args, user=None):
        """The reply's values (busctl --json=short), or AssertionError on an error reply."""
        r = self.busctl("--json=short", "call", name, OBJECT, IFACE, method,
                        *([signature, *map(str, args)] if signature else []), user=user)
        return json.loads(r.stdout)["data"] if r.stdout.strip() else []

    def call_error(self, name, method, *args, user=None):
        """The name of the error a call gets (dbus-send prints it; busctl does not)."""
        cmd = ["dbus-send", "--session", "--print-reply", f"--dest={name}", OBJECT, f"{IFACE}.{method}", *args]
        r = self.run(cmd, user=user, check=False)
        assert r.returncode != 0, f"{method} succeeded: {r.stdout}"
        m = re.match(r"Error (\S+): (.*)", r.stderr.strip())
        assert m, r.stderr
        return m.group(1), m.group(2)

    def get(self, name, prop, user=None):
        r = self.busctl("--json=short", "get-property", name, OBJECT, IFACE, prop, user=user)
        return json.loads(r.stdout)["data"]

    def props(self, name):
        return {p: self.get(name, p) for p in ("State", "EventsReceived", "EventsRejected", "JobsQueued",
                                                "JobsRunning", "JobsSucceeded", "JobsFailed")}

    def monitor(self, path):
        """Every signal of our object, as JSON lines in `path` (busctl monitor)."""
        err = open(str(path) + ".err", "w")
        p = subprocess.Popen(["busctl", "--user", "--json=short", "monitor",
                              f"--match=type='signal',path='{OBJECT}'"],
                             env=self.env, stdout=open(path, "w"), stderr=err)
        self.monitors.append(p)
        wait_until(lambda: "Monitoring" in Path(str(path) + ".err").read_text(), 10,
                   what="busctl monitor to start")
        return p

    def ctl(self, *args, user=None, check=False):
        return self.run([str(CTL), "--user", *args], user=user, check=check)


def signals(path):
    out = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            m = json.loads(line)
            out.append((m["member"], m["payload"]["data"]))
    return out


@pytest.fixture
def bus():
    b = Bus()
    yield b
    b.close()


class Instance:
    def __init__(self, sup, bus, instance, fifo, answers):
        self.sup, self.bus, self.instance = sup, bus, instance
        self.name = bus_name(instance)
        self.answers = answers
        self._fifo = open(fifo, "w")

    def send(self, key, id):
        self._fifo.write(event(key, {"n": id}, id=id) + "\n")
        self._fifo.flush()

    def answer(self, id, timeout=30):
        wait_until(lambda: any(a["id"] == id for a in read_answers(self.answers)), timeout,
                   what=f"the answer to event {id}")
        return next(a for a in read_answers(self.answers) if a["id"] == id)

    def call(self, method, signature="", *args, user=None):
        return self.bus.call(self.name, method, signature, *args, user=user)

    def job(self, id):
        keys = ("id", "routing_key", "state", "unit", "looper", "queued_usec", "started_usec",
                "finished_usec", "result", "exit_code", "error")
        return dict(zip(keys, self.call("GetJob", "t", id)))

    def close(self):
        self._fifo.close()


@pytest.fixture
def instance(workdir, bus):
    """start(name, **config) -> Instance: a supervisor on the private bus, in a directory of its
    own (workdir/NAME), fed through a FIFO by the scripted looper."""
    started = []

    def start(name="dbus-test", **over):
        d = workdir / name
        d.mkdir()
        (d / "playbooks").mkdir()
        for key in ("dbus.ok", "dbus.slow", "dbus.fail", "dbus.other"):
            (d / "playbooks" / f"{key}.yml").write_text("- hosts: localhost\n")
        pb = d / "playbook.sh"
        pb.write_text(FAKE_PLAYBOOK)
        pb.chmod(0o755)
        fifo, answers = d / "events.fifo", d / "answers"
        os.mkfifo(fifo)
        cfg = base_config(d, [scripted(fifo=str(fifo), answers=str(answers))],
                          ansible={"playbooks_dir": str(d / "playbooks"), "playbook_cmd": str(pb)}, **over)
        sup = Supervisor(d, cfg, instance=name, env={"DBUS_SESSION_BUS_ADDRESS": bus.address},
                         args=["--bus=user"])
        inst = Instance(sup, bus, name, fifo, answers)
        started.append(inst)
        assert f"D-Bus API on the user bus as {bus_name(name)} {OBJECT}" in sup.log
        return inst
    yield start
    for inst in started:
        inst.close()
        if inst.sup.proc.poll() is None:
            inst.sup.kill()


def version():
    return subprocess.run([str(BIN), "--version"], capture_output=True, text=True, check=True).stdout.split()[1]


def test_properties_count_an_events_job(bus, instance):
    inst = instance()
    assert bus.get(inst.name, "Instance") == "dbus-test"
    assert bus.get(inst.name, "Version") == version()
    assert bus.props(inst.name) == {"State": "running", "EventsReceived": 0, "EventsRejected": 0,
                                    "JobsQueued": 0, "JobsRunning": 0, "JobsSucceeded": 0, "JobsFailed": 0}
    inst.send("dbus.ok", "a")
    assert inst.answer("a")["result"] == "succeeded"
    assert bus.props(inst.name) == {"State": "running", "EventsReceived": 1, "EventsRejected": 0,
                                    "JobsQueued": 0, "JobsRunning": 0, "JobsSucceeded": 1, "JobsFailed": 0}
    inst.send("dbus.fail", "b")
    inst._fifo.write("not json\n")
    inst._fifo.flush()
    assert inst.answer("b") == {"id": "b", "result": "failed", "exit_code": 3}
    # Why it failed, as the log says it: in GetJob and in loopabullctl job.
    assert inst.job(2)["error"] == "exit code 3"
    assert json.loads(bus.ctl("-i", "dbus-test", "--json", "job", "2", check=True).stdout)["error"] == "exit code 3"
    assert re.search(r"^ +Error: exit code 3$", bus.ctl("-i", "dbus-test", "job", "2", check=True).stdout, re.M)
    wait_until(lambda: bus.get(inst.name, "EventsRejected") == 1, 10, what="the rejected line to count")
    p = bus.props(inst.name)
    assert (p["EventsReceived"], p["JobsSucceeded"], p["JobsFailed"]) == (3, 1, 1)


def test_list_jobs_and_get_job_also_after_it_finished(bus, instance):
    inst = instance()
    assert inst.call("ListJobs") == [[]]
    inst.send("dbus.ok", "a")
    inst.answer("a")
    t_sent = time.time()
    inst.send("dbus.slow", "s")
    wait_until(lambda: bus.get(inst.name, "JobsRunning") == 1, 10, what="the slow job to run")
    [jobs] = inst.call("ListJobs")
    assert len(jobs) == 1
    id, key, state, unit, started, looper = jobs[0]
    assert (id, key, state, unit, looper) == (2, "dbus.slow", "running", "", "test")
    assert abs(started / 1e6 - t_sent) < 10
    running = inst.job(2)
    assert running["state"] == "running" and running["result"] == "" and running["exit_code"] == -1
    assert running["finished_usec"] == 0 and running["started_usec"] == started
    # The finished one is still there, from the history.
    done = inst.job(1)
    assert done["routing_key"] == "dbus.ok" and done["looper"] == "test"
    assert (done["state"], done["result"], done["exit_code"], done["error"]) == ("finished", "succeeded", 0, "")
    assert 0 < done["queued_usec"] <= done["started_usec"] <= done["finished_usec"]
    [[looper]] = inst.call("ListLoopers")
    name, state, pid, restarts, events = looper
    assert (name, state, restarts, events) == ("test", "running", 0, 2)
    assert Path(f"/proc/{pid}").exists()
    assert bus.call_error(inst.name, "GetJob", "uint64:99") == (
        "org.loopabull.Loopabull1.NoSuchJob",
        "No job 99 in instance dbus-test (never queued, or finished too long ago)")


def test_job_new_and_job_removed_signals(bus, instance, tmp_path):
    inst = instance()
    seen = tmp_path / "signals.json"
    bus.monitor(seen)
    inst.send("dbus.ok", "a")
    inst.send("dbus.fail", "b")
    inst.answer("a")
    inst.answer("b")
    wait_until(lambda: len([s for s in signals(seen) if s[0] == "JobRemoved"]) == 2, 10,
               what="two JobRemoved signals")
    job_signals = [s for s in signals(seen) if s[0] != "PropertiesChanged"]
    assert ("JobNew", [1, "dbus.ok"]) in job_signals
    assert ("JobNew", [2, "dbus.fail"]) in job_signals
    assert ("JobRemoved", [1, "succeeded", 0]) in job_signals
    assert ("JobRemoved", [2, "failed", 3]) in job_signals
    assert job_signals.index(("JobNew", [1, "dbus.ok"])) < job_signals.index(("JobRemoved", [1, "succeeded", 0]))
    # PropertiesChanged follows, with the new values, within the rate limit.
    def last_changed(prop):
        values = [s[1][1][prop]["data"] for s in signals(seen)
                  if s[0] == "PropertiesChanged" and prop in s[1][1]]
        return values[-1] if values else None
    wait_until(lambda: last_changed("JobsFailed") == 1 and last_changed("JobsSucceeded") == 1, 5,
               what="PropertiesChanged with the counters")


def test_properties_changed_is_rate_limited(bus, instance, tmp_path):
    inst = instance(executor={"max_parallel": 4, "queue_size": 1000, "allow_root": True})
    seen = tmp_path / "signals.json"
    bus.monitor(seen)
    n = 200
    t0 = time.monotonic()
    for i in range(n):
        inst.send("dbus.ok", str(i))
    wait_until(lambda: len(read_answers(inst.answers)) == n, 60, what=f"{n} answers")
    wait_until(lambda: bus.get(inst.name, "JobsSucceeded") == n, 10, what="the counter")
    time.sleep(1.2)  # the last, coalesced PropertiesChanged
    elapsed = time.monotonic() - t0
    changed = [s for s in signals(seen) if s[0] == "PropertiesChanged"]
    removed = [s for s in signals(seen) if s[0] == "JobRemoved"]
    assert len(removed) == n
    # At most one every 500 ms (plus the first, sent at once).
    assert len(changed) <= elapsed / 0.5 + 2, f"{len(changed)} PropertiesChanged in {elapsed:.1f}s"
    last = {}
    for _, (iface, values, invalidated) in changed:
        assert iface == IFACE and invalidated == []
        last.update({k: v["data"] for k, v in values.items()})
    assert last["JobsSucceeded"] == n and last["EventsReceived"] == n
    print(f"\n{n} jobs in {elapsed:.2f}s: {len(changed)} PropertiesChanged, {len(removed)} JobRemoved")


def test_pause_holds_events_and_resume_runs_them(bus, instance):
    inst = instance()
    inst.send("dbus.ok", "before")
    inst.answer("before")
    assert inst.call("Pause") == []
    assert bus.get(inst.name, "State") == "paused"
    assert inst.call("Pause") == []  # again: nothing changes
    inst.send("dbus.ok", "held")
    time.sleep(1.5)
    assert [a["id"] for a in read_answers(inst.answers)] == ["before"]
    assert bus.get(inst.name, "EventsReceived") == 1
    assert "paused: no new events are taken" in inst.sup.log
    assert inst.call("Resume") == []
    assert bus.get(inst.name, "State") == "running"
    assert inst.answer("held")["result"] == "succeeded"
    assert bus.get(inst.name, "JobsSucceeded") == 2


def test_pause_lets_running_jobs_finish_and_cancel_stops_one(bus, instance):
    inst = instance()
    inst.send("dbus.slow", "slow")
    wait_until(lambda: bus.get(inst.name, "JobsRunning") == 1, 10, what="the slow job to run")
    inst.call("Pause")
    time.sleep(0.5)
    assert inst.job(1)["state"] == "running"  # pausing does not touch running jobs
    t0 = time.monotonic()
    assert inst.call("CancelJob", "t", 1) == []
    # An operator's cancel is final: "aborted" (a shutdown's "cancelled" puts the event back).
    answer = inst.answer("slow", timeout=15)
    assert answer["result"] == "aborted" and answer["exit_code"] == 128 + 15, answer
    assert answer["reason"].startswith("cancelled by uid "), answer
    assert time.monotonic() - t0 < 10
    job = inst.job(1)
    assert (job["state"], job["result"], job["exit_code"]) == ("finished", "aborted", 143)
    assert bus.get(inst.name, "JobsFailed") == 1
    assert bus.call_error(inst.name, "CancelJob", "uint64:1")[0] == "org.loopabull.Loopabull1.NoSuchJob"
    assert bus.call_error(inst.name, "CancelJob", "uint64:77")[0] == "org.loopabull.Loopabull1.NoSuchJob"
    assert "D-Bus API: cancel of job 1 by uid" in inst.sup.log


def test_cancel_of_a_queued_job(bus, instance):
    inst = instance(executor={"max_parallel": 1, "allow_root": True})
    inst.send("dbus.slow", "running")
    inst.send("dbus.ok", "queued")
    wait_until(lambda: bus.get(inst.name, "JobsQueued") == 1, 10, what="a queued job")
    [jobs] = inst.call("ListJobs")
    assert [(j[0], j[2], j[4]) for j in jobs] == [(1, "running", jobs[0][4]), (2, "queued", 0)]
    inst.call("CancelJob", "t", 2)
    queued = inst.answer("queued")
    assert (queued["result"], queued["exit_code"]) == ("aborted", None), queued
    assert inst.job(2)["exit_code"] == -1
    inst.call("CancelJob", "t", 1)
    assert inst.answer("running")["result"] == "aborted"


def test_reload_applies_a_new_routing_key(bus, instance):
    inst = instance(routing_keys=["dbus.ok"])
    inst.send("dbus.other", "before")
    assert inst.answer("before")["result"] == "unrouted"
    cfg = yaml.safe_load(inst.sup.config_path.read_text())
    cfg["routing_keys"] = ["dbus.ok", "dbus.other"]
    inst.sup.write_config(cfg)
    assert inst.call("Reload") == []
    assert "configuration reloaded" in inst.sup.log
    inst.send("dbus.other", "after")
    assert inst.answer("after")["result"] == "succeeded"
    # A bad file: Reload says what is wrong, and the running configuration stays.
    inst.sup.config_path.write_text(inst.sup.config_path.read_text() + "bogus_key: 1\n")
    name, message = bus.call_error(inst.name, "Reload")
    assert name == "org.loopabull.Loopabull1.InvalidConfiguration", (name, message)
    assert "unknown key 'bogus_key'" in message
    inst.send("dbus.other", "kept")
    assert inst.answer("kept")["result"] == "succeeded"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_only_the_owner_may_manage_on_the_user_bus(bus, instance):
    inst = instance()
    other = "nobody"
    # Reading is open to everyone.
    assert bus.get(inst.name, "State", user=other) == "running"
    assert inst.call("ListJobs", user=other) == [[]]
    for method in ("Pause", "Resume", "Reload"):
        name, message = bus.call_error(inst.name, method, user=other)
        assert name == "org.freedesktop.DBus.Error.AccessDenied", (method, name, message)
        assert "only uid 0" in message
    inst.send("dbus.slow", "s")
    wait_until(lambda: bus.get(inst.name, "JobsRunning") == 1, 10, what="the slow job")
    assert bus.call_error(inst.name, "CancelJob", "uint64:1", user=other)[0] == \
        "org.freedesktop.DBus.Error.AccessDenied"
    assert bus.get(inst.name, "State") == "running" and inst.job(1)["state"] == "running"
    assert "refused: on the user bus only uid 0 may" in inst.sup.log
    r = bus.ctl("-i", "dbus-test", "pause", user=other)
    assert r.returncode == 4 and "access denied: only uid 0" in r.stderr, r
    assert bus.ctl("-i", "dbus-test", "status", user=other).returncode == 0
    inst.call("CancelJob", "t", 1)
    inst.answer("s")


def parse_man_interface(text):
    """The interface block of the man page: {"methods": {name: [(dir, type, name)]},
    "signals": {name: [(type, name)]}, "properties": {name: (type, access, annotations)}}."""
    m = re.search(r"^\.SH INTERFACE\n(?:.*\n)*?\.EX\n((?:.*\n)*?)\.EE\n", text, re.M)
    assert m, "no .EX block in the INTERFACE section"
    block = m.group(1).replace(r"\(aq", "'").replace(r"\-", "-").replace(r"\e", "\\")
    start = block.index(f"interface {IFACE} {{")
    body = block[start:block.index("};", start)]
    sections = re.split(r"^\s*(methods|signals|properties):\s*$", body, flags=re.M)
    parsed = {"methods": {}, "signals": {}, "properties": {}}
    for kind, content in zip(sections[1::2], sections[2::2]):
        if kind == "properties":
            annotations = {}
            for line in content.splitlines():
                line = line.strip()
                a = re.fullmatch(r'@(\S+)\("(.*)"\)', line)
                if a:
                    annotations[a.group(1)] = a.group(2)
                    continue
                p = re.fullmatch(r"(readonly|readwrite) (\S+) (\w+) = .*;", line)
                if p:
                    access = {"readonly": "read", "readwrite": "readwrite"}[p.group(1)]
                    parsed["properties"][p.group(3)] = (p.group(2), access, annotations)
                    annotations = {}
                else:
                    assert not line, f"unparsed property line {line!r}"
            continue
        for statement in content.split(";"):
            statement = " ".join(statement.split())
            if not statement:
                continue
            name, args = statement[:statement.index("(")], statement[statement.index("(") + 1:statement.rindex(")")]
            args = [a.split() for a in args.split(",") if a.strip()]
            if kind == "methods":
                parsed["methods"][name] = [tuple(a) for a in args]
            else:
                parsed["signals"][name] = [tuple(a) for a in args]
    return parsed


def parse_introspection(xml):
    root = ET.fromstring(xml)
    [iface] = [i for i in root.iter("interface") if i.get("name") == IFACE]
    parsed = {"methods": {}, "signals": {}, "properties": {}}
    for m in iface.findall("method"):
        parsed["methods"][m.get("name")] = [(a.get("direction", "in"), a.get("type"), a.get("name"))
                                           for a in m.findall("arg")]
        assert not m.findall("annotation"), f"method {m.get('name')} has annotations: document them"
    for s in iface.findall("signal"):
        parsed["signals"][s.get("name")] = [(a.get("type"), a.get("name")) for a in s.findall("arg")]
    for p in iface.findall("property"):
        parsed["properties"][p.get("name")] = (p.get("type"), p.get("access"),
                                               {a.get("name"): a.get("value") for a in p.findall("annotation")})
    return parsed


def test_introspection_matches_the_man_page(bus, instance):
    inst = instance()
    xml = bus.busctl("introspect", "--xml-interface", inst.name, OBJECT).stdout
    live = parse_introspection(xml)
    documented = parse_man_interface(MAN_PAGE.read_text())
    assert live["methods"] == documented["methods"]
    assert live["signals"] == documented["signals"]
    assert live["properties"] == documented["properties"]
    # Every member has its own paragraph in the page, every error name is documented.
    page = MAN_PAGE.read_text()
    for member in [*live["methods"], *live["signals"], *live["properties"]]:
        assert re.search(rf"^\.TP\n\.(B|BI|BR) [^\n]*\b{member}\b", page, re.M), f"{member} is not described"
    for error in ("org.loopabull.Loopabull1.NoSuchJob", "org.loopabull.Loopabull1.Stopping"):
        assert error in page


def test_loopabullctl_status_jobs_and_job(bus, instance):
    inst = instance()
    inst.send("dbus.ok", "a")
    inst.answer("a")
    inst.send("dbus.slow", "s")
    wait_until(lambda: bus.get(inst.name, "JobsRunning") == 1, 10, what="the slow job")

    r = bus.ctl("--instance", "dbus-test", "status", check=True)
    assert r.stdout.startswith(f"loopabull instance dbus-test ({inst.name} on the user bus)\n")
    assert "    State: running\n" in r.stdout
    assert "   Events: 2 received, 0 rejected, 0 superseded, 0 throttled, 0 duplicate\n" in r.stdout
    assert "     Jobs: 1 running, 0 queued, 1 succeeded, 0 failed\n" in r.stdout
    assert re.search(r"  Loopers: test: running \(pid \d+, 2 events, 0 restarts\)\n", r.stdout)
    assert re.search(r"^     Warm: (off: .+|starting|ready.*)\n", r.stdout, re.M)  # the warm runner
    assert re.search(r"^ID +ROUTING KEY +LOOPER +STARTED +RUNNING FOR +UNIT\n2 +dbus\.slow +test ", r.stdout, re.M)
    # "status" is the default command.
    assert bus.ctl("-i", "dbus-test", check=True).stdout.splitlines()[:3] == r.stdout.splitlines()[:3]

    r = bus.ctl("-i", "dbus-test", "jobs", check=True)
    assert re.search(r"^ID +STATE +ROUTING KEY +LOOPER +STARTED +UNIT\n2 +running +dbus\.slow +test ", r.stdout, re.M)
    assert r.stdout.endswith("\n1 job listed.\n")

    r = bus.ctl("-i", "dbus-test", "job", "1", check=True)
    fields = dict(line.split(": ", 1) for line in r.stdout.splitlines())
    fields = {k.strip(): v for k, v in fields.items()}
    assert fields["Job"] == "1" and fields["Routing key"] == "dbus.ok" and fields["State"] == "finished"
    assert fields["Result"] == "succeeded" and fields["Exit code"] == "0" and fields["Looper"] == "test"
    assert fields["Unit"] == "-" and fields["Finished"].endswith(")")

    status = json.loads(bus.ctl("-i", "dbus-test", "--json", "status", check=True).stdout)
    assert {k: status[k] for k in ("instance", "bus_name", "version", "state", "events_received",
                                   "events_rejected", "jobs_queued", "jobs_running", "jobs_succeeded",
                                   "jobs_failed", "events_superseded", "events_throttled",
                                   "events_duplicate")} == {
        "instance": "dbus-test", "bus_name": inst.name, "version": version(), "state": "running",
        "events_received": 2, "events_rejected": 0, "jobs_queued": 0, "jobs_running": 1,
        "jobs_succeeded": 1, "jobs_failed": 0, "events_superseded": 0, "events_throttled": 0,
        "events_duplicate": 0}
    assert re.match(r"off: |starting|ready", status["warm_runner"])
    assert isinstance(status["warm_runner_memory"], int)
    [looper] = status["loopers"]
    assert looper["name"] == "test" and looper["state"] == "running" and looper["pid"] > 0
    [job] = status["jobs"]
    assert {k: job[k] for k in ("id", "routing_key", "state", "unit", "looper")} == {
        "id": 2, "routing_key": "dbus.slow", "state": "running", "unit": None, "looper": "test"}
    assert json.loads(bus.ctl("-i", "dbus-test", "--json", "jobs", check=True).stdout) == [job]
    done = json.loads(bus.ctl("-i", "dbus-test", "--json", "job", "1", check=True).stdout)
    assert {k: done[k] for k in ("id", "state", "result", "exit_code", "unit")} == {
        "id": 1, "state": "finished", "result": "succeeded", "exit_code": 0, "unit": None}
    running = json.loads(bus.ctl("-i", "dbus-test", "--json", "job", "2", check=True).stdout)
    assert running["result"] is None and running["exit_code"] is None and running["finished_usec"] is None

    # The controls, and their errors.
    assert bus.ctl("-i", "dbus-test", "pause", check=True).stdout == ""
    assert bus.get(inst.name, "State") == "paused"
    assert bus.ctl("-i", "dbus-test", "resume", check=True).stdout == ""
    assert bus.ctl("-i", "dbus-test", "reload", check=True).stdout == ""
    assert bus.ctl("-i", "dbus-test", "cancel", "2", check=True).stdout == ""
    assert inst.answer("s")["result"] == "aborted"
    r = bus.ctl("-i", "dbus-test", "cancel", "2")
    assert r.returncode == 5 and "No job 2 in instance dbus-test" in r.stderr, r
    r = bus.ctl("-i", "dbus-test", "job", "42")
    assert r.returncode == 5 and r.stderr == (
        "loopabullctl: No job 42 in instance dbus-test (never queued, or finished too long ago)\n")


def test_loopabullctl_errors(bus):
    r = bus.ctl("--instance", "releng", "status")
    assert r.returncode == 3
    assert r.stderr == ("loopabullctl: loopabull instance releng is not running "
                        "(no org.loopabull.Loopabull1.releng on the user bus)\n")
    assert bus.ctl("-i", "releng", "--json", "jobs").returncode == 3
    for args in (["bogus"], ["job"], ["job", "x"], ["job", "0"], ["cancel", "1", "2"], ["pause", "now"],
                 ["-i", "../x", "status"], ["--frobnicate"]):
        r = bus.ctl(*args)
        assert r.returncode == 2 and "Try 'loopabullctl --help'." in r.stderr, (args, r)
    r = bus.ctl("--help", check=True)
    assert "Usage: loopabullctl" in r.stdout and "Exit status:" in r.stdout
    assert bus.ctl("--version", check=True).stdout == f"loopabullctl {version()}\n"
    # No user bus at all: a plain failure, not "not running".
    r = subprocess.run([str(CTL), "--user", "status"], capture_output=True, text=True,
                       env={**os.environ, "DBUS_SESSION_BUS_ADDRESS": f"unix:path={bus.dir}/nothing"})
    assert r.returncode == 1 and "cannot connect to the user bus" in r.stderr, r


def test_instance_names_are_escaped_and_unique(bus, instance, workdir):
    one = instance("1")
    dotted = instance("a.b")
    assert one.name == "org.loopabull.Loopabull1._31" and dotted.name == "org.loopabull.Loopabull1.a_2eb"
    names = bus.busctl("--json=short", "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                       "org.freedesktop.DBus", "ListNames").stdout
    assert one.name in names and dotted.name in names
    assert bus.get(one.name, "Instance") == "1" and bus.get(dotted.name, "Instance") == "a.b"
    assert json.loads(bus.ctl("-i", "1", "--json", "status", check=True).stdout)["instance"] == "1"
    one.send("dbus.ok", "x")
    assert one.answer("x")["result"] == "succeeded"
    assert bus.get(one.name, "JobsSucceeded") == 1 and bus.get(dotted.name, "JobsSucceeded") == 0
    # A second supervisor for an instance that runs already cannot have the name: it exits 1.
    cfg = workdir / "second.yml"
    cfg.write_text(one.sup.config_path.read_text().replace(str(workdir / "1" / "run"), str(workdir / "run-1b")))
    r = subprocess.run([str(BIN), "--bus=user", "--instance", "1", str(cfg)], capture_output=True, text=True,
                       env={**bus.env, "LOOPABULL_LOOPER_DIR": str(LOOPER_DIR)}, timeout=30)
    assert r.returncode == 1
    assert "the bus name org.loopabull.Loopabull1._31 is taken: is instance 1 already running?" in r.stdout + r.stderr
    assert bus.get(one.name, "State") == "running"


def test_stopping_state_refuses_pause(bus, instance):
    inst = instance(executor={"max_parallel": 1, "stop_timeout": "30s", "allow_root": True})
    inst.send("dbus.slow", "s")
    wait_until(lambda: bus.get(inst.name, "JobsRunning") == 1, 10, what="the slow job")
    inst.sup.signal(signal.SIGTERM)
    wait_until(lambda: bus.get(inst.name, "State") == "stopping", 10, what="the drain")
    assert bus.call_error(inst.name, "Pause")[0] == "org.loopabull.Loopabull1.Stopping"
    inst.call("CancelJob", "t", 1)  # still allowed: it shortens the drain
    assert inst.sup.proc.wait(20) == 0


@pytest.mark.skipif(shutil.which("man") is None or shutil.which("groff") is None,
                    reason="man (man-db) and groff are needed")
@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "man").glob("*.[1-8]")))
def test_man_page_renders_without_warnings(page):
    path = ROOT / "man" / page
    for cmd in (["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(path)],
                ["groff", "-man", "-ww", "-z", str(path)]):
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "MANWIDTH": "80"})
        assert r.returncode == 0 and r.stderr == "", (cmd, r.stderr)


def test_history_survives_a_restart(bus, instance, workdir):
    """Issue 17: the ledger keeps finished jobs and rejected events across a restart of the
    supervisor; `loopabullctl history` and `job ID` read them through D-Bus, and job ids go on
    from the last recorded one. (The second supervisor has another instance name only because the
    fixture gives every start a fresh directory; the ledger file is the same.)"""
    ledger = workdir / "history.sqlite"
    first = instance("hist-a", history={"path": str(ledger), "flush_interval": "50ms"})
    first.send("dbus.ok", "a")
    first.send("dbus.fail", "b")
    first._fifo.write("not json\n")
    first._fifo.flush()
    first.answer("a")
    first.answer("b")
    wait_until(lambda: bus.get(first.name, "EventsRejected") == 1, 10, what="the rejected line")
    assert first.sup.stop() == 0
    assert ledger.exists() and (ledger.stat().st_mode & 0o077) == 0

    second = instance("hist-b", history={"path": str(ledger)})
    out = bus.ctl("-i", "hist-b", "history", "--json", check=True).stdout
    records = json.loads(out)
    # Newest first; the rejected line may be handled before or after job 2 ends.
    jobs = [r for r in records if r["id"] is not None]
    [rejected] = [r for r in records if r["id"] is None]
    # The two jobs run side by side: either may finish first. Newest first means by finish time.
    assert sorted(((r["id"], r["result"], r["routing_key"]) for r in jobs), reverse=True) == [
        (2, "failed", "dbus.fail"), (1, "succeeded", "dbus.ok")]
    finished = [r["finished_usec"] for r in jobs]
    assert finished == sorted(finished, reverse=True)
    assert rejected["result"] == "rejected" and rejected["error"] and rejected["looper"] == "test"
    ok, failed = (next(r for r in jobs if r["id"] == i) for i in (1, 2))
    assert ok["event_id"] == "a" and ok["looper"] == "test" and ok["exit_code"] == 0
    assert len(ok["playbook_sha256"]) == 64 and ok["playbook"].endswith("dbus.ok.yml")
    assert 0 < ok["queued_usec"] <= ok["started_usec"] <= ok["finished_usec"]
    assert failed["event_id"] == "b" and failed["exit_code"] == 3
    # Filters.
    assert [r["id"] for r in json.loads(bus.ctl("-i", "hist-b", "history", "--json", "--key", "dbus.f*",
                                                check=True).stdout)] == [2]
    assert [r["id"] for r in json.loads(bus.ctl("-i", "hist-b", "history", "--json", "--result",
                                                "succeeded", "--since", "1h", check=True).stdout)] == [1]
    assert json.loads(bus.ctl("-i", "hist-b", "history", "--json", "--since", "@4000000000",
                              check=True).stdout) == []
    assert bus.ctl("-i", "hist-b", "history", "--limit", "0").returncode == 2
    # A job from before the restart, by id.
    job = json.loads(bus.ctl("-i", "hist-b", "job", "1", "--json", check=True).stdout)
    assert (job["state"], job["result"], job["routing_key"]) == ("finished", "succeeded", "dbus.ok")
    text = bus.ctl("-i", "hist-b", "history", check=True).stdout
    assert "dbus.fail" in text and "3 records listed" in text
    # Ids go on from the ledger's last one.
    second.send("dbus.ok", "c")
    second.answer("c")
    assert second.job(3)["routing_key"] == "dbus.ok"


def test_a_corrupt_history_is_moved_aside_and_events_go_on(bus, instance, workdir):
    """A ledger that is not an SQLite database (disk fault, a stray write) must not stop events:
    it is renamed aside, logged, and a new ledger records the next jobs."""
    ledger = workdir / "history.sqlite"
    ledger.write_bytes(b"this is not a database\n" * 1000)
    inst = instance("hist-corrupt", history={"path": str(ledger), "flush_interval": "50ms"})
    inst.send("dbus.ok", "a")
    assert inst.answer("a")["result"] == "succeeded"
    records = json.loads(bus.ctl("-i", "hist-corrupt", "history", "--json", check=True).stdout)
    assert [(r["id"], r["result"]) for r in records] == [(1, "succeeded")]
    [aside] = list(workdir.glob("history.sqlite.corrupt-*"))
    assert aside.read_bytes().startswith(b"this is not a database")
    inst.sup.wait_log("is corrupt; moved aside")
