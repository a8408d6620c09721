# SPDX-License-Identifier: GPL-3.0-or-later
"""The warm runner (issue 15): a job run in a child of the runner gives what a cold
ansible-playbook gives (exit codes, results, output lines), nothing leaks from one warm job to
the next, and the runner's faults send jobs cold without losing any."""
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from conftest import (HERE, ROOT, Supervisor, base_config, event, needs_ansible, read_answers,
                      scripted, sshd_unavailable, wait_until)
from test_faults import alive

pytestmark = needs_ansible

RUNNER = ROOT / "src" / "supervisor" / "warm-runner.py"
CORPUS = HERE / "warm"
# The corpus; --check is test_check_mode_warm_matches_cold (playbook_cmd with the option)
# and warm.ssh runs where the test sshd can (conftest.sshd: as root).
KEYS = ["warm.ok", "warm.fail", "warm.unreachable", "warm.syntax", "warm.missing",
        "warm.endplay", "warm.handlers", "warm.include", "warm.role", "warm.collection",
        "warm.nolog", "warm.prompt", "warm.facts", "warm.check", "warm.ssh"]
OUTPUT = re.compile(r"^\S+ \S+ \w+\s+job (\d+): (.*)$", re.M)


@pytest.fixture
def corpus(tmp_path, request):
    """The corpus in the test's directory; its ssh group is the test's own sshd where one can
    run (as root), else empty, and warm.ssh is then left out of KEYS (keys(corpus))."""
    ssh = "" if sshd_unavailable() else request.getfixturevalue("sshd")["inventory"]
    d = tmp_path / "corpus"
    shutil.copytree(CORPUS, d)
    for name in ("ansible.cfg", "hosts"):
        text = (d / (name + ".in")).read_text().replace("@DIR@", str(d))
        (d / name).write_text(text.replace("@SSH_HOST@", ssh))
    return d


def keys(corpus):
    """KEYS, without warm.ssh when the corpus has no sshd."""
    has_ssh = "ansible_port" in (corpus / "hosts").read_text().split("[ssh]", 1)[1]
    return [k for k in KEYS if has_ssh or k != "warm.ssh"]


class Instance:
    """One supervisor fed through a FIFO, so that events go in only once the runner is ready."""

    def __init__(self, tmp, corpus, warm, playbook_cmd=None, **executor):
        tmp.mkdir()
        self.fifo = tmp / "events"
        os.mkfifo(self.fifo)
        self.answers = tmp / "answers"
        cfg = base_config(tmp, [scripted(fifo=str(self.fifo), answers=str(self.answers))],
                          ansible={"playbooks_dir": str(corpus / "playbooks"),
                                   "cfg_file_path": str(corpus / "ansible.cfg"),
                                   "inventory": str(corpus / "hosts"),
                                   **({"playbook_cmd": playbook_cmd} if playbook_cmd else {})},
                          executor={"max_parallel": 1, "warm": warm, **executor})
        cfg["runtime_dir"] = str(corpus.parent / "run")  # the same vars paths in both runs
        self.sup = Supervisor(tmp, cfg, env={"LOOPABULL_WARM_RUNNER": str(RUNNER)})
        if warm:
            self.sup.wait_log(r"warm runner ready", timeout=120)
        self.writer = open(self.fifo, "w")

    def send(self, *keys, start=0):
        for i, key in enumerate(keys):
            self.writer.write(event(key, {"n": i}, id=start + i) + "\n")
        self.writer.flush()

    def wait(self, count):
        wait_until(lambda: len(read_answers(self.answers)) >= count, 300,
                   what=f"{count} answers")
        return {a["id"]: a for a in read_answers(self.answers)}

    def output(self, corpus):
        """Each job's output lines, with the run's own paths taken out."""
        jobs = {}
        for job, line in OUTPUT.findall(self.sup.log):
            jobs.setdefault(int(job), []).append(line.replace(str(corpus), "CORPUS"))
        return jobs

    def warm_jobs(self):
        return {int(j) for j in re.findall(r"job (\d+) runs warm", self.sup.log)}

    def stop(self):
        self.writer.close()
        assert self.sup.stop() == 0


def run(tmp, corpus, warm, keys, playbook_cmd=None):
    inst = Instance(tmp, corpus, warm, playbook_cmd)
    try:
        inst.send(*keys)
        answers = inst.wait(len(keys))
        return inst, answers, inst.output(corpus)
    finally:
        inst.stop()


