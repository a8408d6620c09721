# SPDX-License-Identifier: GPL-3.0-or-later
"""The cgroup executor in loopabull@.service (Delegate=yes) on a booted Debian 12 systemd, the
build installed as a package would install it: the README's service steps word for word, jobs
that leave daemons behind (double fork, setsid) contained across the end of the job, its
timeout, a cancel, systemctl stop and systemctl kill -s KILL with the restart; the limits in
the job's cgroup files; and loopabull run without delegation.

The container's cgroup layout is hybrid (systemd 252 on a host with cgroup v1 controllers): the
job cgroups are in /sys/fs/cgroup/unified, without controllers, so the limits cannot be written
there; the test says so and skips their enforcement with the reason.
"""
import json
import re
from pathlib import Path

import pytest

from test_service import Service, build_options, wait_until

# The job: leaves a double-forked daemon and a setsid process, records every pid in the state
# directory (one file a process, named by the pid), then ends at once ("end" keys) or runs on.
ESCAPER = r"""#!/bin/sh
out=/var/lib/loopabull/$INSTANCE/pids
mkdir -p "$out"
( sh -c 'touch "$0/daemon.$$"; exec sleep 1000' "$out" & )
setsid sh -c 'touch "$0/setsid.$$"; exec sleep 1000' "$out" &
touch "$out/main.$$"
while [ $(ls "$out" | wc -l) -lt 3 ]; do sleep 0.05; done
case "$*" in *test.end.yml*) exit 0;; esac
exec sleep 1000
"""


@pytest.fixture
def service(installed_machine, build_dir):
    s = Service(installed_machine, build_dir)
    s.m.write_file("/usr/local/bin/escaper", ESCAPER, mode=0o755)
    for key in ("test.end", "test.hang"):
        s.m.write_file(f"/srv/loopabull-test/playbooks/{key}.yml", "- hosts: localhost\n")
    return s


def escaping(service, instance, **executor):
    """An instance whose playbook command is the escaper."""
    cfg = service.configure(instance, **{"type": "cgroup", **executor})
    cfg["ansible"]["playbook_cmd"] = "/usr/local/bin/escaper"
    cfg["ansible"]["environment"] = {"INSTANCE": instance}
    service.m.write_file(f"{service.confdir}/{instance}.yml", json.dumps(cfg), mode=0o640,
                         owner="root:loopabull")
    service.m.systemctl("start", f"loopabull@{instance}.service")
    spool = f"/var/spool/loopabull/{instance}"
    wait_until(lambda: service.m.run(["test", "-d", spool], check=False).returncode == 0, 30,
               what=f"the spool looper to create {spool}")


def recorded(service, instance, count=3):
    d = f"/var/lib/loopabull/{instance}/pids"
    def found():
        names = service.m.run(f"ls {d} 2>/dev/null", check=False).stdout.split()
        return names if len(names) >= count else None
    names = wait_until(found, 30, what=f"the processes of {instance}'s job")
    return [int(n.split(".")[1]) for n in names]


def alive(service, pids):
    """The pids (of the machine's PID namespace) that still run: not gone, not zombies."""
    script = "for p in " + " ".join(map(str, pids)) + "; do " \
        "s=$(sed -n 's/^State:\\s*\\(.\\).*/\\1/p' /proc/$p/status 2>/dev/null); " \
        "[ -n \"$s\" ] && [ \"$s\" != Z ] && echo $p; done; true"
    return [int(p) for p in service.m.run(script).stdout.split()]


def gone(service, pids, what):
    wait_until(lambda: not alive(service, pids), 15, what=what)


def cgroup_dir(service, instance):
    return f"/sys/fs/cgroup/unified/loopabull.slice/loopabull@{instance}.service"


def test_readme_service_steps_verbatim(installed_machine, build_dir):
    """README, "Running it as a service", as a user types it; then the example's own event."""
    m = installed_machine
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = re.search(r"## Running it as a service.*?```sh\n(.*?)```", readme, re.S)
    assert block, "the README's service steps"
    opts = build_options(build_dir)
    etc = opts["sysconfdir"] if opts["sysconfdir"].startswith("/") else f"{opts['prefix']}/{opts['sysconfdir']}"
    steps = block.group(1).replace("/etc/loopabull/", f"{etc}/loopabull/")
    for line in steps.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m.run(line)
    m.wait_active("loopabull@releng.service")
    spool = "/var/spool/loopabull/releng"
    m.run(f"echo '{{\"who\": \"world\"}}' > {spool}/.new && mv {spool}/.new {spool}/org.example.hello.json")

    def finished(id):
        r = m.run(["loopabullctl", "-i", "releng", "--json", "job", str(id)], check=False)
        if r.returncode != 0:
            return None
        j = json.loads(r.stdout)
        return j if j["state"] == "finished" else None
    job = wait_until(lambda: finished(1), 90, what="job 1")
    assert job["result"] == "succeeded", (job, m.journal("loopabull@releng.service")[-5000:])
    out = m.run(["loopabullctl", "-i", "releng", "job", "1"]).stdout
    assert "Result: succeeded" in out, out
    log = m.journal("loopabull@releng.service")
    assert "executor.type auto: each job in a cgroup of its own below /loopabull.slice/loopabull@releng.service" in log, log
    # A playbook that fails: the reason is shown.
    m.run(f"echo '{{}}' > {spool}/.new && mv {spool}/.new {spool}/org.example.fail.json")
    job = wait_until(lambda: finished(2), 90, what="job 2")
    assert job["result"] == "failed" and job["error"] == f"exit code {job['exit_code']}", job
    out = m.run(["loopabullctl", "-i", "releng", "job", "2"]).stdout
    assert re.search(r"^ +Error: exit code 2$", out, re.M), out


