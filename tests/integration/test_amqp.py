# SPDX-License-Identifier: GPL-3.0-or-later
"""The amqp looper against a real RabbitMQ node started here, with the real supervisor: messages
are acknowledged only once their playbook has finished, failures are bounded, nothing is lost
when the connection or the broker goes away, and several instances share one queue."""
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import Supervisor, base_config, needs_ansible, wait_until
pytest.importorskip("pika", reason="needs python3-pika (Debian) for the test publisher")
import rabbitmq  # noqa: E402

pytestmark = pytest.mark.skipif(not rabbitmq.available(),
                                reason="needs rabbitmq-server (Debian's) and root for its wrapper")

# A stand-in for ansible-playbook: records each run (start and end) with the event's variables,
# sleeps as the message asks, fails when it asks. Debian's python3 has yaml.
RECORDER = r'''#!/usr/bin/python3
import json, os, sys, time, yaml
class Loader(yaml.SafeLoader):
    pass
Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))
path = next(a[1:] for a in sys.argv if a.startswith("@"))
v = yaml.load(open(path), Loader)
b = v.get("event", v)  # the body: one variable, or top-level under a 0.0.7 config
msg = b.get("msg") or {}
rec = {"key": v["loopabull_routing_key"], "id": b.get("id"), "event": v["loopabull_event_id"],
       "instance": v["loopabull_instance"], "msg": msg, "headers": b.get("headers"),
       "topic": b.get("topic"), "pid": os.getpid()}
def record(stage):
    with open(RECORD, "a") as f:
        f.write(json.dumps({**rec, "stage": stage}) + "\n")
record("start")
time.sleep(msg.get("sleep", 0) if isinstance(msg, dict) else 0)
fail = isinstance(msg, dict) and msg.get("fail")
record("failed" if fail else "done")
sys.exit(1 if fail else 0)
'''


@pytest.fixture(scope="module")
def broker():
    b = rabbitmq.RabbitMQ()
    yield b
    b.close()


def recorder(tmp, record):
    script = tmp / "record-run"
    script.write_text(RECORDER.replace("RECORD", repr(str(record))))
    script.chmod(0o755)
    return script


def records(path):
    p = Path(path)
    return [json.loads(l) for l in p.read_text().splitlines()] if p.exists() else []


def setup_dir(tmp, keys):
    (tmp / "playbooks").mkdir(exist_ok=True)
    for k in keys:
        (tmp / "playbooks" / f"{k}.yml").write_text("- hosts: localhost\n")
    record = tmp / "runs.jsonl"
    return recorder(tmp, record), record


def amqp_config(tmp, broker, queue, script, max_parallel=2, **looper):
    looper_cfg = {"url": broker.url(), "queue": queue,
                  "bindings": [{"exchange": "amq.topic", "routing_keys": ["amqp.#"]}],
                  "reconnect_delay": 1, "reconnect_delay_max": 2, "heartbeat": 10}
    looper_cfg.update(looper)
    cfg = base_config(tmp, [{"name": "bus", "command": ["amqp"], "config": looper_cfg}],
                      executor={"max_parallel": max_parallel})
    cfg["ansible"]["playbook_cmd"] = str(script)
    return cfg


def wait_empty(broker, queue, timeout=60):
    wait_until(lambda: broker.queue_counts(queue) == (0, 0), timeout,
               what=f"queue {queue} to be empty (now {broker.queue_counts(queue)})")


def test_messages_run_their_playbooks_and_are_acked(tmp_path, broker):
    script, record = setup_dir(tmp_path, ["amqp.ok"])
    sup = Supervisor(tmp_path, amqp_config(tmp_path, broker, "basic", script))
    try:
        sup.wait_log("consuming queue 'basic'")
        n = 20
        ids = [f"msg-{i}" for i in range(n)]
        broker.publish("amqp.ok", [json.dumps({"n": i}).encode() for i in range(n)],
                       message_ids=ids, headers={"fedora_messaging_schema": "base.message"})
        broker.publish("amqp.nothing.here", [b'{"n": -1}'])  # unrouted: acked, no run
        wait_until(lambda: len([r for r in records(record) if r["stage"] == "done"]) == n, 60,
                   what="every message to run")
        wait_empty(broker, "basic")
        done = [r for r in records(record) if r["stage"] == "done"]
        assert sorted(r["id"] for r in done) == sorted(ids)
        assert sorted(r["msg"]["n"] for r in done) == list(range(n))
        assert {r["topic"] for r in done} == {"amqp.ok"}
        assert all(r["headers"]["fedora_messaging_schema"] == "base.message" for r in done)
        assert sup.stop() == 0
    finally:
        if sup.proc.poll() is None:
            sup.kill()
    assert "PRECONDITION_FAILED" not in sup.log


