# SPDX-License-Identifier: GPL-3.0-or-later
"""Smoke tests of the harness: the container runs a real systemd that later tests can rely on."""
import json
import os
import subprocess

import pytest

from machine import Machine, MachineError, _mounts_under, _pids_in_pidns, unavailable_reason
from waiting import wait_until


def test_pid1_is_systemd_and_system_is_up(machine):
    assert machine.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    assert machine.run(["readlink", "/proc/1/exe"]).stdout.strip().endswith("/systemd")
    state = machine.run(["systemctl", "is-system-running"], check=False).stdout.strip()
    assert state in ("running", "degraded"), machine.systemctl("--failed", check=False).stdout
    assert machine.run(["systemd-detect-virt", "--container"]).stdout.strip() == "systemd-nspawn"
    assert machine.run(["hostname"]).stdout.strip() == machine.name
    # Our mask list is in effect.
    assert machine.systemctl("is-enabled", "postgresql.service", check=False).stdout.strip() == "masked"


def test_system_bus_answers(machine):
    r = machine.busctl("call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                       "org.freedesktop.DBus.Peer", "Ping")
    assert r.returncode == 0
    version = machine.busctl("get-property", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                             "org.freedesktop.systemd1.Manager", "Version").stdout
    assert version.startswith("s ")


def test_transient_scope_with_limits(machine):
    sleeper = machine.spawn(["systemd-run", "--scope", "-p", "MemoryMax=100M", "-p", "TasksMax=50",
                             "--unit=probe-scope", "sleep", "30"])
    machine.wait_active("probe-scope.scope", timeout=10)
    props = machine.show("probe-scope.scope", "MemoryMax", "TasksMax", "ActiveState", "ControlGroup")
    assert props["MemoryMax"] == str(100 * 1024 * 1024)
    assert props["TasksMax"] == "50"
    assert props["ActiveState"] == "active"
    assert props["ControlGroup"] == "/system.slice/probe-scope.scope"
    pid = machine.run(["pgrep", "-x", "sleep"]).stdout.split()
    assert len(pid) == 1
    machine.run(["kill", "-KILL", pid[0]])
    assert sleeper.wait(10) != 0
    # An empty scope is stopped and garbage-collected: systemd forgets it.
    wait_until(lambda: machine.show("probe-scope.scope", "LoadState")["LoadState"] == "not-found",
               what="probe-scope.scope to be gone")
    assert machine.systemctl("is-active", "probe-scope.scope", check=False).stdout.strip() == "inactive"


def test_tasks_limit_is_enforced(machine):
    reason = machine.enforcement_unavailable("pids")
    if reason:
        pytest.skip(reason)
    r = machine.run(["systemd-run", "--scope", "-p", "TasksMax=4", "--quiet", "sh", "-c",
                     "for i in 1 2 3 4 5 6 7 8; do sleep 3 & done; wait"], check=False)
    assert "fork" in r.stderr.lower() or "resource temporarily unavailable" in r.stderr.lower(), r


def test_polkitd_is_activatable(machine):
    r = machine.busctl("call", "org.freedesktop.PolicyKit1", "/org/freedesktop/PolicyKit1/Authority",
                       "org.freedesktop.DBus.Properties", "Get", "ss",
                       "org.freedesktop.PolicyKit1.Authority", "BackendName")
    assert r.stdout.startswith("v s "), r.stdout
    status = machine.busctl("status", "org.freedesktop.PolicyKit1").stdout
    assert "Comm=polkitd" in status
    machine.wait_active("polkit.service")
    # root is allowed to manage units without asking.
    machine.run(["pkcheck", "--action-id", "org.freedesktop.systemd1.manage-units", "--process", "1"])


def test_run_as_a_user(machine):
    machine.run(["useradd", "--create-home", "--shell", "/bin/bash", "probeuser"])
    assert machine.run(["id", "-un"], user="probeuser").stdout.strip() == "probeuser"
    env = machine.run(["sh", "-c", 'echo "$HOME $USER"; touch "$HOME/mine"'], user="probeuser").stdout
    assert env.split() == ["/home/probeuser", "probeuser"]
    assert machine.run(["stat", "-c", "%U", "/home/probeuser/mine"]).stdout.strip() == "probeuser"
    # A str runs through sh -c; a user cannot do what root can.
    r = machine.run("touch /etc/forbidden", user="probeuser", check=False)
    assert r.returncode != 0 and "Permission denied" in r.stderr
    # The container's users are its own: the host has no probeuser.
    assert subprocess.run(["id", "probeuser"], capture_output=True).returncode != 0


def test_files_journal_and_units(machine):
    machine.write_file("/etc/systemd/system/probe-echo.service",
                       "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/echo hello-journal\n")
    machine.write_file("/usr/local/libexec/probe-ok", "#!/bin/sh\necho ran as $(id -un)\n", mode=0o755)
    machine.daemon_reload()
    machine.systemctl("start", "probe-echo.service")
    machine.wait_active("probe-echo.service")
    wait_until(lambda: "hello-journal" in machine.journal("probe-echo.service"), what="journal line")
    assert machine.run(["/usr/local/libexec/probe-ok"]).stdout.strip() == "ran as root"
    # What the container writes shows on the host through path().
    machine.run("echo from-inside > /var/tmp/probe")
    assert machine.path("/var/tmp/probe").read_text() == "from-inside\n"
    assert not os.path.exists("/var/tmp/probe") or open("/var/tmp/probe").read() != "from-inside\n"
    # A failing unit: wait_active reports it with its journal.
    machine.write_file("/etc/systemd/system/probe-fail.service",
                       "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo about-to-fail; exit 3'\n")
    machine.daemon_reload()
    machine.systemctl("start", "probe-fail.service", check=False)
    with pytest.raises(MachineError, match="about-to-fail"):
        machine.wait_active("probe-fail.service", timeout=10)


def test_dbus_policy_needs_a_reload(machine):
    def request_name():
        return machine.busctl("call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                              "org.freedesktop.DBus", "RequestName", "su", "org.loopabull.Probe", "0",
                              check=False)
    r = request_name()
    assert r.returncode != 0 and "Access denied" in r.stderr, r
    machine.write_file("/etc/dbus-1/system.d/org.loopabull.Probe.conf", """<!DOCTYPE busconfig PUBLIC
 "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy user="root"><allow own="org.loopabull.Probe"/></policy>
</busconfig>
""")
    # dbus-daemon also notices the new file by itself (inotify), but later and asynchronously; a
    # test must reload (as package scripts do) to know the policy is in force.
    machine.reload_dbus()
    r = request_name()
    assert r.returncode == 0 and r.stdout.strip() == "u 1", r  # 1: primary owner


def test_meson_install_into_the_machine(installed_machine, build_dir):
    m = installed_machine
    opts = {o["name"]: o["value"] for o in json.loads(subprocess.run(
        ["meson", "introspect", "--buildoptions", str(build_dir)],
        capture_output=True, text=True, check=True).stdout)}
    binary = os.path.join(opts["prefix"], opts["bindir"], "loopabull")
    # Installed by this run into the overlay's upper layer, not inherited from the host.
    assert (m.upper / binary.lstrip("/")).is_file()
    assert m.run(["sh", "-c", "command -v loopabull"]).stdout.strip() == binary
    inside = m.run(["loopabull", "--version"]).stdout.strip()
    built = subprocess.run([str(build_dir / "src" / "loopabull"), "--version"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert inside == built and inside.startswith("loopabull ")


def test_teardown_leaves_nothing(machine_factory):
    m = Machine()
    m.start()
    tmp, pidns, nspawn_pid, pid1 = m.tmp, m.pidns, m.nspawn.pid, m.pid1
    assert _mounts_under(tmp)
    m.spawn(["sleep", "300"])  # a stray process inside must not survive
    m.run("nohup sleep 301 >/dev/null 2>&1 &")
    m.stop()
    assert m.timings["stop"] < 10
    mounts = open("/proc/mounts").read()
    assert str(tmp) not in mounts and m.name not in mounts
    assert not tmp.exists()
    assert _pids_in_pidns(pidns) == []
    assert not os.path.exists(f"/proc/{nspawn_pid}") and not os.path.exists(f"/proc/{pid1}")
    m.stop()  # idempotent


def test_two_machines_at_once_are_separate(machine_factory):
    a, b = machine_factory(), machine_factory()
    assert a.name != b.name and a.root != b.root
    a.run(["systemd-run", "--unit=only-in-a", "sleep", "60"])
    a.wait_active("only-in-a.service")
    assert b.systemctl("is-active", "only-in-a.service", check=False).stdout.strip() == "inactive"
    assert a.run(["hostname"]).stdout.strip() == a.name
    assert b.run(["hostname"]).stdout.strip() == b.name
    a.write_file("/etc/probe-a", "a\n")
    assert b.run(["test", "-e", "/etc/probe-a"], check=False).returncode == 1


@pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))
def test_failed_start_cleans_up():
    m = Machine(boot_timeout=0.001)
    with pytest.raises(MachineError):
        m.start()
    assert m.tmp is None
    assert m.nspawn.poll() is not None