def test_the_job_runs_in_its_cgroup_and_leaves_nothing_at_its_end(service):
    m = service.m
    escaping(service, "end")
    root = cgroup_dir(service, "end")
    main = m.show("loopabull@end.service", "MainPID")["MainPID"]
    # loopabull and its looper moved into the leaf supervisor/; the service's cgroup is empty.
    assert m.run(f"cat {root}/cgroup.procs").stdout == ""
    sup = m.run(f"cat {root}/supervisor/cgroup.procs").stdout.split()
    assert main in sup and len(sup) == 2, sup
    service.drop("end", "test.end")
    job = service.wait_job("end", 1)
    assert job["result"] == "succeeded", job
    pids = recorded(service, "end")
    gone(service, pids, "the daemon and the setsid process of the finished job")
    wait_until(lambda: m.run(f"test -d {root}/job-1", check=False).returncode != 0, 10,
               what="job-1's cgroup to be removed")
    # While a job runs, its cgroup holds it and everything it started.
    service.drop("end", "test.hang")
    pids = recorded(service, "end", 6)
    procs = set(map(int, m.run(f"cat {root}/job-2/cgroup.procs").stdout.split()))
    running = set(alive(service, pids))
    assert running and running <= procs, (running, procs)


def test_timeout_takes_every_process(service):
    escaping(service, "to", timeout="3s", kill_grace="1s")
    service.drop("to", "test.hang")
    pids = recorded(service, "to")
    job = service.wait_job("to", 1)
    assert job["result"] == "timeout", job
    gone(service, pids, "every process of the timed-out job")
    r = service.ctl("-i", "to", "--json", "job", "1")
    assert json.loads(r.stdout)["error"] == "timed out after 3s", r.stdout


def test_cancel_takes_every_process(service):
    escaping(service, "cancel")
    service.drop("cancel", "test.hang")
    pids = recorded(service, "cancel")
    assert service.ctl("-i", "cancel", "cancel", "1").returncode == 0
    job = service.wait_job("cancel", 1)
    assert job["result"] in ("cancelled", "aborted"), job
    gone(service, pids, "every process of the cancelled job")


def test_systemctl_stop_takes_every_process(service):
    m = service.m
    escaping(service, "stop", kill_grace="1s", stop_timeout="2s")
    service.drop("stop", "test.hang")
    pids = recorded(service, "stop")
    m.systemctl("stop", "loopabull@stop.service")
    assert alive(service, pids) == []
    assert m.show("loopabull@stop.service", "ActiveState")["ActiveState"] == "inactive"


def test_systemctl_kill_and_the_restart_leave_nothing(service):
    m = service.m
    m.write_file("/etc/systemd/system/loopabull@killed.service.d/restart.conf",
                 "[Service]\nRestartSec=1s\n")
    m.daemon_reload()
    escaping(service, "killed")
    service.drop("killed", "test.hang")
    pids = recorded(service, "killed")
    pid = m.show("loopabull@killed.service", "MainPID")["MainPID"]
    m.systemctl("kill", "-s", "KILL", "loopabull@killed.service")
    wait_until(lambda: m.show("loopabull@killed.service", "NRestarts")["NRestarts"] == "1", 30,
               what="the restart")
    m.wait_active("loopabull@killed.service")
    assert m.show("loopabull@killed.service", "MainPID")["MainPID"] not in (pid, "0")
    assert alive(service, pids) == []
    # The new run works (the spool gives it the hang event again, as job 1: what ran with the
    # killed supervisor was never answered).
    service.drop("killed", "test.end")
    job = service.wait_job("killed", 2)
    assert (job["routing_key"], job["result"]) == ("test.end", "succeeded"), job
    assert service.job("killed", 1)["routing_key"] == "test.hang"


