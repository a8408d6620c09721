# SPDX-License-Identifier: GPL-3.0-or-later
"""Every playbook runs under rlimits, no_new_privs and the seccomp allowlist; common modules
work under it, and what it forbids fails with EPERM instead of crashing the run."""
import os
import subprocess

import pytest

from conftest import BIN, LOOPER_DIR, base_config, event, needs_ansible, read_answers, scripted, wait_until


def run_one(workdir, supervisor, key, body, **executor):
    answers = workdir / "answers"
    cfg = base_config(workdir, [scripted(lines=[event(key, body, id="x")], answers=str(answers))])
    cfg["executor"].update(executor)
    sup = supervisor(cfg)
    wait_until(lambda: read_answers(answers), 180, what="the answer")
    return sup, read_answers(answers)[0]


def status_field(text, name):
    return next(l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith(name + ":"))


@needs_ansible
def test_common_modules_run_under_the_default_filter(workdir, supervisor):
    out = workdir / "out"
    sup, answer = run_one(workdir, supervisor, "test.sandbox", {"out_dir": str(out)})
    assert answer["result"] == "succeeded", sup.log[-3000:]
    status = (out / "status.txt").read_text()
    assert status_field(status, "Seccomp") == "2"
    assert status_field(status, "NoNewPrivs") == "1"
    assert "PIPES WORK" in status
    assert (out / "templated.txt").read_text().startswith("routing key test.sandbox")
    assert oct((out / "dir").stat().st_mode & 0o777) == "0o750"


@needs_ansible
def test_seccomp_off_runs_unfiltered(workdir, supervisor):
    """The same run with seccomp: off (and the namespace restriction, a filter too, lifted:
    test_namespaces.py): proof that the Seccomp: 2 above comes from loopabull."""
    out = workdir / "out"
    sup, answer = run_one(workdir, supervisor, "test.sandbox", {"out_dir": str(out)}, seccomp="off",
                          restrict_namespaces=False)
    assert answer["result"] == "succeeded"
    assert status_field((out / "status.txt").read_text(), "Seccomp") == "0"
    assert "seccomp is off" in sup.log


@needs_ansible
@pytest.mark.parametrize("attack,needle", [
    (["unshare", "-U", "true"], "Operation not permitted"),
    (["unshare", "-n", "true"], "Operation not permitted"),
    (["mount", "-t", "tmpfs", "tmpfs", "/mnt"], "ermission denied"),
    (["/usr/bin/python3", "-c",
      "import ctypes,os,sys; l=ctypes.CDLL(None,use_errno=True); r=l.ptrace(16,1,0,0); "
      "e=ctypes.get_errno(); sys.stderr.write(os.strerror(e)); sys.exit(0 if r==0 else 1)"],
     "Operation not permitted"),
    (["/usr/bin/python3", "-c",
      "import ctypes,os,sys; l=ctypes.CDLL(None,use_errno=True); r=l.syscall(425,1,0); "
      "e=ctypes.get_errno(); sys.stderr.write(os.strerror(e)); sys.exit(0 if r>=0 else 1)"],
     "Operation not permitted"),  # io_uring_setup
])
def test_forbidden_calls_fail_with_eperm(workdir, supervisor, attack, needle):
    out = workdir / "out"
    sup, answer = run_one(workdir, supervisor, "test.attack", {"out_dir": str(out), "attack": attack})
    assert answer["result"] == "failed" and answer["exit_code"] == 2, sup.log[-3000:]
    report = (out / "attack.txt").read_text()
    assert not report.startswith("rc=0"), report
    assert needle in report, report


def test_core_dumps_off_and_descriptor_limit(workdir, supervisor):
    script = workdir / "limits.sh"
    out = workdir / "out" / "limits"
    script.write_text(f"#!/bin/sh\n(ulimit -c; ulimit -n; grep NoNewPrivs /proc/self/status) > {out}\n")
    script.chmod(0o755)
    (workdir / "playbooks" / "limits.key.yml").write_text("- hosts: localhost\n")
    answers = workdir / "answers"
    cfg = base_config(workdir, [scripted(lines=[event("limits.key", {}, id="l")], answers=str(answers))],
                      ansible={"playbooks_dir": str(workdir / "playbooks"), "playbook_cmd": str(script)})
    cfg["executor"]["limit_nofile"] = 512
    sup = supervisor(cfg)
    wait_until(lambda: read_answers(answers), what="the answer")
    assert out.read_text().split() == ["0", "512", "NoNewPrivs:", "1"]
    assert sup.stop() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal concerns a supervisor running as root")