def test_failures_are_retried_a_bounded_number_of_times_then_dead_lettered(tmp_path, broker):
    broker.declare_dead_letter("retry-dlx", "retry-dead")
    script, record = setup_dir(tmp_path, ["amqp.fail"])
    cfg = amqp_config(tmp_path, broker, "retry", script, on_failure="retry", max_attempts=3,
                      dead_letter_exchange="retry-dlx")
    sup = Supervisor(tmp_path, cfg)
    try:
        sup.wait_log("consuming queue 'retry'")
        broker.publish("amqp.fail", [b'{"fail": true}'], message_ids=["doomed"])
        wait_until(lambda: broker.queue_counts("retry-dead") == (1, 0), 60,
                   what="the message to be dead-lettered")
        time.sleep(2)  # nothing runs it again
        runs = [r for r in records(record) if r["stage"] == "failed"]
        assert [r["id"] for r in runs] == ["doomed"] * 3
        # The original routing key chose the playbook on every attempt.
        assert {r["key"] for r in runs} == {"amqp.fail"}
        wait_empty(broker, "retry")
        assert sup.log.count("failed (attempt") == 3
        assert sup.stop() == 0
    finally:
        if sup.proc.poll() is None:
            sup.kill()


def test_reject_policy_dead_letters_at_once_and_bad_json_is_never_run(tmp_path, broker):
    broker.declare_dead_letter("reject-dlx", "reject-dead")
    script, record = setup_dir(tmp_path, ["amqp.fail", "amqp.ok"])
    cfg = amqp_config(tmp_path, broker, "reject", script, on_failure="reject",
                      dead_letter_exchange="reject-dlx")
    sup = Supervisor(tmp_path, cfg)
    try:
        sup.wait_log("consuming queue 'reject'")
        broker.publish("amqp.fail", [b'{"fail": true}'], message_ids=["fails-once"])
        broker.publish("amqp.ok", [b"this is not JSON"], message_ids=["garbage"])
        wait_until(lambda: broker.queue_counts("reject-dead") == (2, 0), 60,
                   what="both messages to be dead-lettered")
        time.sleep(2)
        assert [r["id"] for r in records(record) if r["stage"] != "start"] == ["fails-once"]
        assert "garbage" in sup.log and "not JSON" in sup.log
        wait_empty(broker, "reject")
        assert sup.stop() == 0
    finally:
        if sup.proc.poll() is None:
            sup.kill()


def test_lost_connection_and_broker_restart_lose_nothing(tmp_path, broker):
    script, record = setup_dir(tmp_path, ["amqp.slow"])
    sup = Supervisor(tmp_path, amqp_config(tmp_path, broker, "durable", script))
    try:
        sup.wait_log("consuming queue 'durable'")
        ids = [f"m{i}" for i in range(6)]
        broker.publish("amqp.slow", [b'{"sleep": 2}'] * len(ids), message_ids=ids)
        wait_until(lambda: records(record), 30, what="a job to start")
        assert broker.close_connections() >= 1  # mid-job: its answer comes for a dead channel
        sup.wait_log("connection lost", timeout=30)
        sup.wait_log("consuming queue 'durable'", count=2, timeout=30)
        broker.restart()
        sup.wait_log("consuming queue 'durable'", count=3, timeout=60)
        wait_until(lambda: {r["id"] for r in records(record) if r["stage"] == "done"} >= set(ids),
                   90, what="every message to finish")
        wait_empty(broker, "durable")
        assert "came after its connection was lost" in sup.log
        assert sup.stop() == 0
    finally:
        if sup.proc.poll() is None:
            sup.kill()
    for log in (sup.log, broker.log()):
        assert "PRECONDITION_FAILED" not in log
        assert "unknown delivery tag" not in log


def test_legacy_fedmsgrabbitmq_config(user_workdir, broker):
    d, user = user_workdir
    script, record = setup_dir(d, ["org.example.legacy"])
    if user:
        import pwd
        pw = pwd.getpwnam(user)
        for p in (d / "playbooks" / "org.example.legacy.yml", script, d / "playbooks"):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    cfg = {
        "loglevel": "info",
        "routing_keys": ["all"],
        "ansible": {"playbooks_dir": str(d / "playbooks"), "playbook_cmd": str(script)},
        "plugins": {
            "looper": {"name": "fedmsgrabbitmq",
                       "rabbitmq": {"host": "127.0.0.1", "port": broker.port,
                                    "virtual_host": "/", "connection_attempts": 3},
                       "credentials": {"username": "guest", "password": "guest"},
                       "channel_queue": {"name": "legacy", "durable": True},
                       "routing_keys": ["org.example.#"],
                       "exchange": {"name": "amq.topic"}},
            "translator": {"name": "rkname"}},
    }
    sup = Supervisor(d, cfg, user=user)
    try:
        sup.wait_log("consuming queue 'legacy'")
        body = {"compose_id": "Fedora-Rawhide-20261122.n.0", "status": "FINISHED"}
        broker.publish("org.example.legacy", [json.dumps(body).encode()])
        wait_until(lambda: [r for r in records(record) if r["stage"] == "done"], 60,
                   what="the legacy message to run")
        wait_empty(broker, "legacy")
        assert [r["msg"] for r in records(record) if r["stage"] == "done"] == [body]
        assert "ignoring 'rabbitmq.connection_attempts'" in sup.log
        assert sup.stop() == 0
    finally:
        if sup.proc.poll() is None:
            sup.kill()


