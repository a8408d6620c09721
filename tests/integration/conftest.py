# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures that run the real loopabull binary with real looper processes."""
import json
import os
import pwd
import re
import shutil
import signal
import socket
import tempfile
import subprocess
from pathlib import Path

import pytest
import yaml

# tests/waiting.py: shared with the system tier.
import sys
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from waiting import wait_until  # noqa: E402,F401  (re-exported to the tests)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BUILD = Path(os.environ.get("LOOPABULL_BUILD_DIR", ROOT / "build")).resolve()
BIN = Path(os.environ.get("LOOPABULL_BIN", BUILD / "src" / "loopabull")).resolve()
LOOPER_DIR = Path(os.environ.get("LOOPABULL_LOOPER_DIR", BUILD / "loopers"))
SCRIPTED = HERE / "loopers" / "scripted.py"
ANSIBLE = shutil.which("ansible-playbook")


def _sanitized():
    try:
        options = json.loads((BUILD / "meson-info" / "intro-buildoptions.json").read_text())
    except OSError:
        return False
    return any(o["name"] == "sanitize" and o["value"] is True for o in options)


# A -Dsanitize=true build (ASan+UBSan): memory figures include ASan's shadow and allocator.
SANITIZED = _sanitized()


def read_answers(path):
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def event(key, body=None, id=None):
    e = {"routing_key": key}
    if body is not None:
        e["body"] = body
    if id is not None:
        e["id"] = id
    return json.dumps(e)


def private_runtime_dir(tmp: Path, pw) -> Path:
    """$XDG_RUNTIME_DIR for one test's supervisor: 0700 and owned by the user it runs as."""
    d = tmp / "xdg-runtime"
    d.mkdir(mode=0o700, exist_ok=True)
    if pw is not None:
        os.chown(d, pw.pw_uid, pw.pw_gid)
    return d


class Supervisor:
    """One loopabull process with a config written from a dict."""

    def __init__(self, tmp: Path, config: dict, instance="test", env=None, preexec=None,
                 user=None, args=(), wrapper=()):
        self.tmp = tmp
        self.config_path = tmp / "loopabull.yml"
        self.log_path = tmp / "loopabull.log"
        self.write_config(config)
        self.instance = instance
        e = dict(os.environ)
        e["LOOPABULL_LOOPER_DIR"] = str(LOOPER_DIR)
        e.pop("NOTIFY_SOCKET", None)
        e.pop("JOURNAL_STREAM", None)
        e.update(env or {})
        pw = pwd.getpwnam(user) if user is not None else None
        if "runtime_dir" not in config and not {"XDG_RUNTIME_DIR", "RUNTIME_DIRECTORY"} & set(env or {}):
            # A config that cannot name its runtime directory (the legacy dialects) gets the
            # default, /tmp/loopabull-UID/INSTANCE, which parallel tests of one user would share:
            # the second supervisor rightly refuses a directory in use.
            e.pop("RUNTIME_DIRECTORY", None)
            e["XDG_RUNTIME_DIR"] = str(private_runtime_dir(tmp, pw))
        if pw is not None:
            # Run as a dedicated, unprivileged user, as in production.
            e.update(HOME=str(tmp), USER=user, LOGNAME=user)

            def preexec():
                os.setgroups([])
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*wrapper, str(BIN), "--instance", instance, *args, str(self.config_path)],
            stdout=self._log, stderr=subprocess.STDOUT, env=e, cwd=tmp,
            preexec_fn=preexec)
        self.wait_log(r"running with \d+ looper", what="the supervisor to start")

    def write_config(self, config):
        self.config_path.write_text(yaml.safe_dump(config))

    @property
    def log(self):
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern, timeout=30.0, count=1, what=None):
        rx = re.compile(pattern)

        def found():
            if self.proc.poll() is not None and len(rx.findall(self.log)) < count:
                raise AssertionError(f"loopabull exited ({self.proc.returncode}) before "
                                     f"{pattern!r}:\n{self.log[-4000:]}")
            return len(rx.findall(self.log)) >= count
        try:
            wait_until(found, timeout, what=what or repr(pattern))
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- log ---\n{self.log[-4000:]}") from None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self):
        self.proc.kill()
        self.proc.wait()
        self._log.close()


