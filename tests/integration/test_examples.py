# SPDX-License-Identifier: GPL-3.0-or-later
"""The shipped examples work: configs validate, and loopers in Python and POSIX sh drive real
playbooks through the supervisor."""
import os
import shutil
import subprocess

import pytest
import yaml

from conftest import BIN, LOOPER_DIR, ROOT, Supervisor, needs_ansible, wait_until

EXAMPLES = ROOT / "examples"


@pytest.mark.parametrize("name", ["quickstart", "stdin-python", "stdin-shell", "legacy-readme",
                                  "legacy-0.0.7", "scope", "amqp", "webhook", "journal"])
def test_example_config_validates(name):
    r = subprocess.run([str(BIN), "--check-config", str(EXAMPLES / "configs" / f"{name}.yml")],
                       capture_output=True, text=True,
                       env={**os.environ, "LOOPABULL_LOOPER_DIR": str(LOOPER_DIR)})
    assert r.returncode == 0, r.stderr


@needs_ansible
@pytest.mark.parametrize("name", ["stdin-python", "stdin-shell"])
def test_example_looper_drives_a_playbook(tmp_path, name):
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    cfg_path = tmp_path / "examples" / "configs" / f"{name}.yml"
    cfg = yaml.safe_load(cfg_path.read_text())
    fifo = tmp_path / "input.fifo"
    os.mkfifo(fifo)
    looper = next(l for l in cfg["loopers"] if "stdin" in l["name"])
    looper["config"]["input"] = str(fifo)
    cfg["loopers"] = [looper]
    cfg["runtime_dir"] = str(tmp_path / "run")
    cfg.setdefault("executor", {})["allow_root"] = True  # CI runs as root
    sup = Supervisor(cfg_path.parent, cfg)
    try:
        fd = os.open(fifo, os.O_WRONLY)
        os.write(fd, b'org.example.hello {"who": "an example looper"}\n')
        os.close(fd)
        sup.wait_log(r"job 1 \(org.example.hello\) succeeded", timeout=120)
        assert "Hello an example looper, from event org.example.hello" in sup.log
        assert sup.stop() == 0
    finally:
        if sup.proc.poll() is None:
            sup.kill()
