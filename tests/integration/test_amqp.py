# SPDX-License-Identifier: GPL-3.0-or-later
"""The amqp looper against a real RabbitMQ node started here, with the real supervisor: messages
are acknowledged only once their playbook has finished, failures are bounded, nothing is lost
when the connection or the broker goes away, and several instances share one queue."""
import contextlib
import json
import os
import pwd
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import LOOPER_DIR, Supervisor, base_config, needs_ansible, wait_until
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
        f.write(json.dumps({**rec, "stage": stage, "t": time.time()}) + "\n")
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


@contextlib.contextmanager
def supervising(*args, **kwargs):
    """A Supervisor that must stop cleanly at the end of the block, and is killed on failure."""
    sup = Supervisor(*args, **kwargs)
    try:
        yield sup
        assert sup.stop() == 0
    finally:
        if sup.proc.poll() is None:
            sup.kill()


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


def test_default_job_timeout_is_below_the_default_consumer_timeout(tmp_path, broker):
    """Issue 19, 2: with executor.timeout and consumer_timeout both at their defaults, a start
    does not warn about the consumer_timeout trap (25 min against RabbitMQ's 30)."""
    script, _ = setup_dir(tmp_path, [])
    cfg = amqp_config(tmp_path, broker, "defaults", script)
    del cfg["executor"]["timeout"]
    with supervising(tmp_path, cfg) as sup:
        sup.wait_log("consuming queue 'defaults'")
        assert "consumer_timeout" not in sup.log


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
        with supervising(tmp_path, cfg) as sup:
            sup.wait_log("consuming queue 'tls' on localhost")
            tls_broker.publish("amqp.ok", [b'{"secure": true}'], message_ids=["over-tls"])
            wait_until(lambda: [r for r in records(record) if r["stage"] == "done"], 60,
                       what="the message to run")
            wait_empty(tls_broker, "tls")
            assert "EXTERNAL" in tls_broker.ctl("list_connections", "--no-table-headers",
                                                "auth_mechanism", "ssl")
    finally:
        tls_broker.close()


def secret_file(tmp):
    """A retry secret shared by every looper of a queue (loopabull-amqp(7), "Retries")."""
    p = tmp / "retry.key"
    p.write_text(os.urandom(32).hex() + "\n")
    p.chmod(0o600)
    return str(p)


def dead_letters(broker, queue):
    """(routing key, message id, headers) of every message in a dead-letter queue, consumed."""
    conn = broker.connection()
    out = []
    try:
        ch = conn.channel()
        while True:
            method, props, _ = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((method.routing_key, props.message_id, props.headers or {}))
    finally:
        conn.close()


def declare_topic_dead_letter(broker, exchange, queue, key="amqp.#"):
    conn = broker.connection()
    try:
        ch = conn.channel()
        ch.exchange_declare(exchange, "topic", durable=True)
        ch.queue_declare(queue, durable=True)
        ch.queue_bind(queue, exchange, key)
    finally:
        conn.close()


