# SPDX-License-Identifier: GPL-3.0-or-later
"""What crosses from an event into a playbook, the log and the runtime directory (issue 12).

Every attack here goes through the real binary and Debian's real ansible-playbook: an event body
that tries to steer the play (interpreter, connection, become, shell, a registered result), exact
integers beyond 64 bits, two supervisors on one runtime directory, our own faults answered
`failed`, and outside names reaching the log.
"""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (BIN, HERE, LOOPER_DIR, Supervisor, base_config, event, needs_ansible,
                      read_answers, scripted, wait_until)

pytestmark = needs_ansible

# An ordinary playbook: local connection, one harmless command.
HARMLESS = """- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - command: /bin/true
"""

# A playbook that guards a task with its own results (issue 12, case 2).
GUARDED = """- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - command: /bin/false
      register: precheck
      ignore_errors: true
    - set_fact:
        approved: false
    - name: the guarded task
      copy:
        dest: "{{ playbook_dir }}/../out/guarded-ran"
        content: "ran\\n"
      when: precheck.rc == 0 and approved
"""

# Writes what the playbook received as the event, and loopabull's own variables.
RECORD = """- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - copy:
        dest: "{{ playbook_dir }}/../out/{{ loopabull_event_id }}.json"
        content: "{{ {'event': event | default(None), 'job_id': loopabull_job_id,
                      'routing_key': loopabull_routing_key, 'custom': loopabull_custom | default(None)}
                    | to_json }}"
"""


def run(workdir, supervisor, playbooks, lines, count, timeout=180, **over):
    for name, text in playbooks.items():
        (workdir / "playbooks" / f"{name}.yml").write_text(text)
    answers = workdir / "answers"
    cfg = base_config(workdir, [scripted(lines=lines, answers=str(answers))], **over)
    sup = supervisor(cfg)
    wait_until(lambda: len(read_answers(answers)) >= count, timeout, what=f"{count} answers")
    return sup, {a["id"]: a for a in read_answers(answers)}


def attacks(pwned):
    """Bodies that take over the play when their keys become top-level extra vars."""
    return {
        "interpreter": {"ansible_python_interpreter": f"touch {pwned}; /usr/bin/python3"},
        "ssh-proxycommand": {"ansible_connection": "ssh", "ansible_host": "127.0.0.1",
                             "ansible_ssh_common_args": f"-o ProxyCommand='touch {pwned}'"},
        "become-exe": {"ansible_become": True, "ansible_become_user": "nobody",
                       "ansible_become_exe": f"touch {pwned}; sudo"},
        "shell-executable": {"ansible_shell_executable": f"touch {pwned}; /bin/sh"},
    }


def test_attacks_are_data_under_event_by_default(workdir, supervisor):
    """The default: the body is one variable, `event`; none of its keys reaches Ansible."""
    pwned = workdir / "PWNED"
    bodies = attacks(pwned)
    lines = [event("boundary.harmless", b, id=name) for name, b in bodies.items()]
    lines.append(event("boundary.guarded", {"precheck": {"rc": 0}, "approved": True}, id="guard"))
    sup, answers = run(workdir, supervisor, {"boundary.harmless": HARMLESS, "boundary.guarded": GUARDED},
                       lines, len(lines))
    for name in [*bodies, "guard"]:
        assert answers[name]["result"] == "succeeded", (name, answers[name], sup.log[-3000:])
    assert not pwned.exists()
    assert not (workdir / "out" / "guarded-ran").exists()
    print("FIGURES attacks:", {name: answers[name]["result"] for name in answers},
          "marker created:", pwned.exists())
    assert sup.stop() == 0


@pytest.mark.parametrize("attack", ["interpreter", "ssh-proxycommand", "become-exe",
                                    "shell-executable", "guard"])
def test_the_unprotected_play_would_be_taken(workdir, attack):
    """Each attack is real: the same body as top-level extra vars (what loopabull 0.1 wrote)
    takes over the same playbook in Debian's ansible-playbook."""
    pwned = workdir / "PWNED"
    if attack == "guard":
        play, body, proof = GUARDED, {"precheck": {"rc": 0}, "approved": True}, workdir / "out" / "guarded-ran"
    else:
        play, body, proof = HARMLESS, attacks(pwned)[attack], pwned
    (workdir / "playbooks" / "h.yml").write_text(play)
    vars_file = workdir / "vars.json"
    vars_file.write_text(json.dumps(body))
    subprocess.run([shutil.which("ansible-playbook"), str(workdir / "playbooks" / "h.yml"),
                    "-e", f"@{vars_file}"], capture_output=True, timeout=120)
    assert proof.exists()


