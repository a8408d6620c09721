# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures that run the real loopabull binary with real looper processes."""
import json
import os
import pwd
import re
import shutil
import signal
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
        if user is not None:
            # Run as a dedicated, unprivileged user, as in production.
            pw = pwd.getpwnam(user)
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
