# SPDX-License-Identifier: GPL-3.0-or-later
"""Routes (issue 14) through the real binary: the shipped examples/configs/routes.yml with real
ansible-playbook runs (many topics to one playbook, a condition on a body field, builds of one
package serialized and coalesced, a throttled chatty key, a looper's allowlist), explain offline
(loopabull --explain) and live (loopabullctl explain on a private bus), and --check-config's
positions for a bad JSON Pointer and a bad regular expression."""
import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from test_dbus import CTL, Bus, bus_name  # noqa: F401  (the private bus of the D-Bus tests)
from conftest import (BIN, LOOPER_DIR, ROOT, Supervisor, event, needs_ansible, read_answers,
                      scripted, wait_until)

EXAMPLE = ROOT / "examples" / "configs" / "routes.yml"
BUILD_KEY = "org.fedoraproject.prod.buildsys.build.state.change"
PUSH_KEY = "org.fedoraproject.prod.git.receive"
ENV = {**os.environ, "LOOPABULL_LOOPER_DIR": str(LOOPER_DIR)}


def build(name, owner="releng", seconds=0):
    return {"msg": {"name": name, "owner": owner, "tag": "f41-updates-candidate", "seconds": seconds}}


def explain(*args):
    return subprocess.run([str(BIN), "--explain", *map(str, args)], capture_output=True, text=True,
                          env=ENV)


