# SPDX-License-Identifier: GPL-3.0-or-later
"""A private RabbitMQ node for tests: loopback, free ports, its own directory, stopped at the end
(FIELD-NOTES §8). Debian's wrappers drop to the rabbitmq user, so the directory is theirs."""
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pika

SERVER = shutil.which("rabbitmq-server") or "/usr/sbin/rabbitmq-server"
CTL = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def available():
    return os.path.exists(SERVER) and os.geteuid() == 0


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(d):
    """A CA, a server certificate for localhost and a client certificate whose CN is the
    broker user "guest" (for SASL EXTERNAL)."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "2", "-subj", "/CN=loopabull test CA", cwd=d)
    (d / "san.ext").write_text("subjectAltName=DNS:localhost\n")
    for name, cn in (("server", "localhost"), ("client", "guest")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                *(["-extfile", "san.ext"] if name == "server" else []), cwd=d)


class RabbitMQ:
    """address: the loopback address of the node's AMQP listener and, with own_address, the
    source address of the distribution connections it opens (a netns test tells the node's
    traffic apart by it). conf: more rabbitmq.conf lines."""

    def __init__(self, tls=False, tls_port=None, address="127.0.0.1", own_address=False, conf=""):
        self.dir = Path(tempfile.mkdtemp(prefix="loopabull-rabbit-"))
        self.name = f"loopabull{os.getpid()}x{free_port()}@localhost"
        self.address = address
        self.port = free_port()
        self.dist_port = free_port()
        conf = f"listeners.tcp.default = {address}:{self.port}\nloopback_users = none\n{conf}"
        plugins = "[]."
        self.tls_port = None
        if tls:
            self.tls_port = tls_port or free_port()
            make_certificates(self.dir)
            conf += "\n".join([
                f"listeners.ssl.default = 127.0.0.1:{self.tls_port}",
                f"ssl_options.cacertfile = {self.dir}/ca.pem",
                f"ssl_options.certfile = {self.dir}/server.pem",
                f"ssl_options.keyfile = {self.dir}/server.key",
                "ssl_options.verify = verify_peer",
                "ssl_options.fail_if_no_peer_cert = true",
                "auth_mechanisms.1 = PLAIN",
                "auth_mechanisms.2 = EXTERNAL",
                "ssl_cert_login_from = common_name", ""])
            plugins = "[rabbitmq_auth_mechanism_ssl]."
        (self.dir / "rabbitmq.conf").write_text(conf)
        advanced = "[]."
        if own_address:
            # inet_dist_connect_options is passed to gen_tcp:connect for every distribution
            # connection this node opens (Erlang's kernel(6)): {ip, A} binds its source address.
            ip = ",".join(address.split("."))
            advanced = f"[{{kernel, [{{inet_dist_connect_options, [{{ip, {{{ip}}}}}]}}]}}]."
        (self.dir / "advanced.config").write_text(advanced + "\n")
        (self.dir / "enabled_plugins").write_text(plugins + "\n")
        (self.dir / "mnesia").mkdir()
        (self.dir / "log").mkdir()
        pw = pwd.getpwnam("rabbitmq")
        for root, dirs, files in os.walk(self.dir):
            for n in [root] + [os.path.join(root, f) for f in dirs + files]:
                os.chown(n, pw.pw_uid, pw.pw_gid)
        self.env = {**os.environ,
                    "RABBITMQ_NODENAME": self.name,
                    "RABBITMQ_NODE_IP_ADDRESS": address,
                    "RABBITMQ_NODE_PORT": str(self.port),
                    "RABBITMQ_DIST_PORT": str(self.dist_port),
                    "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
                    "RABBITMQ_LOG_BASE": str(self.dir / "log"),
                    "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
                    "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins")}
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen([SERVER], env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            r = subprocess.run([CTL, "-q", "-n", self.name, "await_startup"], env=self.env,
                               capture_output=True, text=True, timeout=60)
            if r.returncode == 0:
                return
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"RabbitMQ did not start: {r.stderr}\n{self.log()[-3000:]}")
            time.sleep(0.5)

    def vm_pid(self):
        """The node's Erlang VM. Debian's wrapper starts it with su, in a session of its own:
        killing the wrapper's process group does not reach it."""
        return int(self.ctl("eval", "os:getpid().").strip().strip('"'))

    def kill(self, pid=None):
        """SIGKILL to the node's Erlang VM (pid: vm_pid(), asked earlier to kill at once): a
        crash, not a shutdown."""
        os.kill(pid or self.vm_pid(), 9)
        self._reap()

    def stop(self):
        if self.proc is None:
            return
        subprocess.run([CTL, "-q", "-n", self.name, "stop"], env=self.env, capture_output=True,
                       timeout=60)
        self._reap()

    def _reap(self):
        """Waits for the wrapper to end, killing its process group if it does not."""
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        self.proc = None

    def restart(self):
        self.stop()
        self.start()

    def close(self):
        self.stop()
        if not os.environ.get("LOOPABULL_KEEP_TMP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def ctl(self, *args):
        r = subprocess.run([CTL, "-q", "-n", self.name, *args], env=self.env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def log(self):
        return "".join(p.read_text(errors="replace") for p in (self.dir / "log").glob("*.log"))

    def url(self):
        return f"amqp://guest:guest@{self.address}:{self.port}/%2F"

    def connection(self):
        return pika.BlockingConnection(pika.ConnectionParameters(self.address, self.port))

    def queue_counts(self, queue):
        """(ready, unacknowledged) for a queue, or None when it does not exist."""
        for line in self.ctl("list_queues", "--no-table-headers", "name", "messages_ready",
                             "messages_unacknowledged").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == queue:
                return int(parts[1]), int(parts[2])
        return None

    def close_connections(self):
        """Closes every client connection, as an operator or a network failure would."""
        pids = [l.split()[0] for l in self.ctl("list_connections", "--no-table-headers",
                                               "pid").splitlines() if l.strip()]
        for pid in pids:
            self.ctl("close_connection", pid, "closed by the test")
        return len(pids)

    def publish(self, routing_key, bodies, exchange="amq.topic", message_ids=None, headers=None):
        conn = self.connection()
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            for i, body in enumerate(bodies):
                props = pika.BasicProperties(
                    content_type="application/json", delivery_mode=2,
                    message_id=message_ids[i] if message_ids else None, headers=headers)
                ch.basic_publish(exchange, routing_key, body, props)
        finally:
            conn.close()

    def declare_dead_letter(self, exchange, queue):
        conn = self.connection()
        try:
            ch = conn.channel()
            ch.exchange_declare(exchange, "fanout", durable=True)
            ch.queue_declare(queue, durable=True)
            ch.queue_bind(queue, exchange)
        finally:
            conn.close()


class Cluster:
    """Nodes of one RabbitMQ cluster on loopback: separate names, ports and data directories;
    one Erlang cookie (every node runs as the rabbitmq user, whose home holds it). The first
    node is the one the others join."""

    def __init__(self, size=3, **kwargs):
        """kwargs: RabbitMQ's, for every node; address="own" gives node i the address
        127.0.0.(2+i) and binds its distribution connections to it (a network namespace of the
        test's own: see NetNamespace)."""
        self.nodes = []
        own = kwargs.pop("address", None) == "own"
        try:
            for i in range(size):
                self.nodes.append(RabbitMQ(**kwargs, **({"address": f"127.0.0.{2 + i}",
                                                          "own_address": True} if own else {})))
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", self.nodes[0].name)
                node.ctl("start_app")
        except BaseException:
            self.close()
            raise

    def running(self):
        return [n for n in self.nodes if n.proc is not None]

    def close(self):
        for n in self.nodes:
            n.close()