def test_limits_in_the_job_cgroup(service):
    m = service.m
    escaping(service, "limits", memory_max="100MiB", tasks_max=64, cpu_quota="50%")
    service.drop("limits", "test.hang")
    recorded(service, "limits")
    job = cgroup_dir(service, "limits") + "/job-1"
    reason = m.enforcement_unavailable("memory")
    if reason:
        # Nothing to write to: the log says so, once, with the reason.
        log = service.journal("limits")
        assert re.search(r"cgroup executor: NOT ENFORCED in \S+ \(hybrid cgroup layout.*\): "
                         r"memory_max \(no memory controller\), tasks_max \(no pids controller\), "
                         r"cpu_quota \(no cpu controller\)", log), log
        assert m.run(f"test -e {job}/memory.max", check=False).returncode != 0
        pytest.skip(reason)
    assert m.run(f"cat {job}/memory.max").stdout.strip() == str(100 * 1024 * 1024)
    assert m.run(f"cat {job}/pids.max").stdout.strip() == "64"
    assert m.run(f"cat {job}/cpu.max").stdout.strip() == "50000 100000"


def test_without_delegation(service):
    """Run by hand in a service without Delegate=: type cgroup is refused with the reason, auto
    runs the jobs directly and says so in one line."""
    m = service.m
    for instance, executor in (("refused", "cgroup"), ("fallback", "auto")):
        cfg = service.configure(instance, type=executor)
        cfg["loopers"] = [{"name": "idle", "command": ["/usr/bin/sleep", "infinity"]}]
        m.write_file(f"/srv/{instance}.yml", json.dumps(cfg), mode=0o644)
    r = m.run(["systemd-run", "--wait", "--pipe", "--quiet", "-p", "User=loopabull",
               "loopabull", "--bus=none", "-i", "refused", "/srv/refused.yml"], check=False)
    assert r.returncode == 1, r
    assert "executor.type is cgroup, but our cgroup /system.slice/run-" in r.stdout + r.stderr, r
    assert "is not delegated to us (run loopabull as a service with Delegate=yes" in r.stdout + r.stderr, r
    r = m.run(["systemd-run", "--wait", "--pipe", "--quiet", "-p", "User=loopabull",
               "timeout", "3", "loopabull", "--bus=none", "-i", "fallback", "/srv/fallback.yml"],
              check=False)
    out = r.stdout + r.stderr
    assert len(re.findall(r"executor\.type auto: running jobs directly \(our cgroup \S+ is not "
                          r"delegated to us", out)) == 1, out


# No process loopabull starts may create a namespace: under the shipped unit
# (RestrictNamespaces=yes, whose filter refuses clone3, so the job moves itself into its cgroup)
# and with RestrictNamespaces=no in a drop-in, where loopabull's own filter is what refuses it
# and the job is created in its cgroup by clone3(CLONE_INTO_CGROUP). The job runs with
# seccomp: off, so that only these restrictions are in the way.
ATTACKER = r"""#!/bin/sh
out=/var/lib/loopabull/$INSTANCE/ns.txt
unshare -U true 2>/dev/null; echo "unshare-user=$?" >> "$out"
unshare -n true 2>/dev/null; echo "unshare-net=$?" >> "$out"
grep -E '^Seccomp:' /proc/self/status >> "$out"
cat /proc/self/cgroup >> "$out"
"""


@pytest.mark.parametrize("restrict", ["yes", "no"], ids=["unit-as-shipped", "drop-in-no"])
def test_the_service_refuses_namespaces_to_its_jobs(service, restrict):
    m = service.m
    name = f"ns{restrict}"
    m.write_file("/usr/local/bin/ns-attacker", ATTACKER, mode=0o755)
    if restrict == "no":
        m.write_file(f"/etc/systemd/system/loopabull@{name}.service.d/ns.conf",
                     "[Service]\nRestrictNamespaces=no\n")
        m.systemctl("daemon-reload")
    cfg = service.configure(name, type="cgroup", seccomp="off")
    cfg["ansible"]["playbook_cmd"] = "/usr/local/bin/ns-attacker"
    cfg["ansible"]["environment"] = {"INSTANCE": name}
    m.write_file(f"{service.confdir}/{name}.yml", json.dumps(cfg), mode=0o640, owner="root:loopabull")
    m.systemctl("start", f"loopabull@{name}.service")
    unit = m.show(f"loopabull@{name}.service", "RestrictNamespaces")["RestrictNamespaces"]
    assert unit == restrict, unit
    wait_until(lambda: m.run(["test", "-d", f"/var/spool/loopabull/{name}"], check=False).returncode == 0,
               30, what="the spool")
    service.drop(name, "test.end")
    assert service.wait_job(name, 1)["result"] == "succeeded"
    report = m.run(f"cat /var/lib/loopabull/{name}/ns.txt").stdout
    assert "unshare-user=0" not in report and "unshare-net=0" not in report, report
    assert re.search(r"^Seccomp:\s+2$", report, re.M), report
    assert f"/loopabull@{name}.service/job-1" in report, report
    main = m.show(f"loopabull@{name}.service", "MainPID")["MainPID"]
    assert re.search(r"^Seccomp:\s+2$", m.run(f"cat /proc/{main}/status").stdout, re.M)
    assert "namespaces: not restricted" not in service.journal(name)
