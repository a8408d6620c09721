# SPDX-License-Identifier: GPL-3.0-or-later
"""loopabull@.service on a booted systemd, installed from the build as a package would be:
readiness, playbooks through the spool, the D-Bus API on the system bus with polkit, reload,
drain on stop, the watchdog, and two instances side by side.

Each test gets a fresh machine with `meson install` of the build, then does what a package's
scripts do: systemd-sysusers, systemd-tmpfiles --create, daemon-reload, reload of dbus. The
playbooks are real ansible-playbook runs as the user loopabull, under the unit's hardening.
"""
import json
import re
import shlex
import subprocess
import time

import pytest

from machine import MachineError
from waiting import wait_until

NAME = "org.loopabull.Loopabull1"
OBJECT = "/org/loopabull/Loopabull1"
IFACE = "org.loopabull.Loopabull1.Manager"
TESTDIR = "/srv/loopabull-test"
USER = "alice"  # an unprivileged local user

PLAYBOOKS = {
    # Leaves a file in the instance's state directory (writable under ProtectSystem=strict).
    "test.hello": """- hosts: localhost
  gather_facts: false
  tasks:
    - name: record the run
      ansible.builtin.copy:
        dest: "/var/lib/loopabull/{{ loopabull_instance }}/ran-{{ loopabull_job_id }}"
        content: "{{ event.who | default('nobody') }} as {{ lookup('env', 'USER') }}\\n"
""",
    "test.other": """- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.command: "true"
""",
    "test.slow": """- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.command: "sleep {{ event.seconds | default(60) }}"
""",
}


def build_options(build_dir):
    out = subprocess.run(["meson", "introspect", "--buildoptions", str(build_dir)],
                         capture_output=True, text=True, check=True).stdout
    return {o["name"]: o["value"] for o in json.loads(out)}


