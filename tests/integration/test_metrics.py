# SPDX-License-Identifier: GPL-3.0-or-later
"""Metrics (issue 17): the Prometheus text of `loopabullctl metrics` (D-Bus GetMetrics) and of
metrics.textfile, through the real binary after real jobs ran, validated by Debian's promtool
(package prometheus) as node_exporter's textfile collector would read it; the bound on routing
keys against a looper that sends ever new ones; the shipped alerting rules.

The bus, the instance and its scripted looper are test_dbus.py's fixtures."""
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from test_dbus import ROOT, bus, event, instance, wait_until  # noqa: F401 (fixtures)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None,
                                    reason="promtool (Debian's prometheus package) is not installed")
RULES = ROOT / "examples" / "prometheus" / "loopabull.rules.yml"


def samples(bus, name, user=None):
    r = bus.ctl("-i", name, "metrics", "--json", user=user, check=True)
    return json.loads(r.stdout)


def value(samples, name, **labels):
    found = [s["value"] for s in samples if s["name"] == name and s["labels"] == labels]
    return found[0] if found else None


def promtool_check(text):
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, f"promtool check metrics:\n{r.stdout}{r.stderr}\n{text}"


@needs_promtool
def test_metrics_after_real_jobs(bus, instance, workdir):
    textfile = workdir / "collector" / "loopabull.prom"
    textfile.parent.mkdir()
    inst = instance("metrics-jobs", history={"path": str(workdir / "history.sqlite")},
                    metrics={"textfile": str(textfile), "interval": "1s"})
    before = time.time()
    inst.send("dbus.ok", "ok")       # succeeded
    inst.send("dbus.fail", "fail")   # failed (exit 3)
    inst.send("dbus.none", "none")   # unrouted: no playbook
    inst._fifo.write(event("bad key!", {}, id="bad") + "\n")  # rejected: the key's grammar
    inst._fifo.write("not json\n")  # rejected, no id
    inst._fifo.flush()
    for id, result in (("ok", "succeeded"), ("fail", "failed"), ("none", "unrouted"),
                       ("bad", "rejected")):
        assert inst.answer(id)["result"] == result
    wait_until(lambda: bus.get(inst.name, "EventsRejected") == 2, 10, what="the rejected lines")

    # Readers may read them, like the other reads (the user bus: anyone but the owner).
    text = bus.ctl("-i", "metrics-jobs", "metrics", user="nobody", check=True).stdout
    promtool_check(text)
    s = samples(bus, "metrics-jobs")
    ev = "loopabull_events_total"
    assert value(s, ev, looper="test", result="succeeded") == 1
    assert value(s, ev, looper="test", result="failed") == 1
    assert value(s, ev, looper="test", result="unrouted") == 1
    assert value(s, ev, looper="test", result="rejected") == 2
    assert value(s, "loopabull_jobs_total", routing_key="dbus.ok", result="succeeded") == 1
    assert value(s, "loopabull_jobs_total", routing_key="dbus.fail", result="failed") == 1
    assert value(s, "loopabull_jobs_total", routing_key="dbus.none", result="succeeded") is None
    assert value(s, "loopabull_job_duration_seconds_count", routing_key="dbus.ok") == 1
    assert value(s, "loopabull_job_duration_seconds_bucket", routing_key="dbus.ok", le="+Inf") == 1
    seen = value(s, "loopabull_routing_key_last_seen_timestamp_seconds", routing_key="dbus.none")
    assert before - 1 <= seen <= time.time() + 1
    assert value(s, "loopabull_queue_length") == 0
    assert value(s, "loopabull_jobs_running") == 0
    assert value(s, "loopabull_looper_restarts_total", looper="test") == 0
    assert value(s, "loopabull_ledger_errors_total") == 0
    assert value(s, "loopabull_ledger_rotations_total") == 0

    # The textfile: rewritten every interval, whole (promtool reads what node_exporter reads),
    # readable by the collector's user, no temporary file left beside it.
    def written():
        t = textfile.read_text() if textfile.exists() else ""
        return 'loopabull_events_total{looper="test",result="rejected"} 2' in t and t
    file_text = wait_until(written, 20, what="the textfile with the rejected events")
    promtool_check(file_text)
    assert textfile.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in textfile.parent.iterdir()) == ["loopabull.prom"]


def test_routing_keys_beyond_max_keys_share_other(bus, instance):
    """The attack: a looper sends ever new routing keys. Only max_keys of them get series."""
    inst = instance("metrics-keys", metrics={"max_keys": 3})
    for i in range(40):
        inst.send(f"flood.key{i}", f"e{i}")
    inst.answer("e39")
    s = samples(bus, "metrics-keys")
    keys = {x["labels"]["routing_key"] for x in s if "routing_key" in x["labels"]}
    assert keys == {"flood.key0", "flood.key1", "flood.key2", "other"}
    assert value(s, "loopabull_events_total", looper="test", result="unrouted") == 40


@needs_promtool
def test_the_example_alerting_rules_are_valid():
    r = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 4 rules found" in r.stdout
