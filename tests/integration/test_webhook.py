# SPDX-License-Identifier: GPL-3.0-or-later
"""The bundled webhook looper under the real supervisor, spoken to by real HTTP clients (curl and
Python's http.client): authentication, replays, limits, TLS with client certificates, and the
spool that keeps an accepted request through a supervisor crash."""
import hashlib
import hmac
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import time

import pytest
import yaml

from conftest import base_config, free_port, needs_ansible, wait_until

# GitHub's documented test vector (FIELD-NOTES §9).
GH_SECRET = "It's a Secret to Everybody"
GH_PAYLOAD = b"Hello, World!"
GH_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

KEYS = ["github.push", "github.ping", "hook.deploy", "alertmanager.firing.DiskFull",
        "alertmanager.firing.HighLoad", "plain.hook", "sync.hook", "forgejo.push"]


class _Loader(yaml.SafeLoader):
    pass


# The vars file tags every string !unsafe (FIELD-NOTES §2).
_Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


def recorder(workdir, block=None):
    """A playbook_cmd that keeps each job's vars file in out/ (the event's data, whichever way the
    supervisor nests it), then waits while the file `block` exists."""
    script = workdir / "record.sh"
    wait = f'while [ -e "{block}" ]; do sleep 0.1; done\n' if block else ""
    script.write_text("#!/bin/sh\nfor a; do case $a in @*) f=${a#@};; esac; done\n"
                      f'cp "$f" "{workdir}/out/$(date +%s%N).yml"\n' + wait)
    script.chmod(0o755)
    return str(script)


def recorded(workdir):
    runs = []
    for p in sorted((workdir / "out").glob("*.yml")):
        v = yaml.load(p.read_text(), Loader=_Loader)
        runs.append(v.get("event", v) | {k: x for k, x in v.items() if k.startswith("loopabull_")})
    return runs


def config(workdir, port, endpoints, block=None, **webhook):
    for key in KEYS:
        (workdir / "playbooks" / f"{key}.yml").write_text("- hosts: localhost\n")
    looper = {"name": "web", "command": ["webhook"],
              "config": {"listen": [f"127.0.0.1:{port}"], "state_directory": str(workdir / "state"),
                         "endpoints": endpoints, **webhook}}
    cfg = base_config(workdir, [looper])
    cfg["ansible"].update(layout="name", playbook_cmd=recorder(workdir, block))
    return cfg


def secret_file(workdir, name, text):
    p = workdir / name
    p.write_text(text)
    p.chmod(0o600)
    return str(p)


def github(workdir):
    return {"path": "/hooks/github", "preset": "github",
            "secret_file": secret_file(workdir, "gh.secret", GH_SECRET + "\n")}


def start(supervisor, cfg):
    sup = supervisor(cfg)
    sup.wait_log(r"listening on 127\.0\.0\.1", what="the webhook looper to listen")
    return sup


def curl(port, path, body=b"", headers=(), scheme="http", extra=()):
    args = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-X", "POST",
            "--data-binary", "@-", f"{scheme}://127.0.0.1:{port}{path}", *extra]
    for h in headers:
        args += ["-H", h]
    p = subprocess.run(args, input=body, capture_output=True, timeout=60)
    out = p.stdout.decode()
    text, _, code = out.rpartition("\n")
    return int(code or 0), (json.loads(text) if text.strip().startswith("{") else text)


