# SPDX-License-Identifier: GPL-3.0-or-later
"""The warm runner (issue 15) with the scope executor in a booted systemd: a corpus of
playbooks (tests/integration/warm, shared with the integration tier's differential test) gives
the same results and the same output in each job's scope journal warm as cold, and nothing
leaks from one warm job to the next. Each warm job runs in its own scope, as a cold one."""
import json
import re
import shutil
from pathlib import Path

from test_scope import INSTANCE, SPOOL, SUPERVISOR, USER, Deployment, scope

CORPUS = Path(__file__).resolve().parents[1] / "integration" / "warm"
DIR = "/srv/lbwarm"
# The corpus less what the integration tier alone covers (warm.missing never runs a playbook;
# warm.ssh needs its sshd): one case of each kind of outcome and of plugin loading.
CASES = ["warm.ok", "warm.fail", "warm.unreachable", "warm.syntax", "warm.handlers",
         "warm.include", "warm.role", "warm.collection", "warm.nolog", "warm.check"]
FINISHED = re.compile(r"^job (\d+) \(([\w.]+)\) (succeeded|failed.*|timeout.*)$", re.M)


def install_corpus(m):
    shutil.copytree(CORPUS, m.path(f"{DIR}/corpus"))
    for name in ("ansible.cfg", "hosts"):
        text = m.read_file(f"{DIR}/corpus/{name}.in").replace("@DIR@", f"{DIR}/corpus")
        m.write_file(f"{DIR}/corpus/{name}", text.replace("@SSH_HOST@", ""))
    m.run(["chown", "-R", USER, DIR])


class Runs:
    """One supervisor after another in the same machine; each run's journal starts at a cursor."""

    def __init__(self, m):
        self.m = m
        self.d = Deployment(m, timeout="2min", max_parallel=1)
        install_corpus(m)
        self.cursor = None

    def journal(self, unit=None, matches=()):
        """This run's journal of unit, or of the field matches, as text. From the cursor on,
        less the entry at the cursor: journalctl 252's --after-cursor with field matches skips
        the first matching entry too."""
        args = [f"--cursor={self.cursor}"] if self.cursor else []
        args += ["-u", unit] if unit else list(matches)
        out = self.m.run(["journalctl", "--no-pager", "-o", "json", *args], check=False).stdout
        lines = []
        for entry in map(json.loads, out.splitlines()):
            message = entry.get("MESSAGE") or ""
            if entry["__CURSOR"] != self.cursor:
                lines.append(message if isinstance(message, str) else
                             bytes(message).decode(errors="replace"))
        return "\n".join(lines)

    def output(self, job):
        """What the job's playbook wrote, from inside its scope (not systemd's lines about the
        scope, which count CPU time)."""
        return self.journal(matches=[f"_SYSTEMD_UNIT={scope(job)}",
                                     "SYSLOG_IDENTIFIER=ansible-playbook"]).splitlines()

    def start(self, warm):
        last = self.m.run(["journalctl", "--no-pager", "-n", "1", "-o", "json"]).stdout
        self.cursor = json.loads(last)["__CURSOR"]
        cfg = {"loglevel": "debug", "routing_keys": ["all"], "runtime_dir": "/run/lbtest-system",
               "loopers": [{"name": "spool", "command": ["spool", SPOOL]}],
               "ansible": {"playbooks_dir": f"{DIR}/corpus/playbooks",
                           "cfg_file_path": f"{DIR}/corpus/ansible.cfg",
                           "inventory": f"{DIR}/corpus/hosts"},
               "executor": {"type": "scope", "manager": "system", "max_parallel": 1,
                            "timeout": "2min", "kill_grace": "2s", "warm": warm}}
        self.m.write_file(f"/etc/loopabull/{INSTANCE}.yml", json.dumps(cfg))
        self.d.start()
        if warm:
            self.d.wait(lambda: "warm runner ready" in self.journal(SUPERVISOR), "the warm runner",
                        timeout=120)

    def finished(self):
        """{routing key: (job id, result text)}; a key sent twice gives its last job."""
        return {key: (int(job), result)
                for job, key, result in FINISHED.findall(self.journal(SUPERVISOR))}

    def wait_finished(self, count):
        self.d.wait(lambda: len(FINISHED.findall(self.journal(SUPERVISOR))) >= count,
                    f"{count} jobs", timeout=300)

    def warm_jobs(self):
        return {int(j) for j in re.findall(r"job (\d+) runs warm", self.journal(SUPERVISOR))}

    def stop(self):
        self.d.systemctl("stop", SUPERVISOR)
        self.d.systemctl("reset-failed", SUPERVISOR, check=False)

    def corpus(self, warm):
        self.start(warm)
        for key in CASES:
            self.d.drop(f"{key}@{'warm' if warm else 'cold'}", {})  # one routing key
        self.wait_finished(len(CASES))
        # journald reads the jobs' streams on its own time: --sync returns once what was
        # written before it is in the journal.
        self.m.run(["journalctl", "--sync"])
        done = self.finished()
        # Each job's own output, from its scope's journal (the job wrote it from inside).
        out = {key: self.output(job) for key, (job, _) in done.items()}
        results = {key: result for key, (_, result) in done.items()}
        warm_jobs = self.warm_jobs()
        self.stop()
        return results, out, warm_jobs, {job for job, _ in done.values()}


def test_warm_jobs_in_scopes_match_cold_ones_and_leak_nothing(installed_machine):
    runs = Runs(installed_machine)
    cold_results, cold_out, cold_warm, _ = runs.corpus(False)
    warm_results, warm_out, warm_jobs, jobs = runs.corpus(True)
    assert not cold_warm
    assert warm_jobs == jobs  # every job ran warm
    assert warm_results == cold_results
    assert cold_results["warm.ok"] == "succeeded"
    assert cold_results["warm.fail"] == "failed (exit code 2)"
    assert cold_results["warm.unreachable"] == "failed (exit code 4)"
    assert warm_out == cold_out
    text = "\n".join(line for lines in warm_out.values() for line in lines)
    for expected in ("MARK playbook warm.ok.yml", "handler ran", "the role's handler ran",
                     "hello collection", "check mode False"):
        assert expected in text, text
    assert "a secret" not in text
    # No leak: a job changes its process (environment, plugin paths, a module attribute,
    # facts); the next warm jobs see none of it.
    runs.start(True)
    runs.d.drop("warm.leak.set", {})
    runs.wait_finished(1)
    for i in (1, 2):
        runs.d.drop(f"warm.leak.check@{i}", {})
    runs.wait_finished(3)
    runs.m.run(["journalctl", "--sync"])
    done = FINISHED.findall(runs.journal(SUPERVISOR))
    assert [r for _, _, r in done] == ["succeeded"] * 3, runs.journal(SUPERVISOR)[-4000:]
    assert runs.warm_jobs() == {int(job) for job, _, _ in done}
    runs.stop()