class Service:
    """The installed build in a booted machine, set up as a package's scripts would."""

    def __init__(self, m, build_dir):
        self.m = m
        opts = build_options(build_dir)
        self.confdir = f"{opts['prefix']}/{opts['sysconfdir']}/loopabull".replace("//", "/")
        if opts["sysconfdir"].startswith("/"):
            self.confdir = f"{opts['sysconfdir']}/loopabull"
        m.run(["systemd-sysusers"])
        m.run(["systemd-tmpfiles", "--create", "loopabull.conf"])
        m.daemon_reload()
        m.reload_dbus()
        m.run(["useradd", "--create-home", USER])
        # Bounded stops, whatever a failed test leaves running (the unit allows 6 minutes to drain).
        m.write_file("/etc/systemd/system/loopabull@.service.d/50-test.conf", "[Service]\nTimeoutStopSec=10s\n")
        m.daemon_reload()
        for key, text in PLAYBOOKS.items():
            m.write_file(f"{TESTDIR}/playbooks/{key}.yml", text)
        m.write_file(f"{TESTDIR}/inventory",
                     "localhost ansible_connection=local ansible_python_interpreter=/usr/bin/python3\n")
        # The home of loopabull is read-only for the service: Ansible's temporary files go to the
        # service's private /tmp.
        m.write_file(f"{TESTDIR}/ansible.cfg", "[defaults]\nlocal_tmp = /tmp/ansible-local\n"
                     "remote_tmp = /tmp/ansible-remote\nretry_files_enabled = false\n")

    def configure(self, instance, routing_keys=("all",), history=None, **executor):
        cfg = {
            "loglevel": "debug",
            "routing_keys": list(routing_keys),
            "loopers": [{"name": "spool", "command": ["spool"]}],  # /var/spool/loopabull/INSTANCE
            "ansible": {"playbooks_dir": f"{TESTDIR}/playbooks", "layout": "name",
                        "cfg_file_path": f"{TESTDIR}/ansible.cfg", "inventory": f"{TESTDIR}/inventory"},
            "executor": {"type": "direct", "max_parallel": 2, "timeout": "5min", "stop_timeout": "8s",
                         **executor},
        }
        if history:
            cfg["history"] = history
        self.m.write_file(f"{self.confdir}/{instance}.yml", json.dumps(cfg, indent=1), mode=0o640,
                          owner="root:loopabull")
        return cfg

    def start(self, instance, **config):
        self.configure(instance, **config)
        self.m.systemctl("start", f"loopabull@{instance}.service")
        assert self.m.systemctl("is-active", f"loopabull@{instance}.service").stdout.strip() == "active"

    def drop(self, instance, key, body=None, suffix="json"):
        """An event through the spool looper: written aside, renamed in."""
        d = f"/var/spool/loopabull/{instance}"
        text = json.dumps(body or {})
        self.m.run(f"echo {shlex.quote(text)} > {d}/.incoming && mv {d}/.incoming {d}/{key}.{suffix}")

    def busctl(self, *args, user=None, check=True):
        return self.m.run(["busctl", "--no-pager", *args], user=user, check=check)

    def get(self, instance, prop, user=None):
        out = self.busctl("--json=short", "get-property", bus_name(instance), OBJECT, IFACE, prop,
                          user=user).stdout
        return json.loads(out)["data"]

    def call(self, instance, method, *args, user=None):
        out = self.busctl("--json=short", "call", bus_name(instance), OBJECT, IFACE, method, *map(str, args),
                          user=user).stdout
        return json.loads(out)["data"] if out.strip() else []

    def call_error(self, instance, method, *args, user=None, interactive=True):
        """The error name and message of a call that must fail (dbus-send prints both)."""
        cmd = ["dbus-send", "--system", "--print-reply", f"--dest={bus_name(instance)}", OBJECT,
               f"{IFACE}.{method}", *args]
        r = self.m.run(cmd, user=user, check=False)
        assert r.returncode != 0, f"{method} as {user} succeeded:\n{r.stdout}"
        m = re.match(r"Error (\S+): (.*)", r.stderr.strip())
        assert m, r.stderr
        return m.group(1), m.group(2)

    def job(self, instance, id):
        keys = ("id", "routing_key", "state", "unit", "looper", "queued_usec", "started_usec",
                "finished_usec", "result", "exit_code", "error")
        return dict(zip(keys, self.call(instance, "GetJob", "t", id)))

    def ctl(self, *args, user=None):
        return self.m.run(["loopabullctl", *args], user=user, check=False)

    def journal(self, instance):
        return self.m.journal(f"loopabull@{instance}.service")

    def wait_job(self, instance, id, timeout=60):
        def finished():
            try:
                j = self.job(instance, id)
            except MachineError:
                return None
            return j if j["state"] == "finished" else None
        try:
            return wait_until(finished, timeout, what=f"job {id} of {instance} to finish")
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- journal\n{self.journal(instance)[-6000:]}") from None


def bus_name(instance):
    out = ""
    for i, c in enumerate(instance.encode()):
        ch = chr(c)
        out += ch if (ch.isascii() and ch.isalpha()) or ch in "_-" or (ch.isdigit() and i > 0) else "_%02x" % c
    return f"{NAME}.{out}"


@pytest.fixture
def service(installed_machine, build_dir):
    return Service(installed_machine, build_dir)