def test_warm_jobs_match_cold_ones(tmp_path, corpus):
    corpus_keys = keys(corpus)
    cold, cold_answers, cold_out = run(tmp_path / "cold", corpus, False, corpus_keys)
    warm, warm_answers, warm_out = run(tmp_path / "warm", corpus, True, corpus_keys)
    assert "warm runner off: executor.warm is false" in cold.sup.log
    assert not cold.warm_jobs()
    # Every job that ran a playbook ran warm (the missing playbook is unrouted, never run).
    assert warm.warm_jobs() == set(range(1, len(corpus_keys)))
    assert warm_answers == cold_answers
    by_key = {k: cold_answers[i] for i, k in enumerate(corpus_keys)}
    # The corpus covers what it says: each case gives the result ansible-playbook gives.
    assert by_key["warm.ok"]["exit_code"] == 0
    assert by_key["warm.fail"]["exit_code"] == 2
    assert by_key["warm.unreachable"]["exit_code"] == 4
    assert by_key["warm.syntax"]["exit_code"] == 4
    assert by_key["warm.missing"]["result"] == "unrouted"
    for key in ("warm.endplay", "warm.handlers", "warm.include", "warm.role",
                "warm.collection", "warm.nolog", "warm.facts", "warm.check", "warm.ssh"):
        if key in by_key:
            assert by_key[key]["result"] == "succeeded", (key, by_key[key], cold_out)
    assert warm_out == cold_out
    text = "\n".join(line for lines in warm_out.values() for line in lines)
    for expected in ("MARK playbook warm.ok.yml", "handler ran", "included with b",
                     "the role's handler ran", "hello collection", "second play", "answer 42",
                     "this task fails on purpose", "Not prompting as we are not in interactive",
                     "check mode False"):
        assert expected in text
    if "warm.ssh" in by_key:
        assert "over ssh as root" in text
    assert "a secret" not in text  # no_log


def test_check_mode_warm_matches_cold(tmp_path, corpus):
    """playbook_cmd with ansible-playbook's own --check: warm too, and a dry run both ways."""
    cmd = ["/usr/bin/ansible-playbook", "--check"]
    cases = ["warm.check", "warm.ok"]
    cold, cold_answers, cold_out = run(tmp_path / "cold", corpus, False, cases, cmd)
    warm, warm_answers, warm_out = run(tmp_path / "warm", corpus, True, cases, cmd)
    assert warm.warm_jobs() == {1, 2}
    assert warm_answers == cold_answers
    assert [a["result"] for a in cold_answers.values()] == ["succeeded"] * 2, cold_out
    assert warm_out == cold_out
    text = "\n".join(warm_out[1])
    assert "check mode True" in text and "skipping: [localhost]" in text, text


def test_nothing_leaks_from_one_warm_job_to_the_next(tmp_path, corpus):
    inst = Instance(tmp_path / "leak", corpus, True)
    try:
        inst.send("warm.leak.set", "warm.leak.check", "warm.leak.check")
        answers = inst.wait(3)
        out = inst.output(corpus)
        assert inst.warm_jobs() == {1, 2, 3}
    finally:
        inst.stop()
    # The first job changed its process (its own asserts passed); the next ones saw none of it.
    assert [answers[i]["result"] for i in range(3)] == ["succeeded"] * 3, out


def test_a_killed_runner_sends_jobs_cold_and_comes_back(tmp_path, corpus):
    inst = Instance(tmp_path / "killed", corpus, True)
    try:
        pid = int(re.search(r"warm runner pid (\d+) has imported", inst.sup.log).group(1))
        os.kill(pid, signal.SIGKILL)
        inst.sup.wait_log(r"warm runner down: pid \d+ was killed by signal", what="the down line")
        inst.send("warm.ok")
        assert inst.wait(1)[0]["result"] == "succeeded"
        assert 1 not in inst.warm_jobs()  # ran cold meanwhile
        inst.sup.wait_log(r"warm runner ready", count=2, timeout=120, what="the restart")
        inst.send("warm.ok", start=1)
        assert inst.wait(2)[1]["result"] == "succeeded"
        assert 2 in inst.warm_jobs()
    finally:
        inst.stop()


def add_sleep_playbook(corpus):
    (corpus / "playbooks" / "warm.sleep.yml").write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.command: sleep 300\n")


def wait_session_gone(sid):
    """Until no process is left in the job's session (the job's pid is its session id)."""
    wait_until(lambda: subprocess.run(["pgrep", "-s", str(sid)],
                                      capture_output=True).returncode == 1,
               30, what="the job's processes to be gone")


def test_a_runner_killed_during_a_job_fails_it_and_its_processes(tmp_path, corpus):
    add_sleep_playbook(corpus)
    inst = Instance(tmp_path / "during", corpus, True)
    try:
        inst.send("warm.sleep")
        inst.sup.wait_log(r"job 1 runs warm: pid (\d+)")
        job_pid = int(re.search(r"job 1 runs warm: pid (\d+)", inst.sup.log).group(1))
        runner = int(re.search(r"warm runner pid (\d+) has imported", inst.sup.log).group(1))
        wait_until(lambda: subprocess.run(["pgrep", "-s", str(job_pid), "-x", "sleep"],
                                          capture_output=True).returncode == 0,
                   120, what="the job's sleep")
        os.kill(runner, signal.SIGKILL)
        a = inst.wait(1)[0]
        # A fault of ours: failed (retryable), with the reason, and nothing of the job is left.
        assert a["result"] == "failed"
        assert "warm runner" in inst.sup.log
        wait_session_gone(job_pid)
    finally:
        inst.stop()