def post(port, path, body, headers=None, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("POST", path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    if conn is None:
        c.close()
    return r.status, (json.loads(data) if data.startswith(b"{") else data)


def spooled(workdir):
    d = workdir / "state" / "spool"
    return sorted(p.name for p in d.glob("*.json")) if d.exists() else []


def test_github_test_vector_is_accepted_and_runs(workdir, supervisor):
    port = free_port()
    sup = start(supervisor, config(workdir, port, [github(workdir)]))
    code, body = curl(port, "/hooks/github", GH_PAYLOAD,
                      ["X-GitHub-Event: push", f"X-Hub-Signature-256: {GH_SIGNATURE}",
                       "X-GitHub-Delivery: 11111111-2222"])
    assert code == 202, body
    wait_until(lambda: recorded(workdir), what="the playbook to run")
    run = recorded(workdir)[0]
    assert run["loopabull_routing_key"] == "github.push"
    assert run["loopabull_event_id"] == body["id"]
    assert run["payload"] == "Hello, World!"
    assert run["headers"]["x-github-delivery"] == "11111111-2222"
    assert "x-hub-signature-256" not in run["headers"]
    wait_until(lambda: spooled(workdir) == [], what="the spool to empty after the answer")
    assert sup.stop() == 0


def test_wrong_and_missing_signatures_never_reach_the_supervisor(workdir, supervisor):
    port = free_port()
    sup = start(supervisor, config(workdir, port, [github(workdir)]))
    body = json.dumps({"zen": "hi"}).encode()
    good = "sha256=" + hmac.new(GH_SECRET.encode(), body, hashlib.sha256).hexdigest()
    wrong_key = "sha256=" + hmac.new(b"guess", body, hashlib.sha256).hexdigest()
    other_body = "sha256=" + hmac.new(GH_SECRET.encode(), body + b" ", hashlib.sha256).hexdigest()
    for sig, expected in [(wrong_key, 403), (other_body, 403), (good[:-1], 403),
                          (good.replace("sha256=", "sha1="), 403), (None, 401)]:
        headers = {"X-GitHub-Event": "ping", "Content-Type": "application/json"}
        if sig:
            headers["X-Hub-Signature-256"] = sig
        assert post(port, "/hooks/github", body, headers)[0] == expected, sig
    # One rate-limited line for the run of 403s, with a count of the others.
    time.sleep(0.5)
    assert sup.log.count("refused 403 (authentication)") == 1
    assert "github.ping" not in sup.log
    assert recorded(workdir) == [] and spooled(workdir) == []
    headers = {"X-GitHub-Event": "ping", "X-Hub-Signature-256": good.upper().replace("SHA256=", "sha256=")}
    assert post(port, "/hooks/github", body, headers)[0] == 202
    wait_until(lambda: len(recorded(workdir)) == 1, what="the authentic request to run")
    assert recorded(workdir)[0]["payload"] == {"zen": "hi"}
    assert sup.stop() == 0


def test_replayed_delivery_is_refused(workdir, supervisor):
    port = free_port()
    sup = start(supervisor, config(workdir, port, [github(workdir)]))
    headers = ["X-GitHub-Event: push", f"X-Hub-Signature-256: {GH_SIGNATURE}",
               "X-GitHub-Delivery: once"]
    code, first = curl(port, "/hooks/github", GH_PAYLOAD, headers)
    assert code == 202
    code, again = curl(port, "/hooks/github", GH_PAYLOAD, headers)
    assert code == 409 and again["id"] == first["id"]
    # Same body, same signature, without a delivery id: the signature identifies it.
    code, _ = curl(port, "/hooks/github", GH_PAYLOAD, headers[:2])
    assert code == 202
    code, _ = curl(port, "/hooks/github", GH_PAYLOAD, headers[:2])
    assert code == 409
    wait_until(lambda: len(recorded(workdir)) == 2, what="two runs")
    time.sleep(1)
    assert len(recorded(workdir)) == 2
    assert sup.stop() == 0


def test_routing_key_template_from_header_and_body(workdir, supervisor):
    port = free_port()
    ep = {"path": "/hook", "auth": {"type": "token", "header": "X-Token"},
          "secret_file": secret_file(workdir, "token", "s3cret"),
          "routing_key": "hook.{body:/action}"}
    sup = start(supervisor, config(workdir, port, [ep]))
    h = {"X-Token": "s3cret", "Content-Type": "application/json"}
    assert post(port, "/hook", b'{"action": "deploy"}', h)[0] == 202
    assert post(port, "/hook", b'{"other": 1}', h) == (400, {"error": "the body has no /action"})
    status, why = post(port, "/hook", b'{"action": "../../etc/passwd"}', h)
    assert status == 400 and "routing key" in why["error"]
    assert post(port, "/hook", b'{"action": "x.-y"}', h)[0] == 400
    assert post(port, "/hook", b'{not json', h)[0] == 400
    assert post(port, "/hook", b'{"action": "deploy"}', {"X-Token": "wrong"})[0] == 403
    assert post(port, "/elsewhere", b'{}', h)[0] == 404
    wait_until(lambda: len(recorded(workdir)) == 1, what="the run")
    run = recorded(workdir)[0]
    assert run["loopabull_routing_key"] == "hook.deploy"
    assert "x-token" not in run["headers"]
    assert sup.stop() == 0


def test_oversize_bodies_and_headers_are_refused(workdir, supervisor):
    port = free_port()
    ep = {"path": "/plain", "auth": "none", "routing_key": "plain.hook"}
    sup = start(supervisor, config(workdir, port, [ep], limits={"max_body": 1000, "max_header": 4096}))
    assert curl(port, "/plain", b"x" * 1001)[0] == 413
    assert curl(port, "/plain", b"x" * 1000)[0] == 202
    assert curl(port, "/plain", b"x", [f"X-Big: {'a' * 8000}"])[0] == 431
    # Chunked, without a length: the connection is cut once the limit is passed.
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        c.request("POST", "/plain", body=iter([b"y" * 600] * 4), encode_chunked=True)
        c.getresponse().read()
    wait_until(lambda: len(recorded(workdir)) == 1, what="the one accepted run")
    assert sup.stop() == 0


def test_slow_clients_lose_their_slot(workdir, supervisor):
    port = free_port()
    ep = {"path": "/plain", "auth": "none", "routing_key": "plain.hook"}
    sup = start(supervisor, config(workdir, port, [ep], limits={
        "idle_timeout": 1, "request_timeout": 2, "max_connections_per_client": 2}))
    # A client that stops half-way through its headers is closed after the idle timeout.
    idle = socket.create_connection(("127.0.0.1", port))
    idle.sendall(b"POST /plain HTTP/1.1\r\nHost: x\r\n")
    idle.settimeout(20)
    assert idle.recv(100) == b""
    # One that sends its body a byte at a time, never idle, is cut at the request timeout.
    drip = socket.create_connection(("127.0.0.1", port))
    drip.sendall(b"POST /plain HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
    deadline = time.monotonic() + 20
    closed = False
    while time.monotonic() < deadline and not closed:
        try:
            drip.sendall(b"z")
            time.sleep(0.3)
        except OSError:
            closed = True
    assert closed
    # The slots are free again for a well-behaved client.
    assert post(port, "/plain", b"{}")[0] == 202
    assert sup.stop() == 0


def test_connection_limit(workdir, supervisor):
    port = free_port()
    ep = {"path": "/plain", "auth": "none", "routing_key": "plain.hook"}
    sup = start(supervisor, config(workdir, port, [ep], limits={"max_connections": 2,
                                                                "idle_timeout": 30}))
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    for s in held:
        s.sendall(b"POST /plain HTTP/1.1\r\n")
    time.sleep(0.5)
    # Beyond the limit a connection waits in the listening socket's backlog, unserved...
    extra = socket.create_connection(("127.0.0.1", port))
    extra.sendall(b"POST /plain HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    extra.settimeout(2)
    with pytest.raises(TimeoutError):
        extra.recv(100)
    # ... until a slot is free.
    for s in held:
        s.close()
    extra.settimeout(30)
    assert extra.recv(100).startswith(b"HTTP/1.1 202")
    assert sup.stop() == 0


def test_per_client_rate_limit(workdir, supervisor):
    port = free_port()
    ep = {"path": "/plain", "auth": "none", "routing_key": "plain.hook"}
    sup = start(supervisor, config(workdir, port, [ep], limits={"rate": 0.1, "rate_burst": 2}))
    codes = [post(port, "/plain", b"{}")[0] for _ in range(4)]
    assert codes == [202, 202, 429, 429]
    time.sleep(0.5)
    assert sup.log.count("refused 429 (rate)") == 1
    assert sup.stop() == 0


def test_alertmanager_group_becomes_one_event_per_alert(workdir, supervisor):
    port = free_port()
    ep = {"path": "/alerts", "preset": "alertmanager",
          "secret_file": secret_file(workdir, "am", "bearer-token")}
    sup = start(supervisor, config(workdir, port, [ep]))
    group = {"version": "4", "status": "firing", "receiver": "loopabull",
             "groupLabels": {"team": "ops"}, "commonLabels": {"team": "ops"},
             "alerts": [{"status": "firing", "labels": {"alertname": "DiskFull", "host": "a"}},
                        {"status": "firing", "labels": {"alertname": "HighLoad", "host": "b"}}]}
    body = json.dumps(group).encode()
    assert post(port, "/alerts", body, {"Authorization": "Bearer nope"})[0] == 403
    status, ans = post(port, "/alerts", body, {"Authorization": "Bearer bearer-token"})
    assert status == 202 and len(ans["events"]) == 2
    wait_until(lambda: len(recorded(workdir)) == 2, what="two runs")
    runs = sorted(recorded(workdir), key=lambda r: r["loopabull_routing_key"])
    assert [r["loopabull_routing_key"] for r in runs] == ["alertmanager.firing.DiskFull",
                                                         "alertmanager.firing.HighLoad"]
    assert runs[0]["payload"]["labels"]["host"] == "a"
    assert runs[0]["payload"]["group"]["receiver"] == "loopabull"
    assert sup.stop() == 0


def test_synchronous_endpoint_returns_the_result(workdir, supervisor):
    port = free_port()
    ep = {"path": "/sync", "auth": {"type": "bearer"}, "synchronous": True,
          "secret_file": secret_file(workdir, "tok", "t0k"), "routing_key": "sync.hook"}
    sup = start(supervisor, config(workdir, port, [ep]))
    status, ans = post(port, "/sync", b"{}", {"Authorization": "Bearer t0k"})
    assert status == 200 and ans["result"] == "succeeded"
    assert sup.stop() == 0


def test_accepted_request_survives_a_supervisor_crash(workdir, supervisor):
    port = free_port()
    block = workdir / "block"
    block.touch()
    cfg = config(workdir, port, [github(workdir)], block=block)
    sup = start(supervisor, cfg)
    code, ans = curl(port, "/hooks/github", GH_PAYLOAD,
                     ["X-GitHub-Event: push", f"X-Hub-Signature-256: {GH_SIGNATURE}"])
    assert code == 202
    wait_until(lambda: recorded(workdir), what="the job to start")
    assert spooled(workdir) == [ans["id"] + ".json"]
    looper_pid = int(subprocess.run(["pgrep", "-P", str(sup.proc.pid), "-x", "webhook"],
                                    capture_output=True, text=True).stdout.split()[0])
    sup.kill()
    wait_until(lambda: not os.path.exists(f"/proc/{looper_pid}") or
               open(f"/proc/{looper_pid}/stat").read().split(") ")[1][0] == "Z",
               what="the looper to die with its supervisor")
    assert spooled(workdir) == [ans["id"] + ".json"]
    block.unlink()
    for f in (workdir / "out").glob("*.yml"):
        f.unlink()
    sup2 = start(supervisor, config(workdir, port, [github(workdir)]))
    wait_until(lambda: recorded(workdir), what="the event to run again")
    assert recorded(workdir)[0]["loopabull_event_id"] == ans["id"]
    wait_until(lambda: spooled(workdir) == [], what="the spool to empty")
    assert sup2.stop() == 0


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")

    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=test CA")
    for name, cn in (("server", "127.0.0.1"), ("client", "client")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={cn}")
        (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\n" if name == "server"
                                       else "extendedKeyUsage=clientAuth\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    # A client certificate from a CA the server does not trust.
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key", "-out",
        "rogue.pem", "-days", "2", "-subj", "/CN=rogue")
    return d


def test_tls_with_client_certificates(workdir, supervisor, pki):
    port = free_port()
    ep = {"path": "/plain", "auth": "none", "routing_key": "plain.hook"}
    sup = start(supervisor, config(workdir, port, [ep], tls={
        "certfile": str(pki / "server.pem"), "keyfile": str(pki / "server.key"),
        "client_ca": str(pki / "ca.pem")}))
    ca = ["--cacert", str(pki / "ca.pem")]
    assert curl(port, "/plain", b"{}", scheme="https",
                extra=ca + ["--cert", str(pki / "client.pem"), "--key", str(pki / "client.key")])[0] == 202
    assert curl(port, "/plain", b"{}", scheme="https", extra=ca)[0] in (0, 403)
    assert curl(port, "/plain", b"{}", scheme="https",
                extra=ca + ["--cert", str(pki / "rogue.pem"), "--key", str(pki / "rogue.key")])[0] in (0, 403)
    # Plain HTTP to the TLS port gets nothing.
    assert curl(port, "/plain", b"{}")[0] != 202
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
    assert post(port, "/plain", b'{"via": "http.client"}', conn=c)[0] == 202
    c.close()
    wait_until(lambda: len(recorded(workdir)) == 2, what="the two authenticated runs")
    assert sup.stop() == 0


def test_endpoint_without_authentication_is_a_config_error(workdir, supervisor):
    port = free_port()
    cfg = config(workdir, port, [{"path": "/x", "routing_key": "plain.hook"}])
    sup = supervisor(cfg)
    sup.wait_log(r"no authentication: give a preset or auth", what="the refusal")
    cfg = config(workdir, port, [{"path": "/x", "auth": {"type": "token", "header": "X-T"},
                                  "secret": "inline", "routing_key": "plain.hook"}])
    sup.write_config(cfg)
    sup.signal(signal.SIGHUP)
    sup.wait_log(r"secrets come from secret_file or secret_credential", what="the refusal")
    sup.stop()


def test_secret_from_systemd_credentials(workdir, supervisor):
    port = free_port()
    creds = workdir / "creds"
    creds.mkdir()
    (creds / "forge").write_text("from-credentials")
    ep = {"path": "/f", "preset": "forgejo", "secret_credential": "forge"}
    cfg = config(workdir, port, [ep])
    sup = supervisor(cfg, env={"CREDENTIALS_DIRECTORY": str(creds)})
    sup.wait_log(r"listening on 127\.0\.0\.1")
    body = b'{"ref": "main"}'
    sig = hmac.new(b"from-credentials", body, hashlib.sha256).hexdigest()
    status, _ = post(port, "/f", body, {"X-Forgejo-Event": "push", "X-Forgejo-Signature": sig,
                                       "X-Forgejo-Delivery": "d1"})
    assert status == 202
    assert sup.stop() == 0


# Stands in for systemd's socket activation: binds the socket, puts it at descriptor 3 with
# LISTEN_FDS/LISTEN_FDNAMES/LISTEN_PID, and execs loopabull in the same process.
SOCKET_ACTIVATE = """\
import os, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)  # dup2 onto itself (s may be 3) keeps close-on-exec
os.environ.update(LISTEN_FDS="1", LISTEN_FDNAMES="web", LISTEN_PID=str(os.getpid()))
os.execv(sys.argv[2], sys.argv[2:])
"""


def test_socket_passed_by_systemd_reaches_the_looper_that_names_it(workdir, supervisor):
    port = free_port()
    ep = {"path": "/plain", "auth": "none", "routing_key": "plain.hook"}
    cfg = config(workdir, port, [ep])
    cfg["loopers"][0]["config"]["listen"] = ["fd:web"]
    other = workdir / "other-looper.sh"
    other.write_text("#!/bin/sh\nexec cat >/dev/null\n")
    other.chmod(0o755)
    cfg["loopers"].append({"name": "other", "command": [str(other)]})
    sup = supervisor(cfg, wrapper=["/usr/bin/python3", "-c", SOCKET_ACTIVATE, str(port)])
    sup.wait_log(r"listening on fd:web", what="the looper to take the socket")
    assert post(port, "/plain", b'{"via": "socket activation"}')[0] == 202
    wait_until(lambda: recorded(workdir), what="the run")
    pid = int(subprocess.run(["pgrep", "-P", str(sup.proc.pid), "-x", "webhook"],
                             capture_output=True, text=True).stdout.split()[0])
    env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    assert b"LISTEN_FDS=1" in env and b"LISTEN_FDNAMES=web" in env
    assert f"LISTEN_PID={pid}".encode() in env
    assert b"LOOPABULL_CONFIG_FILE=/proc/self/fd/4" in env
    # A looper that does not name the socket gets neither it nor the variables.
    cat = int(subprocess.run(["pgrep", "-P", str(sup.proc.pid), "-x", "cat"],
                             capture_output=True, text=True).stdout.split()[0])
    links = [os.readlink(f"/proc/{cat}/fd/{fd}") for fd in os.listdir(f"/proc/{cat}/fd")]
    assert not [l for l in links if l.startswith("socket:")], links
    assert not [e for e in open(f"/proc/{cat}/environ", "rb").read().split(b"\0")
                if e.startswith(b"LISTEN_")]
    assert sup.stop() == 0
