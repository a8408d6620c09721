# SPDX-License-Identifier: GPL-3.0-or-later
"""The spool looper under the real supervisor loses no event, whatever way a file arrives or
changes (issue 13, faults 1 to 3). The playbook command records each job's vars file when the
job starts and then sleeps as long as workdir/sleep says."""
import ctypes
import json
import os
import subprocess
import time

import pytest

from conftest import wait_until
from spool_helpers import drop, events_left, recorder, records, spool_config, submit

KEY = "org.example.deploy"


def start(workdir, supervisor, spool, sleep=0, keys=(KEY,)):
    spool.mkdir(exist_ok=True)
    (workdir / "sleep").write_text(str(sleep))
    cfg = spool_config(workdir, spool)
    cfg["ansible"]["playbook_cmd"] = recorder(workdir, keys)
    return supervisor(cfg)


def wait_done(workdir, spool, runs, timeout=60):
    wait_until(lambda: len(records(workdir)) >= runs and events_left(spool) == [], timeout,
               what=f"{runs} runs and an empty spool")
    time.sleep(0.3)  # a run too many would show up now
    return records(workdir)


def test_same_key_events_wait_side_by_side(workdir, supervisor):
    """Fault 1: four events for one key, 0.3 s apart, while a 2 s job runs: all four run."""
    spool = workdir / "spool"
    sup = start(workdir, supervisor, spool, sleep=2)
    ids = []
    for n in range(4):
        ids.append(submit(spool, KEY, {"n": n}))
        time.sleep(0.3)
    assert len(set(ids)) == 4 and all(i.startswith(KEY + "@") and i.endswith(".json")
                                      for i in ids)
    got = wait_done(workdir, spool, 4)
    assert sorted(i for i, _ in got) == sorted(ids)
    assert sorted(b["n"] for _, b in got) == [0, 1, 2, 3]
    assert sup.stop() == 0


def rewrite(mode, path, body):
    text = json.dumps(body) + "\n"
    if mode == "shell_redirect":
        subprocess.run(["sh", "-c", f"printf '%s\\n' '{json.dumps(body)}' > '{path}'"],
                       check=True)
    elif mode == "editor_in_place":
        # As vim with backupcopy=yes: the same inode, written over, then cut to length.
        fd = os.open(path, os.O_WRONLY)
        os.write(fd, text.encode())
        os.ftruncate(fd, len(text))
        os.close(fd)
    elif mode == "rename_over":
        tmp = path.parent / f".{path.name}.new"
        tmp.write_text(text)
        os.rename(tmp, path)
    elif mode == "remove_and_create":
        os.unlink(path)
        with open(path, "w") as f:
            f.write(text)
    elif mode == "slow_rewrite":
        # Still being written when the first event's answer comes: taken once it is closed.
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.write(fd, text[:3].encode())
        time.sleep(3)
        os.write(fd, text[3:].encode())
        os.close(fd)


@pytest.mark.parametrize("mode", ["shell_redirect", "editor_in_place", "rename_over",
                                  "remove_and_create", "slow_rewrite"])
def test_a_file_rewritten_while_its_event_runs_is_a_new_event(workdir, supervisor, mode):
    """Fault 2: the new content runs after the first event is answered; nothing is lost."""
    spool = workdir / "spool"
    sup = start(workdir, supervisor, spool, sleep=2)
    path = spool / f"{KEY}.json"
    drop(spool, path.name, {"n": 1})
    wait_until(lambda: records(workdir), 30, what="the first job to start")
    rewrite(mode, path, {"n": 2})
    got = wait_done(workdir, spool, 2)
    assert sorted(b["n"] for _, b in got) == [1, 2], got
    assert "new content" in sup.log
    assert sup.stop() == 0


def linkat_tmpfile(spool, name, text):
    try:
        fd = os.open(spool, os.O_TMPFILE | os.O_WRONLY, 0o640)
    except OSError as e:
        pytest.skip(f"O_TMPFILE is not supported here: {e}")
    try:
        os.write(fd, text.encode())
        libc = ctypes.CDLL(None, use_errno=True)
        AT_FDCWD, AT_SYMLINK_FOLLOW = -100, 0x400
        if libc.linkat(AT_FDCWD, f"/proc/self/fd/{fd}".encode(), AT_FDCWD,
                       str(spool / name).encode(), AT_SYMLINK_FOLLOW) != 0:
            raise OSError(ctypes.get_errno(), "linkat")
        time.sleep(1)  # the descriptor stays open a while after the link
    finally:
        os.close(fd)


def arrive(mode, workdir, spool, name, body):
    text = json.dumps(body) + "\n"
    elsewhere = workdir / f"elsewhere-{name}"
    if mode in ("rename", "at_start"):
        drop(spool, name, body)
    elif mode in ("hard_link", "hard_link_then_unlink"):
        elsewhere.write_text(text)
        os.link(elsewhere, spool / name)
        if mode == "hard_link_then_unlink":
            elsewhere.unlink()
    elif mode == "tmpfile_linkat":
        linkat_tmpfile(spool, name, text)
    elif mode == "copy_then_close":
        elsewhere.write_text(text)
        subprocess.run(["cp", str(elsewhere), str(spool / name)], check=True)
    elif mode == "slow_writer":
        # Open in place, half written for longer than the looper waits for links.
        fd = os.open(spool / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.write(fd, text[:5].encode())
        time.sleep(2)
        os.write(fd, text[5:].encode())
        os.close(fd)


@pytest.mark.parametrize("mode", ["rename", "hard_link", "hard_link_then_unlink",
                                  "tmpfile_linkat", "copy_then_close", "slow_writer", "at_start"])
def test_every_way_a_file_arrives_is_seen_once(workdir, supervisor, mode):
    """Fault 3 and the other arrival modes: each event runs exactly once, complete."""
    spool = workdir / "spool"
    spool.mkdir()
    body = {"mode": mode, "pad": "x" * 100}
    # A name of loopabull 0.1 (no unique part), so that the test also runs against its looper.
    key = f"org.example.{mode}"
    name = f"{key}.json"
    if mode == "at_start":
        arrive(mode, workdir, spool, name, body)
    sup = start(workdir, supervisor, spool, keys=[key])
    if mode != "at_start":
        arrive(mode, workdir, spool, name, body)
    got = wait_done(workdir, spool, 1)
    assert got == [(name, body)]
    assert sup.stop() == 0


def test_a_file_still_being_written_at_start_waits_for_its_close(workdir, supervisor):
    """A writer that began before the looper watched the spool (the supervisor starting, or
    restarting, while a producer writes in place): the file is taken when it is closed, whole;
    it is neither read half-written nor moved to failed/."""
    spool = workdir / "spool"
    spool.mkdir()
    body = {"mode": "writing_at_start", "pad": "x" * 100}
    key = "org.example.writing"
    text = json.dumps(body) + "\n"
    fd = os.open(spool / f"{key}.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        os.write(fd, text[:5].encode())
        sup = start(workdir, supervisor, spool, keys=[key])
        wait_until(lambda: "files waiting" in sup.log, 60, what="the spool looper to watch")
        time.sleep(1)  # the looper had its chance to take the half-written file
        assert records(workdir) == []
        os.write(fd, text[5:].encode())
    finally:
        os.close(fd)
    got = wait_done(workdir, spool, 1)
    assert got == [(f"{key}.json", body)]
    assert not (spool / "failed").exists() or os.listdir(spool / "failed") == []
    assert sup.stop() == 0
