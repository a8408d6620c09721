# SPDX-License-Identifier: GPL-3.0-or-later
"""No process loopabull starts may create or join a namespace (executor.restrict_namespaces,
on by default): what systemd's RestrictNamespaces=yes did for the service before the cgroup
executor needed clone3. Each test attacks it as a job or a looper would: unshare(2) with
CLONE_NEWUSER and CLONE_NEWNET, and clone3(2) with CLONE_NEWNET, which a filter cannot read and
must refuse whole. Jobs run with seccomp: off here, so that only this restriction is in the way.

Loading a filter needs no_new_privs (the service has it) or CAP_SYS_ADMIN: run by hand as
another user without them, loopabull says it does not restrict namespaces, so these tests need
root."""
import os
import re
import signal

import pytest

from conftest import Supervisor, base_config, event, read_answers, scripted, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loading the filter by hand needs root")

# clone3 with CLONE_NEWNET through ctypes; a child, should one be made, leaves at once. Not
# CLONE_NEWUSER: in a chroot (as CI runs) the kernel refuses user namespaces to everyone
# (user_namespaces(7), EPERM), so only a network namespace shows what lifting the filter allows.
CLONE3 = ("import ctypes,os,struct; l=ctypes.CDLL(None,use_errno=True); "
          "a=ctypes.create_string_buffer(struct.pack('<QQQQQQQQQQQ',0x40000000,0,0,0,17,0,0,0,0,0,0),88); "
          "r=l.syscall(435,a,88); e=ctypes.get_errno(); "
          "os._exit(0) if r==0 else print('clone3=' + ('ok' if r>0 else os.strerror(e)))")

ATTACK = """#!/bin/sh
out=%s
unshare -U true 2>/dev/null; echo "unshare-user=$?" >> "$out"
unshare -n true 2>/dev/null; echo "unshare-net=$?" >> "$out"
/usr/bin/python3 -c "%s" >> "$out"
grep -E '^Seccomp(_filters)?:' /proc/self/status >> "$out"
echo done >> "$out"
"""


def attack_script(workdir, name):
    out = workdir / "out" / f"{name}.txt"
    script = workdir / f"{name}.sh"
    script.write_text(ATTACK % (out, CLONE3))
    script.chmod(0o755)
    return script, out


def report(out):
    text = out.read_text() if out.exists() else ""
    return dict(re.findall(r"^([\w-]+)[=:]\s*(.*)$", text, re.M)) if "done" in text else None


def run(workdir, supervisor, **executor):
    """One job of the attack script (seccomp off) and a looper that runs it first."""
    job, job_out = attack_script(workdir, "job")
    looper, looper_out = attack_script(workdir, "looper")
    answers = workdir / "answers"
    cfg = base_config(workdir, [scripted(lines=[event("test.ns", {}, id="n")], answers=str(answers)),
                                {"name": "attacker", "command": ["/bin/sh", "-c", f"{looper}; exec sleep 600"]}],
                      ansible={"playbooks_dir": str(workdir / "playbooks"), "playbook_cmd": str(job)})
    cfg["executor"].update(seccomp="off", **executor)
    (workdir / "playbooks" / "test.ns.yml").write_text("- hosts: localhost\n")
    sup = supervisor(cfg)
    wait_until(lambda: read_answers(answers), 60, what="the job's answer")
    assert read_answers(answers)[0]["result"] == "succeeded", sup.log[-3000:]
    return sup, wait_until(lambda: report(job_out), 30, what="the job's report"), \
        wait_until(lambda: report(looper_out), 30, what="the looper's report")


def test_jobs_and_loopers_cannot_create_namespaces(workdir, supervisor):
    sup, job, looper = run(workdir, supervisor)
    for who, r in (("job", job), ("looper", looper)):
        assert r["unshare-user"] != "0" and r["unshare-net"] != "0", (who, r)
        # A filter cannot read clone3's flags: the whole call is refused, as under systemd.
        assert r["clone3"] == "Function not implemented", (who, r)
        # Inherited from loopabull (which keeps clone3) and its own for every child.
        assert r["Seccomp"] == "2" and int(r["Seccomp_filters"]) >= 2, (who, r)
    status = open(f"/proc/{sup.proc.pid}/status").read()
    assert re.search(r"^Seccomp:\s+2$", status, re.M), status
    assert "not restricted" not in sup.log


def test_restrict_namespaces_false_lifts_it(workdir, supervisor):
    """The way out for playbooks that run containers (podman, mock): proof that the refusals
    above come from loopabull, not from this machine."""
    sup, job, looper = run(workdir, supervisor, restrict_namespaces=False)
    for who, r in (("job", job), ("looper", looper)):
        assert r["unshare-net"] == "0" and r["Seccomp"] == "0", (who, r)
        assert r["clone3"] == "ok", (who, r)
    assert "executor.restrict_namespaces is false" in sup.log


def test_a_job_cannot_ptrace_the_supervisor(user_workdir):
    """A job runs as loopabull's own user. With ptrace allowed to it (seccomp: off here) it
    could attach to the supervisor and use what only the supervisor may (clone3, its bus
    connection, the ledger), were the supervisor dumpable. Run as an unprivileged user: root's
    CAP_SYS_PTRACE would attach anyway."""
    workdir, user = user_workdir
    out = workdir / "out" / "ptrace.txt"
    script = workdir / "ptrace.sh"
    script.write_text(
        "#!/bin/sh\n/usr/bin/python3 -c \"import ctypes,os,sys; l=ctypes.CDLL(None,use_errno=True); "
        "p=int(sys.argv[1]); r=l.ptrace(16,p,0,0); e=ctypes.get_errno(); "
        "r==0 and l.ptrace(17,p,0,0); print('attach=' + ('ok' if r==0 else os.strerror(e)))\" "
        f"$PPID > {out}\n")
    script.chmod(0o755)
    answers = workdir / "answers"
    cfg = base_config(workdir, [scripted(lines=[event("test.ns", {}, id="p")], answers=str(answers))],
                      ansible={"playbooks_dir": str(workdir / "playbooks"), "playbook_cmd": str(script)})
    cfg["executor"] = {"seccomp": "off"}  # no allow_root: it runs as a plain user
    (workdir / "playbooks" / "test.ns.yml").write_text("- hosts: localhost\n")
    if user:
        import pwd
        pw = pwd.getpwnam(user)
        for p in (workdir / "playbooks" / "test.ns.yml", script):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    sup = Supervisor(workdir, cfg, user=user, instance="ptrace")
    try:
        wait_until(lambda: read_answers(answers), 60, what="the job's answer")
        assert read_answers(answers)[0]["result"] == "succeeded", sup.log[-3000:]
        assert out.read_text().strip() == "attach=Operation not permitted", out.read_text()
    finally:
        sup.kill()


def test_a_reload_says_the_restriction_waits_for_the_next_start(workdir, supervisor):
    """A filter cannot be taken back: a reload that turns it off warns, and one that turns it
    back on (as it still is) says nothing."""
    cfg = base_config(workdir, [scripted()])
    sup = supervisor(cfg)
    sup.write_config({**cfg, "executor": {**cfg["executor"], "restrict_namespaces": False}})
    sup.signal(signal.SIGHUP)
    sup.wait_log("configuration reloaded")
    sup.wait_log(r"executor.restrict_namespaces is false now, true since the start")
    sup.write_config(cfg)
    sup.signal(signal.SIGHUP)
    sup.wait_log("configuration reloaded", count=2)
    assert sup.log.count("restrict_namespaces is") == 1, sup.log[-2000:]
    assert sup.stop() == 0
