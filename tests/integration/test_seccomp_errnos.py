# SPDX-License-Identifier: GPL-3.0-or-later
"""The default seccomp filter's answer for each kind of system call number, as a playbook sees it:
allowed calls work, known calls outside the allowlist (and clone with a namespace flag) fail with
EPERM, numbers the filter's libseccomp does not know fail with ENOSYS (so that glibc falls back).
The filter is built with ENOSYS as its default and searched as a tree (docs/PERFORMANCE.md): this
pins that the layout changed nothing a playbook can see."""
import errno

from conftest import base_config, event, read_answers, scripted, wait_until

PROBE = r'''#!/usr/bin/python3
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return 0 if r >= 0 else ctypes.get_errno()
results = {
    "getpid": call(39),
    "ptrace": call(101, 16, 1, 0, 0),          # known, not allowed
    "clone_newuser": call(56, 0x10000000 | 17, 0, 0, 0, 0),  # CLONE_NEWUSER | SIGCHLD
    "unknown_900": call(900),                  # no system call has this number
}
with open(sys.argv[1], "w") as f:
    f.write(" ".join(f"{k}={v}" for k, v in results.items()))
'''


def test_errnos_of_the_default_filter(workdir, supervisor):
    out = workdir / "out" / "errnos"
    probe = workdir / "probe.py"
    # The playbook's path comes after the command's own arguments: the probe writes to argv[1].
    probe.write_text(PROBE)
    probe.chmod(0o755)
    (workdir / "playbooks" / "probe.key.yml").write_text("- hosts: localhost\n")
    answers = workdir / "answers"
    cfg = base_config(workdir, [scripted(lines=[event("probe.key", {}, id="p")], answers=str(answers))],
                      ansible={"playbooks_dir": str(workdir / "playbooks"),
                               "playbook_cmd": [str(probe), str(out)]})
    sup = supervisor(cfg)
    wait_until(lambda: read_answers(answers), what="the answer")
    assert read_answers(answers)[0]["result"] == "succeeded", sup.log[-3000:]
    got = dict(kv.split("=") for kv in out.read_text().split())
    assert got == {"getpid": "0", "ptrace": str(errno.EPERM), "clone_newuser": str(errno.EPERM),
                   "unknown_900": str(errno.ENOSYS)}, got
    assert sup.stop() == 0
