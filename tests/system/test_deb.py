# SPDX-License-Identifier: GPL-3.0-or-later
"""The Debian package on a booted Debian 12: installed with apt-get (its dependencies from
Debian's archive, present in the container, an overlay of the host root), an instance enabled
and running a spooled event's playbook, an upgrade to a higher version while the instance runs
(configuration kept, service restarted), then a purge (the user stays, the units go).

The package: LOOPABULL_DEB (tools/run-tests --builds sets it to the one it built), else
build-deb/loopabull_*.deb, else this test builds it with tools/build-deb (minutes). The
"higher version" is that package repacked with version VERSION+1 (dpkg-deb): what is tested is
the maintainer scripts' upgrade path, and a second compile would cost CI minutes for nothing.
"""
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
TESTDIR = "/srv/loopabull-test"
PLAYBOOK = """- hosts: localhost
  gather_facts: false
  tasks:
    - name: record the run
      ansible.builtin.copy:
        dest: "/var/lib/loopabull/{{ loopabull_instance }}/ran-{{ loopabull_job_id }}"
        content: "{{ event.who | default(who | default('nobody')) }}\\n"
"""
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


@pytest.fixture(scope="module")
def deb():
    given = os.environ.get("LOOPABULL_DEB")
    if given:
        return Path(given)
    found = sorted((REPO / "build-deb").glob("loopabull_*.deb"))
    if found:
        return found[-1]
    out = subprocess.run([str(REPO / "tools/build-deb"), "--nocheck", str(REPO / "build-deb")],
                         capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr
    return Path(out.stdout.split()[-1])


def repack(deb, version, dest):
    """The same package with another version (control file edited, rebuilt with dpkg-deb)."""
    tree = dest / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    control.write_text(re.sub(r"(?m)^Version: .*$", f"Version: {version}", control.read_text()))
    out = dest / f"loopabull_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "-b", str(tree), str(out)],
                   check=True, capture_output=True)
    return out