def test_installed_units_and_files(service):
    m = service.m
    exec_start = m.show("loopabull@releng.service", "ExecStart")["ExecStart"]
    assert f"--bus=system --instance releng {service.confdir}/releng.yml" in exec_start
    assert re.search(r"path=/\S+/bin/loopabull ", exec_start), exec_start
    props = m.show("loopabull@releng.service", "Type", "User", "Restart", "KillMode",
                   "Slice", "NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp",
                   "RuntimeDirectory", "StateDirectory")
    assert props == {"Type": "notify", "User": "loopabull", "Restart": "on-failure",
                     "KillMode": "mixed", "Slice": "loopabull.slice", "NoNewPrivileges": "yes",
                     "ProtectSystem": "strict", "ProtectHome": "read-only", "PrivateTmp": "yes",
                     "RuntimeDirectory": "loopabull/releng", "StateDirectory": "loopabull/releng"}
    # WatchdogUSec shows only while the unit runs.
    assert "\nWatchdogSec=30s\n" in m.systemctl("cat", "loopabull@releng.service").stdout
    assert m.run(["getent", "passwd", "loopabull"]).stdout.split(":")[5] == "/var/lib/loopabull"
    assert m.run(["stat", "-c", "%U %a", "/var/spool/loopabull"]).stdout.split() == ["loopabull", "750"]
    assert m.run(["test", "-s", f"{service.confdir}/example.yml"]).returncode == 0
    # Installed where the daemons read them.
    m.run(["test", "-f", "/usr/share/dbus-1/system.d/org.loopabull.Loopabull1.conf"])
    actions = m.run(["pkaction", "--action-id", "org.loopabull.loopabull1.manage", "--verbose"]).stdout
    assert re.search(r"implicit any:\s+auth_admin_keep", actions), actions
    # systemd's own view of the hardening (lower is better; 10 is no hardening at all).
    sec = m.run(["systemd-analyze", "security", "--no-pager", "loopabull@releng.service"], check=False).stdout
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", sec)
    assert score and float(score.group(1)) < 6.0, sec
    print(f"\nsystemd-analyze security loopabull@releng.service: {score.group(1)}")
    # A missing configuration fails the start at once, with no restart loop.
    r = m.systemctl("start", "loopabull@nothing.service", check=False)
    assert r.returncode != 0
    assert m.show("loopabull@nothing.service", "ActiveState", "NRestarts") == {
        "ActiveState": "inactive", "NRestarts": "0"}


def test_active_only_after_ready(service):
    """Type=notify: the unit stays "activating" while loopabull starts (here it blocks reading a
    FIFO as its configuration file) and becomes active only after READY=1."""
    m = service.m
    cfg = service.configure("ready")
    m.run(["rm", f"{service.confdir}/ready.yml"])
    m.run(["mkfifo", "-m", "0640", f"{service.confdir}/ready.yml"])
    m.run(["chgrp", "loopabull", f"{service.confdir}/ready.yml"])
    # The shipped AssertFileNotEmpty= would refuse a FIFO: reset for this instance.
    m.write_file("/etc/systemd/system/loopabull@ready.service.d/fifo.conf", "[Unit]\nAssertFileNotEmpty=\n")
    m.daemon_reload()
    m.systemctl("start", "--no-block", "loopabull@ready.service")
    wait_until(lambda: m.show("loopabull@ready.service", "MainPID")["MainPID"] != "0", 10,
               what="loopabull to be started")
    time.sleep(1.5)
    state = m.show("loopabull@ready.service", "ActiveState", "SubState")
    assert state == {"ActiveState": "activating", "SubState": "start"}, state
    assert "running with" not in service.journal("ready")
    m.run(f"cat > {service.confdir}/ready.yml", input=json.dumps(cfg))
    m.wait_active("loopabull@ready.service", timeout=20)
    times = m.show("loopabull@ready.service", "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic")
    waited = (int(times["ActiveEnterTimestampMonotonic"]) - int(times["ExecMainStartTimestampMonotonic"])) / 1e6
    assert waited >= 1.5, times
    log = service.journal("ready")
    assert log.index("running with 1 looper(s)") < log.index("Started loopabull@ready.service")
    assert service.get("ready", "State") == "running"


