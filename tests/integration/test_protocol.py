# SPDX-License-Identifier: GPL-3.0-or-later
"""Bad input from a looper never stops the supervisor, and the next good event still runs.

These tests use playbook_cmd /bin/true: what is under test is the supervisor's handling of the
looper's bytes, not Ansible."""
import json

import pytest

from conftest import SANITIZED, base_config, event, read_answers, scripted, wait_until


def start(workdir, supervisor, **looper_cfg):
    answers = workdir / "answers"
    (workdir / "playbooks" / "good.key.yml").write_text("- hosts: localhost\n")
    cfg = base_config(workdir, [scripted(answers=str(answers), **looper_cfg)],
                      ansible={"playbooks_dir": str(workdir / "playbooks"), "playbook_cmd": "/bin/true"})
    cfg["loopers"][0]["max_line_length"] = "64KiB"
    return supervisor(cfg), answers


BAD_LINES = [
    ("malformed JSON", "{not json", None),
    ("malformed JSON", '{"routing_key": "good.key", "id": "trunc"', None),
    ("body not an object", json.dumps({"routing_key": "good.key", "body": [1], "id": "arr"}), "arr"),
    ("body not an object", json.dumps({"routing_key": "good.key", "body": "s", "id": "str"}), "str"),
    ("missing routing key", json.dumps({"body": {}, "id": "nokey"}), "nokey"),
    ("routing key not a string", json.dumps({"routing_key": 5, "id": "numkey"}), "numkey"),
    ("invalid routing key", json.dumps({"routing_key": "../../etc/passwd", "id": "trav"}), "trav"),
    ("invalid routing key", json.dumps({"routing_key": "x./etc/passwd", "id": "trav2"}), "trav2"),
    ("invalid id", json.dumps({"routing_key": "good.key", "id": {"x": 1}}), None),
    ("not an event", "42", None),
    ("not an event", '"just a string"', None),
    ("array form of wrong size", '["good.key"]', None),
]


def test_bad_lines_are_rejected_and_answered_where_possible(workdir, supervisor):
    lines = [l for _, l, _ in BAD_LINES] + [event("good.key", {}, id="good")]
    sup, answers = start(workdir, supervisor, lines=lines)
    wait_until(lambda: any(a["id"] == "good" for a in read_answers(answers)), what="the good event")
    got = {a["id"]: a for a in read_answers(answers)}
    assert got.pop("good") == {"id": "good", "result": "succeeded", "exit_code": 0}
    expected_ids = {i for _, _, i in BAD_LINES if i}
    assert set(got) == expected_ids
    for a in got.values():
        assert a["result"] == "rejected" and a["exit_code"] is None and a["error"]
    # Logged once each, with the looper's name.
    assert sup.log.count("looper test: rejected an event") == len(BAD_LINES)
    assert sup.stop() == 0


def test_nul_bytes_and_invalid_utf8(workdir, supervisor):
    good = event("good.key", {}, id="good").encode().hex()
    hex_lines = [
        b'{"routing_key": "good.key", "id": "nul\x00"}'.hex(),
        b'{"routing_key": "good.key", "body": {"x": "\xff\xfe"}, "id": "u"}'.hex(),
        b'{"routing_key": "good.key", "body": {"x": "\xc0\xaf"}, "id": "overlong"}'.hex(),
        b'{"routing_key": "good.key", "body": {"x": "\xed\xa0\x80"}, "id": "surrogate"}'.hex(),
        good,
    ]
    sup, answers = start(workdir, supervisor, hex_lines=hex_lines)
    wait_until(lambda: read_answers(answers), what="the good event")
    assert read_answers(answers) == [{"id": "good", "result": "succeeded", "exit_code": 0}]
    assert sup.log.count("line contains a NUL byte") == 1
    assert sup.log.count("line is not valid UTF-8") == 3


def peak_rss_kib(pid):
    return int([l for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM")][0].split()[1])


def test_overlong_line_is_discarded_with_bounded_memory(workdir, supervisor):
    fifo = workdir / "fifo"
    import os
    os.mkfifo(fifo)
    sup, answers = start(workdir, supervisor, fifo=str(fifo))
    # A sanitized build starts near 40 MiB (ASan's shadow and allocator): there, what is bounded
    # is the growth over the peak at start.
    start_kib = peak_rss_kib(sup.proc.pid) if SANITIZED else 0
    with open(fifo, "wb") as f:
        # 16 MiB without a newline, against a 64 KiB limit, then a good event.
        chunk = b'{"routing_key": "good.key", "body": {"pad": "' + b"x" * (1 << 20)
        f.write(chunk)
        for _ in range(15):
            f.write(b"y" * (1 << 20))
            f.flush()
        f.write(b'"}}\n' + event("good.key", {}, id="after").encode() + b"\n")
        f.flush()
        wait_until(lambda: read_answers(answers), what="the event after the long line")
        rss_kib = peak_rss_kib(sup.proc.pid) - start_kib
    assert read_answers(answers) == [{"id": "after", "result": "succeeded", "exit_code": 0}]
    assert sup.log.count("line longer than max_line_length") == 1
    assert rss_kib < 16 * 1024, f"peak RSS {rss_kib} KiB while discarding a 16 MiB line"


def test_partial_last_line_is_never_dispatched(workdir, supervisor):
    (workdir / "playbooks" / "partial.key.yml").write_text("- hosts: localhost\n")
    partial = event("partial.key", {}, id="partial").encode().hex()
    sup, answers = start(workdir, supervisor, lines=[event("good.key", {}, id="whole")],
                         raw_tail=partial, exit_after="emit")
    sup.wait_log(r"discarding a partial last line")
    sup.wait_log(r"job 1 \(good.key\) succeeded")
    assert "partial.key" not in sup.log
    assert sup.stop() == 0


def test_two_element_form_runs_without_answer(workdir, supervisor):
    lines = [json.dumps(["good.key", {"a": 1}]), event("good.key", {}, id="after")]
    sup, answers = start(workdir, supervisor, lines=lines)
    wait_until(lambda: read_answers(answers), what="the answer")
    sup.wait_log(r"job 2 \(good.key\) succeeded")
    assert sup.log.count("(good.key) succeeded") == 2
    assert read_answers(answers) == [{"id": "after", "result": "succeeded", "exit_code": 0}]