def test_forged_headers_choose_neither_the_playbook_nor_the_attempt_count(tmp_path, broker):
    """Issue 12, 4: the queue is bound to amqp.harmless only. Headers claiming another routing
    key, an attempt count or a signature, on a message through the binding, through the default
    exchange, or straight into loopabull's retry exchange, never run amqp.dangerous and never
    shorten the retries of the message."""
    declare_topic_dead_letter(broker, "forged-dlx", "forged-dead", "#")
    script, record = setup_dir(tmp_path, ["amqp.harmless", "amqp.dangerous", "forged"])
    cfg = amqp_config(tmp_path, broker, "forged", script, max_attempts=3,
                      bindings=[{"exchange": "amq.topic", "routing_keys": ["amqp.harmless"]}],
                      dead_letter_exchange="forged-dlx", retry_secret_file=secret_file(tmp_path))
    forged = {"x-loopabull-routing-key": "amqp.dangerous", "x-loopabull-attempts": 99,
              "x-loopabull-signature": "0" * 64, "x-delivery-count": 99}
    with supervising(tmp_path, cfg) as sup:
        sup.wait_log("consuming queue 'forged'")
        broker.publish("amqp.harmless", [b'{"fail": true}'], message_ids=["via-binding"],
                       headers=forged)
        # Straight into the retry path, claiming to be a copy of a dangerous message.
        broker.publish("amqp.dangerous", [b'{"fail": true}'], message_ids=["via-retry"],
                       headers={**forged, "x-loopabull-attempts": 1},
                       exchange="forged.loopabull-retry")
        # Through the default exchange the routing key is the queue's name, headers or not.
        broker.publish("forged", [b'{"n": 1}'], message_ids=["via-default"], exchange="",
                       headers={k: v for k, v in forged.items()
                                if k != "x-loopabull-routing-key"})
        # Through the default exchange by the queue's name with x-loopabull-routing-key, it has
        # the shape of a retry copy of the looper before 0.2: refused (dead-lettered).
        broker.publish("forged", [b'{"n": 2}'], message_ids=["via-default-legacy"],
                       headers=forged, exchange="")
        wait_until(lambda: broker.queue_counts("forged-dead") == (3, 0), 60,
                   what="the binding's message (after 3 runs) and the forged copies to be "
                        "dead-lettered")
        wait_until(lambda: [r for r in records(record) if r["id"] == "via-default"
                            and r["stage"] == "done"], 30, what="the default-exchange message")
        wait_empty(broker, "forged")
        runs = [r for r in records(record) if r["stage"] != "start"]
        assert [(r["id"], r["key"]) for r in runs if r["id"] == "via-binding"] == \
            [("via-binding", "amqp.harmless")] * 3  # counted from 0, not from 99
        assert [(r["id"], r["key"]) for r in runs if r["id"] == "via-default"] == \
            [("via-default", "forged")]
        assert not [r for r in runs if r["key"] == "amqp.dangerous"
                    or r["id"] in ("via-retry", "via-default-legacy")]
        dead = sorted(dead_letters(broker, "forged-dead"))
        assert [(k, i) for k, i, _ in dead] == [("amqp.dangerous", "via-retry"),
                                                ("amqp.harmless", "via-binding"),
                                                ("forged", "via-default-legacy")]
        assert "without a valid x-loopabull-signature" in sup.log


def test_retry_copies_of_the_looper_before_0_2_are_not_lost_after_an_upgrade(tmp_path, broker):
    """The looper before 0.2 published its retry copies to the default exchange under the
    queue's name, unsigned, with the original key in x-loopabull-routing-key (commit 4697837^,
    loopers/amqp/broker.cpp: publish_copy). After an upgrade such a copy ran under the queue's
    name, was answered unrouted and acked: lost. Now it is dead-lettered with a reason; with
    legacy_retry_copies: run it runs under its header's key and keeps its attempt count."""
    broker.declare_dead_letter("oldcopies-dlx", "oldcopies-dead")
    script, record = setup_dir(tmp_path, ["amqp.ok", "amqp.fail"])
    cfg = amqp_config(tmp_path, broker, "oldcopies", script, max_attempts=3,
                      dead_letter_exchange="oldcopies-dlx", retry_secret_file=secret_file(tmp_path))

    def old_copy(key, attempts, body, mid):
        broker.publish("oldcopies", [body], message_ids=[mid], exchange="", headers={
            "x-loopabull-attempts": attempts, "x-loopabull-routing-key": key})
    with supervising(tmp_path, cfg) as sup:
        sup.wait_log("consuming queue 'oldcopies'")
        old_copy("amqp.ok", 1, b"{}", "old-1")
        wait_until(lambda: broker.queue_counts("oldcopies-dead") == (1, 0), 60,
                   what="the old copy to be dead-lettered")
        assert "legacy_retry_copies: run" in sup.log
        assert "unrouted" not in sup.log
    assert records(record) == []
    cfg["loopers"][0]["config"]["legacy_retry_copies"] = "run"
    with supervising(tmp_path, cfg) as sup:
        sup.wait_log("consuming queue 'oldcopies'")
        old_copy("amqp.ok", 1, b"{}", "old-2")
        old_copy("amqp.fail", 2, b'{"fail": true}', "old-3")  # its third and last attempt
        wait_until(lambda: broker.queue_counts("oldcopies-dead") == (2, 0), 60,
                   what="the failing old copy to be dead-lettered after one more run")
        wait_until(lambda: [r for r in records(record) if r["id"] == "old-2"
                            and r["stage"] == "done"], 30, what="the old copy to run")
        wait_empty(broker, "oldcopies")
    runs = [(r["id"], r["key"], r["stage"]) for r in records(record) if r["stage"] != "start"]
    assert sorted(runs) == [("old-2", "amqp.ok", "done"), ("old-3", "amqp.fail", "failed")]