def test_event_runs_its_playbook_and_the_api_shows_it(service):
    m = service.m
    service.start("releng")
    log = service.journal("releng")
    assert log.index("D-Bus API on the system bus as org.loopabull.Loopabull1.releng") < \
        log.index("Started loopabull@releng.service")
    assert service.get("releng", "State") == "running"
    service.drop("releng", "test.hello", {"who": "world"})
    job = service.wait_job("releng", 1)
    assert (job["routing_key"], job["result"], job["exit_code"], job["looper"]) == ("test.hello", "succeeded", 0, "spool")
    # The playbook really ran, as the automation user, with the event's data.
    assert m.run(["cat", "/var/lib/loopabull/releng/ran-1"]).stdout == "world as loopabull\n"
    assert m.run(["stat", "-c", "%U", "/var/lib/loopabull/releng/ran-1"]).stdout.strip() == "loopabull"
    assert service.busctl("get-property", bus_name("releng"), OBJECT, IFACE, "JobsSucceeded").stdout == "t 1\n"
    assert service.get("releng", "EventsReceived") == 1
    # Issue 17: the job's start and end messages carry the MESSAGE_IDs of catalog/loopabull.catalog
    # (installed; a package's trigger runs --update-catalog), so journalctl finds every job by
    # them and -x explains them.
    m.run(["journalctl", "--update-catalog"])
    started = m.journal(output="json", args=("MESSAGE_ID=616a2627c52b4efaa9fdaf5c539cb6f8",))
    [s1] = [json.loads(l) for l in started.splitlines() if json.loads(l).get("LOOPABULL_JOB") == "1"]
    assert (s1["LOOPABULL_ROUTING_KEY"], s1["LOOPABULL_LOOPER"]) == ("test.hello", "spool")
    assert s1["MESSAGE"].startswith("job 1 started: test.hello")
    ended = wait_until(lambda: m.journal(output="json", args=("MESSAGE_ID=5567f895ecde4aef8480d4c79b8aef64",
                                                              "LOOPABULL_JOB=1")).strip(), 10,
                       what="the end message of job 1")
    assert json.loads(ended.splitlines()[-1])["LOOPABULL_RESULT"] == "succeeded"
    explained = m.journal(output="short", args=("-x", "MESSAGE_ID=5567f895ecde4aef8480d4c79b8aef64",
                                                "LOOPABULL_JOB=1"))
    assert "Subject: loopabull job 1 ended: succeeded" in explained, explained
    # A running job in ListJobs and GetJob.
    service.drop("releng", "test.slow", {"seconds": 60})
    wait_until(lambda: service.get("releng", "JobsRunning") == 1, 30, what="the slow job to run")
    [jobs] = service.call("releng", "ListJobs")
    assert [(j[0], j[1], j[2], j[5]) for j in jobs] == [(2, "test.slow", "running", "spool")]
    out = service.busctl("call", bus_name("releng"), OBJECT, IFACE, "GetJob", "t", "1").stdout
    assert out.startswith('tsssstttsis 1 "test.hello" "finished" "" "spool" ') and out.endswith(' "succeeded" 0 ""\n'), out
    # loopabullctl shows it all.
    r = service.ctl("--instance", "releng", "status")
    assert r.returncode == 0, r
    assert "loopabull instance releng (org.loopabull.Loopabull1.releng on the system bus)" in r.stdout
    assert "     Jobs: 1 running, 0 queued, 1 succeeded, 0 failed\n" in r.stdout
    assert re.search(r"  Loopers: spool: running \(pid \d+, 2 events, 0 restarts\)", r.stdout)
    assert re.search(r"^2 +test\.slow +spool ", r.stdout, re.M), r.stdout
    status = json.loads(service.ctl("-i", "releng", "--json", "status").stdout)
    assert status["jobs_succeeded"] == 1 and status["jobs"][0]["routing_key"] == "test.slow"
    assert json.loads(service.ctl("-i", "releng", "--json", "job", "1").stdout)["result"] == "succeeded"
    # The status line systemd shows comes from the same counters.
    wait_until(lambda: "1 running, 0 queued, 1 succeeded" in m.show("loopabull@releng.service", "StatusText")["StatusText"],
               5, what="STATUS=")
    # Root may cancel.
    assert service.call("releng", "CancelJob", "t", 2) == []
    job = service.wait_job("releng", 2, timeout=30)
    assert job["result"] == "aborted"  # an operator's cancel is final (issue 12)
    r = service.ctl("-i", "nope", "status")
    assert r.returncode == 3
    assert r.stderr == "loopabullctl: loopabull instance nope is not running (no org.loopabull.Loopabull1.nope on the system bus)\n"


