# SPDX-License-Identifier: GPL-3.0-or-later
"""The journal message catalog (issue 17): catalog/loopabull.catalog parses with the real
journalctl, names the MESSAGE_IDs the supervisor logs (src/supervisor/log.hpp), and meson installs
it where journalctl reads catalogs. That a job's messages carry the ids, and that `journalctl -x`
explains them, is checked with a booted systemd (tests/system/test_service.py)."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
BUILD = Path(os.environ.get("LOOPABULL_BUILD_DIR", ROOT / "build")).resolve()

CATALOG = ROOT / "catalog" / "loopabull.catalog"
pytestmark = pytest.mark.skipif(shutil.which("journalctl") is None, reason="journalctl (systemd) is needed")


def logged_ids():
    text = (ROOT / "src" / "supervisor" / "log.hpp").read_text()
    return set(re.findall(r'k\w+ = "([0-9a-f]{32})"', text))


def test_the_catalog_parses_and_lists_every_logged_id(tmp_path):
    catalogdir = tmp_path / "usr" / "lib" / "systemd" / "catalog"
    catalogdir.mkdir(parents=True)
    shutil.copy(CATALOG, catalogdir)
    r = subprocess.run(["journalctl", f"--root={tmp_path}", "--update-catalog"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr, r
    r = subprocess.run(["journalctl", f"--root={tmp_path}", "--list-catalog"],
                       capture_output=True, text=True, timeout=60, check=True)
    listed = {line.split()[0]: line for line in r.stdout.splitlines()}
    ids = logged_ids()
    assert len(ids) == 2 and set(listed) == ids, (ids, r.stdout)
    for line in listed.values():
        assert " loopabull: loopabull job @LOOPABULL_JOB@ " in line


def test_meson_installs_the_catalog():
    r = subprocess.run(["meson", "introspect", "--installed", str(BUILD)], capture_output=True,
                       text=True, timeout=60, check=True)
    installed = json.loads(r.stdout)
    dest = [d for s, d in installed.items() if s.endswith("catalog/loopabull.catalog")]
    assert dest == ["/usr/lib/systemd/catalog/loopabull.catalog"] or \
        (len(dest) == 1 and dest[0].endswith("/lib/systemd/catalog/loopabull.catalog")), dest
