#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""loopabull's warm runner (the "zygote"): ansible-playbook without its cold start.

The supervisor starts this program with the interpreter that ansible-playbook's own `#!` names,
with the jobs' environment and under the jobs' sandbox, and speaks to it on descriptor 3 (a
SOCK_SEQPACKET socket; one message is one datagram, fields separated by NUL bytes):

  runner -> supervisor
    ready   PID VERSION CONFIG_FILE   once ansible is imported
    started ID PID          + the child's pidfd: it is in a session of its own (PID = PGID)
    failed  ID REASON       the job could not be forked; the supervisor starts it cold
    stale   ID REASON       ansible.cfg or the installed ansible changed: start it cold and
                            replace me (I take no more jobs)
    exited  ID WAITSTATUS   as waitpid(2) gives it
  supervisor -> runner
    run ID GATE DEATHSIG JOURNAL_HEADER ARGC ARGV... ENV...
                            + descriptors: stdin, stdout, stderr, and the gate when GATE is 1;
                            DEATHSIG: the child's parent-death signal, 0 for none (the
                            direct executor's jobs outlive a killed supervisor, so that its
                            next start finds their whole tree from its process records)
    (end of file)           take no more jobs; exit once the running ones have been reported

Importing ansible costs about 0.35 s of CPU, nearly all of a trivial playbook's run; a fork of
a process that has imported it once does not pay it again (FIELD-NOTES 9). The runner itself
never runs a playbook, so every job starts from the same state: the one right after the import.
Every child takes what a fresh `ansible-playbook` process would have: its standard streams, the
signal handlers and mask Python starts with, the umask, working directory and environment the
runner started with, a private local temporary directory, and the warnings the import printed.
"""

import array
import atexit
import ctypes
import io
import os
import re
import select
import signal
import socket
import stat
import sys
import traceback

SOCK_FD = 3
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
# The supervisor stops a runner that takes longer than this to answer; a request is small.
MAX_MESSAGE = 1 << 20


def fingerprint(package_dir):
    """What a change of ansible.cfg or of the installed ansible changes (a package upgrade
    replaces files in the package directory, which changes its mtime)."""
    from ansible.config.manager import find_ini_config_file

    found = find_ini_config_file()
    marks = [("config", found)]
    for path in (found, package_dir):
        try:
            st = os.stat(path) if path else None
            marks.append((path, st and (st.st_mtime_ns, st.st_ino, st.st_size)))
        except OSError as e:
            marks.append((path, e.errno))
    return marks, found


def main():
    sock = socket.socket(fileno=SOCK_FD)
    os.set_inheritable(SOCK_FD, False)
    umask = os.umask(0o022)
    os.umask(umask)
    cwd = os.getcwd()
    zygote = os.getpid()
    handlers = {s: signal.getsignal(s) for s in signal.valid_signals()
                if s not in (signal.SIGKILL, signal.SIGSTOP)}
    # ansible-playbook is run as a script: its directory is the first entry of the path.
    script = sys.argv[1] if len(sys.argv) > 1 else "/usr/bin/ansible-playbook"
    sys.path[0] = os.path.dirname(script)

    # What the import prints (config warnings: ansible.constants prints them when first
    # imported) would be printed by every cold run: capture it, and replay it in each job.
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    capture = os.memfd_create("loopabull-warm-import")
    os.dup2(capture, 1)
    os.dup2(capture, 2)
    try:
        import ansible
        import ansible.constants as C
        from ansible.cli.playbook import main as playbook_main
        # What every run needs: importing it here is what makes a job cheap (FIELD-NOTES 9).
        import ansible.executor.playbook_executor  # noqa: F401
        import ansible.executor.task_queue_manager  # noqa: F401
        import ansible.executor.process.worker  # noqa: F401
        import ansible.inventory.manager  # noqa: F401
        import ansible.playbook  # noqa: F401
        import ansible.plugins.loader as loader
        import ansible.template  # noqa: F401
        import ansible.vars.manager  # noqa: F401
        for kind, name in (("callback_loader", "default"), ("connection_loader", "local"),
                           ("strategy_loader", "linear"), ("action_loader", "normal"),
                           ("inventory_loader", "ini"), ("inventory_loader", "yaml"),
                           ("vars_loader", "host_group_vars")):
            try:
                getattr(loader, kind).get(name, class_only=True)
            except Exception:  # an optional speed-up only
                pass
        from ansible.release import __version__
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
    import_output = os.pread(capture, 1 << 20, 0)
    os.close(capture)
    # The import made a local temporary directory for this process and registered its removal;
    # each job makes its own (see child()), so this one goes now.
    # Only that removal is unregistered: other exit functions (multiprocessing's) must stay
    # armed for the jobs, and must not run here.
    from ansible.config.manager import cleanup_tmp_file
    atexit.unregister(cleanup_tmp_file)
    own_tmp = getattr(C, "DEFAULT_LOCAL_TMP", None)
    if own_tmp:
        cleanup_tmp_file(own_tmp)
    package_dir = os.path.dirname(ansible.__file__)
    marks, config_file = fingerprint(package_dir)

    sock.send(b"\0".join([b"ready", str(zygote).encode(), __version__.encode(),
                          os.fsencode(config_file or "")]))

    children = {}  # pidfd -> (pid, job id)
    accepting = True
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    while accepting or children:
        for fd, _ in poller.poll():
            if fd != sock.fileno():
                pid, job = children.pop(fd)
                poller.unregister(fd)
                os.close(fd)
                _, status = os.waitpid(pid, 0)
                send(sock, [b"exited", job, str(status).encode()])
                continue
            try:
                data, fds = recv(sock)
            except ConnectionResetError:
                data, fds = b"", []
            if not data:
                accepting = False
                poller.unregister(sock.fileno())
                continue
            fields = data.split(b"\0")
            job = fields[1]
            new, why = fingerprint(package_dir)
            if new != marks:
                for fd_ in fds:
                    os.close(fd_)
                send(sock, [b"stale", job,
                            b"ansible.cfg or the installed ansible changed on disk"])
                accepting = False
                poller.unregister(sock.fileno())
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            sync_r, sync_w = os.pipe()
            try:
                pid = os.fork()
            except OSError as e:
                for fd_ in fds + [sync_r, sync_w]:
                    os.close(fd_)
                send(sock, [b"failed", job, os.fsencode("fork: " + e.strerror)])
                continue
            if pid == 0:
                os.close(sync_r)
                child(sock, [fd for fd in children], sync_w, fields, fds, playbook_main,
                      C, handlers, umask, cwd, zygote, import_output, script)
            os.close(sync_w)
            for fd_ in fds:
                os.close(fd_)
            # The child says when it is the leader of its own session, so that the supervisor
            # can signal its process group as soon as it hears of it.
            os.read(sync_r, 1)
            os.close(sync_r)
            pidfd = os.pidfd_open(pid)
            children[pidfd] = (pid, job)
            poller.register(pidfd, select.POLLIN)
            sock.sendmsg([b"\0".join([b"started", job, str(pid).encode()])],
                         [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [pidfd]))])
    return 0


def send(sock, fields):
    sock.send(b"\0".join(fields))


def recv(sock):
    fds = array.array("i")
    data, anc, _, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(8 * fds.itemsize))
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - (len(payload) % fds.itemsize)])
    return data, list(fds)


def child(sock, pidfds, sync_w, fields, fds, playbook_main, C, handlers, umask, cwd, zygote,
          import_output, script):
    """The job's process: never returns."""
    code = 127
    try:
        sock.close()
        for fd in pidfds:
            os.close(fd)
        os.setsid()
        # Like a cold run's death signal: with one, the job does not outlive the runner (nor,
        # since the runner has SIGKILL as its own, the supervisor). Without (the direct
        # executor), it outlives both and holds its tree below it until the supervisor, or its
        # next start, kills it (src/supervisor/proc-tree.hpp).
        libc = ctypes.CDLL(None, use_errno=True)
        death_signal = int(fields[3])
        if death_signal:
            libc.prctl(PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        # As a cold direct job's first process: what the playbook orphans stays below it, so
        # that a timeout or cancel reaches the whole tree (prctl(2) PR_SET_CHILD_SUBREAPER).
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        os.write(sync_w, b"x")
        os.close(sync_w)
        if death_signal and os.getppid() != zygote:
            os._exit(127)
        gate_flag, header = fields[2], fields[4]
        argc = int(fields[5])
        argv = [os.fsdecode(a) for a in fields[6:6 + argc]]
        env = [os.fsdecode(e) for e in fields[6 + argc:]]
        gate = fds[3] if gate_flag == b"1" else -1
        for i in range(3):
            os.dup2(fds[i], i)
        for fd in fds[:3]:
            if fd > 2:
                os.close(fd)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        for sig, handler in handlers.items():
            try:
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            except (OSError, ValueError, TypeError):
                pass
        os.umask(umask)
        os.chdir(cwd)
        os.environ.clear()
        for item in env:
            name, _, value = item.partition("=")
            os.environ[name] = value
        code = 125
        if gate >= 0:
            # Until the supervisor has moved this process into its scope.
            go = b""
            while True:
                try:
                    go = os.read(gate, 1)
                    break
                except InterruptedError:
                    continue
            os.close(gate)
            if len(go) != 1:
                os._exit(125)
        if header:
            connect_journal(header)
        code = run(argv, playbook_main, C, import_output, script)
    except BaseException:
        try:
            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:
            pass
    os._exit(code)


def connect_journal(header):
    """stdout and stderr to a journald stream opened from inside the scope, so that journald
    files the output under the scope's unit (as the cold path does)."""
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect("/run/systemd/journal/stdout")
        s.sendall(header)
        s.shutdown(socket.SHUT_RD)
    except OSError:
        return
    os.dup2(s.fileno(), 1)
    os.dup2(s.fileno(), 2)
    s.close()


def run(argv, playbook_main, C, import_output, script):
    """What `python3 /usr/bin/ansible-playbook ARGS` does after its imports, with its exit
    status; a SystemExit with text is printed and is 1, as the interpreter does."""
    # A local temporary directory of the job's own (the import made the runner's, now gone);
    # resolving it again makes it, and registers its removal at exit, as in a cold run.
    try:
        C.DEFAULT_LOCAL_TMP = C.config.get_config_value("DEFAULT_LOCAL_TMP")
    except Exception:
        pass
    sys.argv = list(argv)
    sys.argv[0] = re.sub(r"(-script\.pyw|\.exe)?$", "", sys.argv[0])
    if import_output:
        os.write(2, import_output)
    import ansible.cli
    code = 0
    try:
        ansible.cli.check_blocking_io()
        playbook_main(sys.argv)
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code & 0xFF
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
    return code


if __name__ == "__main__":
    sys.exit(main())
