# SPDX-License-Identifier: GPL-3.0-or-later
"""loopabull's benchmark: every scenario of docs/PERFORMANCE.md, each against its baseline in the
same run (ratios hold on a noisy machine), repeated; a table, a JSON file and a plot.

Run it with bench/run, which builds the release binary and the helpers first."""
import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
MiB = 1024 * 1024


# ---- helpers -------------------------------------------------------------------------------------

def cpu_seconds(pid, children=False):
    """utime + stime of a process, in seconds; with children, also those of its reaped children
    (for the supervisor: the jobs it ran)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = int(fields[11]) + int(fields[12])
    return (own + (int(fields[13]) + int(fields[14]) if children else 0)) / TICK


def children_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def rss_bytes(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def private_bytes(pid):
    """Pages of a process that no other process shares (smaps_rollup Private_*)."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1]) * 1024
    return total


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


class Notify:
    """The NOTIFY_SOCKET a service manager would give: READY=1 and STATUS= arrive here. Read all
    the time, as systemd does: a full socket would block the supervisor in sd_notify()."""

    def __init__(self, directory):
        self.path = str(Path(directory) / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.status = ""
        self.ready = threading.Event()
        self.t_ready = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        with contextlib.suppress(OSError):
            while True:
                msg = self.sock.recv(4096).decode()
                now = time.monotonic()
                for line in msg.split("\n"):
                    if line.startswith("STATUS="):
                        self.status = line[7:]
                    if line == "READY=1" and not self.ready.is_set():
                        self.t_ready = now
                        self.ready.set()

    def wait_ready(self, timeout=10.0):
        if not self.ready.wait(timeout):
            raise OSError("no READY=1")
        return self.t_ready

    def poll(self):
        return self.status

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class Supervisor:
    """One release-built loopabull with a config written from a dict."""

    def __init__(self, bench, config, name):
        self.dir = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=bench.tmp))
        self.config_path = self.dir / "loopabull.yml"
        self.config_path.write_text(json.dumps(config))
        self.notify = Notify(self.dir)
        env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
        env.update(NOTIFY_SOCKET=self.notify.path, LOOPABULL_LOOPER_DIR=str(bench.build / "loopers"),
                   LOOPABULL_WARM_RUNNER=str(ROOT / "src" / "supervisor" / "warm-runner.py"))
        self.log = open(self.dir / "loopabull.log", "wb")
        self.t_exec = time.monotonic()
        self.proc = subprocess.Popen([str(bench.loopabull), "--bus=none", "--instance", name,
                                      str(self.config_path)], env=env, cwd=self.dir,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        try:
            self.t_ready = self.notify.wait_ready()
        except OSError:
            self.stop()
            raise RuntimeError(f"loopabull did not start:\n{self.log_text()[-3000:]}") from None

    def log_text(self):
        return (self.dir / "loopabull.log").read_text(errors="replace")

    def cpu(self):
        return cpu_seconds(self.proc.pid)

    def rss(self):
        return rss_bytes(self.proc.pid)

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self.notify.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "runs": []}
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