def test_refuses_to_run_playbooks_as_root_unless_allowed(workdir):
    cfg = workdir / "c.yml"
    cfg.write_text(f"routing_keys: [all]\nloopers:\n  - name: s\n    command: [spool, {workdir}/spool]\n"
                   f"ansible:\n  playbooks_dir: {workdir / 'playbooks'}\n  playbook_cmd: /bin/true\n"
                   f"runtime_dir: {workdir / 'run'}\n")
    r = subprocess.run([str(BIN), str(cfg)], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "LOOPABULL_LOOPER_DIR": str(LOOPER_DIR)})
    assert r.returncode == 1
    assert "refusing to run playbooks as root" in r.stderr


def test_profile_adds_and_removes_syscalls(workdir):
    profile = workdir / "profile.yml"
    profile.write_text("base: default\nallow: [ptrace]\ndeny: [mkdir, nosuchcall]\n")
    cfg = workdir / "c.yml"
    cfg.write_text(f"routing_keys: [all]\nloopers:\n  - name: s\n    command: [spool, {workdir}/spool]\n"
                   f"ansible:\n  playbooks_dir: {workdir / 'playbooks'}\n  playbook_cmd: /bin/true\n"
                   f"executor:\n  seccomp: {profile}\n")
    env = {**os.environ, "LOOPABULL_LOOPER_DIR": str(LOOPER_DIR)}
    r = subprocess.run([str(BIN), "--print-seccomp-policy", str(cfg)], capture_output=True, text=True, env=env)
    assert r.returncode == 1
    assert f"{profile}:3:15: unknown system call 'nosuchcall' in 'deny'" in r.stderr
    profile.write_text("base: default\nallow: [ptrace]\ndeny: [mkdir]\n")
    r = subprocess.run([str(BIN), "--print-seccomp-policy", str(cfg)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    names = [l for l in r.stdout.splitlines() if not l.startswith("#")]
    assert "ptrace" in names and "mkdir" not in names and "mkdirat" in names
    default = subprocess.run([str(BIN), "--print-seccomp-policy"], capture_output=True, text=True, env=env)
    dnames = [l for l in default.stdout.splitlines() if not l.startswith("#")]
    for forbidden in ("ptrace", "mount", "unshare", "setns", "bpf", "io_uring_setup", "userfaultfd",
                      "keyctl", "kexec_load", "init_module", "perf_event_open", "swapon", "reboot"):
        assert forbidden not in dnames
    for needed in ("execve", "clone", "openat", "read", "write", "socket", "connect", "wait4"):
        assert needed in dnames


@needs_ansible
@pytest.mark.skipif(os.geteuid() != 0, reason="the private sshd needs root to accept logins")
@pytest.mark.parametrize("deny,result", [([], "succeeded"), (["connect"], "failed")],
                         ids=["default-filter", "connect-denied"])
def test_playbook_over_ssh_under_the_default_filter(workdir, supervisor, sshd, deny, result):
    """ssh works under the default filter; with connect denied it does not (the filter is
    really in the way of the ssh client)."""
    inventory = workdir / "inventory"
    inventory.write_text(
        f"target ansible_host=127.0.0.1 ansible_port={sshd['port']} ansible_user=root "
        f"ansible_ssh_private_key_file={sshd['key']} "
        "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'\n")
    answers = workdir / "answers"
    out = workdir / "out"
    cfg = base_config(workdir, [scripted(lines=[event("test.ssh", {"out_dir": str(out)}, id="s")],
                                         answers=str(answers))],
                      ansible={"playbooks_dir": str(workdir / "playbooks"), "inventory": str(inventory)})
    if deny:
        profile = workdir / "profile.yml"
        profile.write_text(f"base: default\ndeny: {deny}\n")
        cfg["executor"]["seccomp"] = str(profile)
    sup = supervisor(cfg)
    wait_until(lambda: read_answers(answers), 120, what="the answer")
    assert read_answers(answers)[0]["result"] == result, sup.log[-4000:]
    if result == "succeeded":
        assert (out / "ssh.txt").read_text().strip() == "root"
    else:
        assert "UNREACHABLE" in sup.log, sup.log[-4000:]
    assert "seccomp is off" not in sup.log
