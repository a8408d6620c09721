# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers for the spool looper's tests: the looper driven directly through protocol v1 (for
answers the supervisor does not send yet, and attacks on its directories), a recording
playbook_cmd, and the producer tool."""
import json
import os
import queue
import subprocess
import threading
from pathlib import Path

import yaml

from conftest import BUILD, LOOPER_DIR, base_config, wait_until

CTL = Path(os.environ.get("LOOPABULL_CTL", BUILD / "src" / "loopabullctl")).resolve()
if not CTL.exists():  # the layout of issue 11
    CTL = (BUILD / "src" / "ctl" / "loopabullctl").resolve()


class SpoolLooper:
    """The bundled spool looper as the supervisor runs it: events on its stdout, answers on its
    stdin, diagnostics on its stderr (kept in a file)."""

    def __init__(self, directory, tmp, args=(), env=None):
        self.log_path = Path(tmp) / f"spool-{os.getpid()}-{id(self)}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([str(LOOPER_DIR / "spool"), *args, str(directory)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, env={**os.environ, **(env or {})})
        self.events = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_log("watching ")

    def _read(self):
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    @property
    def log(self):
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text, timeout=10):
        wait_until(lambda: text in self.log or self.proc.poll() is not None, timeout,
                   what=repr(text))
        assert text in self.log, f"the looper exited ({self.proc.returncode}):\n{self.log}"

    def event(self, timeout=10):
        return self.events.get(timeout=timeout)

    def no_event(self, wait=0.5):
        try:
            e = self.events.get(timeout=wait)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected event {e}")

    def answer(self, event_id, result, **extra):
        self.proc.stdin.write((json.dumps({"id": event_id, "result": result, **extra}) + "\n")
                              .encode())
        self.proc.stdin.flush()

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def drop(spool, name, body):
    """Written under a dot name, then renamed in."""
    tmp = Path(spool) / f".{name}.tmp"
    tmp.write_text(json.dumps(body) if not isinstance(body, str) else body)
    os.rename(tmp, Path(spool) / name)


def events_left(spool):
    return sorted(f for f in os.listdir(spool) if not f.startswith(".") and f != "failed")


def submit(spool, key, body=None, check=True):
    """loopabullctl submit; returns the event id it printed."""
    r = subprocess.run([str(CTL), "submit", "--spool", str(spool), key, "-"],
                       input="" if body is None else json.dumps(body), capture_output=True,
                       text=True)
    if check:
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()
    return r


class _Unsafe(yaml.SafeLoader):
    pass


_Unsafe.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


def recorder(workdir, keys=()):
    """A playbook_cmd that copies each job's vars file into workdir/records/ when the job starts,
    then sleeps for as many seconds as workdir/sleep says. The playbooks for keys exist (the
    recorder never reads them)."""
    records = Path(workdir) / "records"
    records.mkdir(exist_ok=True)
    script = Path(workdir) / "record.sh"
    script.write_text(f"""#!/bin/sh
for a; do v=$a; done
v=${{v#@}}
cp "$v" "{records}/$(basename "$v").$$.tmp" && mv "{records}/$(basename "$v").$$.tmp" "{records}/$(basename "$v").$$"
s=$(cat "{workdir}/sleep" 2>/dev/null || echo 0)
sleep "$s"
""")
    script.chmod(0o755)
    for key in keys:
        (Path(workdir) / "playbooks" / f"{key}.yml").write_text("- hosts: localhost\n")
    return str(script)


def records(workdir):
    """What each job got: (event id, body), in no particular order. The body is the `event`
    variable when the supervisor namespaces it (issue 12), else the top-level keys."""
    out = []
    d = Path(workdir) / "records"
    for f in d.iterdir():
        if f.name.endswith(".tmp"):
            continue
        v = yaml.load(f.read_text(), Loader=_Unsafe)
        body = v["event"] if isinstance(v.get("event"), dict) else {
            k: x for k, x in v.items() if not k.startswith("loopabull_")}
        out.append((v.get("loopabull_event_id"), body))
    return out


def spool_config(workdir, spool, **over):
    return base_config(workdir, [{"name": "spool", "command": ["spool", str(spool)]}], **over)
