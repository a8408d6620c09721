# SPDX-License-Identifier: GPL-3.0-or-later
"""A network namespace of a test's own (ip-netns(8)), with loopback up, that the test's thread
enters: every process it then starts (brokers, loopabull, rabbitmqctl) and every socket it opens
is in there, and nft rules made inside touch nothing outside. On exit whatever still runs in it
(epmd, which the first Erlang node starts as a daemon) is killed and the namespace deleted."""
import ctypes
import os
import subprocess
import time

CLONE_NEWNET = 0x40000000  # <sched.h>
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd):
    # setns(2) moves the calling thread only; pytest runs tests on the main thread, which is the
    # one that forks their children. (os.setns is Python 3.12; Debian 12 has 3.11.)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def available():
    return os.geteuid() == 0 and all(
        subprocess.run(["sh", "-c", f"command -v {t}"], capture_output=True).returncode == 0
        for t in ("ip", "nft"))


class NetNamespace:
    def __init__(self, name):
        self.name = name
        self._home = None

    def __enter__(self):
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        try:
            subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
            self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
            try:
                _setns(fd)
            finally:
                os.close(fd)
        except BaseException:
            self._leave()
            raise
        return self

    def __exit__(self, *exc):
        self._leave()

    def pids(self):
        r = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True)
        return [int(p) for p in r.stdout.split()]

    def _leave(self):
        # Back home first: `ip netns pids` lists every process with a thread in the namespace,
        # this one included while its thread is there.
        if self._home is not None:
            _setns(self._home)
            os.close(self._home)
            self._home = None
        for _ in range(50):
            left = [p for p in self.pids() if p != os.getpid()]
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def nft(self, script):
        """Runs an nft(8) script in the namespace (the test's thread is in it)."""
        subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True)


def cut_script(table, address, ports):
    """nft rules that cut one node off: every packet from or to its own loopback address (its
    AMQP listener, and the source of the distribution connections it opens) and from or to its
    ports (AMQP, and the Erlang distribution port that other nodes and rabbitmqctl connect to).
    Dropped in the output hook: on loopback every packet passes it once. Dropped, not rejected:
    a cut cable sends no RST either."""
    ps = ", ".join(str(p) for p in ports)
    return f"""table inet {table} {{
    chain output {{
        type filter hook output priority 0; policy accept;
        ip saddr {address} drop
        ip daddr {address} drop
        tcp dport {{ {ps} }} drop
        tcp sport {{ {ps} }} drop
    }}
}}
"""
