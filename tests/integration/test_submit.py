# SPDX-License-Identifier: GPL-3.0-or-later
"""`loopabullctl submit`: the producer tool of the spool looper (loopabull-spool(7))."""
import json
import os
import subprocess

from spool_helpers import CTL


def run(*args, input=""):
    return subprocess.run([str(CTL), *args], input=input, capture_output=True, text=True)


def test_submit_writes_a_unique_complete_file_and_prints_its_id(tmp_path):
    body = '{"big": 18446744073709551616, "n": 1}\n'
    r = run("submit", "--spool", str(tmp_path), "org.example.deploy", input=body)
    assert r.returncode == 0, r.stderr
    event_id = r.stdout.strip()
    key, unique = event_id.removesuffix(".json").split("@")
    assert key == "org.example.deploy" and unique
    # Written as given (a big integer is not rounded), nothing else left behind.
    assert (tmp_path / event_id).read_text() == body
    assert os.listdir(tmp_path) == [event_id]
    # Options before the command word, a body from a file, and an empty body.
    f = tmp_path.parent / "body.json"
    f.write_text('{"from": "file"}')
    r2 = run("--spool", str(tmp_path), "submit", "org.example.deploy", str(f))
    assert r2.returncode == 0, r2.stderr
    assert json.loads((tmp_path / r2.stdout.strip()).read_text()) == {"from": "file"}
    r3 = run("submit", "--spool", str(tmp_path), "org.example.empty", "-")
    assert (tmp_path / r3.stdout.strip()).read_text() == "{}\n"


def test_concurrent_producers_never_collide(tmp_path):
    procs = [subprocess.Popen([str(CTL), "submit", "--spool", str(tmp_path), "a.b", "-"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
             for _ in range(32)]
    ids = [p.communicate()[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(ids)) == 32 and sorted(os.listdir(tmp_path)) == sorted(ids)


def test_submit_refuses_a_bad_key_or_body_and_writes_nothing(tmp_path):
    for key, body, why in [("../../etc/passwd", "{}", "invalid routing key"),
                           ("a..b", "{}", "invalid routing key"),
                           ("a.b@c", "{}", "invalid routing key"),
                           ("a.b", "[1, 2]", "not a JSON object"),
                           ("a.b", "{ nope", "not valid JSON")]:
        r = run("submit", "--spool", str(tmp_path), key, input=body)
        assert r.returncode == 2 and why in r.stderr, (key, body, r.stderr)
    assert os.listdir(tmp_path) == []
    r = run("submit", "--spool", str(tmp_path))
    assert r.returncode == 2 and "Usage:" in r.stderr


def test_instance_names_its_spool(tmp_path):
    r = run("-i", "no-such-instance-13", "submit", "a.b")
    assert r.returncode == 1
    assert "/var/spool/loopabull/no-such-instance-13" in r.stderr
    assert run("-i", "../etc", "submit", "a.b").returncode == 2
    assert "submit KEY" in run("--help").stdout