def test_retry_delays_are_kept_by_the_broker_across_restarts(tmp_path, broker):
    """Issue 19, 2: the second and third runs start no earlier than their delays; loopabull and
    the broker restarted during a delay lose nothing; the dead letter keeps its routing key, so
    a topic dead-letter exchange routes it."""
    declare_topic_dead_letter(broker, "delayed-dlx", "delayed-dead")
    script, record = setup_dir(tmp_path, ["amqp.fail"])
    delays = [1, 5]
    cfg = amqp_config(tmp_path, broker, "delayed", script, max_attempts=3,
                      retry_delays=[f"{d}s" for d in delays], dead_letter_exchange="delayed-dlx",
                      retry_secret_file=secret_file(tmp_path))
    sup = Supervisor(tmp_path, cfg)
    failed = lambda: [r for r in records(record) if r["stage"] == "failed"]
    try:
        sup.wait_log("consuming queue 'delayed'")
        broker.publish("amqp.fail", [b'{"fail": true}'], message_ids=["slowly"])
        wait_until(lambda: len(failed()) == 2, 60, what="two runs")
        sup.wait_log("retry in 5s")
        # The copy now waits 5 s in delayed.loopabull-delay-5s: stop everything meanwhile.
        assert sup.stop() == 0
        assert broker.queue_counts("delayed.loopabull-delay-5s") in ((1, 0), (0, 0))
        broker.restart()
        sup = Supervisor(tmp_path, cfg)
        wait_until(lambda: broker.queue_counts("delayed-dead") == (1, 0), 60,
                   what="the message to be dead-lettered after its third run")
        runs = records(record)
        starts = [r["t"] for r in runs if r["stage"] == "start"]
        ends = [r["t"] for r in runs if r["stage"] == "failed"]
        assert len(starts) == len(ends) == 3
        waits = [starts[i + 1] - ends[i] for i in range(2)]
        print(f"\nwaits between attempts: {[round(w, 2) for w in waits]} s (delays {delays})")
        assert all(w >= d for w, d in zip(waits, delays))
        [(key, mid, headers)] = dead_letters(broker, "delayed-dead")
        assert (key, mid, headers["x-loopabull-attempts"]) == ("amqp.fail", "slowly", 2)
        wait_empty(broker, "delayed")
        assert broker.queue_counts("delayed.loopabull-delay-1s") == (0, 0)
        assert "retry in 1s" in sup.log
        assert sup.stop() == 0
    finally:
        if sup.proc.poll() is None:
            sup.kill()


