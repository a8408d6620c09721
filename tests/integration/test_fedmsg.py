# SPDX-License-Identifier: GPL-3.0-or-later
"""The bundled fedmsg looper under the real supervisor, fed by a real ZeroMQ publisher (pyzmq from
Debian) on loopback, with the real ansible-playbook: each fedmsg envelope reaches its playbook."""
import json

import pytest

from conftest import base_config, free_port, needs_ansible, wait_until

zmq = pytest.importorskip("zmq", reason="Debian's python3-zmq is needed for the publisher")

pytestmark = needs_ansible

HELLO = "org.fedoraproject.prod.test.hello"
OTHER = "org.example.other.hello"

# Records the envelope fields a fedmsg playbook uses: topic, msg, msg_id.
RECORD = """\
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - copy:
        dest: "{{ event.msg.out_dir }}/{{ event.msg.n }}.json"
        content: "{{ {'topic': event.topic, 'msg': event.msg, 'msg_id': event.msg_id,
                      'event_id': loopabull_event_id} | to_json }}"
"""


class Publisher:
    """An XPUB socket: it sees the looper's subscriptions arrive, so messages are published only
    once a subscriber can receive them (PUB/SUB drops what is sent before)."""

    def __init__(self):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.XPUB)
        self.port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.sock.bind(self.endpoint)

    def wait_subscriptions(self, count, timeout=30):
        subs = []
        self.sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
        while len(subs) < count:
            frame = self.sock.recv()
            if frame[:1] == b"\x01":
                subs.append(frame[1:].decode())
        return sorted(subs)

    def send(self, topic, envelope):
        body = envelope if isinstance(envelope, bytes) else json.dumps(envelope).encode()
        self.sock.send_multipart([topic.encode(), body])

    def close(self):
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture
def publisher():
    p = Publisher()
    yield p
    p.close()


def envelope(topic, n, out):
    return {"topic": topic, "msg_id": f"2026-{n:04d}", "timestamp": 1790000000 + n, "i": n,
            "username": "apache", "msg": {"n": n, "out_dir": str(out)}}


def fedmsg_config(workdir, endpoint, **config):
    looper = {"name": "bus", "command": ["fedmsg"], "config": {"endpoints": [endpoint], **config}}
    cfg = base_config(workdir, [looper])
    cfg["ansible"]["layout"] = "name"
    for topic in (HELLO, OTHER):
        (workdir / "playbooks" / f"{topic}.yml").write_text(RECORD)
    return cfg


def recorded(out):
    return {int(p.stem): json.loads(p.read_text()) for p in out.glob("*.json")}


def test_envelopes_reach_their_playbooks(workdir, supervisor, publisher):
    out = workdir / "out"
    sup = supervisor(fedmsg_config(workdir, publisher.endpoint, topics=["org.fedoraproject.prod"]))
    assert publisher.wait_subscriptions(1) == ["org.fedoraproject.prod"]
    for n in range(1, 4):
        publisher.send(HELLO, envelope(HELLO, n, out))
    wait_until(lambda: len(recorded(out)) == 3, 120, what="three playbooks to run")
    runs = recorded(out)
    assert runs[2]["topic"] == HELLO
    assert runs[2]["msg"] == {"n": 2, "out_dir": str(out)}
    assert runs[2]["msg_id"] == "2026-0002"
    # The event id names the message in the supervisor's log and in the playbook.
    assert runs[2]["event_id"].startswith("2026-0002#")
    assert sup.stop() == 0


def test_only_subscribed_topics_become_events(workdir, supervisor, publisher):
    out = workdir / "out"
    sup = supervisor(fedmsg_config(workdir, publisher.endpoint, topics=[HELLO, "org.nothing"]))
    assert publisher.wait_subscriptions(2) == sorted([HELLO, "org.nothing"])
    publisher.send(OTHER, envelope(OTHER, 1, out))
    publisher.send(HELLO, envelope(HELLO, 2, out))
    wait_until(lambda: 2 in recorded(out), 120, what="the subscribed topic's playbook")
    assert sup.stop() == 0
    assert sorted(recorded(out)) == [2]
    assert OTHER not in sup.log


def test_malformed_messages_are_dropped_and_named(workdir, supervisor, publisher):
    out = workdir / "out"
    sup = supervisor(fedmsg_config(workdir, publisher.endpoint))
    publisher.wait_subscriptions(1)
    publisher.send(HELLO, b"not json")
    publisher.send(HELLO, b"[1, 2]")
    publisher.sock.send(b"one frame only")
    publisher.sock.send_multipart([b"org.\xff.bad", b"{}"])
    publisher.send(HELLO, b'{"msg": ' * 200 + b"1" + b"}" * 200)
    publisher.send(HELLO, envelope(HELLO, 7, out))
    wait_until(lambda: 7 in recorded(out), 120, what="the good message after the bad ones")
    sup.wait_log(r"looper bus: dropping a message on '" + HELLO + r"': not JSON")
    sup.wait_log(r"looper bus: dropping .*the envelope is not a JSON object")
    sup.wait_log(r"looper bus: dropping a message of 1 frames")
    sup.wait_log(r"looper bus: dropping .*nested deeper than 128")
    sup.wait_log(r"looper bus: dropping a message on 'org\..*\.bad': invalid UTF-8")
    assert "looper bus (pid" not in sup.log  # it never exited
    assert sup.stop() == 0
    assert sorted(recorded(out)) == [7]


@pytest.mark.parametrize("config, message", [
    ({}, r"config\.endpoints: missing"),
    ({"endpoints": ["bogus://x"]}, r"config\.endpoints\[0\] 'bogus://x': Protocol not supported"),
    ({"endpoints": ["tcp://127.0.0.1:1"], "topic": ["x"]}, r"config\.topic: unknown key"),
    ({"endpoints": ["tcp://127.0.0.1:1"], "reconnect_interval": "soon"},
     r"config\.reconnect_interval: "),
])
def test_bad_config_names_the_field(workdir, supervisor, config, message):
    cfg = base_config(workdir, [{"name": "bus", "command": ["fedmsg"], "config": config,
                                 "restart_limit": 1}])
    sup = supervisor(cfg)
    sup.wait_log(r"looper bus: fedmsg: " + message)
    sup.wait_log(r"looper bus \(pid \d+\) exited with status 2")
    assert sup.stop() == 0
