# SPDX-License-Identifier: GPL-3.0-or-later
"""The scope executor against a real systemd: every job in a transient scope of its own, with
the configured limits, sandboxed, killed whole on timeout, and never outliving its supervisor;
with the system manager and with the automation user's own user manager."""
import json
import shlex
import time
from pathlib import Path

import pytest

from machine import MachineError

HERE = Path(__file__).resolve().parent
USER = "loopabull"
INSTANCE = "systest"
SUPERVISOR = "lbtest.service"
BASE = "/srv/lbtest"
SPOOL = "/var/spool/lbtest"


def scope(job):
    return f"loopabull-{INSTANCE}-{job}.scope"


class Deployment:
    """loopabull installed in the machine and run as the automation user, as a service of the
    system manager or of the user's own manager (manager: user)."""

    def __init__(self, m, manager="system", **executor):
        self.m = m
        self.manager = manager
        m.run(f"id {USER} >/dev/null 2>&1 || useradd --system --create-home "
              f"--home-dir /var/lib/{USER} --shell /usr/sbin/nologin {USER}")
        self.uid = int(m.run(["id", "-u", USER]).stdout)
        for d in (f"{BASE}/out", SPOOL, f"{BASE}/tmp"):
            m.run(["install", "-d", "-o", USER, "-m", "0750", d])
        for pb in (HERE / "playbooks").glob("*.yml"):
            m.write_file(f"{BASE}/playbooks/{pb.name}", pb.read_text())
        m.write_file(f"{BASE}/ansible.cfg", f"[defaults]\nlocal_tmp = {BASE}/tmp/local\n"
                     f"remote_tmp = {BASE}/tmp/remote\nretry_files_enabled = false\n")
        cfg = {"routing_keys": ["all"], "runtime_dir": f"/run/lbtest-{manager}",
               "loopers": [{"name": "spool", "command": ["spool", SPOOL]}],
               "ansible": {"playbooks_dir": f"{BASE}/playbooks", "cfg_file_path": f"{BASE}/ansible.cfg"},
               "executor": {"type": "scope", "manager": manager, "max_parallel": 2,
                            "timeout": "2min", "kill_grace": "2s", **executor}}
        m.write_file(f"/etc/loopabull/{INSTANCE}.yml", json.dumps(cfg))
        m.run(["install", "-d", "-o", USER, "-m", "0700", f"/run/lbtest-{manager}"])
        if manager == "system":
            # systemd 252 gives polkit no unit name to check for StartTransientUnit: the rule a
            # deployment on systemd < 257 needs grants manage-units to the user outright (see
            # loopabull.yml(5): the user manager avoids this).
            m.write_file("/etc/polkit-1/rules.d/50-lbtest.rules",
                         'polkit.addRule(function(action, subject) {\n'
                         '  if (action.id == "org.freedesktop.systemd1.manage-units" &&\n'
                         f'      subject.user == "{USER}") return polkit.Result.YES;\n}});\n')
        else:
            m.run(["loginctl", "enable-linger", USER])
            m.wait_active(f"user@{self.uid}.service")
            self.wait(lambda: m.run(["test", "-S", f"/run/user/{self.uid}/bus"], check=False).returncode == 0,
                      "the user's bus")

    @property
    def user_env(self):
        return {"XDG_RUNTIME_DIR": f"/run/user/{self.uid}"}

    def systemctl(self, *args, check=True):
        if self.manager == "system":
            return self.m.systemctl(*args, check=check)
        return self.m.run(["systemctl", "--user", "--no-pager", *args], user=USER, env=self.user_env,
                          check=check)

    def start(self):
        cmd = ["systemd-run", f"--unit={SUPERVISOR}", "-p", "Type=notify", "-p", "KillMode=mixed",
               "--setenv=LANG=C.UTF-8", "/usr/local/bin/loopabull", "--bus=none", "--instance",
               INSTANCE, f"/etc/loopabull/{INSTANCE}.yml"]
        if self.manager == "system":
            cmd[1:1] = [f"--uid={USER}", f"--setenv=HOME=/var/lib/{USER}"]
            self.m.run(cmd)
        else:
            cmd[1:1] = ["--user"]
            self.m.run(cmd, user=USER, env=self.user_env)
        self.wait(lambda: self.systemctl("is-active", SUPERVISOR, check=False).stdout.strip() == "active",
                  "the supervisor to be active")

    def journal(self, unit):
        # --user-unit would also match _UID of the caller (root): match the field itself.
        match = ["-u", unit] if self.manager == "system" else [f"_SYSTEMD_USER_UNIT={unit}"]
        return self.m.run(["journalctl", "--no-pager", "-b", "-o", "cat", *match], check=False).stdout

    def drop(self, key, body):
        tmp = f"{SPOOL}/.{key}.json"
        self.m.write_file(tmp, json.dumps({"out_dir": f"{BASE}/out", **body}), owner=USER)
        self.m.run(["mv", tmp, f"{SPOOL}/{key}.json"])

    def show(self, unit, *props):
        out = self.systemctl("show", unit, *[f"--property={p}" for p in props]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_log(self, text, timeout=90):
        self.wait(lambda: text in self.journal(SUPERVISOR), repr(text), timeout)

    def wait(self, predicate, what, timeout=60):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise MachineError(f"timed out waiting for {what}\n--- supervisor journal\n"
                                   f"{self.journal(SUPERVISOR)[-5000:]}")
            time.sleep(0.2)

    def scope_gone(self, job):
        return self.show(scope(job), "LoadState").get("LoadState") == "not-found"

    def processes(self, pattern):
        r = self.m.run(["pgrep", "-u", USER, "-f", pattern], check=False)
        return r.stdout.split()


@pytest.fixture(params=["system", "user"])
def manager(request):
    return request.param


def test_job_runs_in_its_own_scope_with_limits(installed_machine, manager):
    d = Deployment(installed_machine, manager, memory_max="300M", tasks_max=77, cpu_quota="50%")
    d.start()
    d.drop("sys.record", {"hold": 6})
    d.wait(lambda: d.show(scope(1), "ActiveState").get("ActiveState") == "active", "the job's scope")
    props = d.show(scope(1), "MemoryMax", "TasksMax", "CPUQuotaPerSecUSec", "RuntimeMaxUSec",
                   "Slice", "BindsTo", "Before", "CollectMode", "Description")
    assert props["MemoryMax"] == str(300 << 20)
    assert props["TasksMax"] == "77"
    assert props["CPUQuotaPerSecUSec"] == "500ms"
    assert props["RuntimeMaxUSec"] == "2min 7s"  # timeout + kill_grace + the 5 s margin
    assert props["Slice"] == "loopabull.slice"
    assert SUPERVISOR in props["BindsTo"].split()
    # Before=, so that a stop of the supervisor drains before the scope is stopped.
    assert SUPERVISOR in props["Before"].split()
    assert props["CollectMode"] == "inactive-or-failed"
    assert props["Description"] == "loopabull job 1: sys.record"
    d.wait_log("job 1 (sys.record) succeeded")
    report = installed_machine.read_file(f"{BASE}/out/1.txt")
    assert scope(1) in report, report  # every process of the playbook was in the scope
    d.wait(lambda: d.scope_gone(1), "the scope to be collected")
    # journalctl -u shows the playbook's own output, filed under its scope.
    assert "sandbox report:" in d.journal(scope(1))


def test_job_is_sandboxed(installed_machine):
    d = Deployment(installed_machine)
    d.start()
    d.drop("sys.record", {})
    d.wait_log("job 1 (sys.record) succeeded")
    lines = installed_machine.read_file(f"{BASE}/out/1.txt").splitlines()
    assert lines[0] == USER
    assert "Seccomp:\t2" in lines and "NoNewPrivs:\t1" in lines


def libc_call(expr):
    """A python one-liner making one raw libc call; it prints strerror(errno) on failure."""
    return ["/usr/bin/python3", "-c",
            "import ctypes,os,sys; l=ctypes.CDLL(None,use_errno=True); r=" + expr + "; "
            "e=ctypes.get_errno(); sys.stderr.write(os.strerror(e)); sys.exit(0 if r==0 else 1)"]


@pytest.mark.parametrize("attack", [["unshare", "-U", "true"],
                                    libc_call("l.mount(b'x', b'/mnt', b'tmpfs', 0, None)"),
                                    libc_call("l.ptrace(16, 1, 0, 0)")], ids=["unshare", "mount", "ptrace"])
def test_forbidden_calls_fail_the_job_not_the_supervisor(installed_machine, attack):
    d = Deployment(installed_machine)
    d.start()
    d.drop("sys.attack", {"attack": attack})
    d.wait_log("job 1 (sys.attack) failed (exit code 2)")
    report = installed_machine.read_file(f"{BASE}/out/attack-1.txt")
    assert not report.startswith("rc=0")
    assert "Operation not permitted" in report, report
    assert installed_machine.run(["test", "-e", f"{SPOOL}/failed/sys.attack.json"], check=False).returncode == 0
    assert d.systemctl("is-active", SUPERVISOR).stdout.strip() == "active"


def test_timeout_stops_the_whole_scope(installed_machine, manager):
    d = Deployment(installed_machine, manager, timeout="4s")
    d.start()
    d.drop("sys.hang", {})
    d.wait(lambda: installed_machine.run(["test", "-s", f"{BASE}/out/sleeper.pid"], check=False).returncode == 0,
           "the background sleeper")
    sleeper = installed_machine.read_file(f"{BASE}/out/sleeper.pid").strip()
    d.wait_log("job 1 (sys.hang) timeout", timeout=60)
    assert installed_machine.run(["kill", "-0", sleeper], check=False).returncode != 0
    d.wait(lambda: d.scope_gone(1), "the scope to be gone")
    assert d.processes("sleep 600") == []


def test_killed_supervisor_leaves_no_playbook_and_the_event_runs_again(installed_machine, manager):
    d = Deployment(installed_machine, manager)
    installed_machine.write_file(f"{BASE}/playbooks/sys.crash.yml",
                                 "- hosts: localhost\n  connection: local\n  gather_facts: false\n"
                                 "  tasks:\n    - shell: \"if [ ! -e {{ event.out_dir }}/ran-once ]; then "
                                 "touch {{ event.out_dir }}/ran-once; sleep 600; fi\"\n")
    d.start()
    d.drop("sys.crash", {})
    d.wait(lambda: d.processes("sleep 600"), "the job's sleep")
    d.systemctl("kill", "--signal=SIGKILL", "--kill-who=main", SUPERVISOR)
    # BindsTo: the scope goes with the supervisor's unit, and every process in it.
    d.wait(lambda: not d.processes("sleep 600"), "the playbook's processes to be gone", timeout=30)
    d.wait(lambda: d.scope_gone(1), "the scope to be gone")
    assert installed_machine.run(["test", "-e", f"{SPOOL}/sys.crash.json"], check=False).returncode == 0
    d.systemctl("reset-failed", SUPERVISOR, check=False)
    d.start()
    d.wait_log("job 1 (sys.crash) succeeded")
    d.wait(lambda: installed_machine.run(["test", "-e", f"{SPOOL}/sys.crash.json"], check=False).returncode != 0,
           "the event file to be removed")


def test_stopping_the_supervisor_drains_jobs_in_scopes(installed_machine, manager):
    """systemctl stop: the running job finishes (BindsTo does not cut it short) and is answered;
    the event is done, not lost or failed."""
    d = Deployment(installed_machine, manager)
    d.start()
    d.drop("sys.record", {"hold": 5})
    d.wait(lambda: d.show(scope(1), "ActiveState").get("ActiveState") == "active", "the job's scope")
    d.systemctl("stop", SUPERVISOR)
    log = d.journal(SUPERVISOR)
    assert "job 1 (sys.record) succeeded" in log, log[-3000:]
    assert installed_machine.run(["test", "-e", f"{SPOOL}/sys.record.json"], check=False).returncode != 0
    assert installed_machine.run(["test", "-e", f"{SPOOL}/failed/sys.record.json"], check=False).returncode != 0


def test_stale_scopes_of_another_instance_are_left_alone(installed_machine):
    """At start, only this instance's leftover scopes are stopped, not those of an instance
    whose name extends it (systest-stg for systest)."""
    d = Deployment(installed_machine)
    installed_machine.spawn(["systemd-run", "--scope", f"--unit=loopabull-{INSTANCE}-stg-7.scope",
                             "sleep", "300"])
    installed_machine.spawn(["systemd-run", "--scope", f"--unit={scope(9)}", "sleep", "300"])
    d.wait(lambda: d.show(scope(9), "ActiveState").get("ActiveState") == "active", "a stale scope")
    d.start()
    d.wait(lambda: d.scope_gone(9), "our stale scope to be stopped")
    assert d.show(f"loopabull-{INSTANCE}-stg-7.scope", "ActiveState")["ActiveState"] == "active"
    assert "stopping 1 scope(s) left by a previous run" in d.journal(SUPERVISOR)


def test_tasks_limit_is_enforced_where_the_kernel_can(installed_machine):
    reason = installed_machine.enforcement_unavailable("pids")
    if reason:
        pytest.skip(reason)
    d = Deployment(installed_machine, tasks_max=20)
    installed_machine.write_file(f"{BASE}/playbooks/sys.forkbomb.yml",
                                 "- hosts: localhost\n  connection: local\n  gather_facts: false\n"
                                 "  tasks:\n    - shell: \"for i in $(seq 100); do sleep 30 & done; wait\"\n")
    d.start()
    d.drop("sys.forkbomb", {})
    d.wait_log("job 1 (sys.forkbomb) failed")


def test_memory_limit_is_enforced_where_the_kernel_can(installed_machine):
    reason = installed_machine.enforcement_unavailable("memory")
    if reason:
        pytest.skip(reason)
    d = Deployment(installed_machine, memory_max="64M")
    installed_machine.write_file(f"{BASE}/playbooks/sys.hog.yml",
                                 "- hosts: localhost\n  connection: local\n  gather_facts: false\n"
                                 "  tasks:\n    - command: /usr/bin/python3 -c \"b = bytearray(512 << 20); "
                                 "b[::4096] = b'x' * len(b[::4096])\"\n")
    d.start()
    d.drop("sys.hog", {})
    d.wait_log("job 1 (sys.hog) failed")


def test_scope_executor_under_the_shipped_unit(installed_machine):
    """loopabull@.service as installed (hardening, User=loopabull) with the scope executor of
    the system manager: the job runs in its scope, sandboxed, and its output is in the journal."""
    m = installed_machine
    for cmd in (["systemd-sysusers"], ["systemd-tmpfiles", "--create"]):
        m.run(cmd)
    m.daemon_reload()
    m.reload_dbus()
    # Where the installed unit reads its configuration (SYSCONFDIR/loopabull for the prefix).
    unit = m.systemctl("cat", "loopabull@svc.service").stdout
    confdir = next(w for w in unit.split() if w.endswith("/%i.yml") and w.startswith("/")).rsplit("/", 1)[0]
    confdir = confdir.split("=", 1)[-1]
    state = "/var/lib/loopabull/svc"  # the unit's StateDirectory: writable under ProtectSystem
    for pb in (HERE / "playbooks").glob("*.yml"):
        m.write_file(f"{BASE}/playbooks/{pb.name}", pb.read_text())
    cfg = {"routing_keys": ["all"],
           "loopers": [{"name": "spool", "command": ["spool"]}],
           "ansible": {"playbooks_dir": f"{BASE}/playbooks",
                       "environment": {"ANSIBLE_LOCAL_TEMP": "/tmp/al", "ANSIBLE_REMOTE_TEMP": "/tmp/ar"}},
           "executor": {"type": "scope", "manager": "system", "tasks_max": 99}}
    m.write_file(f"{confdir}/svc.yml", json.dumps(cfg))
    # systemd 252: polkit cannot see the unit name (see test_scope's Deployment).
    m.write_file("/etc/polkit-1/rules.d/50-lbtest.rules",
                 'polkit.addRule(function(action, subject) {\n'
                 '  if (action.id == "org.freedesktop.systemd1.manage-units" &&\n'
                 '      subject.user == "loopabull") return polkit.Result.YES;\n});\n')
    m.systemctl("start", "loopabull@svc.service")
    spool = "/var/spool/loopabull/svc"
    deadline = time.monotonic() + 30
    while m.run(["test", "-d", spool], check=False).returncode != 0:
        assert time.monotonic() < deadline, m.journal("loopabull@svc.service", lines=50)
        time.sleep(0.2)
    m.write_file(f"{spool}/.e", json.dumps({"out_dir": state}), owner="loopabull")
    m.run(["mv", f"{spool}/.e", f"{spool}/sys.record.json"])
    deadline = time.monotonic() + 120
    while "job 1 (sys.record) succeeded" not in m.journal("loopabull@svc.service"):
        assert time.monotonic() < deadline, m.journal("loopabull@svc.service", lines=80)
        time.sleep(0.3)
    report = m.read_file(f"{state}/1.txt").splitlines()
    assert report[0] == "loopabull"
    assert "Seccomp:\t2" in report and "NoNewPrivs:\t1" in report
    assert any("loopabull-svc-1.scope" in line for line in report), report
    assert "sandbox report:" in m.journal("loopabull-svc-1.scope")
    m.systemctl("stop", "loopabull@svc.service")