def test_example_validates():
    r = subprocess.run([str(BIN), "--check-config", str(EXAMPLE)], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr


def test_check_config_positions_bad_pointer_and_regex(tmp_path):
    (tmp_path / "pb").mkdir()
    cfg = tmp_path / "c.yml"
    cfg.write_text(
        "routing_keys: [all]\n"
        "loopers: [{name: a, command: [/bin/cat]}]\n"
        "ansible: {playbooks_dir: pb}\n"
        "routes:\n"
        "  - keys: [k]\n"
        "    when:\n"
        "      - {path: msg/owner, equals: x}\n"
        "      - {path: /msg/tag, matches: '(unclosed'}\n"
        "    playbook: missing.yml\n")
    r = subprocess.run([str(BIN), "--check-config", str(cfg)], capture_output=True, text=True, env=ENV)
    assert r.returncode == 1
    assert f"{cfg}:7:16: 'msg/owner' is not a JSON Pointer" in r.stderr, r.stderr
    assert f"{cfg}:8:35: bad regular expression '(unclosed'" in r.stderr, r.stderr
    assert f"{cfg}:9:15: playbook 'missing.yml' is not a file under playbooks_dir" in r.stderr, r.stderr


def test_explain_offline_exit_codes_and_output(tmp_path):
    r = explain(EXAMPLE, BUILD_KEY, json.dumps(build("bash")))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "route 'builds' (line 34): MATCHED" in r.stdout
    assert "routes/build-done.yml" in r.stdout
    assert "serialize: /msg/name = bash (coalesced)" in r.stdout
    assert 'loopabull_route: !unsafe "builds"' in r.stdout

    body = tmp_path / "body.json"
    body.write_text(json.dumps(build("bash", owner="someone")))
    r = explain(EXAMPLE, BUILD_KEY, f"@{body}")
    assert r.returncode == 1
    assert "condition 1 of 3 failed: /msg/owner equals \"releng\"" in r.stdout
    assert "closest: route 'builds'" in r.stdout

    r = explain("--json", EXAMPLE, "org.fedoraproject.prod.fas.user.create")
    assert r.returncode == 1
    j = json.loads(r.stdout)
    assert j["verdict"] == "no_route" and j["result"] == "unrouted" and not j["would_run"]

    assert explain(EXAMPLE, "bad key").returncode == 2
    assert explain(EXAMPLE, BUILD_KEY, "[1]").returncode == 2
    assert explain(tmp_path / "nope.yml", BUILD_KEY).returncode == 2
    assert explain(EXAMPLE).returncode == 2


@pytest.fixture
def bus():
    b = Bus()
    yield b
    b.close()


@needs_ansible
def test_routes_example_through_ansible_and_explain_live(tmp_path, bus):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    cfg_dir = tmp_path / "examples" / "configs"
    cfg = yaml.safe_load((cfg_dir / "routes.yml").read_text())
    fifo, answers = tmp_path / "events.fifo", tmp_path / "answers"
    os.mkfifo(fifo)
    looper = scripted(name="bus", fifo=str(fifo), answers=str(answers))
    # The looper's allowlist: the topics the bus may send (not, say, account events).
    looper["routing_keys"] = ["org.fedoraproject.*.buildsys.#", "org.fedoraproject.*.git.#",
                              "org.fedoraproject.*.pungi.#", "org.fedoraproject.*.compose.#",
                              "org.fedoraproject.*.bodhi.#"]
    cfg["loopers"] = [looper]
    cfg["runtime_dir"] = str(tmp_path / "run")
    cfg["loglevel"] = "debug"
    cfg["executor"]["allow_root"] = True  # CI runs as root
    sup = Supervisor(cfg_dir, cfg, instance="routes", env={"DBUS_SESSION_BUS_ADDRESS": bus.address},
                     args=["--bus=user"])
    name = bus_name("routes")
    out = open(fifo, "w")

    def send(*events):
        out.write("".join(event(k, b, id=i) + "\n" for k, b, i in events))
        out.flush()

    def answer(id, timeout=120):
        wait_until(lambda: any(a["id"] == id for a in read_answers(answers)), timeout, what=f"answer {id}")
        return next(a for a in read_answers(answers) if a["id"] == id)["result"]

    def ctl_explain(key, body, *extra):
        return bus.ctl("-i", "routes", *extra, "explain", key, json.dumps(body))

    try:
        # Many topics, one playbook.
        send(("org.fedoraproject.prod.pungi.compose.status.change", {"msg": {}}, "c1"),
             ("org.fedoraproject.prod.bodhi.compose.complete", {"msg": {}}, "c2"))
        assert answer("c1") == "succeeded" and answer("c2") == "succeeded"
        assert "compose org.fedoraproject.prod.pungi.compose.status.change (route composes)" in sup.log
        assert "compose org.fedoraproject.prod.bodhi.compose.complete (route composes)" in sup.log

        # A condition on a body field stops a build of someone else; the log names the closest route.
        send((BUILD_KEY, build("bash", owner="someone"), "x1"))
        assert answer("x1") == "unrouted"
        assert "no route takes it; closest: route 'builds' (0 of 3 conditions held" in sup.log
        # Outside the looper's allowlist: rejected, naming looper and key.
        send(("org.fedoraproject.prod.fas.user.create", {}, "x2"))
        assert answer("x2") == "rejected"
        assert "looper 'bus' may not send routing key 'org.fedoraproject.prod.fas.user.create'" in sup.log

        # Builds of bash serialized and coalesced: b1 runs (long), b2 waits, b3 replaces b2;
        # zsh runs beside b1 (max_parallel 4).
        send((BUILD_KEY, build("bash", seconds=4), "b1"), (BUILD_KEY, build("bash"), "b2"),
             (BUILD_KEY, build("bash"), "b3"), (BUILD_KEY, build("zsh"), "z1"))
        assert answer("b2") == "superseded"
        # While b1 runs: explain says a bash build would wait, and would run.
        r = ctl_explain(BUILD_KEY, build("bash"))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "serialize: /msg/name = bash (coalesced); a job with this value runs" in r.stdout
        for id in ("b1", "b3", "z1"):
            assert answer(id) == "succeeded"
        jobs = {}
        for line in sup.log.splitlines():
            if " queued: " + BUILD_KEY in line:
                jobs.setdefault("ids", []).append(int(line.split("job ", 1)[1].split()[0]))
        b1, b2, b3, z1 = jobs["ids"][:4]
        keys = ("id", "routing_key", "state", "unit", "looper", "queued_usec", "started_usec",
                "finished_usec", "result", "exit_code", "error")
        get = lambda j: dict(zip(keys, bus.call(name, "GetJob", "t", j)))  # noqa: E731
        assert get(b3)["started_usec"] >= get(b1)["finished_usec"], "two bash builds overlapped"
        assert get(z1)["started_usec"] < get(b1)["finished_usec"], "zsh waited for bash"
        assert bus.call(name, "GetJobRouting", "t", b2) == ["builds", "bash", b3]
        assert bus.call(name, "GetJobRouting", "t", b3) == ["builds", "bash", 0]
        # GetJob itself (and so the ledger, once the job has left memory) and the looper's
        # answer name the job that replaced a superseded one.
        named = f"superseded by job {b3} (route 'builds', value bash)"
        assert get(b2)["result"] == "superseded" and get(b2)["error"] == named
        assert next(a for a in read_answers(answers) if a["id"] == "b2").get("reason") == named
        r = bus.ctl("-i", "routes", "job", str(b2), check=True)
        assert "Result: superseded" in r.stdout and f"Superseded by: job {b3}" in r.stdout
        assert "Route: builds" in r.stdout

        # A chatty key throttled per repository.
        send((PUSH_KEY, {"msg": {"commit": {"repo": "rpms/bash"}}}, "p1"))
        assert answer("p1") == "succeeded"
        send((PUSH_KEY, {"msg": {"commit": {"repo": "rpms/bash"}}}, "p2"),
             (PUSH_KEY, {"msg": {"commit": {"repo": "rpms/zsh"}}}, "p3"))
        assert answer("p2") == "throttled" and answer("p3") == "succeeded"
        assert sup.log.count("mirror rpms/bash (route pushes)") == 1
        assert bus.get(name, "EventsThrottled") == 1
        assert bus.get(name, "EventsSuperseded") == 1
        # loopabullctl status shows them (text and JSON).
        assert re.search(r"^   Events: \d+ received, 1 rejected, 1 superseded, 1 throttled, 0 duplicate$",
                         bus.ctl("-i", "routes", "status", check=True).stdout, re.M)
        status = json.loads(bus.ctl("-i", "routes", "--json", "status", check=True).stdout)
        assert (status["events_superseded"], status["events_throttled"]) == (1, 1)

        # Explain, live: throttled, a condition stops it, no route takes it; queues nothing.
        received = bus.get(name, "EventsReceived")
        r = ctl_explain(PUSH_KEY, {"msg": {"commit": {"repo": "rpms/bash"}}})
        assert r.returncode == 1 and "THROTTLED for another" in r.stdout and "result: throttled" in r.stdout
        r = ctl_explain(BUILD_KEY, build("bash", owner="someone"))
        assert r.returncode == 1 and "condition 1 of 3 failed: /msg/owner equals \"releng\"" in r.stdout
        r = ctl_explain("org.fedoraproject.prod.fas.user.create", {}, "--json")
        assert r.returncode == 1 and json.loads(r.stdout)["verdict"] == "no_route"
        r = ctl_explain("org.fedoraproject.prod.fas.user.create", {}, "--looper", "bus")
        assert r.returncode == 1 and "allowlist" in r.stdout
        assert bus.get(name, "EventsReceived") == received
        assert bus.call(name, "ListJobs") == [[]]
        assert bus.ctl("-i", "routes", "explain", "bad key").returncode == 2
        out.close()
        assert sup.stop() == 0
    finally:
        if sup.proc.poll() is None:
            sup.kill()


# Records each job's value, event number and start and end time (bash's EPOCHREALTIME, no extra
# process), holding the job for 20 ms between them. loopabull runs it as PLAYBOOK_CMD PLAYBOOK -e @VARS; the body is {"n": N, "v": V}.
JOB_SCRIPT = r'''#!/bin/bash
start=$EPOCHREALTIME
rx='"n": ([0-9]+), \? !unsafe "v": !unsafe "([a-z0-9-]+)"'
while IFS= read -r line; do
    [[ $line =~ $rx ]] && n=${BASH_REMATCH[1]} v=${BASH_REMATCH[2]}
done < "${3#@}"
# 20 ms without a process of its own: a read that times out on a FIFO nobody writes to. Jobs
# of one value that overlapped would overlap here.
exec {idle}<> IDLE
read -t 0.02 -u "$idle"
echo "$v $n $start $EPOCHREALTIME" >> RUNS
'''


def test_serialize_and_coalesce_properties_through_the_binary(tmp_path):
    """Issue 14's properties through the real binary, max_parallel 4: 1,000 events over 10
    values on a serializing route never run two jobs of one value at once (from the jobs' own
    start and end times), and on a coalescing route the newest event of each value runs last,
    every other one either running or answered superseded."""
    import random
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "job.yml").write_text("")
    runs = tmp_path / "runs"
    script = tmp_path / "job.sh"
    os.mkfifo(tmp_path / "idle.fifo")
    script.write_text(JOB_SCRIPT.replace("RUNS", str(runs)).replace("IDLE", str(tmp_path / "idle.fifo")))
    script.chmod(0o755)
    fifo, answers = tmp_path / "events.fifo", tmp_path / "answers"
    os.mkfifo(fifo)
    cfg = {"loglevel": "info", "routing_keys": ["all"], "runtime_dir": str(tmp_path / "run"),
           "loopers": [scripted(name="l", fifo=str(fifo), answers=str(answers))],
           "ansible": {"playbooks_dir": str(tmp_path / "playbooks"), "playbook_cmd": [str(script)]},
           "executor": {"max_parallel": 4, "queue_size": 2000, "timeout": "2min",
                        "allow_root": True},
           "routes": [{"name": "serial", "keys": ["ser.job"], "playbook": "job.yml",
                       "serialize": "/v"},
                      {"name": "coalesced", "keys": ["coal.job"], "playbook": "job.yml",
                       "serialize": "/v", "coalesce": True}]}
    sup = Supervisor(tmp_path, cfg)
    rng = random.Random(14)
    sent = [("ser.job", {"n": i, "v": f"s{rng.randrange(10)}"}, f"s{i}") for i in range(1000)]
    sent += [("coal.job", {"n": i, "v": f"c{rng.randrange(10)}"}, f"c{i}") for i in range(300)]
    rng.shuffle(sent)
    try:
        out = open(fifo, "w")
        out.write("".join(event(k, b, id=i) + "\n" for k, b, i in sent))
        out.flush()
        wait_until(lambda: len(read_answers(answers)) >= len(sent), 300, what="every answer")
        results = {a["id"]: a["result"] for a in read_answers(answers)}
        out.close()
        assert sup.stop() == 0
    finally:
        if sup.proc.poll() is None:
            sup.kill()
    jobs = []
    for line in runs.read_text().splitlines():
        v, n, start, end = line.split()
        jobs.append((v, int(n), float(start), float(end)))
    by_value = {}
    for j in jobs:
        by_value.setdefault(j[0], []).append(j)

    # Serialization: every event ran, one job of a value at a time, and the slots were used.
    assert all(results[f"s{i}"] == "succeeded" for i in range(1000))
    assert sum(len(by_value[f"s{k}"]) for k in range(10)) == 1000
    for k in range(10):
        spans = sorted(by_value[f"s{k}"], key=lambda j: j[2])
        for a, b in zip(spans, spans[1:]):
            assert a[3] <= b[2], f"two jobs of value s{k} ran at once: {a} {b}"
    edges = sorted([(j[2], 1) for j in jobs] + [(j[3], -1) for j in jobs])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    assert 1 < peak <= 4, peak

    # Coalescing: the newest event of each value runs last; the others ran or were superseded.
    coal = [(b, i) for k, b, i in sent if k == "coal.job"]
    assert all(results[i] in ("succeeded", "superseded") for _, i in coal)
    assert any(results[i] == "superseded" for _, i in coal)
    ran = {(j[0], j[1]) for j in jobs if j[0].startswith("c")}
    for b, i in coal:
        assert ((b["v"], b["n"]) in ran) == (results[i] == "succeeded"), i
    newest = {}
    for b, _ in coal:  # the order they were sent in
        newest[b["v"]] = b["n"]
    for v, n in newest.items():
        assert max(by_value[v], key=lambda j: j[2])[1] == n, f"value {v}: newest {n} did not run last"