# Names the top-level form refuses, by kind; every ansible_* is refused by its prefix.
REFUSED = ["ansible_python_interpreter", "ansible_connection", "ansible_ssh_common_args",
           "ansible_become_exe", "ansible_shell_executable", "ansible_ssh_executable",
           "ansible_become_password", "ansible_facts", "ansible_anything_new", "_ansible_no_log",
           "inventory_hostname", "group_names", "groups", "hostvars", "playbook_dir",
           "environment", "omit", "role_path", "role_name", "play_hosts", "vars", "item",
           "lookup", "query", "become_exe", "connection", "loopabull_job_id",
           "loopabull_routing_key", "loopabull_event_id"]


def test_top_level_form_rejects_every_name_ansible_gives_meaning_to(workdir, supervisor):
    pwned = workdir / "PWNED"
    lines = [event("boundary.harmless", {k: v, "ok": 1}, id=f"a-{name}-{k}")
             for name, b in attacks(pwned).items() for k, v in b.items()]
    lines += [event("boundary.harmless", {key: "x"}, id=f"k-{key}") for key in REFUSED]
    lines.append(event("boundary.record", {"msg": {"a": 1}, "loopabull_custom": "mine"}, id="fine"))
    sup, answers = run(workdir, supervisor, {"boundary.harmless": HARMLESS, "boundary.record": RECORD},
                       lines, len(lines), ansible={"event_variable": "top-level"})
    for name, a in answers.items():
        if name.startswith("a-"):
            assert a["result"] == "rejected" and "'ansible_" in a["reason"], a
    for key in REFUSED:
        a = answers[f"k-{key}"]
        assert a["result"] == "rejected", (key, a)
        assert f"'{key}'" in a["reason"], a
    assert not pwned.exists()
    assert answers["fine"]["result"] == "succeeded", sup.log[-3000:]
    # Only loopabull's own names are refused among loopabull_* keys (issue 12, case 11).
    got = json.loads((workdir / "out" / "fine.json").read_text())
    assert got["custom"] == "mine"
    assert "started" not in "".join(l for l in sup.log.splitlines() if "k-" in l)
    rejected = sum(a["result"] == "rejected" for a in answers.values())
    print("FIGURES top-level:", f"{len(lines)} events, {rejected} rejected naming the key,",
          f"jobs started {sup.log.count(' started: ')} (the one allowed body), marker created",
          pwned.exists())
    assert sup.stop() == 0


def test_namespaced_event_keeps_loopabull_names_apart(workdir, supervisor):
    lines = [event("boundary.record", {"loopabull_job_id": "forged", "x": [1]}, id="ns")]
    sup, answers = run(workdir, supervisor, {"boundary.record": RECORD}, lines, 1)
    assert answers["ns"]["result"] == "succeeded", sup.log[-3000:]
    got = json.loads((workdir / "out" / "ns.json").read_text())
    assert got["event"] == {"loopabull_job_id": "forged", "x": [1]}
    assert got["job_id"] != "forged" and got["routing_key"] == "boundary.record"
    assert sup.stop() == 0


def test_event_variable_name_is_configurable(workdir, supervisor):
    play = RECORD.replace("event | default(None)", "message | default(None)")
    lines = [event("boundary.record", {"a": "b"}, id="named")]
    sup, answers = run(workdir, supervisor, {"boundary.record": play}, lines, 1,
                       ansible={"event_variable": "message"})
    assert answers["named"]["result"] == "succeeded", sup.log[-3000:]
    assert json.loads((workdir / "out" / "named.json").read_text())["event"] == {"a": "b"}
    assert sup.stop() == 0


@pytest.mark.parametrize("name", ["ansible_host", "hostvars", "loopabull_job_id", "not-a-name",
                                  "1abc", ""])
def test_event_variable_must_be_a_free_name(workdir, name):
    cfg = base_config(workdir, [scripted()], ansible={"event_variable": name})
    path = workdir / "bad.yml"
    path.write_text(json.dumps(cfg))
    r = subprocess.run([str(BIN), "--check-config", str(path)], capture_output=True, text=True,
                       env={**os.environ, "LOOPABULL_LOOPER_DIR": str(LOOPER_DIR)})
    assert r.returncode == 1 and "event_variable" in r.stdout + r.stderr, r