def test_users_may_read_but_only_root_or_polkit_may_control(service):
    m = service.m
    service.start("releng")
    service.drop("releng", "test.slow", {"seconds": 60})
    wait_until(lambda: service.get("releng", "JobsRunning") == 1, 30, what="the slow job to run")
    # Reading is open to everyone (bus policy: calls to anyone; the methods are unprivileged).
    assert service.get("releng", "State", user=USER) == "running"
    assert service.call("releng", "ListJobs", user=USER)[0][0][1] == "test.slow"
    assert service.call("releng", "GetJob", "t", 1, user=USER)[2] == "running"
    r = service.ctl("-i", "releng", "status", user=USER)
    assert r.returncode == 0 and "State: running" in r.stdout, r
    # Control is not: polkit says auth_admin_keep, and nobody can authenticate here.
    denied = ("org.freedesktop.DBus.Error.AccessDenied",
              "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired")
    for method, args in (("Pause", ()), ("Resume", ()), ("Reload", ()), ("CancelJob", ("uint64:1",))):
        name, message = service.call_error("releng", method, *args, user=USER)
        assert name in denied, (method, name, message)
    r = service.busctl("call", bus_name("releng"), OBJECT, IFACE, "Pause", user=USER, check=False)
    assert r.returncode != 0 and ("Access denied" in r.stderr or "Interactive authentication" in r.stderr), r
    r = service.ctl("-i", "releng", "--no-ask-password", "pause", user=USER)
    assert r.returncode == 4, r
    assert service.get("releng", "State") == "running"
    assert service.job("releng", 1)["state"] == "running"
    uid = m.run(["id", "-u", USER]).stdout.strip()
    assert re.search(rf"pause by uid {uid} \(:\S+\) refused", service.journal("releng"))
    # Root may, without polkit.
    assert service.call("releng", "Pause") == []
    assert service.get("releng", "State") == "paused"
    service.drop("releng", "test.hello", {"who": "held"})
    time.sleep(2)
    assert service.get("releng", "EventsReceived") == 1
    assert m.run(["test", "-e", "/var/spool/loopabull/releng/test.hello.json"]).returncode == 0
    r = service.ctl("-i", "releng", "resume")
    assert r.returncode == 0, r
    assert service.get("releng", "State") == "running"
    assert service.wait_job("releng", 2)["result"] == "succeeded"
    # A polkit rule can grant it, per instance, with the details the check carries.
    m.write_file("/etc/polkit-1/rules.d/50-loopabull-test.rules", f"""
polkit.addRule(function(action, subject) {{
    if (action.id == "org.loopabull.loopabull1.manage" && subject.user == "{USER}" &&
        action.lookup("instance") == "releng" && action.lookup("verb") != "reload")
        return polkit.Result.YES;
}});
""")
    m.systemctl("restart", "polkit.service")
    r = service.ctl("-i", "releng", "pause", user=USER)
    assert r.returncode == 0, r
    assert service.get("releng", "State") == "paused"
    assert service.ctl("-i", "releng", "resume", user=USER).returncode == 0
    assert service.ctl("-i", "releng", "reload", "--no-ask-password", user=USER).returncode == 4
    assert service.ctl("-i", "releng", "cancel", "1", user=USER).returncode == 0
    assert service.wait_job("releng", 1)["result"] == "aborted"
    assert re.search(rf"cancel of job 1 by uid {uid} \(:\S+\), authorized by polkit", service.journal("releng"))