# ---- the benchmark -------------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.build = Path(args.build).resolve()
        self.loopabull = self.build / "src" / "loopabull"
        self.looper = self.build / "bench" / "bench-looper"
        self.spawn = self.build / "bench" / "bench-spawn"
        self.echo = self.build / "bench" / "bench-echo"
        # Runtime directories on a tmpfs, as /run is for the service.
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.tmp = Path(tempfile.mkdtemp(prefix="loopabull-bench.", dir=base))
        self.playbooks = self.tmp / "playbooks"
        self.playbooks.mkdir()
        (self.playbooks / "bench.job.yml").write_text(
            "- hosts: localhost\n  connection: local\n  gather_facts: false\n"
            "  tasks:\n    - ansible.builtin.debug:\n        msg: \"{{ loopabull_job_id }}\"\n")
        self.results = {}
        self.counter = 0

    def close(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def log(self, msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def config(self, looper_args, extra=None, **executor):
        ex = {"max_parallel": 1, "timeout": "10min", "allow_root": True, "stop_timeout": "2s"}
        ex.update(executor)
        ansible = {"playbooks_dir": str(self.playbooks)}
        if "playbook_cmd" in ex:
            ansible["playbook_cmd"] = ex.pop("playbook_cmd")
        return {"loglevel": "debug" if ex.get("warm") else "info", "routing_keys": ["bench.job"],
                "loopers": [{"name": "bench", "command": [str(self.looper), *looper_args]}],
                "ansible": ansible, "executor": ex, **(extra or {})}

    def supervisor(self, config):
        self.counter += 1
        return Supervisor(self, config, f"bench{self.counter}")

    def looper_run(self, count, key, rate=0, timeout=600, looper_args=(), extra=None, delay=0,
                   **executor):
        """One supervisor whose looper sends `count` events (after `delay` seconds); the
        looper's figures, plus the supervisor's CPU time over the run. With a warm runner
        (executor warm: true and a delay), the run starts once it is ready, and the jobs' CPU
        time is the runner's reaped children's (they are not the supervisor's)."""
        out = self.tmp / f"looper-{self.counter + 1}.json"
        args = ["--count", str(count), "--key", key, "--out", str(out)]
        if rate:
            args += ["--rate", str(rate)]
        args += list(looper_args)
        if delay:
            args += ["--delay", str(delay)]
        executor.setdefault("warm", False)
        sup = self.supervisor(self.config(args, extra, **executor))
        try:
            zygote = None
            if executor["warm"] and delay:
                m = wait_for(lambda: re.search(r"warm runner pid (\d+) has imported",
                                               sup.log_text()), delay, "the warm runner")
                zygote = int(m.group(1))

            def jobs_cpu():
                return cpu_seconds(sup.proc.pid, children=True) + (
                    cpu_seconds(zygote, children=True) if zygote else 0)
            cpu0, all0 = sup.cpu(), jobs_cpu()
            res = wait_for(lambda: (r := read_json(out)) and r["final"] and r,
                           timeout, f"{count} answers ({sup.log_text()[-2000:]})")
            res["supervisor_cpu_s"] = sup.cpu() - cpu0
            res["with_jobs_cpu_s"] = jobs_cpu() - all0
            res["warm_jobs"] = len(re.findall(r"job \d+ runs warm", sup.log_text()))
            res["startup_ms"] = (sup.t_ready - sup.t_exec) * 1000
            return res
        finally:
            sup.stop()

    def bare(self, count, parallel, *cmd, quiet=False):
        env = dict(os.environ, BENCH_SPAWN_QUIET="1") if quiet else None
        cpu0 = children_cpu()
        r = subprocess.run([str(self.spawn), str(count), str(parallel), *cmd],
                           capture_output=True, text=True, check=True, env=env)
        res = json.loads(r.stdout)
        res["cpu_s"] = children_cpu() - cpu0  # the loop's and its children's
        return res

    def record(self, scenario, metric, values, unit, target=None, ok=None, note=""):
        s = summary(values)
        s.update(unit=unit, target=target, note=note)
        if ok is not None and s["median"] is not None:
            s["met"] = ok(s["median"])
        self.results.setdefault(scenario, {})[metric] = s

    def echo_run(self, count, rate):
        """bench-looper against bench-echo: the same pipes and wake-ups without the supervisor,
        the floor of the latency this machine allows at the moment."""
        out = self.tmp / "echo.json"
        out.unlink(missing_ok=True)
        r, w = os.pipe()
        echo = subprocess.Popen([str(self.echo)], stdin=subprocess.PIPE, stdout=w)
        os.close(w)
        looper = subprocess.Popen([str(self.looper), "--count", str(count), "--rate", str(rate),
                                   "--out", str(out)], stdin=r, stdout=echo.stdin)
        os.close(r)
        try:
            return wait_for(lambda: (x := read_json(out)) and x["final"] and x, 120, "echo run")
        finally:
            echo.stdin.close()
            for p in (looper, echo):
                p.kill()
                p.wait()

    # 1. event path
    def event_path(self):
        n = self.args.events
        rates, per_cpu, lat, floor = [], [], {}, {}
        for i in range(self.args.reps):
            r = self.looper_run(n, "bench.unrouted")
            assert r["unrouted"] == n, r
            rates.append(r["events_per_s"])
            per_cpu.append(n / r["supervisor_cpu_s"] if r["supervisor_cpu_s"] else None)
            p = self.looper_run(self.args.paced_rate * 2, "bench.unrouted", rate=self.args.paced_rate)
            for k, v in p["latency_us"].items():
                lat.setdefault(k, []).append(v)
            e = self.echo_run(self.args.paced_rate * 2, self.args.paced_rate)
            for k, v in e["latency_us"].items():
                floor.setdefault(k, []).append(v)
            self.log(f"event path {i + 1}: {r['events_per_s']:.0f} events/s, "
                     f"{per_cpu[-1] or 0:.0f} per CPU-s; p99 {p['latency_us']['p99']:.0f} us "
                     f"at {self.args.paced_rate}/s (bare pipe echo: {e['latency_us']['p99']:.0f} us)")
        self.record("event_path", "events_per_s", rates, "events/s", ">= 100000",
                    lambda v: v >= 100000)
        self.record("event_path", "events_per_supervisor_cpu_s", per_cpu, "events/CPU-s",
                    ">= 100000", lambda v: v >= 100000,
                    note="events answered per second of the supervisor's own CPU time: the rate "
                         "one core of its own would sustain")
        for k, v in lat.items():
            self.record("event_path", f"latency_{k}_us", v, "us",
                        "< 1000" if k == "p99" else None,
                        (lambda x: x < 1000) if k == "p99" else None,
                        note=f"looper to answer at {self.args.paced_rate} events/s")
        for k, v in floor.items():
            self.record("event_path", f"echo_latency_{k}_us", v, "us",
                        note="the same looper against bench-echo: this machine's floor")

    # 1b. event path through 20 routes (issue 14)
    def routes_config(self):
        """20 routes that take the key, each with two conditions that hold and a regular
        expression: route i takes bodies whose "s" is "route-i-N". Bodies tagged "bench" (no
        route takes them) are judged by all 60 conditions (20 RE2 matches) and answered unrouted;
        bodies tagged "route-19" are taken by the last route after the same 60 conditions, whose
        throttle (per routing key, once within an hour) runs the first one (/bin/true) and
        answers the others throttled: the whole decision, the playbook lookup included, without
        running jobs. Logged at warning: an event no route takes, or throttled, is logged at info."""
        routes = [{"name": f"r{i}", "keys": ["bench.#"], "playbook": "bench.job.yml",
                   "when": [{"path": "/n", "exists": True},
                            {"path": "/n", "not": {"equals": -1}},
                            {"path": "/s", "matches": f"^route-{i}-[0-9]+$"}]} for i in range(20)]
        routes[-1]["throttle"] = {"per": "routing_key", "once_within": "1h"}
        return {"routing_keys": ["all"], "loglevel": "warning", "routes": routes}

    def event_path_routes(self):
        """Both kinds of routed events beside today's route-less event path (the same bodies,
        answered unrouted because routing_keys does not select the key), in the same run."""
        n = self.args.events
        rates = {"plain": [], "none": [], "last": []}
        per_cpu = {k: [] for k in rates}
        ratio = {"none": [], "last": []}
        true = {"playbook_cmd": ["/bin/true"]}
        for i in range(self.args.reps):
            runs = {"plain": self.looper_run(n, "bench.unrouted", looper_args=["--tag", "bench"]),
                    "none": self.looper_run(n, "bench.unrouted", looper_args=["--tag", "bench"],
                                            extra=self.routes_config(), **true),
                    "last": self.looper_run(n, "bench.unrouted", looper_args=["--tag", "route-19"],
                                            extra=self.routes_config(), **true)}
            assert runs["plain"]["unrouted"] == n and runs["none"]["unrouted"] == n, runs
            last = runs["last"]
            assert last["succeeded"] == 1 and last["other"] == n - 1, last  # 1 run, n-1 throttled
            for k, r in runs.items():
                rates[k].append(r["events_per_s"])
                per_cpu[k].append(n / r["supervisor_cpu_s"] if r["supervisor_cpu_s"] else None)
            for k in ratio:
                ratio[k].append(rates[k][-1] / rates["plain"][-1])
            self.log(f"event path with 20 routes {i + 1}: none takes it {rates['none'][-1]:.0f} "
                     f"events/s ({ratio['none'][-1]:.2f}x), the last takes it "
                     f"{rates['last'][-1]:.0f} events/s ({ratio['last'][-1]:.2f}x); route-less "
                     f"{rates['plain'][-1]:.0f} events/s")
        notes = {"none": "20 routes x (2 conditions + 1 RE2 regex), all evaluated, none takes it",
                 "last": "the same 60 conditions, the last route takes it (throttled answers)"}
        self.record("event_path", "routeless_events_per_s", rates["plain"], "events/s",
                    note="the baseline of the routes rows, same run: no routes, same bodies")
        self.record("event_path", "routeless_events_per_supervisor_cpu_s", per_cpu["plain"],
                    "events/CPU-s", note="the same per second of the supervisor's own CPU time")
        for k, name in (("none", "routes20"), ("last", "routes20_last")):
            self.record("event_path", f"{name}_events_per_s", rates[k], "events/s", ">= 100000",
                        lambda v: v >= 100000, note=notes[k])
            self.record("event_path", f"{name}_events_per_supervisor_cpu_s", per_cpu[k],
                        "events/CPU-s", ">= 100000", lambda v: v >= 100000,
                        note="the same per second of the supervisor's own CPU time")
            self.record("event_path", f"{name}_ratio", ratio[k], "x",
                        note="events/s through 20 routes / events/s without routes, same run")

    # 1c. event path and jobs with the ledger on (issue 17)
    def ledger_size(self, db):
        """Rows in the ledger, and the bytes of its files (database, WAL, shared memory)."""
        con = sqlite3.connect(db)
        try:
            rows = con.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        finally:
            con.close()
        files = [Path(str(db) + sfx) for sfx in ("", "-wal", "-shm")]
        return rows, sum(f.stat().st_size for f in files if f.exists())

    def event_path_ledger(self):
        """The same events with the ledger off and on (history.record_unrouted: every event is a
        record, the most the ledger can be asked to write), in one run; then /bin/true jobs, each
        recorded, against the same jobs without a ledger. The ledger after the runs (over
        --ledger-events records each) must hold at most history.max_jobs records."""
        n, keep = self.args.ledger_events, self.args.ledger_max_jobs
        off, on, ratio, jobs_ratio, rows, sizes = [], [], [], [], [], []
        # Per second of the supervisor's own CPU time: what a shared, loaded machine changes
        # least (other engineers' compilers take the wall clock, not our CPU time).
        cpu_off, cpu_on, cpu_per_record = [], [], []
        true = {"playbook_cmd": ["/bin/true"]}
        # The runtime files are on a tmpfs; a service's ledger is on the disk of /var/lib
        # (--ledger-dir puts it there: WAL checkpoints then wait for fsync).
        where = Path(tempfile.mkdtemp(prefix="loopabull-bench-ledger.", dir=self.args.ledger_dir)
                     ) if self.args.ledger_dir else self.tmp
        for i in range(self.args.reps):
            db = where / f"ledger-{i}.sqlite"
            hist = {"history": {"path": str(db), "record_unrouted": True, "max_jobs": keep}}
            p = self.looper_run(n, "bench.unrouted")
            r = self.looper_run(n, "bench.unrouted", extra=hist)
            assert p["unrouted"] == n and r["unrouted"] == n, (p, r)
            off.append(p["events_per_s"])
            on.append(r["events_per_s"])
            ratio.append(r["events_per_s"] / p["events_per_s"])
            cpu_off.append(n / p["supervisor_cpu_s"] if p["supervisor_cpu_s"] else None)
            cpu_on.append(n / r["supervisor_cpu_s"] if r["supervisor_cpu_s"] else None)
            cpu_per_record.append((r["supervisor_cpu_s"] - p["supervisor_cpu_s"]) / n * 1e6)
            count, size = self.ledger_size(db)
            rows.append(count)
            sizes.append(size)
            assert count <= keep, f"{count} records kept, history.max_jobs {keep}"
            m = self.args.jobs
            jp = self.looper_run(m, "bench.job", max_parallel=2, queue_size=m, **true)
            jr = self.looper_run(m, "bench.job", max_parallel=2, queue_size=m, **true,
                                 extra={"history": {"path": str(where / f"jobs-{i}.sqlite")}})
            assert jp["succeeded"] == m and jr["succeeded"] == m, (jp, jr)
            assert self.ledger_size(where / f"jobs-{i}.sqlite")[0] == m
            jobs_ratio.append(jr["elapsed_s"] and (m / jr["elapsed_s"]) / (m / jp["elapsed_s"]))
            self.log(f"ledger {i + 1}: {r['events_per_s']:.0f} events/s recorded, "
                     f"{p['events_per_s']:.0f} without ({ratio[-1]:.2f}x); per CPU-s "
                     f"{cpu_on[-1] or 0:.0f} recorded, {cpu_off[-1] or 0:.0f} without "
                     f"({cpu_per_record[-1]:.2f} us CPU per record); {count} records kept "
                     f"of {n} ({size / 1e6:.1f} MB); /bin/true jobs {jobs_ratio[-1]:.2f}x")
        self.record("event_path", "ledger_events_per_s", on, "events/s", ">= 100000",
                    lambda v: v >= 100000,
                    note="every event a ledger record (history.record_unrouted)")
        self.record("event_path", "ledger_off_events_per_s", off, "events/s",
                    note="the same events, same run, no ledger")
        self.record("event_path", "ledger_ratio", ratio, "x",
                    note="events/s with the ledger / without")
        self.record("event_path", "ledger_events_per_supervisor_cpu_s", cpu_on, "events/CPU-s",
                    ">= 100000", lambda v: v >= 100000,
                    note="every event a ledger record, per second of the supervisor's own CPU "
                         "time")
        self.record("event_path", "ledger_off_events_per_supervisor_cpu_s", cpu_off,
                    "events/CPU-s", note="the same events, same run, no ledger")
        self.record("event_path", "ledger_cpu_us_per_record", cpu_per_record, "us",
                    note="the supervisor's CPU time with the ledger minus without, per record")
        self.record("event_path", "ledger_jobs_ratio", jobs_ratio, "x",
                    note="/bin/true jobs/s (max_parallel 2), each recorded / no ledger")
        self.record("event_path", "ledger_rows_kept", rows, "records", f"<= {keep}",
                    lambda v: v <= keep,
                    note=f"after {n} records, history.max_jobs {keep}")
        self.record("event_path", "ledger_bytes", sizes, "bytes",
                    note="database + WAL after the run (deleted rows' pages are reused, not "
                         "returned)")
        if where != self.tmp:
            shutil.rmtree(where, ignore_errors=True)

    # 2. direct executor
    def direct(self):
        n = self.args.jobs
        true = {"playbook_cmd": ["/bin/true"]}
        ratio1, ratio_off, cpu1, cpu_off, speed2, curve = [], [], [], [], [], {}
        for i in range(self.args.reps):
            base = self.bare(n, 1, "/bin/true")
            curve.setdefault("bare", {}).setdefault(1, []).append(base["jobs_per_s"])
            for mp in self.args.parallel:
                r = self.looper_run(n, "bench.job", max_parallel=mp, queue_size=n, **true)
                assert r["succeeded"] == n, r
                per_job = r["elapsed_s"] / n * 1e6
                curve.setdefault("loopabull", {}).setdefault(mp, []).append(n / r["elapsed_s"])
                if mp == 1:
                    ratio1.append(per_job / base["per_job_us"])
                    cpu1.append(r["with_jobs_cpu_s"] / base["cpu_s"])
                    self.log(f"direct {i + 1}: bare {base['per_job_us']:.0f} us/job, "
                             f"max_parallel 1 {per_job:.0f} us/job ({ratio1[-1]:.2f}x)")
                if mp == 2:
                    speed2.append((n / r["elapsed_s"]) / base["jobs_per_s"])
                    self.log(f"direct {i + 1}: max_parallel 2 {n / r['elapsed_s']:.0f} jobs/s "
                             f"({speed2[-1]:.2f}x the bare serial loop)")
            # The same without the sandbox's seccomp filter, which the kernel compiles per job.
            r = self.looper_run(n, "bench.job", max_parallel=1, queue_size=n, seccomp="off", **true)
            ratio_off.append(r["elapsed_s"] / n * 1e6 / base["per_job_us"])
            cpu_off.append(r["with_jobs_cpu_s"] / base["cpu_s"])
            self.log(f"direct {i + 1}: CPU time per job {cpu1[-1]:.2f}x the bare loop's; "
                     f"seccomp off: {ratio_off[-1]:.2f}x wall, {cpu_off[-1]:.2f}x CPU")
            for mp in self.args.parallel:
                if mp > 1:
                    b = self.bare(n, mp, "/bin/true")
                    curve["bare"].setdefault(mp, []).append(b["jobs_per_s"])
        self.record("direct", "per_job_vs_bare_spawn", ratio1, "ratio", "<= 1.15",
                    lambda v: v <= 1.15, note="max_parallel 1, time per job / bare posix_spawn loop")
        self.record("direct", "cpu_per_job_vs_bare_spawn", cpu1, "ratio", "<= 1.15",
                    lambda v: v <= 1.15,
                    note="CPU time (supervisor + jobs) per job / the bare loop's (+ its children)")
        self.record("direct", "per_job_vs_bare_spawn_seccomp_off", ratio_off, "ratio",
                    note="the same with executor.seccomp: off")
        self.record("direct", "cpu_per_job_vs_bare_spawn_seccomp_off", cpu_off, "ratio",
                    note="CPU time, executor.seccomp: off")
        self.record("direct", "bare_parallel_2_vs_bare_serial",
                    [p2 / p1 for p1, p2 in zip(curve["bare"][1], curve["bare"].get(2, []))],
                    "ratio", note="what this machine allows: the bare loop, 2 at a time")
        self.record("direct", "max_parallel_2_vs_bare_serial", speed2, "ratio", ">= 1.7",
                    lambda v: v >= 1.7, note="throughput / bare serial loop")
        self.results["direct"]["curve_jobs_per_s"] = {
            k: {mp: summary(v) for mp, v in d.items()} for k, d in curve.items()}

    # 4. real ansible
    def ansible(self):
        n = self.args.ansible_events
        pb = str(self.playbooks / "bench.job.yml")
        env_cmd = ["/usr/bin/env", "ANSIBLE_LOCALHOST_WARNING=false",
                   "ANSIBLE_INVENTORY_UNPARSED_WARNING=false"]
        speed, curve = {}, {}
        os.environ.update(ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
        for i in range(self.args.ansible_reps):
            base = self.bare(n, 1, *env_cmd, "/usr/bin/ansible-playbook", pb,
                             "-e", "loopabull_job_id=0", quiet=True)
            assert base["failed"] == 0, base
            curve.setdefault("serial baseline", {}).setdefault(1, []).append(base["jobs_per_s"])
            for mp in self.args.ansible_parallel:
                r = self.looper_run(n, "bench.job", max_parallel=mp)
                assert r["succeeded"] == n, r
                jps = n / r["elapsed_s"]
                curve.setdefault("loopabull", {}).setdefault(mp, []).append(jps)
                speed.setdefault(mp, []).append(jps / base["jobs_per_s"])
                self.log(f"ansible {i + 1}: serial {base['jobs_per_s']:.2f} jobs/s, "
                         f"max_parallel {mp} {jps:.2f} jobs/s ({speed[mp][-1]:.2f}x)")
        for mp, v in speed.items():
            self.record("ansible", f"max_parallel_{mp}_vs_serial", v, "ratio",
                        ">= 1.8" if mp == 2 else None, (lambda x: x >= 1.8) if mp == 2 else None,
                        note=f"{n} events, jobs/s / serial ansible-playbook loop")
        self.results["ansible"]["curve_jobs_per_s"] = {
            k: {mp: summary(v) for mp, v in d.items()} for k, d in curve.items()}

    # 7. the warm runner (issue 15)
    def warm(self):
        n = self.args.warm_events
        delay = 15  # the runner imports ansible before the first event (0.4 s on a quiet machine)
        per_job, cpu = {"cold": [], "warm": []}, {"cold": [], "warm": []}
        for i in range(self.args.ansible_reps):
            for mode in ("cold", "warm"):
                r = self.looper_run(n, "bench.job", max_parallel=1, warm=mode == "warm",
                                    delay=delay if mode == "warm" else 0)
                assert r["succeeded"] == n, r
                if mode == "warm":
                    assert r["warm_jobs"] == n, r
                per_job[mode].append(r["elapsed_s"] / n)
                cpu[mode].append(r["with_jobs_cpu_s"] / n)
            self.log(f"warm {i + 1}: serial, per job: cold {per_job['cold'][-1]:.3f} s "
                     f"{cpu['cold'][-1]:.3f} s CPU, warm {per_job['warm'][-1]:.3f} s "
                     f"{cpu['warm'][-1]:.3f} s CPU")
        self.record("warm", "serial_time_per_job_warm_vs_cold",
                    [w / c for w, c in zip(per_job["warm"], per_job["cold"])], "ratio", "<= 0.4",
                    lambda v: v <= 0.4, note=f"{n} events, trivial playbook, max_parallel 1")
        self.record("warm", "serial_cpu_per_job_warm_vs_cold",
                    [w / c for w, c in zip(cpu["warm"], cpu["cold"])], "ratio", "<= 0.4",
                    lambda v: v <= 0.4, note="supervisor + jobs (+ the runner's children)")
        self.record("warm", "time_per_job_warm_s", per_job["warm"], "s")
        self.record("warm", "time_per_job_cold_s", per_job["cold"], "s")
        # 50 events, max_parallel 2, warm, against one cold ansible-playbook per event in a row
        # (what the original loopabull 0.0.7 does, FIELD-NOTES 9).
        m = self.args.ansible_events
        pb = str(self.playbooks / "bench.job.yml")
        speed = []
        for i in range(self.args.ansible_reps):
            base = self.bare(m, 1, "/usr/bin/ansible-playbook", pb, "-e", "loopabull_job_id=0",
                             quiet=True)
            r = self.looper_run(m, "bench.job", max_parallel=2, warm=True, delay=delay)
            assert r["succeeded"] == m, r
            speed.append((m / r["elapsed_s"]) / base["jobs_per_s"])
            self.log(f"warm {i + 1}: {m} events max_parallel 2: {m / r['elapsed_s']:.2f} jobs/s, "
                     f"serial cold loop {base['jobs_per_s']:.2f} jobs/s ({speed[-1]:.2f}x)")
        self.record("warm", "max_parallel_2_vs_serial_cold_loop", speed, "ratio", ">= 3",
                    lambda v: v >= 3, note=f"{m} events, warm, jobs/s / serial ansible-playbook")
        # Memory: the runner, and what one running warm job adds (its private pages: the rest
        # it shares with the runner) against a cold ansible-playbook's resident set.
        (self.playbooks / "bench.sleep.yml").write_text(
            "- hosts: localhost\n  connection: local\n  gather_facts: false\n"
            "  tasks:\n    - ansible.builtin.command: sleep 600\n")
        zrss, extra, cold = [], [], []
        for warm in (True, False):
            cfg = self.config(["--count", "1", "--key", "bench.sleep", "--delay", "15", "--out",
                               str(self.tmp / "sleep.json")], max_parallel=1, warm=warm)
            cfg["routing_keys"] = ["bench.sleep"]
            sup = self.supervisor(cfg)
            try:
                pat = r"job 1 runs warm: pid (\d+)" if warm else r"job 1 started"
                wait_for(lambda: re.search(pat, sup.log_text()), 60, "the job")
                if warm:
                    pid = int(re.search(pat, sup.log_text()).group(1))
                    z = int(re.search(r"warm runner pid (\d+) has", sup.log_text()).group(1))
                else:
                    pid = wait_for(lambda: next((int(p) for p in subprocess.run(
                        ["pgrep", "-P", str(sup.proc.pid)], capture_output=True,
                        text=True).stdout.split() if "ansible" in Path(
                        f"/proc/{p}/cmdline").read_text(errors="replace")), None), 30, "job pid")
                time.sleep(5)  # the play is at its sleep: every module it needs is imported
                if warm:
                    zrss.append(rss_bytes(z) / MiB)
                    extra.append(private_bytes(pid) / MiB)
                else:
                    cold.append(rss_bytes(pid) / MiB)
            finally:
                sup.stop()
        self.log(f"warm: runner {zrss[-1]:.1f} MiB, a running warm job adds {extra[-1]:.1f} MiB "
                 f"(a cold ansible-playbook {cold[-1]:.1f} MiB)")
        self.record("warm", "runner_rss_mib", zrss, "MiB")
        self.record("warm", "extra_rss_per_warm_job_mib", extra, "MiB",
                    note="private pages of the job's process (the rest is shared)")
        self.record("warm", "cold_ansible_playbook_rss_mib", cold, "MiB")

    # 5. memory
    def memory(self):
        idle, queued, bounded = [], [], []
        sleeper = {"playbook_cmd": ["/bin/sh", "-c", "exec sleep 600", "job"]}
        for i in range(self.args.reps):
            out = self.tmp / "idle.json"
            out.unlink(missing_ok=True)
            sup = self.supervisor(self.config(["--count", "0", "--out", str(out)]))
            try:
                time.sleep(0.5)
                idle.append(sup.rss())
            finally:
                sup.stop()
            for size, sink in ((self.args.queued, queued), (1000, bounded)):
                out = self.tmp / f"queued-{size}.json"
                out.unlink(missing_ok=True)
                cfg = self.config(["--count", str(self.args.queued + 1), "--key", "bench.job",
                                   "--out", str(out)], max_parallel=1, queue_size=size, **sleeper)
                sup = self.supervisor(cfg)
                try:
                    want = f"1 running, {size} queued"
                    wait_for(lambda: want in sup.notify.poll(), 120, f"{want!r} ({sup.notify.status})")
                    time.sleep(1.5)  # the looper writes on until the pipe is full
                    prog = read_json(out) or {}
                    sink.append({"rss": sup.rss(), "queued": size, "sent": prog.get("sent"),
                                 "status": sup.notify.poll()})
                finally:
                    sup.proc.kill()  # not stop(): 100,000 cancellations are not what is measured
                    sup.proc.wait()
                    sup.stop()
            self.log(f"memory {i + 1}: idle {idle[-1] / MiB:.1f} MiB; {self.args.queued} queued "
                     f"{queued[-1]['rss'] / MiB:.1f} MiB; queue_size 1000: "
                     f"{bounded[-1]['rss'] / MiB:.1f} MiB, looper could write "
                     f"{bounded[-1]['sent']} of {self.args.queued + 1}")
        self.record("memory", "idle_rss_mib", [v / MiB for v in idle], "MiB", "< 8", lambda v: v < 8)
        self.record("memory", f"rss_{self.args.queued}_queued_mib", [q["rss"] / MiB for q in queued],
                    "MiB", "< 64", lambda v: v < 64)
        self.record("memory", "rss_queue_size_1000_mib", [q["rss"] / MiB for q in bounded], "MiB",
                    note=f"{self.args.queued + 1} events offered, queue_size 1000")
        self.record("memory", "events_taken_queue_size_1000", [q["sent"] for q in bounded],
                    "events", note="events the looper could write: queue + pipe and read buffers")

    # 6. start-up
    def startup(self):
        times = []
        for _ in range(max(self.args.reps, 5)):
            out = self.tmp / "start.json"
            sup = self.supervisor(self.config(["--count", "0", "--out", str(out)]))
            times.append((sup.t_ready - sup.t_exec) * 1000)
            sup.stop()
        self.log(f"start-up: median {statistics.median(times):.1f} ms")
        self.record("startup", "exec_to_ready_ms", times, "ms", "< 50", lambda v: v < 50)

    # 3. scope executor
    def booted(self, scenario):
        """A booted machine with the build and the bench looper installed, or None (the scenario
        is recorded as skipped, with the reason)."""
        sys.path.insert(0, str(ROOT / "tests" / "system"))
        import machine
        reason = machine.unavailable_reason()
        if reason:
            self.results[scenario] = {"skipped": reason}
            self.log(f"{scenario}: skipped: {reason}")
            return None
        m = machine.Machine(build_dir=self.build, rebuild=False).start()
        try:
            shutil.copy(self.looper, m.path("/usr/local/bin/bench-looper"))
            m.write_file("/srv/bench/playbooks/bench.job.yml", "")
        except BaseException:
            m.stop()
            raise
        return m

    def scope(self):
        m = self.booted("scope")
        if m is None:
            return
        n = self.args.scope_jobs
        ratios, curve = {}, {}
        try:
            for i in range(self.args.reps):
                t0 = time.monotonic()
                m.run(f"for i in $(seq {n}); do systemd-run --scope -q /bin/true; done", timeout=600)
                base = (time.monotonic() - t0) / n * 1e6
                curve.setdefault("systemd-run --scope loop", {}).setdefault(1, []).append(1e6 / base)
                for mp in self.args.scope_parallel:
                    per = self.scope_run(m, n, mp)
                    curve.setdefault("loopabull", {}).setdefault(mp, []).append(1e6 / per)
                    ratios.setdefault(mp, []).append(base / per)
                    self.log(f"scope {i + 1}: systemd-run --scope {base / 1000:.1f} ms/job, "
                             f"max_parallel {mp} {per / 1000:.1f} ms/job ({base / per:.1f}x faster)")
        finally:
            m.stop()
        for mp, v in ratios.items():
            self.record("scope", f"max_parallel_{mp}_speedup", v, "ratio",
                        ">= 3" if mp == max(ratios) else None,
                        (lambda x: x >= 3) if mp == max(ratios) else None,
                        note="systemd-run --scope time per job / loopabull's")
        self.results["scope"]["curve_jobs_per_s"] = {
            k: {mp: summary(v) for mp, v in d.items()} for k, d in curve.items()}

    # 4. cgroup executor: the same /bin/true jobs, one run of each executor in one booted machine,
    # loopabull as a service with Delegate=yes (as loopabull@.service), max_parallel 1.
    def cgroup(self):
        m = self.booted("cgroup")
        if m is None:
            return
        n = self.args.scope_jobs
        per = {"direct": [], "cgroup": [], "scope": []}
        try:
            for i in range(self.args.reps):
                for kind in per:
                    per[kind].append(self.scope_run(m, n, 1, kind))
                self.log(f"cgroup {i + 1}: per /bin/true job: direct {per['direct'][-1] / 1000:.2f} ms, "
                         f"cgroup {per['cgroup'][-1] / 1000:.2f} ms, scope {per['scope'][-1] / 1000:.2f} ms")
        finally:
            m.stop()
        vs_direct = [c / d for c, d in zip(per["cgroup"], per["direct"])]
        vs_scope = [s / c for s, c in zip(per["scope"], per["cgroup"])]
        for kind, v in per.items():
            self.record("cgroup", f"{kind}_per_job_us", v, "us",
                        note="the same machine and run, loopabull as a service, max_parallel 1")
        self.record("cgroup", "cgroup_vs_direct", vs_direct, "ratio", "<= 1.3", lambda x: x <= 1.3,
                    note="time per job of the cgroup executor / the direct executor's")
        self.record("cgroup", "scope_vs_cgroup", vs_scope, "ratio", ">= 5", lambda x: x >= 5,
                    note="time per job of the scope executor / the cgroup executor's")

    def restrict_namespaces(self):
        """RestrictNamespaces= as loopabull@.service sets it (systemd's default "no" when it does
        not), unless --restrict-namespaces says otherwise: its filter refuses clone3."""
        if self.args.restrict_namespaces:
            return self.args.restrict_namespaces
        unit = (ROOT / "units" / "loopabull@.service.in").read_text()
        found = re.findall(r"^RestrictNamespaces=(.*)$", unit, re.M)
        return found[-1].strip() if found else "no"

    def scope_run(self, m, n, mp, kind="scope"):
        out = f"/srv/bench/out-{mp}-{time.monotonic_ns()}.json"
        cfg = {"loglevel": "info", "routing_keys": ["bench.job"], "runtime_dir": "/run/lbbench",
               "loopers": [{"name": "bench", "command": ["/usr/local/bin/bench-looper", "--count",
                                                          str(n), "--key", "bench.job", "--out", out]}],
               "ansible": {"playbooks_dir": "/srv/bench/playbooks", "playbook_cmd": ["/bin/true"]},
               "executor": {"type": kind, "max_parallel": mp, "allow_root": True,
                            "timeout": "10min", "stop_timeout": "5s"}}
        m.write_file("/etc/loopabull/bench.yml", json.dumps(cfg))
        m.run(["systemd-run", "--unit=lbbench.service", "-p", "Type=notify", "-p", "KillMode=mixed",
               "-p", "Delegate=yes", "-p", f"RestrictNamespaces={self.restrict_namespaces()}",
               "/usr/local/bin/loopabull", "--bus=none", "--instance", "bench",
               "/etc/loopabull/bench.yml"])
        try:
            res = wait_for(lambda: (r := read_json(m.path(out))) and r["final"] and r, 600,
                           f"the {kind} run")
            assert res["succeeded"] == n, (res, m.journal("lbbench.service", lines=30))
            return res["elapsed_s"] / n * 1e6
        finally:
            m.systemctl("stop", "lbbench.service", check=False)
            m.systemctl("reset-failed", "lbbench.service", check=False)


# ---- output --------------------------------------------------------------------------------------

def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def table(results):
    rows = [("scenario", "metric", "median", "min .. max", "target", "")]
    for scen, metrics in results.items():
        if "skipped" in metrics:
            rows.append((scen, "skipped: " + metrics["skipped"], "", "", "", ""))
            continue
        for name, s in metrics.items():
            if not isinstance(s, dict) or "median" not in s:
                continue
            met = {True: "met", False: "MISSED"}.get(s.get("met"), "")
            rows.append((scen, name, f"{fmt(s['median'])} {s['unit']}",
                         f"{fmt(s['min'])} .. {fmt(s['max'])}", s.get("target") or "", met))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    md = ["| scenario | metric | median | min .. max | target | |", "|---|---|---|---|---|---|"]
    md += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return text, "\n".join(md)


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [(k, results[k]["curve_jobs_per_s"]) for k in ("direct", "ansible", "scope")
              if "curve_jobs_per_s" in results.get(k, {})]
    lat = {k[len("latency_"):-3]: v for k, v in results.get("event_path", {}).items()
           if k.startswith("latency_")}
    warm = results.get("warm", {})
    warm = warm if "time_per_job_warm_s" in warm else None
    if not panels and not lat and not warm:
        return
    count = len(panels) + (1 if lat else 0) + (1 if warm else 0)
    fig, axes = plt.subplots(1, count, figsize=(5 * max(count, 2), 4))
    axes = list(axes) if hasattr(axes, "__len__") else [axes]
    titles = {"direct": "direct executor, /bin/true", "ansible": "real ansible-playbook",
              "scope": "scope executor, /bin/true"}
    for ax, (name, curve) in zip(axes, panels):
        for label, pts in curve.items():
            xs = sorted(int(x) for x in pts)
            ys = [pts[x if x in pts else str(x)]["median"] for x in xs]
            lo = [y - pts[x if x in pts else str(x)]["min"] for x, y in zip(xs, ys)]
            hi = [pts[x if x in pts else str(x)]["max"] - y for x, y in zip(xs, ys)]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=label)
        ax.set_title(titles[name])
        ax.set_xlabel("max_parallel (baseline: parallel runs)")
        ax.set_ylabel("jobs/s (median, min..max)")
        ax.set_xticks(sorted({int(x) for c in curve.values() for x in c}))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    if warm:
        # The warm runner (issue 15): seconds per job of the trivial playbook, serial.
        ax = axes[len(panels)]
        rows = [("cold", warm["time_per_job_cold_s"]), ("warm", warm["time_per_job_warm_s"])]
        ax.bar([n for n, _ in rows], [r["median"] for _, r in rows],
               yerr=[[r["median"] - r["min"] for _, r in rows],
                     [r["max"] - r["median"] for _, r in rows]], capsize=3)
        ax.set_title("trivial playbook, serial: time per job")
        ax.set_ylabel("seconds (median, min..max)")
        ax.grid(alpha=0.3, axis="y")
    if lat:
        floor = {k[len("echo_latency_"):-3]: v for k, v in results["event_path"].items()
                 if k.startswith("echo_latency_")}
        ax = axes[-1]
        names = list(lat)
        xs = list(range(len(names)))
        for off, label, data in ((-0.2, "loopabull", lat), (0.2, "bare pipe echo", floor)):
            if not data:
                continue
            ax.bar([x + off for x in xs], [data[k]["median"] for k in names], width=0.4,
                   yerr=[[data[k]["median"] - data[k]["min"] for k in names],
                         [data[k]["max"] - data[k]["median"] for k in names]],
                   capsize=3, label=label)
        ax.set_xticks(xs, names)
        ax.axhline(1000, color="red", linestyle="--", label="p99 target (1 ms)")
        ax.set_yscale("log")
        ax.set_title("looper-to-answer latency at a paced rate")
        ax.set_ylabel("microseconds")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def machine_info():
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "?")
    load = Path("/proc/loadavg").read_text().split()[:3]
    mem = next(l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines()
               if l.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(int(mem) / MiB, 1),
            "kernel": platform.release(), "loadavg_at_start": load,
            "os": next((l.split("=", 1)[1].strip('"') for l in
                        Path("/etc/os-release").read_text().splitlines()
                        if l.startswith("PRETTY_NAME=")), "?")}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--build", default=str(ROOT / "build-bench"))
    ap.add_argument("--out", default=None, help="results directory (default BUILD/bench-results)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--events", type=int, default=200000)
    ap.add_argument("--paced-rate", type=int, default=10000)
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--parallel", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--ansible-events", type=int, default=50)
    ap.add_argument("--ansible-reps", type=int, default=2)
    ap.add_argument("--ansible-parallel", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--warm-events", type=int, default=20)
    ap.add_argument("--scope-jobs", type=int, default=200)
    ap.add_argument("--restrict-namespaces", default=None,
                    help="RestrictNamespaces= for the cgroup and scope runs (default: the unit's)")
    ap.add_argument("--scope-parallel", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--queued", type=int, default=100000)
    ap.add_argument("--ledger-events", type=int, default=1000000,
                    help="events of the ledger scenario (each one a ledger record)")
    ap.add_argument("--ledger-dir", default=None,
                    help="directory of the ledger scenario's databases (default: the bench's "
                         "tmpfs directory; a service's is on disk under /var/lib)")
    ap.add_argument("--ledger-max-jobs", type=int, default=100000,
                    help="history.max_jobs of the ledger scenario")
    ap.add_argument("--only", nargs="+", choices=["event_path", "event_path_routes",
                                                    "event_path_ledger", "direct",
                                                    "scope", "cgroup", "ansible", "memory", "startup",
                                                    "warm"])
    ap.add_argument("--docs", action="store_true",
                    help="also write the plot and the table into docs/PERFORMANCE.md")
    args = ap.parse_args()
    bench = Bench(args)
    out = Path(args.out or bench.build / "bench-results")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    info = machine_info()
    order = ["startup", "event_path", "event_path_routes", "event_path_ledger", "direct", "memory", "scope", "cgroup",
             "ansible", "warm"]
    try:
        for name in order:
            if args.only and name not in args.only:
                continue
            bench.log(f"scenario {name}")
            getattr(bench, name)()
    finally:
        bench.close()
    info["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    doc = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
           "duration_s": round(time.time() - started, 1), "command": " ".join(
               a for i, a in enumerate(sys.argv[1:]) if "--build" not in sys.argv[i:i + 2]),
           "machine": info, "git": subprocess.run(["git", "-C", str(ROOT), "describe", "--always",
                                                   "--dirty"], capture_output=True,
                                                  text=True).stdout.strip(),
           "results": bench.results}
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    text, md = table(bench.results)
    print(text)
    plot(bench.results, out / "performance.png")
    print(f"\n{out / 'results.json'}\n{out / 'performance.png'}  ({doc['duration_s']} s)")
    if args.docs:
        update_docs(doc, md, out / "performance.png")
    return 0 if all(s.get("met", True) for m in bench.results.values() for s in m.values()
                    if isinstance(s, dict)) else 1


def update_docs(doc, md, png):
    shutil.copy(png, ROOT / "docs" / "performance.png")
    page = ROOT / "docs" / "PERFORMANCE.md"
    text = page.read_text()
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    m = doc["machine"]
    block = (f"{begin}\nRun {doc['date']} ({doc['git']}), `bench/run {doc['command']}`, "
             f"{doc['duration_s']:.0f} s. Machine: {m['cpu']}, {m['cores']} cores, "
             f"{m['mem_gib']} GiB, {m['os']}, Linux {m['kernel']}; load average "
             f"{' '.join(m['loadavg_at_start'])} at the start, {' '.join(m['loadavg_at_end'])} "
             f"at the end.\n\n{md}\n{end}")
    head, rest = text.split(begin, 1)
    page.write_text(head + block + rest.split(end, 1)[1])


if __name__ == "__main__":
    sys.exit(main())