def test_reserved_list_matches_the_installed_ansible():
    """src/core/ansible-reserved.inc is what tools/gen-ansible-reserved finds in this Ansible."""
    root = HERE.parent.parent
    r = subprocess.run(["/usr/bin/python3", str(root / "tools" / "gen-ansible-reserved")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    names = lambda text: {l for l in text.splitlines() if l.startswith('"')}
    assert names(r.stdout) <= names((root / "src" / "core" / "ansible-reserved.inc").read_text())


def random_value(rng, depth=0):
    kind = rng.choice(["int", "big", "float", "str", "bool", "null"] +
                      (["list", "map"] if depth < 4 else []))
    if kind == "int":
        return rng.randint(-2**63, 2**64 - 1)
    if kind == "big":
        return rng.choice([1, -1]) * rng.randint(2**64, 10**40)
    if kind == "float":
        return rng.choice([rng.uniform(-1e6, 1e6), rng.random() * 10 ** rng.randint(-300, 300),
                           0.1, -0.0, 1e-5, 5e-324])
    if kind == "str":
        alphabet = "ab{}%'\"\\\n\t\x01\x7f é€😀#:-[]!&*|>@`"
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = [random_value(rng, 5) if rng.random() < 0.3 else f"k{i}" for i in range(rng.randint(0, 4))]
    return {f"{k}{i}" if not isinstance(k, str) else k: random_value(rng, depth + 1)
            for i, k in enumerate(keys)}


def test_playbooks_see_exactly_what_was_sent(workdir, supervisor):
    """Property: for random JSON bodies (seeded; LOOPABULL_PROPERTY_SEED reruns one), a real
    playbook's `event | to_json` equals the body that was sent, integers beyond 64 bits included."""
    seed = int(os.environ.get("LOOPABULL_PROPERTY_SEED", "12"))
    rng = random.Random(seed)
    bodies = {"issue": {"big": 18446744073709551616, "huge": 123456789012345678901234567890,
                        "neg": -18446744073709551617, "max": 18446744073709551615,
                        "min": -9223372036854775808}}
    for i in range(24):
        bodies[f"r{i}"] = {f"k{j}": random_value(rng) for j in range(rng.randint(0, 5))}
    lines = [event("boundary.record", b, id=name) for name, b in bodies.items()]
    t0 = time.monotonic()
    sup, answers = run(workdir, supervisor, {"boundary.record": RECORD}, lines, len(lines), timeout=300)
    elapsed = time.monotonic() - t0
    for name, body in bodies.items():
        assert answers[name]["result"] == "succeeded", (seed, name, answers[name])
        got = json.loads((workdir / "out" / f"{name}.json").read_text())["event"]
        assert got == body, (seed, name)
        assert json.dumps(got, sort_keys=True) == json.dumps(body, sort_keys=True), (seed, name)

    def count(v, big=False):
        if isinstance(v, dict):
            return sum(count(x, big) for x in v.values())
        if isinstance(v, list):
            return sum(count(x, big) for x in v)
        return int(not big or (isinstance(v, int) and not isinstance(v, bool)
                               and not -2**63 <= v < 2**64))
    print("FIGURES property:", f"seed {seed}, {len(bodies)} bodies, {count(bodies)} scalars,",
          f"{count(bodies, True)} integers beyond 64 bits, all equal, {elapsed:.1f} s")
    assert sup.stop() == 0


HOLD = """- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - wait_for:
        path: "{{ playbook_dir }}/../release"
        timeout: 300
"""


def test_a_second_supervisor_on_the_same_runtime_dir_fails_and_deletes_nothing(workdir, supervisor):
    (workdir / "playbooks" / "boundary.hold.yml").write_text(HOLD)
    answers = workdir / "answers"
    cfg = base_config(workdir, [scripted(lines=[event("boundary.hold", {}, id="held")],
                                         answers=str(answers))])
    first = supervisor(cfg)
    first.wait_log("job 1 started")
    vars_files = list((workdir / "run" / "vars").iterdir())
    assert len(vars_files) == 1
    other = workdir / "other"
    other.mkdir()
    (other / "loopabull.yml").write_text(json.dumps(cfg))
    r = subprocess.run([str(BIN), "--instance", "test", str(other / "loopabull.yml")],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "LOOPABULL_LOOPER_DIR": str(LOOPER_DIR)})
    assert r.returncode != 0
    assert f"pid {first.proc.pid}" in r.stdout + r.stderr, r
    assert str(workdir / "run") in r.stdout + r.stderr
    assert list((workdir / "run" / "vars").iterdir()) == vars_files
    print("FIGURES lock:", f"exit {r.returncode};", (r.stdout + r.stderr).strip().splitlines()[-1],
          "; vars files of the first intact:", len(vars_files))
    (workdir / "release").touch()
    wait_until(lambda: read_answers(answers), 120, what="the held job's answer")
    assert read_answers(answers)[0]["result"] == "succeeded", first.log[-3000:]
    assert first.stop() == 0


def fifo_supervisor(workdir, user, **over):
    fifo = workdir / "events.fifo"
    os.mkfifo(fifo)
    answers = workdir / "answers"
    cfg = base_config(workdir, [scripted(fifo=str(fifo), answers=str(answers))], **over)
    cfg["executor"].pop("allow_root", None)
    if user:
        import pwd
        pw = pwd.getpwnam(user)
        os.chown(fifo, pw.pw_uid, pw.pw_gid)
        (workdir / "ansible.cfg").write_text(
            f"[defaults]\nremote_tmp = {workdir}/.ansible/tmp\nlocal_tmp = {workdir}/.ansible/local\n")
        os.chown(workdir / "ansible.cfg", pw.pw_uid, pw.pw_gid)
        cfg["ansible"]["cfg_file_path"] = str(workdir / "ansible.cfg")
    sup = Supervisor(workdir, cfg, user=user)
    writer = open(fifo, "w")
    return sup, writer, answers


def send(writer, line):
    writer.write(line + "\n")
    writer.flush()


def test_our_own_faults_are_failed_never_rejected(user_workdir):
    workdir, user = user_workdir
    if user is None:
        pytest.skip("needs root to run the supervisor as an unprivileged user")
    (workdir / "playbooks" / "boundary.harmless.yml").write_text(HARMLESS)
    os.chown(workdir / "playbooks" / "boundary.harmless.yml", *(lambda p: (p.pw_uid, p.pw_gid))(
        __import__("pwd").getpwnam(user)))
    tool = workdir / "ansible-playbook"
    tool.write_text("#!/bin/sh\nexec /usr/bin/ansible-playbook \"$@\"\n")
    tool.chmod(0o755)
    sup, w, answers = fifo_supervisor(workdir, user, ansible={"playbook_cmd": [str(tool)]})
    try:
        send(w, event("boundary.harmless", {}, id="ok"))
        wait_until(lambda: len(read_answers(answers)) == 1, 120)
        # An unreadable playbooks_dir is our fault, not the event's.
        (workdir / "playbooks").chmod(0)
        send(w, event("boundary.harmless", {}, id="unreadable"))
        wait_until(lambda: len(read_answers(answers)) == 2, 60)
        (workdir / "playbooks").chmod(0o755)
        # A vars file that cannot be written.
        (workdir / "run" / "vars").chmod(0o500)
        send(w, event("boundary.harmless", {}, id="novars"))
        wait_until(lambda: len(read_answers(answers)) == 3, 60)
        (workdir / "run" / "vars").chmod(0o700)
        # ansible-playbook gone.
        tool.rename(workdir / "gone")
        send(w, event("boundary.harmless", {}, id="notool"))
        wait_until(lambda: len(read_answers(answers)) == 4, 60)
        got = {a["id"]: a for a in read_answers(answers)}
        assert got["ok"]["result"] == "succeeded", sup.log[-3000:]
        for name in ("unreadable", "novars", "notool"):
            assert got[name]["result"] == "failed", (name, got[name], sup.log[-3000:])
        assert "Permission denied" in got["unreadable"]["reason"]
        assert "vars file" in got["novars"]["reason"]
        w.close()
        assert sup.stop() == 0
    finally:
        if sup.proc.poll() is None:
            sup.kill()


def test_check_config_says_when_playbooks_dir_is_unreadable(user_workdir):
    workdir, user = user_workdir
    if user is None:
        pytest.skip("needs root to check as an unprivileged user")
    import pwd
    pw = pwd.getpwnam(user)
    cfg = base_config(workdir, [scripted()])
    cfg["executor"].pop("allow_root")
    path = workdir / "check.yml"
    path.write_text(json.dumps(cfg))
    (workdir / "playbooks").chmod(0o700)
    os.chown(workdir / "playbooks", 0, 0)

    def as_user():
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    r = subprocess.run([str(BIN), "--check-config", str(path)], capture_output=True, text=True,
                       preexec_fn=as_user, env={**os.environ, "LOOPABULL_LOOPER_DIR": str(LOOPER_DIR)})
    assert r.returncode == 1, r
    assert "playbooks_dir" in r.stdout + r.stderr and "Permission denied" in r.stdout + r.stderr, r


def test_outside_names_are_escaped_in_the_log(workdir, supervisor):
    """A routing key, a looper's stderr line and a spool file name with a newline, CR and ESC
    cannot forge or colour log lines."""
    spool = workdir / "spool"
    spool.mkdir()
    forged = "FORGED-LINE loopabull: job 99 succeeded"
    name = f"boundary.x\n{forged}\r\x1b[31m.json"
    cfg = base_config(workdir, [scripted(lines=[event(f"bad\n{forged}\x1b[2J", {}, id="bad")],
                                         answers=str(workdir / "answers")),
                                {"name": "spool", "command": ["spool", str(spool)]}])
    sup = supervisor(cfg)
    (spool / name).write_text("{}")
    sup.wait_log(r"looper spool: .*FORGED-LINE", what="the spool looper naming the file")
    wait_until(lambda: read_answers(workdir / "answers"), 30)
    sup.stop()
    raw = sup.log_path.read_bytes()
    assert b"\x1b" not in raw and b"\r" not in raw
    assert not any(line.startswith(b"FORGED") for line in raw.splitlines())
    assert "invalid routing key 'bad\\nFORGED-LINE" in sup.log  # escaped once


def test_log_lines_of_untrusted_parties_are_rate_limited(workdir, supervisor):
    """A flood of bad events writes a bounded number of lines and says how many it left out."""
    n, m = 600, 300
    lines = [event("bad..key", {}, id=i) for i in range(n)]
    lines += [event(f"no.such.playbook{i}", {}, id=n + i) for i in range(m)]
    answers = workdir / "answers"
    sup = supervisor(base_config(workdir, [scripted(lines=lines, answers=str(answers))]))
    wait_until(lambda: len(read_answers(answers)) == n + m, 60, what=f"{n + m} answers")
    results = [a["result"] for a in read_answers(answers)]
    assert results.count("rejected") == n and results.count("unrouted") == m
    assert sup.stop() == 0

    def suppressed(kind):
        return sum(int(x) for x in re.findall(rf"suppressed (\d+) similar messages \({kind}\)", sup.log))
    logged, unrouted = sup.log.count("rejected an event"), sup.log.count("; unrouted")
    print("FIGURES rate:", f"{n} rejected events: {logged} logged, {suppressed('rejected events')}",
          f"suppressed; {m} unrouted: {unrouted} logged, {suppressed('unrouted events')} suppressed")
    assert logged < 100 and unrouted < 100, (logged, unrouted)
    assert logged + suppressed("rejected events") == n, sup.log[-2000:]
    assert unrouted + suppressed("unrouted events") == m, sup.log[-2000:]


def test_scope_fallback_covers_an_unreachable_manager_at_start(workdir, supervisor, tmp_path):
    """executor.type scope, the user manager, on_scope_failure: direct and no user bus: loopabull
    starts, says so in the log, and runs jobs without a scope (issue 12, case 10)."""
    (workdir / "playbooks" / "boundary.harmless.yml").write_text(HARMLESS)
    answers = workdir / "answers"
    cfg = base_config(workdir, [scripted(lines=[event("boundary.harmless", {}, id="direct")],
                                         answers=str(answers))],
                      executor={"type": "scope", "manager": "user", "on_scope_failure": "direct"})
    missing = tmp_path / "no-bus"
    sup = supervisor(cfg, env={"DBUS_SESSION_BUS_ADDRESS": f"unix:path={missing}",
                               "XDG_RUNTIME_DIR": str(missing)})
    wait_until(lambda: read_answers(answers), 120, what="the answer")
    assert read_answers(answers)[0]["result"] == "succeeded", sup.log[-3000:]
    assert "cannot reach the user manager for scopes" in sup.log
    assert "RUNNING JOBS WITHOUT A SCOPE" in sup.log
    assert sup.stop() == 0