def test_replay_has_a_polkit_action_of_its_own(service):
    """Issue 17: ReplayJob is refused to an unprivileged user through the real polkit, also to one
    a rule lets manage the instance (who may then read the body), and allowed to root: the
    real playbook runs again with the recorded body."""
    m = service.m
    service.start("releng", history={"store_bodies": True, "flush_interval": "50ms"})
    service.drop("releng", "test.hello", {"who": "first"})
    assert service.wait_job("releng", 1)["result"] == "succeeded"
    denied = ("org.freedesktop.DBus.Error.AccessDenied",
              "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired")
    for method in ("ReplayJob", "GetJobBody"):
        assert service.call_error("releng", method, "uint64:1", user=USER)[0] in denied
    r = service.ctl("-i", "releng", "--no-ask-password", "replay", "1", user=USER)
    assert r.returncode == 4 and "org.loopabull.loopabull1.replay" in r.stderr, r
    m.write_file("/etc/polkit-1/rules.d/50-loopabull-test.rules", f"""
polkit.addRule(function(action, subject) {{
    if (action.id == "org.loopabull.loopabull1.manage" && subject.user == "{USER}")
        return polkit.Result.YES;
}});
""")
    m.systemctl("restart", "polkit.service")
    r = service.ctl("-i", "releng", "job", "1", "--body", user=USER)
    assert r.returncode == 0 and json.loads(r.stdout) == {"who": "first"}, r
    assert service.ctl("-i", "releng", "--no-ask-password", "replay", "1", user=USER).returncode == 4
    r = service.ctl("-i", "releng", "replay", "1", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == {"id": 2, "replay_of": 1}, r
    assert service.wait_job("releng", 2)["result"] == "succeeded"
    assert m.run(["cat", "/var/lib/loopabull/releng/ran-2"]).stdout == "first as loopabull\n"
    uid = m.run(["id", "-u", USER]).stdout.strip()
    # Refused by the shipped action's defaults (auth_admin_keep), not for want of an action.
    assert re.search(rf"replay by uid {uid} \(:\S+\) refused: polkit wants interactive",
                     service.journal("releng"))
    assert "auth_admin_keep" in m.run(["pkaction", "--verbose", "--action-id",
                                       "org.loopabull.loopabull1.replay"]).stdout


def test_systemctl_reload_applies_a_new_routing_key(service):
    m = service.m
    service.start("releng", routing_keys=["test.hello"])
    service.drop("releng", "test.other")
    wait_until(lambda: "test.other: not selected by routing_keys" in service.journal("releng"), 30,
               what="the unrouted event")
    assert service.get("releng", "JobsSucceeded") == 0
    service.configure("releng", routing_keys=["test.hello", "test.other"])
    pid = m.show("loopabull@releng.service", "MainPID")["MainPID"]
    m.systemctl("reload", "loopabull@releng.service")
    wait_until(lambda: "configuration reloaded" in service.journal("releng"), 30, what="the reload")
    assert m.show("loopabull@releng.service", "MainPID", "ActiveState") == {"MainPID": pid, "ActiveState": "active"}
    service.drop("releng", "test.other", suffix="yml")
    assert service.wait_job("releng", 1)["routing_key"] == "test.other"
    assert service.get("releng", "JobsSucceeded") == 1


def test_systemctl_stop_drains(service):
    m = service.m
    service.start("releng")
    service.drop("releng", "test.slow", {"seconds": 4})
    wait_until(lambda: service.get("releng", "JobsRunning") == 1, 30, what="the slow job to run")
    t0 = time.monotonic()
    m.systemctl("stop", "loopabull@releng.service")
    took = time.monotonic() - t0
    log = service.journal("releng")
    # The playbook was left to finish (KillMode=mixed: SIGTERM to loopabull only), then loopabull
    # stopped its looper and exited 0.
    assert "job 1 (test.slow) succeeded" in log, log[-4000:]
    assert log.index("stopping: no new events") < log.index("job 1 (test.slow) succeeded") < log.index("stopped")
    assert 1.0 < took < 60, took
    props = m.show("loopabull@releng.service", "ActiveState", "Result", "ExecMainStatus")
    assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, props
    # Succeeded: the spool looper got the answer and removed the file.
    assert m.run(["find", "/var/spool/loopabull/releng", "-type", "f"]).stdout == ""


def test_watchdog_restarts_a_hung_supervisor(service):
    m = service.m
    m.write_file("/etc/systemd/system/loopabull@releng.service.d/watchdog.conf",
                 "[Service]\nWatchdogSec=2s\nRestartSec=1s\n")
    m.daemon_reload()
    service.start("releng")
    pid = m.show("loopabull@releng.service", "MainPID")["MainPID"]
    # A supervisor that runs normally keeps feeding the watchdog.
    time.sleep(3)
    assert m.show("loopabull@releng.service", "NRestarts", "MainPID") == {"NRestarts": "0", "MainPID": pid}
    m.run(["kill", "-STOP", pid])
    wait_until(lambda: m.show("loopabull@releng.service", "NRestarts")["NRestarts"] == "1", 30,
               what="the watchdog to restart the service")
    m.wait_active("loopabull@releng.service", timeout=30)
    new_pid = m.show("loopabull@releng.service", "MainPID")["MainPID"]
    assert new_pid not in (pid, "0")
    assert "Watchdog timeout" in service.journal("releng")
    # The new incarnation works.
    assert service.get("releng", "State") == "running"
    service.drop("releng", "test.hello", {"who": "again"})
    assert service.wait_job("releng", 1)["result"] == "succeeded"


def test_two_instances_side_by_side(service):
    m = service.m
    service.start("releng")
    service.start("1")
    names = service.busctl("list", "--no-legend", "--acquired").stdout
    assert f"{NAME}.releng " in names and f"{NAME}._31 " in names, names
    assert service.get("1", "Instance") == "1" and service.get("releng", "Instance") == "releng"
    service.drop("1", "test.hello", {"who": "one"})
    assert service.wait_job("1", 1)["result"] == "succeeded"
    assert m.run(["cat", "/var/lib/loopabull/1/ran-1"]).stdout == "one as loopabull\n"
    assert service.get("1", "JobsSucceeded") == 1 and service.get("releng", "JobsSucceeded") == 0
    cgroups = {i: m.show(f"loopabull@{i}.service", "ControlGroup")["ControlGroup"] for i in ("releng", "1")}
    assert cgroups == {"releng": "/loopabull.slice/loopabull@releng.service",
                       "1": "/loopabull.slice/loopabull@1.service"}
    assert json.loads(service.ctl("-i", "1", "--json", "status").stdout)["jobs_succeeded"] == 1
    m.systemctl("stop", "loopabull@1.service")
    assert service.get("releng", "State") == "running"
    assert service.ctl("-i", "1", "status").returncode == 3


def test_instance_as_another_user(service):
    """User= in a drop-in: that user needs a bus policy for its name, and since polkit answers
    only root and the action's owner (loopabull, in the .policy file), only root may control the
    instance over D-Bus: the check fails closed for everyone else."""
    m = service.m
    m.run(["useradd", "--system", "--home-dir", "/var/lib/loopabull", "--no-create-home", "bob"])
    m.write_file("/etc/dbus-1/system.d/loopabull-bob.conf", """<busconfig>
  <policy user="bob"><allow own="org.loopabull.Loopabull1.asbob"/></policy>
</busconfig>
""")
    m.reload_dbus()
    m.write_file("/etc/systemd/system/loopabull@asbob.service.d/user.conf", "[Service]\nUser=bob\nGroup=bob\n")
    m.daemon_reload()
    cfg = service.configure("asbob")
    cfg["loopers"] = [{"name": "idle", "command": ["/usr/bin/sleep", "infinity"]}]
    m.write_file(f"{service.confdir}/asbob.yml", json.dumps(cfg), mode=0o640, owner="root:bob")
    m.systemctl("start", "loopabull@asbob.service")
    assert m.show("loopabull@asbob.service", "User")["User"] == "bob"
    assert service.get("asbob", "State", user=USER) == "running"
    m.write_file("/etc/polkit-1/rules.d/50-loopabull-test.rules", f"""
polkit.addRule(function(action, subject) {{
    if (action.id == "org.loopabull.loopabull1.manage" && subject.user == "{USER}")
        return polkit.Result.YES;
}});
""")
    m.systemctl("restart", "polkit.service")
    r = service.ctl("-i", "asbob", "pause", user=USER)
    assert r.returncode == 4 and "Only trusted callers" in r.stderr, r
    assert service.get("asbob", "State") == "running"
    assert "refused: polkit did not answer" in service.journal("asbob")
    assert service.ctl("-i", "asbob", "pause").returncode == 0  # root
    assert service.get("asbob", "State") == "paused"
    # Without a bus policy for it, a user cannot have the name, and the start fails.
    m.write_file("/etc/systemd/system/loopabull@nopolicy.service.d/user.conf", "[Service]\nUser=bob\nGroup=bob\n")
    m.daemon_reload()
    m.write_file(f"{service.confdir}/nopolicy.yml", json.dumps(cfg), mode=0o640, owner="root:bob")
    assert m.systemctl("start", "loopabull@nopolicy.service", check=False).returncode != 0
    wait_until(lambda: "does the D-Bus policy let this user own it?" in service.journal("nopolicy"), 10,
               what="the error")
