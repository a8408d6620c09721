# SPDX-License-Identifier: GPL-3.0-or-later
"""The webhook looper behind the shipped loopabull-webhook@.socket on a booted systemd: the first
connection starts loopabull@.service, the socket reaches the looper that names it (listen:
fd:webhook), the bearer token comes from a systemd credential, and the request's playbook runs."""
import json
import socket

from test_service import Service, wait_until

INSTANCE = "hooks"

PLAYBOOK = """- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.copy:
        dest: "/var/lib/loopabull/{{ loopabull_instance }}/ran"
        content: "{{ event.payload.n if event is defined else payload.n }} {{ loopabull_event_id }}\\n"
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_socket_unit_starts_the_service_and_hands_the_socket_to_the_looper(installed_machine,
                                                                           build_dir):
    service = Service(installed_machine, build_dir)
    m = service.m
    port = free_port()  # the container shares the host's network
    m.write_file(f"/etc/systemd/system/loopabull-webhook@{INSTANCE}.socket.d/50-port.conf",
                 f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n")
    m.write_file("/etc/loopabull/hook.token", "t0ken\n", mode=0o600)
    m.write_file(f"/etc/systemd/system/loopabull@{INSTANCE}.service.d/60-credential.conf",
                 "[Service]\nLoadCredential=hook-token:/etc/loopabull/hook.token\n")
    m.write_file("/srv/loopabull-test/playbooks/hook.test.yml", PLAYBOOK)
    cfg = {
        "routing_keys": ["all"],
        "loopers": [{"name": "web", "command": ["webhook"],
                     "config": {"listen": ["fd:webhook"],
                                "endpoints": [{"path": "/hook", "auth": {"type": "bearer"},
                                               "secret_credential": "hook-token",
                                               "routing_key": "hook.test"}]}}],
        "ansible": {"playbooks_dir": "/srv/loopabull-test/playbooks", "layout": "name",
                    "cfg_file_path": "/srv/loopabull-test/ansible.cfg",
                    "inventory": "/srv/loopabull-test/inventory"},
        "executor": {"type": "direct", "max_parallel": 1, "timeout": "5min"},
    }
    m.write_file(f"{service.confdir}/{INSTANCE}.yml", json.dumps(cfg), mode=0o640,
                 owner="root:loopabull")
    m.daemon_reload()
    m.systemctl("start", f"loopabull-webhook@{INSTANCE}.socket")
    assert m.systemctl("is-active", f"loopabull@{INSTANCE}.service", check=False).stdout.strip() != "active"
    # The first connection starts the service; curl waits in the socket's backlog meanwhile.
    r = m.run(["curl", "-sS", "--max-time", "60", "-o", "-", "-w", "\n%{http_code}",
               "-H", "Authorization: Bearer wrong", "-d", '{"n": 0}', f"http://127.0.0.1:{port}/hook"])
    assert r.stdout.rsplit("\n", 1)[1] == "403", r.stdout
    r = m.run(["curl", "-sS", "--max-time", "60", "-o", "-", "-w", "\n%{http_code}",
               "-H", "Authorization: Bearer t0ken", "-d", '{"n": 7}', f"http://127.0.0.1:{port}/hook"])
    body, code = r.stdout.rsplit("\n", 1)
    assert code == "202", r.stdout
    event_id = json.loads(body)["id"]
    wait_until(lambda: m.run(["cat", f"/var/lib/loopabull/{INSTANCE}/ran"], check=False).stdout
               == f"7 {event_id}\n", 120, what="the request's playbook")
    assert "listening on fd:webhook" in service.journal(INSTANCE)
    # The spool lives in the instance's state directory and is empty once answered.
    wait_until(lambda: m.run(f"ls /var/lib/loopabull/{INSTANCE}/webhook-web/spool/*.json",
                             check=False).returncode != 0, what="the spool to empty")