def deb_field(deb, field):
    return subprocess.run(["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True,
                          check=True).stdout.strip()


def apt_install(m, path):
    r = m.run(["apt-get", "install", "-y", "--no-install-recommends", str(path)], env=APT_ENV,
              timeout=300, check=False)
    assert r.returncode == 0, f"apt-get install failed:\n{r.stdout}\n{r.stderr}"
    return r


def status(m):
    return m.run(["dpkg-query", "-W", "-f", "${Status} ${Version}", "loopabull"],
                 check=False).stdout


def test_install_run_upgrade_purge(machine, deb, tmp_path):
    m = machine
    version = deb_field(deb, "Version")
    newer = repack(deb, version + "+1", tmp_path)
    for p in (deb, newer):
        m.write_file(f"/root/pkgs/{p.name}", p.read_bytes())
    # A host image built by Docker has a policy-rc.d that forbids maintainer scripts to start or
    # restart services (exit 101): a booted Debian machine has none. Gone from the overlay only.
    m.run(["rm", "-f", "/usr/sbin/policy-rc.d"])
    assert "install ok installed" not in status(m)
    assert m.run(["getent", "passwd", "loopabull"], check=False).returncode != 0

    # Installed through apt, which resolves the dependencies against what is installed.
    r = apt_install(m, f"/root/pkgs/{deb.name}")
    assert re.search(r"Unpacking loopabull \(" + re.escape(version), r.stdout), r.stdout
    assert status(m) == f"install ok installed {version}"
    assert "Commandline: apt-get install -y --no-install-recommends /root/pkgs/" in \
        m.read_file("/var/log/apt/history.log")
    # The postinst made the user (sysusers) and its directories (tmpfiles).
    assert m.run(["getent", "passwd", "loopabull"]).stdout.startswith("loopabull:")
    assert m.run(["stat", "-c", "%U %a", "/var/spool/loopabull"]).stdout == "loopabull 750\n"
    conffiles = m.run(["dpkg-query", "-W", "-f", "${Conffiles}", "loopabull"]).stdout
    assert "/etc/loopabull/example.yml" in conffiles

    # An instance, as the README says.
    m.write_file(f"{TESTDIR}/playbooks/test.hello.yml", PLAYBOOK)
    m.write_file(f"{TESTDIR}/inventory",
                 "localhost ansible_connection=local ansible_python_interpreter=/usr/bin/python3\n")
    m.write_file(f"{TESTDIR}/ansible.cfg", "[defaults]\nlocal_tmp = /tmp/ansible-local\n"
                 "remote_tmp = /tmp/ansible-remote\nretry_files_enabled = false\n")
    cfg = {
        "loglevel": "info",
        "routing_keys": ["all"],
        "loopers": [{"name": "spool", "command": ["spool"]}],
        "ansible": {"playbooks_dir": f"{TESTDIR}/playbooks", "layout": "name",
                    "cfg_file_path": f"{TESTDIR}/ansible.cfg", "inventory": f"{TESTDIR}/inventory"},
        "executor": {"type": "direct", "max_parallel": 2, "stop_timeout": "8s"},
    }
    config_text = json.dumps(cfg, indent=1)
    m.write_file("/etc/loopabull/releng.yml", config_text, mode=0o640)
    m.run(["chgrp", "loopabull", "/etc/loopabull/releng.yml"])
    # An administrator's change to the shipped conffile: an upgrade must keep it.
    example = m.read_file("/etc/loopabull/example.yml") + "# changed by the administrator\n"
    m.write_file("/etc/loopabull/example.yml", example)
    m.systemctl("enable", "--now", "loopabull@releng.service")
    m.wait_active("loopabull@releng.service")

    def drop(key, body):
        d = "/var/spool/loopabull/releng"
        text = shlex.quote(json.dumps(body))
        m.run(f"echo {text} > {d}/.incoming && mv {d}/.incoming {d}/{key}.json")

    def ran(job):
        return m.run(["cat", f"/var/lib/loopabull/releng/ran-{job}"], check=False).stdout

    drop("test.hello", {"who": "debian"})
    wait_until(lambda: ran(1), 120, what="the playbook of job 1")
    assert ran(1) == "debian\n"
    r = wait_until(lambda: (lambda r: r if "1 succeeded" in r.stdout else None)(
        m.run(["loopabullctl", "-i", "releng", "status"], check=False)), 30, what="status")
    assert r.returncode == 0
    assert "loopabull instance releng" in r.stdout
    assert "     Jobs: 0 running, 0 queued, 1 succeeded, 0 failed\n" in r.stdout, r.stdout
    before = m.show("loopabull@releng.service", "InvocationID", "MainPID")

    # Upgrade while the instance runs.
    r = apt_install(m, f"/root/pkgs/{newer.name}")
    assert f"Unpacking loopabull ({version}+1) over ({version})" in r.stdout, r.stdout
    assert status(m) == f"install ok installed {version}+1"
    assert m.read_file("/etc/loopabull/releng.yml") == config_text
    assert m.read_file("/etc/loopabull/example.yml") == example
    m.wait_active("loopabull@releng.service")
    after = m.show("loopabull@releng.service", "InvocationID", "MainPID")
    assert after["InvocationID"] != before["InvocationID"], "the instance was not restarted"
    assert after["MainPID"] != before["MainPID"]
    drop("test.hello", {"who": "upgraded"})
    # Job ids go on across the restart (the ledger in StateDirectory remembers the last one).
    wait_until(lambda: ran(2) == "upgraded\n", 120, what="a playbook after the upgrade")

    # Purge: the instance stops, the units and conffiles go, the user stays (Debian policy
    # 9.2.2: files it owns may remain).
    r = m.run(["apt-get", "purge", "-y", "loopabull"], env=APT_ENV, timeout=300, check=False)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    assert "install ok installed" not in status(m)
    assert m.run(["getent", "passwd", "loopabull"]).stdout.startswith("loopabull:")
    assert not m.path("/lib/systemd/system/loopabull@.service").exists()
    assert not m.path("/usr/lib/systemd/system/loopabull@.service").exists()
    assert not m.path("/etc/loopabull/example.yml").exists()
    assert not m.path("/etc/systemd/system/multi-user.target.wants/loopabull@releng.service").is_symlink()
    assert m.systemctl("is-active", "loopabull@releng.service", check=False).stdout.strip() in ("inactive", "unknown")
    units = m.systemctl("list-units", "--all", "--plain", "--no-legend", "loopabull*", check=False).stdout
    assert "loopabull@releng" not in units or "not-found" in units, units
    assert m.run(["which", "loopabull"], check=False).returncode != 0
