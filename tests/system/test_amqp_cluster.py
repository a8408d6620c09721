# SPDX-License-Identifier: GPL-3.0-or-later
"""Issue 19, 3: scale-out that survives a broker node. A 3-node RabbitMQ cluster on loopback
(Debian's rabbitmq-server), a quorum queue, two loopabull instances whose amqp looper is given
every node's address; the queue's leader node is killed with SIGKILL halfway through 1,000
messages. Every message runs, duplicates are only messages in flight at the kill, the queue
ends empty, and the instance that was connected to the dead node reconnects to a survivor.

A system-tier test (no container needed): it runs once in CI, not again under ASan."""
import importlib.util
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

INTEGRATION = Path(__file__).resolve().parents[1] / "integration"
sys.path.insert(0, str(INTEGRATION))
pika = pytest.importorskip("pika", reason="needs python3-pika (Debian)")
import rabbitmq  # noqa: E402

# The integration tier's helpers, loaded under another name than this tier's conftest.
_spec = importlib.util.spec_from_file_location("integration_conftest", INTEGRATION / "conftest.py")
it = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(it)

pytestmark = pytest.mark.skipif(not rabbitmq.available(),
                                reason="needs rabbitmq-server (Debian's) and root for its wrapper")

# A playbook_cmd that costs a few milliseconds (1,000 Python starts would take minutes on CI)
# and lasts 50 ms, so that the kill falls into a stream of running jobs.
RECORDER = """#!/bin/sh
for a; do case $a in @*) f=${a#@};; esac; done
id=$(grep -o 'cl-[0-9][0-9]*' "$f" | head -n 1)
sleep 0.05
echo "$id INSTANCE $(date +%s.%N)" >> RECORD
"""


def recorded(path):
    p = Path(path)
    if not p.exists():
        return []
    return [l.split() for l in p.read_text().splitlines() if len(l.split()) == 3]


def test_quorum_queue_survives_sigkill_of_its_leader_node(tmp_path):
    cluster = rabbitmq.Cluster(3)
    sups = []
    try:
        n0, n1, n2 = cluster.nodes
        queue = "cluster-work"
        conn = n0.connection()  # declared on n0: its leader is n0 (client-local placement)
        conn.channel().queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        conn.close()
        leader = n1.ctl("list_queues", "--no-table-headers", "name", "leader")
        assert n0.name in leader, leader
        record = tmp_path / "runs.txt"
        orders = {"a": [n0, n1, n2], "b": [n1, n2, n0]}  # a starts on the leader, b elsewhere
        for name, nodes in orders.items():
            d = tmp_path / name
            (d / "playbooks").mkdir(parents=True)
            (d / "playbooks" / "cluster.job.yml").write_text("- hosts: localhost\n")
            script = d / "record"
            script.write_text(RECORDER.replace("INSTANCE", name).replace("RECORD", str(record)))
            script.chmod(0o755)
            cfg = it.base_config(d, [{"name": "bus", "command": ["amqp"], "config": {
                "urls": [n.url() for n in nodes],
                "queue": {"name": queue, "arguments": {"x-queue-type": "quorum"}},
                "bindings": [{"exchange": "amq.topic", "routing_keys": ["cluster.#"]}],
                "reconnect_delay": 1, "reconnect_delay_max": 2, "heartbeat": 5,
                "connect_timeout": 5}}], executor={"max_parallel": 4})
            cfg["ansible"]["playbook_cmd"] = str(script)
            cfg["loglevel"] = "info"
            sups.append(it.Supervisor(d, cfg, instance=name))
        a, b = sups
        a.wait_log(f"consuming queue '{queue}' on 127.0.0.1:{n0.port}")
        b.wait_log(f"consuming queue '{queue}' on 127.0.0.1:{n1.port}")
        n = 1000
        ids = [f"cl-{i}" for i in range(n)]
        vm = n0.vm_pid()  # asked now: rabbitmqctl takes a second, while jobs go on
        n2.publish("cluster.job", [b"{}"] * n, message_ids=ids)
        it.wait_until(lambda: len(recorded(record)) >= n // 2, 300, what="half the messages")
        killed_at = time.time()
        n0.kill(vm)
        done_at_kill = len(recorded(record))
        a.wait_log(f"consuming queue '{queue}' on 127.0.0.1:({n1.port}|{n2.port})", timeout=120)
        reconnected_after = time.time() - killed_at
        it.wait_until(lambda: {r[0] for r in recorded(record)} >= set(ids), 300,
                      what="every message to run")
        it.wait_until(lambda: n1.queue_counts(queue) == (0, 0), 60, what="the queue to empty")
        runs = recorded(record)
        counts = Counter(r[0] for r in runs)
        duplicates = sorted((i for i, c in counts.items() if c > 1), key=lambda i: int(i[3:]))
        first_run = {}
        for i, _, t in runs:
            first_run.setdefault(i, float(t))
        # In flight at the kill: started (first run) within the prefetch window before it.
        late = [i for i in duplicates if first_run[i] < killed_at - 30]
        print(f"\n{n} messages, leader node SIGKILLed after {done_at_kill} runs; instance a "
              f"consuming again within {reconnected_after:.1f} s; {len(runs)} runs, "
              f"{len(duplicates)} duplicate(s): {duplicates}; per instance: "
              f"{Counter(r[1] for r in runs)}; "
              f"new leader: {n1.ctl('list_queues', '--no-table-headers', 'name', 'leader').strip()}")
        assert not late, late
        assert len(duplicates) <= 2 * 4 * 2  # two instances' prefetch, twice over at most
        assert set(counts) == set(ids)
        for s in sups:
            assert s.stop() == 0
    finally:
        for s in sups:
            if s.proc.poll() is None:
                s.kill()
        cluster.close()