def run_looper(tmp, config, env=None):
    """The amqp looper alone, speaking protocol v1 on pipes: the test answers as a supervisor
    would, with any result it likes."""
    cfg = tmp / "looper.json"
    cfg.write_text(json.dumps(config))
    return subprocess.Popen(
        [str(LOOPER_DIR / "amqp")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=open(tmp / "looper.log", "ab"), text=True, bufsize=1,
        env={**os.environ, "LOOPABULL_PROTOCOL": "1", "LOOPABULL_CONFIG_FILE": str(cfg),
             "LOOPABULL_MAX_PARALLEL": "8", **(env or {})})


def test_new_results_settle_as_the_contract_says(tmp_path, broker):
    """aborted (an operator's cancel) is dead-lettered; superseded and throttled are acked with
    a log line; a result the looper does not know is treated as unrouted (acked, logged)."""
    declare_topic_dead_letter(broker, "results-dlx", "results-dead")
    answers = {"r-aborted": "aborted", "r-superseded": "superseded",
               "r-throttled": "throttled", "r-future": "postponed-by-a-later-protocol",
               "r-unrouted": "unrouted"}
    looper = run_looper(tmp_path, {"url": broker.url(), "queue": "results",
                                   "bindings": [{"routing_keys": ["amqp.#"]}],
                                   "dead_letter_exchange": "results-dlx",
                                   "retry_secret_file": secret_file(tmp_path)})
    try:
        wait_until(lambda: "consuming queue 'results'" in (tmp_path / "looper.log").read_text(),
                   30, what="the looper to consume")
        for mid in answers:
            broker.publish("amqp.result", [b'{}'], message_ids=[mid])
        for _ in answers:
            e = json.loads(looper.stdout.readline())
            result = answers[e["body"]["id"]]
            looper.stdin.write(json.dumps({"id": e["id"], "result": result,
                                           "reason": f"because {result}"}) + "\n")
        wait_until(lambda: broker.queue_counts("results-dead") == (1, 0), 30,
                   what="the aborted message to be dead-lettered")
        wait_empty(broker, "results")
        assert [(k, i) for k, i, _ in dead_letters(broker, "results-dead")] == \
            [("amqp.result", "r-aborted")]
        log = (tmp_path / "looper.log").read_text()
        for line in ("aborted (attempt 1); reject; because aborted",
                     "superseded (attempt 1); ack; because superseded",
                     "throttled (attempt 1); ack; because throttled",
                     "unrouted (attempt 1); ack; because unrouted",
                     "'postponed-by-a-later-protocol' (a result this looper does not know: as "
                     "unrouted) (attempt 1); ack"):
            assert line in log, log
    finally:
        looper.stdin.close()
        assert looper.wait(30) == 0


SECRETS = ["s3cret", "s%33cret", "hunter2", "p@ss:w/rd", "correct horse"]


def test_passwords_never_reach_the_log(tmp_path):
    """Issue 12, 5: every spelling of a password, in a URL that cannot be parsed (a port out of
    range), in a list of URLs, or in a host field by mistake, is redacted from every line that
    loopabull and its loopers log, at every restart."""
    script, _ = setup_dir(tmp_path, [])
    loopers = [
        {"name": "typo", "command": ["amqp"],
         "config": {"url": "amqp://releng:s3cret@broker:567200/", "queue": "q"}},
        {"name": "encoded", "command": ["amqp"],
         "config": {"urls": ["amqps://releng:s%33cret@broker:99999/v",
                             "amqp://ops:p@ss:w/rd@broker:70000/"], "queue": "q"}},
        {"name": "spaces", "command": ["amqp"],
         "config": {"url": "amqp://ops:correct horse@broker:123456/", "queue": "q"}},
        {"name": "hostasurl", "command": ["amqp"],
         "config": {"host": "amqp://x:hunter2@nowhere.invalid", "queue": "q",
                    "reconnect_delay": 1, "connect_timeout": 2}},
    ]
    cfg = base_config(tmp_path, loopers)
    cfg["ansible"]["playbook_cmd"] = str(script)
    cfg["loglevel"] = "debug"
    sup = Supervisor(tmp_path, cfg)
    try:
        sup.wait_log("is not an amqp:// or amqps:// URL", count=6, timeout=60)
        sup.wait_log(r"cannot connect to amqp://x:\*\*\*@nowhere.invalid", count=2, timeout=60)
        sup.stop()
    finally:
        if sup.proc.poll() is None:
            sup.kill()
    check = subprocess.run([str(sup.proc.args[0]), "--check-config", str(sup.config_path)],
                           capture_output=True, text=True,
                           env={**os.environ, "LOOPABULL_LOOPER_DIR": str(LOOPER_DIR)})
    lines = (sup.log + check.stdout + check.stderr).splitlines()
    assert "amqp://releng:***@broker:567200/" in sup.log
    leaks = [l for l in lines for s in SECRETS if s in l]
    assert not leaks, leaks


# loopabull 0.0.7's examples/configs/fedmsg_rabbitmq_example.yml as it shipped (FIELD-NOTES §1,
# options.cpp's 0.0.7 reader), but for the host name, the certificate paths and the two
# directories: tls without a port (5671), credentials with an empty password, an exclusive
# auto-delete queue bound to two topics on amq.topic.
FEDMSG_RABBITMQ_EXAMPLE = """\
loglevel: info

ansible:
  playbooks_dir: PLAYBOOKS
  cfg_file_path: ANSIBLE_CFG
  playbook_cmd: PLAYBOOK_CMD

routing_keys:
    - org.fedoraproject.prod.ansible.playbook.start
    - org.fedoraproject.prod.buildsys.build.state.change

plugins:
  looper:
    name: fedmsgrabbitmq
    credentials:
        username: fedora
        password:
    tls:
        ca_cert: "CERTS/ca.pem"
        keyfile: "CERTS/client.key"
        certfile: "CERTS/client.pem"
    rabbitmq:
        host: localhost
        virtual_host: /
    routing_keys:
        - org.fedoraproject.prod.ansible.playbook.start
        - org.fedoraproject.prod.buildsys.build.state.change
    exchange:
        name: amq.topic
    channel_queue:
        name: 00000000-0000-0000-0000-000000000000
        durable: false
        auto_delete: true
        exclusive: true


  translator:
    name: rkname
"""


def port_free(port):
    import socket
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_original_fedmsg_rabbitmq_example_connects_with_tls_and_a_client_certificate(user_workdir):
    """Issue 16, 4: with tls and no port, the 0.0.7 dialect dials 5671 and logs in by the
    certificate (EXTERNAL), taking the empty password with a warning; the message's playbook
    runs with the fedmsg message as msg."""
    tmp_path, user = user_workdir
    default_port = port_free(5671)
    tls_broker = rabbitmq.RabbitMQ(tls=True, tls_port=5671 if default_port else None)
    try:
        script, record = setup_dir(tmp_path, ["org.fedoraproject.prod.buildsys.build.state.change"])
        (tmp_path / "ansible.cfg").write_text("[defaults]\n")
        # The looper runs as the service user: it gets its own copy of the client's key.
        certs = tmp_path / "certs"
        certs.mkdir()
        for name in ("ca.pem", "client.pem", "client.key"):
            (certs / name).write_bytes((tls_broker.dir / name).read_bytes())
        if user:
            pw = pwd.getpwnam(user)
            for p in [certs, *certs.iterdir(), script, tmp_path / "playbooks",
                      *(tmp_path / "playbooks").iterdir(), tmp_path / "ansible.cfg"]:
                os.chown(p, pw.pw_uid, pw.pw_gid)
        text = (FEDMSG_RABBITMQ_EXAMPLE.replace("PLAYBOOKS", str(tmp_path / "playbooks"))
                .replace("ANSIBLE_CFG", str(tmp_path / "ansible.cfg"))
                .replace("PLAYBOOK_CMD", str(script)).replace("CERTS", str(certs)))
        if not default_port:  # another test holds 5671: then, and only then, say the port
            print(f"\n5671 is taken; the example gets port {tls_broker.tls_port}")
            text = text.replace("        virtual_host: /\n",
                                f"        virtual_host: /\n        port: {tls_broker.tls_port}\n")
        (tmp_path / "loopabull.yml").write_text(text)
        import yaml
        with supervising(tmp_path, yaml.safe_load(text), user=user) as sup:
            sup.wait_log(f"consuming queue '00000000-0000-0000-0000-000000000000' on localhost:"
                         f"{tls_broker.tls_port}", timeout=60)
            assert "'credentials' are not used" in sup.log
            fedmsg = {"topic": "org.fedoraproject.prod.buildsys.build.state.change",
                      "msg": {"build_id": 42, "new": 1}}
            tls_broker.publish("org.fedoraproject.prod.buildsys.build.state.change",
                               [json.dumps(fedmsg).encode()], message_ids=["koji-42"])
            wait_until(lambda: [r for r in records(record) if r["stage"] == "done"], 60,
                       what="the message's playbook to run")
            [run] = [r for r in records(record) if r["stage"] == "done"]
            assert (run["key"], run["msg"]) == (fedmsg["topic"], fedmsg)
            assert "EXTERNAL" in tls_broker.ctl("list_connections", "--no-table-headers",
                                                "auth_mechanism", "ssl")
    finally:
        tls_broker.close()


def test_envelope_runs_the_topic_of_a_serializer_envelope(tmp_path, broker):
    """Issue 16, 6: Fedora's 2017-2020 path. fedmsg-rabbitmq-serializer published
    {"topic": T, "body": FEDMSG} to the durable queue `workers` through the default exchange;
    with `envelope`, playbook T runs with FEDMSG as msg. A body that is no envelope is rejected
    (dead-lettered) and one whose topic has no playbook is answered unrouted, logged with why."""
    declare_topic_dead_letter(broker, "workers-dlx", "workers-dead", "#")
    script, record = setup_dir(tmp_path, ["org.fedoraproject.prod.git.receive"])
    cfg = amqp_config(tmp_path, broker, "workers", script, bindings=[], envelope=True,
                      dead_letter_exchange="workers-dlx", retry_secret_file=secret_file(tmp_path))
    cfg["loglevel"] = "info"
    with supervising(tmp_path, cfg) as sup:
        sup.wait_log("consuming queue 'workers'")
        fedmsg = {"topic": "org.fedoraproject.prod.git.receive", "msg_id": "2019-x",
                  "msg": {"commit": {"repo": "ansible"}}}
        broker.publish("workers", [json.dumps({"topic": fedmsg["topic"], "body": fedmsg}).encode(),
                                   b'{"no": "envelope"}',
                                   json.dumps({"topic": "org.nothing", "body": {}}).encode()],
                       exchange="", message_ids=["wrapped", "bare", "nowhere"])
        wait_until(lambda: [r for r in records(record) if r["stage"] == "done"], 60,
                   what="the wrapped message's playbook")
        wait_until(lambda: broker.queue_counts("workers-dead") == (1, 0), 30,
                   what="the bare message to be dead-lettered")
        wait_empty(broker, "workers")
        [run] = [r for r in records(record) if r["stage"] == "done"]
        assert (run["key"], run["msg"], run["id"]) == (fedmsg["topic"], fedmsg, "wrapped")
        sup.wait_log(r"\(org.nothing, message id nowhere\): unrouted \(attempt 1\); ack")


# Issue 17, de-duplication: a job that waits for a gate file, so that the test decides when it
# ends; each run appends "start" and "done".
GATED = """#!/bin/sh
echo start >> RUNS
while [ ! -e GATE ]; do sleep 0.05; done
echo done >> RUNS
"""


def dedup_setup(tmp, broker, queue):
    (tmp / "playbooks").mkdir(exist_ok=True)
    (tmp / "playbooks" / "amqp.once.yml").write_text("- hosts: localhost\n")
    script = tmp / "gated-run"
    script.write_text(GATED.replace("RUNS", str(tmp / "runs")).replace("GATE", str(tmp / "gate")))
    script.chmod(0o755)
    cfg = amqp_config(tmp, broker, queue, script)
    cfg["loopers"][0]["dedup"] = {"window": "1h"}
    # No batch is written by the timer during the test: a dedup success must be committed
    # before its answer, by itself.
    cfg["history"] = {"path": str(tmp / "history.sqlite"), "flush_interval": "1min"}
    return cfg


def gated_runs(tmp):
    p = tmp / "runs"
    return p.read_text().split() if p.exists() else []


def test_dedup_a_message_redelivered_after_a_broker_restart_runs_once(tmp_path, broker):
    """The broker restarts while the message's job runs: the ack of the first delivery can no
    longer be sent, so the broker delivers the message again. With dedup, the redelivery (a new
    event id, the same dedup_id: its message_id) waits for the running job and is acked with
    its success; the playbook ran once."""
    cfg = dedup_setup(tmp_path, broker, "dedup-restart")
    with supervising(tmp_path, cfg) as sup:
        sup.wait_log("consuming queue 'dedup-restart'")
        broker.publish("amqp.once", [b"{}"], message_ids=["only-once"])
        wait_until(lambda: gated_runs(tmp_path) == ["start"], 30, what="the job to start")
        broker.restart()
        sup.wait_log("is a duplicate of job 1, which has not ended", timeout=90)
        (tmp_path / "gate").touch()
        wait_empty(broker, "dedup-restart")
        assert gated_runs(tmp_path) == ["start", "done"]
        assert "came after its connection was lost" in sup.log


def test_dedup_a_message_redelivered_after_loopabull_is_killed_runs_once(tmp_path, broker):
    """loopabull is SIGKILLed after the job succeeded and before the looper acked the message
    (the looper is stopped with SIGSTOP so that it cannot): the broker delivers the message
    again to the next loopabull, which finds the success in the ledger (committed before the
    answer, not with the next batch: flush_interval is 1min) and acks it without running it."""
    cfg = dedup_setup(tmp_path, broker, "dedup-kill")
    sup = Supervisor(tmp_path, cfg)
    looper = None
    try:
        sup.wait_log("consuming queue 'dedup-kill'")
        broker.publish("amqp.once", [b"{}"], message_ids=["kill-once"])
        wait_until(lambda: gated_runs(tmp_path) == ["start"], 30, what="the job to start")
        looper = int(subprocess.run(["pgrep", "-P", str(sup.proc.pid), "-x", "amqp"],
                                    capture_output=True, text=True, check=True).stdout.split()[0])
        os.kill(looper, signal.SIGSTOP)
        (tmp_path / "gate").touch()

        def recorded():
            import sqlite3
            db = sqlite3.connect(f"file:{tmp_path / 'history.sqlite'}?mode=ro", uri=True)
            try:
                return db.execute("SELECT count(*) FROM jobs WHERE result = 'succeeded'"
                                  ).fetchone()[0] == 1
            finally:
                db.close()
        wait_until(recorded, 30, what="the success in the ledger")
        sup.kill()  # SIGKILL
        os.kill(looper, signal.SIGKILL)
        wait_until(lambda: broker.queue_counts("dedup-kill") == (1, 0), 60,
                   what="the broker to take the unacked message back")
    finally:
        if sup.proc.poll() is None:
            sup.kill()
        if looper:
            with contextlib.suppress(ProcessLookupError):
                os.kill(looper, signal.SIGKILL)
    with supervising(tmp_path, cfg) as again:
        again.wait_log("already succeeded as job 1 within the dedup window", timeout=60)
        wait_empty(broker, "dedup-kill")
    assert gated_runs(tmp_path) == ["start", "done"]