def test_timeout_kills_a_warm_jobs_process_group(tmp_path, corpus):
    add_sleep_playbook(corpus)
    inst = Instance(tmp_path / "timeout", corpus, True, timeout="3s", kill_grace="2s")
    try:
        inst.send("warm.sleep")
        a = inst.wait(1)[0]
        assert a["result"] == "timeout"
        job_pid = int(re.search(r"job 1 runs warm: pid (\d+)", inst.sup.log).group(1))
        wait_session_gone(job_pid)
    finally:
        inst.stop()


def test_warm_is_off_for_another_playbook_cmd(tmp_path, corpus):
    wrapper = tmp_path / "rbac-playbook"
    wrapper.write_text("#!/bin/sh\nexec /usr/bin/ansible-playbook \"$@\"\n")
    wrapper.chmod(0o755)
    tmp = tmp_path / "other"
    tmp.mkdir()
    answers = tmp / "answers"
    cfg = base_config(tmp, [scripted(lines=[event("warm.ok", {}, id=1)], answers=str(answers))],
                      ansible={"playbooks_dir": str(corpus / "playbooks"),
                               "playbook_cmd": [str(wrapper)]})
    sup = Supervisor(tmp, cfg, env={"LOOPABULL_WARM_RUNNER": str(RUNNER)})
    try:
        wait_until(lambda: read_answers(answers), 120, what="the answer")
        assert read_answers(answers)[0]["result"] == "succeeded"
        assert f"warm runner off: playbook_cmd is {wrapper}, not ansible-playbook" in sup.log
    finally:
        assert sup.stop() == 0


def test_a_changed_ansible_cfg_replaces_the_runner(tmp_path, corpus):
    inst = Instance(tmp_path / "cfg", corpus, True)
    try:
        inst.send("warm.ok")
        inst.wait(1)
        cfg = corpus / "ansible.cfg"
        cfg.write_text(cfg.read_text() + "# changed\n")
        later = time.time() + 5
        os.utime(cfg, (later, later))
        inst.send("warm.ok", start=1)
        assert inst.wait(2)[1]["result"] == "succeeded"
        assert "ansible.cfg or the installed ansible changed on disk" in inst.sup.log
        inst.sup.wait_log(r"warm runner ready", count=2, timeout=120, what="the new runner")
        inst.send("warm.ok", start=2)
        assert inst.wait(3)[2]["result"] == "succeeded"
        assert inst.warm_jobs() == {1, 3}
    finally:
        inst.stop()


def tree(pid):
    """pid and its descendants (/proc/PID/task/*/children)."""
    found, frontier = [pid], [pid]
    while frontier:
        p = frontier.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                kids = [int(c) for c in open(f"/proc/{p}/task/{t}/children").read().split()]
            except OSError:
                continue
            found += kids
            frontier += kids
    return found


def cmdline(pid):
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def test_sigkill_of_the_supervisor_during_warm_jobs_leaves_nothing_after_the_next_start(
        tmp_path, corpus):
    """Two warm jobs (direct executor), each with a setsid'd background process and a command
    that waits; SIGKILL of the supervisor; after the next start of the same instance (its
    runtime directory), nothing of the jobs and no runner is left."""
    (corpus / "playbooks" / "warm.escape.yml").write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.shell: setsid sleep 7302 </dev/null >/dev/null 2>&1 &\n"
        "    - ansible.builtin.command: sleep 7301\n")
    inst = Instance(tmp_path / "first", corpus, True, max_parallel=2)
    victims = []
    try:
        runner = int(re.search(r"warm runner pid (\d+) has imported", inst.sup.log).group(1))
        inst.send("warm.escape", "warm.escape")
        inst.sup.wait_log(r"job 2 runs warm: pid", count=1, timeout=120)
        jobs = [int(p) for p in re.findall(r"job \d runs warm: pid (\d+)", inst.sup.log)]

        def both_waiting():
            names = [[cmdline(p) for p in tree(j)] for j in jobs]
            return all("sleep 7301" in n and "sleep 7302" in n for n in names)
        wait_until(both_waiting, 120, what="both jobs' sleeps")
        victims = [runner] + [p for j in jobs for p in tree(j)]
        inst.sup.kill()
        inst.writer.close()
        # Without a death signal, the jobs outlived their runner and supervisor.
        assert all(alive(j) for j in jobs)
        nxt = Instance(tmp_path / "next", corpus, True)
        left = [(p, cmdline(p)) for p in victims if alive(p)]
        assert left == []
        assert re.search(r"killed \d+ process\(es\) that jobs of a previous run left behind",
                         nxt.sup.log), nxt.sup.log
        nxt.stop()
    finally:
        for p in victims:
            if alive(p):
                os.kill(p, signal.SIGKILL)