@pytest.fixture
def workdir(tmp_path):
    """A private copy of the test playbooks and an output directory."""
    shutil.copytree(HERE / "playbooks", tmp_path / "playbooks")
    (tmp_path / "out").mkdir()
    return tmp_path


@pytest.fixture
def user_workdir():
    """A work directory for a supervisor that runs as an unprivileged user ("nobody" when the
    tests run as root, the current user otherwise): for configs with no executor section,
    which cannot set allow_root."""
    d = Path(tempfile.mkdtemp(prefix="loopabull-test-"))
    d.chmod(0o755)
    shutil.copytree(HERE / "playbooks", d / "playbooks")
    (d / "out").mkdir()
    user = None
    if os.geteuid() == 0:
        user = "nobody"
        pw = pwd.getpwnam(user)
        for root, dirs, files in os.walk(d):
            for name in [root] + [os.path.join(root, f) for f in dirs + files]:
                os.lchown(name, pw.pw_uid, pw.pw_gid)
    yield d, user
    if not os.environ.get("LOOPABULL_KEEP_TMP"):
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def supervisor(workdir):
    started = []

    def start(config, **kw):
        s = Supervisor(workdir, config, **kw)
        started.append(s)
        return s
    yield start
    for s in started:
        if s.proc.poll() is None:
            s.kill()


def scripted(name="test", **cfg):
    return {"name": name, "command": [str(SCRIPTED)], "config": cfg}


def base_config(workdir, loopers, **over):
    cfg = {
        "loglevel": "debug",
        "routing_keys": ["all"],
        "runtime_dir": str(workdir / "run"),
        "loopers": loopers,
        "ansible": {"playbooks_dir": str(workdir / "playbooks")},
        # CI runs as root; a supervisor refuses to run playbooks as root unless told to.
        "executor": {"max_parallel": 2, "timeout": "2min", "allow_root": True},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    return cfg


needs_ansible = pytest.mark.skipif(ANSIBLE is None, reason="ansible-playbook (Debian's ansible-core) is not installed")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sshd_unavailable():
    """Why the test sshd cannot run here, or None."""
    if not os.path.exists("/usr/sbin/sshd"):
        return "openssh-server is not installed (tools/setup-deps installs it)"
    if os.geteuid() != 0:
        return "the private sshd needs root to accept logins"
    return None


@pytest.fixture
def sshd(tmp_path):
    """A private sshd on a loopback port of its own, with its keys and configuration in the
    test's directory, that lets root in with a fresh key (Debian's openssh-server). Yields
    port, key (the client's private key) and user; the inventory line for it is
    sshd["inventory"] (known hosts and multiplexing off, so that runs do not share state)."""
    reason = sshd_unavailable()
    if reason:
        pytest.skip(reason)
    d = tmp_path / "sshd"
    d.mkdir()
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)],
                       check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nPidFile {d / 'pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nStrictModes no\nUsePAM no\n"
        "PasswordAuthentication no\nPermitRootLogin prohibit-password\n")
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    with open(d / "log", "w") as log:
        proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_until(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 10, what="sshd")
        inventory = (f"target ansible_host=127.0.0.1 ansible_port={port} ansible_user=root "
                     f"ansible_connection=ssh ansible_ssh_private_key_file={d / 'client_key'} "
                     "ansible_ssh_args='-o ControlMaster=no' ansible_ssh_common_args='-o "
                     "StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR'")
        yield {"port": port, "key": str(d / "client_key"), "user": "root",
               "inventory": inventory}
    finally:
        proc.terminate()
        proc.wait(10)