def test_three_instances_share_a_queue_and_survive_a_sigkill(tmp_path, broker):
    record = tmp_path / "runs.jsonl"
    sups = []
    try:
        for i in range(3):
            d = tmp_path / f"host{i}"
            d.mkdir()
            script, _ = setup_dir(d, ["amqp.work"])
            script.write_text(recorder(d, record).read_text())  # one shared record file
            sups.append(Supervisor(d, amqp_config(d, broker, "shared", script), instance=f"i{i}"))
        for s in sups:
            s.wait_log("consuming queue 'shared'")
        n = 300
        ids = [f"job-{i:03d}" for i in range(n)]
        broker.publish("amqp.work", [b'{"sleep": 0.1}'] * n, message_ids=ids)
        done = lambda: [r for r in records(record) if r["stage"] == "done"]
        wait_until(lambda: len(done()) >= n // 3, 120, what="a third of the messages to run")
        victim = sups[1]
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        wait_until(lambda: {r["id"] for r in done()} >= set(ids), 180,
                   what="every message to run")
        wait_empty(broker, "shared")
        runs = records(record)
        counts = Counter(r["id"] for r in done())
        duplicates = sorted(i for i, c in counts.items() if c > 1)
        # Started on the killed instance, never answered: the broker redelivered them.
        on_victim = {r["id"] for r in runs if r["instance"] == "i1"}
        print(f"\n{n} messages, {len(runs)} recorded stages, {len(duplicates)} duplicate "
              f"run(s) after SIGKILL: {duplicates}; per instance: "
              f"{Counter(r['instance'] for r in done())}")
        assert set(duplicates) <= on_victim
        assert len(duplicates) <= 2  # prefetch = max_parallel of the killed instance
        for s in (sups[0], sups[2]):
            assert s.stop() == 0
    finally:
        for s in sups:
            if s.proc.poll() is None:
                s.kill()


def test_bad_option_is_named_and_consumer_timeout_trap_is_warned(tmp_path, broker):
    script, _ = setup_dir(tmp_path, [])
    cfg = amqp_config(tmp_path, broker, "warned", script, consumer_timeout="1min",
                      prefetch=1)
    cfg["executor"]["timeout"] = "5min"
    sup = Supervisor(tmp_path, cfg)
    try:
        sup.wait_log("job timeout \\(300s\\) is not below the broker's consumer_timeout \\(60s\\)")
        sup.wait_log("consuming queue 'warned'")
        cfg["loopers"][0]["config"]["prefetsh"] = 3
        sup.write_config(cfg)
        sup.signal(signal.SIGHUP)
        sup.wait_log("invalid config: unknown option 'prefetsh'")
        assert sup.stop() == 0
    finally:
        if sup.proc.poll() is None:
            sup.kill()


def test_example_config_passes_the_loopers_own_check(tmp_path):
    import subprocess
    import yaml
    from conftest import LOOPER_DIR, ROOT
    example = yaml.safe_load((ROOT / "examples" / "configs" / "amqp.yml").read_text())
    cfg = tmp_path / "looper.json"

    def check(config, env=None):
        cfg.write_text(json.dumps(config))
        return subprocess.run([str(LOOPER_DIR / "amqp"), "--check-config"], capture_output=True,
                              text=True, env={**os.environ, "LOOPABULL_CONFIG_FILE": str(cfg),
                                              **(env or {})})
    good = example["loopers"][0]["config"]
    r = check(good, {"LOOPABULL_JOB_TIMEOUT": "1200"})  # executor.timeout: 20min
    assert (r.returncode, r.stderr) == (0, "")
    r = check({**good, "tls": {"certfile": "/c.pem"}})
    assert r.returncode == 1
    assert "'tls.certfile' and 'tls.keyfile' go together" in r.stderr


def test_tls_with_a_client_certificate(tmp_path):
    """As Fedora Messaging's brokers: amqps, the broker checked against a CA, and the client
    authenticated by its certificate (SASL EXTERNAL, the certificate's CN is the user)."""
    tls_broker = rabbitmq.RabbitMQ(tls=True)
    try:
        script, record = setup_dir(tmp_path, ["amqp.ok"])
        d = tls_broker.dir
        cfg = amqp_config(tmp_path, tls_broker, "tls", script,
                          url=f"amqps://localhost:{tls_broker.tls_port}/%2F",
                          tls={"ca_cert": str(d / "ca.pem"), "certfile": str(d / "client.pem"),
                               "keyfile": str(d / "client.key")})
        sup = Supervisor(tmp_path, cfg)
        try:
            sup.wait_log("consuming queue 'tls' on localhost")
            tls_broker.publish("amqp.ok", [b'{"secure": true}'], message_ids=["over-tls"])
            wait_until(lambda: [r for r in records(record) if r["stage"] == "done"], 60,
                       what="the message to run")
            wait_empty(tls_broker, "tls")
            assert "EXTERNAL" in tls_broker.ctl("list_connections", "--no-table-headers",
                                                "auth_mechanism", "ssl")
            assert sup.stop() == 0
        finally:
            if sup.proc.poll() is None:
                sup.kill()
    finally:
        tls_broker.close()
