# SPDX-License-Identifier: GPL-3.0-or-later
"""Fault injection: the real supervisor against loopers, playbooks and disks that misbehave on
purpose. Each test asserts its pass criterion and records its figures in
$LOOPABULL_BUILD_DIR/fault-figures.json, which tools/reliability-figures turns into the table of
docs/RELIABILITY.md.

Heavy parameters can be changed from the environment (a sanitizer run lowers them):
  LOOPABULL_FAULT_FLOOD_LINES     lines of the flood test (default 1000000)
  LOOPABULL_FAULT_LONG_LINE_MIB   size of the line without a newline (default 64)
  LOOPABULL_FAULT_NOREAD_EVENTS   events of the looper that reads no answer (default 100000)
  LOOPABULL_FAULT_KILLS           SIGKILLs of the supervisor in the spool test (default 20)
  LOOPABULL_FAULT_SEED            seed of the random kill moments (default 6)
  LOOPABULL_FAULT_RSS_MIB         the RSS ceiling asserted (default 64; a quarter of it for the
                                  long line); raise it under ASan, whose shadow memory counts
On a sanitized build (conftest.SANITIZED) the flood defaults to 100000 lines and the ceiling to
256 MiB, and tools/run-tests --sanitize sets ASAN_OPTIONS=quarantine_size_mb=8, so that ASan's
quarantine of freed memory does not count as growth (docs/RELIABILITY.md, "How to rerun").
"""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time

import pytest

from conftest import (BUILD, HERE, SANITIZED, Supervisor, base_config, event, needs_ansible, read_answers,
                      scripted, wait_until)

FAULTY = HERE / "loopers" / "faulty.py"
FIGURES = BUILD / "fault-figures.json"
RSS_CEILING_KIB = int(os.environ.get("LOOPABULL_FAULT_RSS_MIB", "256" if SANITIZED else "64")) * 1024


def env_int(name, default):
    return int(os.environ.get(name, default))


@pytest.fixture
def figures(request):
    """Records this test's figures (printed too, for `pytest -s`); a test records them only once
    its assertions held, and a failed run leaves no stale figure behind."""
    name = request.node.name
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    if data.pop(name, None) is not None:
        FIGURES.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    found = {}
    yield found
    if not found:
        return
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    data[name] = found
    FIGURES.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"\nFIGURES {name}: {json.dumps(found, sort_keys=True)}")


def status(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid):
    """CPU time of the (single-threaded) process in ns resolution: /proc/PID/stat counts ticks."""
    return int(open(f"/proc/{pid}/schedstat").read().split()[0]) / 1e9


def proc_table():
    """{pid: (ppid, state, cmdline)} of every process."""
    table = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open(f"/proc/{d}/stat").read().rsplit(") ", 1)[1].split()
            cmd = open(f"/proc/{d}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        table[int(d)] = (int(stat[1]), stat[0], cmd)
    return table


def descendants(pid, table=None):
    table = table or proc_table()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, (pp, _, _) in table.items() if pp in frontier} - found
        found |= frontier
    return found


def alive(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def assert_gone_soon(pid):
    """pid is gone half a second later; a survivor is killed so that the test leaves nothing."""
    try:
        time.sleep(0.5)
        assert not alive(pid)
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def true_config(workdir, loopers, **over):
    for key in ("good.key", "routed.key"):
        (workdir / "playbooks" / f"{key}.yml").write_text("- hosts: localhost\n")
    cfg = base_config(workdir, loopers, **over)
    cfg["ansible"]["playbook_cmd"] = "/bin/true"
    return cfg


def faulty(name="faulty", **cfg):
    return {"name": name, "command": [str(FAULTY)], "config": cfg}


def shell(workdir, name, body):
    p = workdir / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)
    return p


def test_crash_loop_backs_off_then_fails_without_zombies(workdir, supervisor, figures):
    marker = workdir / "starts"
    crasher = shell(workdir, "crasher.sh", f"date +%s.%N >> {marker}\nexit 3\n")
    looper = {"name": "crasher", "command": [str(crasher)], "restart_delay": "100ms",
              "restart_delay_max": "10s", "restart_limit": 6}
    t0 = time.monotonic()
    sup = supervisor(true_config(workdir, [looper]))
    cpu0 = cpu_seconds(sup.proc.pid)
    zombie_samples = 0
    while "looper crasher failed" not in sup.log:
        assert time.monotonic() - t0 < 30, sup.log[-3000:]
        children = [s for p, (pp, s, _) in proc_table().items() if pp == sup.proc.pid]
        zombie_samples += children.count("Z")
        time.sleep(0.02)
    wall = time.monotonic() - t0
    cpu = cpu_seconds(sup.proc.pid) - cpu0
    # Idle once failed: nothing wakes the supervisor up.
    idle0 = cpu_seconds(sup.proc.pid)
    time.sleep(2)
    idle = cpu_seconds(sup.proc.pid) - idle0
    stamps = [float(x) for x in marker.read_text().split()]
    intervals = [round(b - a, 3) for a, b in zip(stamps, stamps[1:])]
    nominal = [0.1, 0.2, 0.4, 0.8, 1.6]
    assert len(stamps) == 6, "restart_limit 6: six starts, then failed"
    # Each wait is the doubled delay plus the cost of starting a process (tolerance 0.5 s on a
    # loaded machine), so the intervals grow, each longer than the one before.
    assert all(n <= i < n + 0.5 for i, n in zip(intervals, nominal)), intervals
    assert all(b > a for a, b in zip(intervals, intervals[1:])), intervals
    assert "stopped 6 times in a row" in sup.log
    table = proc_table()
    assert [p for p, (pp, _, _) in table.items() if pp == sup.proc.pid] == [], \
        "no child (and no zombie) left once the looper failed"
    assert cpu / wall < 0.10, f"{cpu:.2f} s of CPU in {wall:.1f} s"
    assert idle <= 0.02
    figures.update(starts=len(stamps), intervals_s=intervals, nominal_s=nominal,
                   zombies_left=0, zombie_samples_while_running=zombie_samples,
                   cpu_s=round(cpu, 4), wall_s=round(wall, 2),
                   cpu_percent=round(100 * cpu / wall, 2), idle_cpu_s_in_2s=round(idle, 5))
    assert sup.stop() == 0


def test_flood_of_a_million_lines_bounded_and_nothing_dropped(workdir, supervisor, figures):
    n = env_int("LOOPABULL_FAULT_FLOOD_LINES", 100_000 if SANITIZED else 1_000_000)
    st = workdir / "status"
    # Most events are answered "unrouted" straight away; every 500th runs a job, through a
    # queue of 4, so that the queue fills and the supervisor stops reading (back-pressure).
    looper = faulty(mode="flood", count=n, key="flood.key", every=500, routed_key="routed.key",
                    status=str(st))
    cfg = true_config(workdir, [looper], loglevel="info", routing_keys=["routed.key"],
                      executor={"max_parallel": 2, "queue_size": 4})
    t0 = time.monotonic()
    sup = supervisor(cfg)
    base_rss = status(sup.proc.pid, "VmRSS")

    def done():
        return st.exists() and json.loads(st.read_text()).get("done")
    wait_until(done, 280, interval=0.5, what=f"{n} answers")
    wall = time.monotonic() - t0
    hwm = status(sup.proc.pid, "VmHWM")
    s = json.loads(st.read_text())
    jobs = -(-n // 500)
    assert s["answered"] == n and s["ids_missing"] == 0
    assert s["results"] == {"unrouted": n - jobs, "succeeded": jobs}
    assert hwm < RSS_CEILING_KIB, f"peak RSS {hwm} KiB"
    # Back-pressure: the looper is held in write(); the supervisor never holds more than pipes,
    # one read buffer and the answer outbox (1 MiB) worth of events.
    assert s["max_in_flight"] < 50_000, s
    figures.update(lines=n, answered=s["answered"], lost=s["ids_missing"], jobs=jobs,
                   rss_start_kib=base_rss, vmhwm_kib=hwm, ceiling_kib=RSS_CEILING_KIB,
                   max_events_in_flight=s["max_in_flight"], wall_s=round(wall, 1),
                   lines_per_s=round(n / wall))
    assert sup.stop() == 0


def test_one_64_mib_line_without_newline(workdir, supervisor, figures):
    mib = env_int("LOOPABULL_FAULT_LONG_LINE_MIB", 64)
    st = workdir / "status"
    sup = supervisor(true_config(workdir, [faulty(mode="longline", size=mib << 20, status=str(st))]))
    base_rss = status(sup.proc.pid, "VmRSS")
    # A sanitized build starts near 60 MiB (ASan's shadow and allocator, measured): there, what
    # is bounded is the growth over the peak at start, as in test_protocol's overlong line.
    start_hwm = status(sup.proc.pid, "VmHWM") if SANITIZED else 0
    wait_until(lambda: st.exists() and json.loads(st.read_text()).get("done"), 120,
               what="the answer to the line after")
    hwm = status(sup.proc.pid, "VmHWM")
    s = json.loads(st.read_text())
    assert s["by_id"] == {"after": {"id": "after", "result": "succeeded", "exit_code": 0}}
    assert s["answered"] == 1  # the long line's id cannot be read: no answer, a log line
    assert sup.log.count("line longer than max_line_length (1048576 bytes)") == 1
    # A quarter of the ceiling (16 MiB by default): one 1 MiB line buffer, not the line. Under
    # ASan the same 16 MiB bound the growth.
    limit = 16 * 1024 if SANITIZED else RSS_CEILING_KIB // 4
    assert hwm - start_hwm < limit, f"peak RSS {hwm} KiB (at start {start_hwm}) for a {mib} MiB line"
    figures.update(line_mib=mib, max_line_length=1 << 20, rss_start_kib=base_rss, vmhwm_kib=hwm,
                   next_line="succeeded")
    assert sup.stop() == 0


def test_looper_that_never_reads_its_answers(workdir, supervisor, figures):
    n = env_int("LOOPABULL_FAULT_NOREAD_EVENTS", 100_000)
    st, go = workdir / "status", workdir / "go"
    fifo, steady_answers = workdir / "fifo", workdir / "steady-answers"
    os.mkfifo(fifo)
    stuck = faulty("stuck", mode="noread", count=n, key="unrouted.key", go=str(go), status=str(st))
    steady = scripted("steady", fifo=str(fifo), answers=str(steady_answers))
    sup = supervisor(true_config(workdir, [stuck, steady], loglevel="info",
                                 routing_keys=["good.key"]))
    sup.wait_log(r"looper stuck does not read its answers", 60)
    outbox = int(re.search(r"does not read its answers \((\d+) bytes", sup.log).group(1))

    def written():
        return json.loads(st.read_text())["written"] if st.exists() else 0
    time.sleep(1)
    w1 = written()
    time.sleep(1)
    w2 = written()
    assert w1 == w2 < n, "the stuck looper's events are no longer read"
    # Meanwhile the supervisor serves the other looper.
    t0 = time.monotonic()
    with open(fifo, "w") as f:
        f.write(event("good.key", {}, id="steady") + "\n")
        f.flush()
        wait_until(lambda: read_answers(steady_answers), 10, what="the other looper's answer")
        latency = time.monotonic() - t0
    assert read_answers(steady_answers)[0]["result"] == "succeeded"
    hwm_stalled = status(sup.proc.pid, "VmHWM")
    assert hwm_stalled < RSS_CEILING_KIB
    # Once it reads, it gets every answer, in full: none was dropped while it did not.
    go.touch()
    wait_until(lambda: json.loads(st.read_text()).get("done"), 120, what="every answer")
    s = json.loads(st.read_text())
    assert s["answered"] == n and s["ids_missing"] == 0 and s["results"] == {"unrouted": n}
    figures.update(events=n, written_when_stalled=w2, outbox_bytes_at_warning=outbox,
                   other_looper_answer_s=round(latency, 3), vmhwm_kib=hwm_stalled,
                   answered_after_reading=s["answered"], lost=s["ids_missing"])
    assert sup.stop() == 0


# The head of every playbook these tests write: local, no facts (faster), then the tasks.
LOCAL_PLAY = "- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n"
IGNORE_TERM = LOCAL_PLAY + """\
    - shell: |
        trap '' TERM
        sleep 300 &
        (sleep 301; true) &
        echo $$ > {{ event.out_dir }}/tree-ready
        while :; do sleep 1; done
"""


@needs_ansible
def test_playbook_ignoring_sigterm_is_killed_with_its_tree(workdir, supervisor, figures):
    answers = workdir / "answers"
    out = workdir / "out"
    (workdir / "playbooks" / "test.ignoreterm.yml").write_text(IGNORE_TERM)
    lines = [event("test.ignoreterm", {"out_dir": str(out)}, id="t")]
    cfg = base_config(workdir, [scripted(lines=lines, answers=str(answers))],
                      executor={"timeout": "15s", "kill_grace": "2s"})
    sup = supervisor(cfg)
    sup.wait_log(r"job 1 started")
    started = time.monotonic()
    wait_until(lambda: (out / "tree-ready").exists(), 15, what="the playbook's task to start")
    time.sleep(0.5)
    table = proc_table()
    looper_pids = {p for p, (_, _, c) in table.items() if str(HERE / "loopers") in c}
    tree = descendants(sup.proc.pid, table) - looper_pids - descendants(min(looper_pids), table)
    cmds = sorted({table[p][2].split(" ")[0].rsplit("/", 1)[-1] for p in tree})
    assert len(tree) >= 5, cmds  # ansible-playbook, its worker, the module, sh, the sleeps
    wait_until(lambda: read_answers(answers), 40, what="the timeout answer")
    answered = time.monotonic() - started
    (a,) = read_answers(answers)
    # ansible-playbook itself dies of SIGTERM (143); the shell and the sleeps, which ignore it,
    # go with the SIGKILL the group gets when its leader is gone or kill_grace has passed.
    assert a["id"] == "t" and a["result"] == "timeout" and a["exit_code"] in (128 + 15, 128 + 9), a
    wait_until(lambda: not [p for p in tree if alive(p)], 5, what="every process of the job gone")
    figures.update(processes_in_tree=len(tree), commands=cmds, survivors=0, timeout_s=15,
                   kill_grace_s=2, answer=a, answered_after_task_start_s=round(answered, 1))
    assert sup.stop() == 0


def test_direct_executor_timeout_reaches_a_process_that_left_the_group(workdir, supervisor):
    """setsid() leaves the job's process group and session; the kill reaches it as a descendant
    of the job's first process (a child subreaper: orphans stay below it)."""
    answers = workdir / "answers"
    pidfile = workdir / "escaped"
    hang = shell(workdir, "hang.sh", f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' &\n"
                 "while :; do sleep 1; done\n")
    cfg = true_config(workdir, [scripted(lines=[event("good.key", {}, id="t")], answers=str(answers))],
                      executor={"timeout": "1s", "kill_grace": "1s"})
    cfg["ansible"]["playbook_cmd"] = str(hang)
    sup = supervisor(cfg)
    wait_until(lambda: read_answers(answers), 20, what="the timeout answer")
    try:
        assert_gone_soon(int(pidfile.read_text()))
    finally:
        sup.stop()


# A job that leaves processes everywhere: a daemon double-forked out of its tree (its parent
# exits at once), a process in a session of its own, one in a process group of its own, each
# writing its pid into $OUT/pids; then it runs for ever, or ends at once with "end" in argv.
ESCAPER = """\
out=$OUT_DIR; mkdir -p "$out/pids"
( sh -c 'echo $$ > "$0/pids/daemon.$$"; exec sleep 300' "$out" & ) 
setsid sh -c 'echo $$ > "$0/pids/setsid.$$"; exec sleep 300' "$out" &
/usr/bin/python3 -c 'import os,sys,time; os.setpgid(0, 0); open(sys.argv[1] + "/pids/pgid.%d" % os.getpid(), "w"); time.sleep(300)' "$out" &
echo $$ > "$out/pids/main.$$"
while [ $(ls "$out/pids" | wc -l) -lt 4 ]; do sleep 0.05; done
case "$*" in *esc.end.yml*) exit 0;; esac
while :; do sleep 1; done
"""


def escaper(workdir, out, **executor):
    out.mkdir(exist_ok=True)
    job = shell(workdir, "escaper.sh", ESCAPER)
    keys = ("esc.hang", "esc.end")
    for key in keys:
        (workdir / "playbooks" / f"{key}.yml").write_text("- hosts: localhost\n")
    return job


def assert_all_gone_soon(pids):
    """Every pid is gone within 5 s; survivors are killed so that the test leaves nothing."""
    try:
        wait_until(lambda: not [p for p in pids if alive(p)], 5, what="every process of the job gone")
    finally:
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)


def pids_in(out):
    return [int(p.name.split(".")[1]) for p in (out / "pids").glob("*.*")] if (out / "pids").exists() else []


def test_direct_executor_kills_what_a_finished_job_left(workdir, supervisor):
    """At its end, a job's double-forked daemon, setsid and setpgid processes go with it."""
    answers, out = workdir / "answers", workdir / "out1"
    job = escaper(workdir, out)
    cfg = base_config(workdir, [scripted(lines=[event("esc.end", {}, id="e")], answers=str(answers))])
    cfg["ansible"]["playbook_cmd"] = str(job)
    cfg["ansible"]["environment"] = {"OUT_DIR": str(out)}
    sup = supervisor(cfg)
    wait_until(lambda: read_answers(answers), 20, what="the answer")
    assert read_answers(answers)[0]["result"] == "succeeded"
    pids = pids_in(out)
    assert len(pids) == 4, pids
    assert_all_gone_soon(pids)
    assert sup.stop() == 0


def test_direct_executor_cancel_reaches_every_process(workdir, supervisor):
    answers, out = workdir / "answers", workdir / "out1"
    job = escaper(workdir, out)
    cfg = base_config(workdir, [scripted(lines=[event("esc.hang", {}, id="c")], answers=str(answers))],
                      executor={"stop_timeout": "1s", "kill_grace": "1s"})
    cfg["ansible"]["playbook_cmd"] = str(job)
    cfg["ansible"]["environment"] = {"OUT_DIR": str(out)}
    sup = supervisor(cfg)
    wait_until(lambda: len(pids_in(out)) == 4, 20, what="the job's processes")
    pids = pids_in(out)
    sup.signal(signal.SIGTERM)  # drain; stop_timeout cancels the running job
    assert sup.proc.wait(30) == 0
    assert read_answers(answers)[0]["result"] == "cancelled"
    assert_all_gone_soon(pids)


def next_start(workdir, cfg):
    """The next supervisor of the same runtime directory (a log file of its own)."""
    d = workdir / "next"
    d.mkdir()
    return Supervisor(d, cfg)


def test_direct_executor_job_children_die_with_a_killed_supervisor(workdir, supervisor):
    """A SIGKILLed supervisor leaves its jobs running (nothing is left to stop them); the next
    start kills them, from their records in the runtime directory, before it takes events."""
    pidfile = workdir / "child"
    job = shell(workdir, "job.sh", f"sleep 300 &\necho $! > {pidfile}\nwait\n")
    cfg = true_config(workdir, [scripted(lines=[event("good.key", {}, id="k")])])
    cfg["ansible"]["playbook_cmd"] = str(job)
    sup = supervisor(cfg)
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 20, what="the job's child")
    pid = int(pidfile.read_text())
    # The record is written right after the job's process started (a SIGKILL in between, a
    # matter of microseconds, would leave the job unrecorded).
    sup.wait_log(r"job 1 started")
    sup.kill()
    try:
        cfg["loopers"] = [scripted(lines=[])]
        sup2 = next_start(workdir, cfg)
        assert not alive(pid)
        assert re.search(r"killed 2 process\(es\) that jobs of a previous run left behind", sup2.log), sup2.log
        assert sup2.stop() == 0
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_sigkill_the_supervisor_during_20_escaping_jobs(workdir, supervisor, figures):
    """20 jobs, each with a double-forked daemon, a setsid and a setpgid process; SIGKILL of the
    supervisor; the next start leaves 0 of them running."""
    answers, out = workdir / "answers", workdir / "out1"
    job = escaper(workdir, out)
    n = 20
    lines = [event("esc.hang", {}, id=str(i)) for i in range(n)]
    cfg = base_config(workdir, [scripted(lines=lines, answers=str(answers))],
                      executor={"max_parallel": n})
    cfg["ansible"]["playbook_cmd"] = str(job)
    cfg["ansible"]["environment"] = {"OUT_DIR": str(out)}
    sup = supervisor(cfg)
    wait_until(lambda: len(pids_in(out)) == 4 * n, 60, what="every job's processes")
    sup.wait_log(r"job \d+ started", count=n)
    pids = pids_in(out)
    sup.kill()
    running = [p for p in pids if alive(p)]
    try:
        cfg["loopers"] = [scripted(lines=[])]
        sup2 = next_start(workdir, cfg)
        left = [p for p in pids if alive(p)]
        figures.update(jobs=n, processes=len(pids), running_after_sigkill=len(running),
                       left_after_next_start=len(left))
        assert left == []
        assert sup2.stop() == 0
    finally:
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)


JOB = """\
# $3 is @VARS: record the event's id, then take a while without leaving a child behind.
while IFS= read -r l; do
  case $l in loopabull_event_id:*) id=${{l#*\\"}}; id=${{id%\\"}};; esac
done < "${{3#@}}"
echo "$id" >> {runs}
exec sleep 0.05
"""


def leftovers(workdir):
    return {p: c for p, (_, s, c) in proc_table().items() if str(workdir) in c and s != "Z"}


def test_sigkill_the_supervisor_during_200_spool_events(workdir, figures):
    kills = env_int("LOOPABULL_FAULT_KILLS", 20)
    seed = env_int("LOOPABULL_FAULT_SEED", 6)
    rng = random.Random(seed)
    n = 200
    spool, runs = workdir / "spool", workdir / "runs"
    spool.mkdir()
    job = shell(workdir, "job.sh", JOB.format(runs=runs))
    names = [f"ev.n{i:03d}" for i in range(n)]
    for name in names:
        (workdir / "playbooks" / f"{name}.yml").write_text("- hosts: localhost\n")
        (spool / f".{name}").write_text("{}")
        os.rename(spool / f".{name}", spool / f"{name}.json")
    cfg = base_config(workdir, [{"name": "spool", "command": ["spool", str(spool)]}],
                      loglevel="info")
    cfg["ansible"]["playbook_cmd"] = str(job)
    vars_dir = workdir / "run" / "vars"
    stale_removed, landed_in_jobs, moments, processes_seen = 0, 0, [], 0
    for k in range(kills):
        d = workdir / f"run-{k}"
        d.mkdir()
        stale = os.listdir(vars_dir) if vars_dir.exists() else []
        sup = Supervisor(d, cfg)
        removed = sum(int(x) for x in re.findall(r"removed (\d+) vars files", sup.log))
        assert removed == len(stale), "the killed run's vars files are removed at restart"
        stale_removed += removed
        moment = rng.uniform(0.05, 0.6)
        moments.append(round(moment, 3))
        time.sleep(moment)
        running = len(os.listdir(vars_dir))
        landed_in_jobs += running > 0
        tree = descendants(sup.proc.pid)
        sup.kill()
        # The looper dies with the supervisor (PR_SET_PDEATHSIG); the jobs (50 ms) end by
        # themselves (a longer one would be killed by the next start, from its record).
        wait_until(lambda: not [p for p in tree if alive(p)] and not leftovers(workdir), 5,
                   what=f"no process left after kill {k + 1}")
        processes_seen += len(tree)
    (workdir / "final").mkdir()
    final = Supervisor(workdir / "final", cfg)
    stale_removed += sum(int(x) for x in re.findall(r"removed (\d+) vars files", final.log))

    def left():
        return sorted(f for f in os.listdir(spool) if not f.startswith(".") and f != "failed")
    wait_until(lambda: left() == [], 120, interval=0.2, what="every event to finish")
    assert final.stop() == 0
    ran = runs.read_text().split()
    assert set(ran) == {f"{name}.json" for name in names}, "every event ran at least once"
    assert not (spool / "failed").exists() or os.listdir(spool / "failed") == []
    assert os.listdir(vars_dir) == []
    assert not leftovers(workdir)
    figures.update(events=n, kills=kills, seed=seed, kill_moments_s=moments,
                   kills_with_jobs_running=landed_in_jobs, runs=len(ran),
                   events_run_twice_or_more=len(ran) - len(set(ran)), lost=n - len(set(ran)),
                   stale_vars_files_removed_at_restart=stale_removed,
                   processes_killed_with_it=processes_seen, processes_left=0)


@pytest.fixture
def small_tmpfs(workdir):
    run = workdir / "run"
    run.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(run)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield run
    subprocess.run(["umount", "-l", str(run)])


def test_disk_full_while_writing_a_vars_file(workdir, supervisor, small_tmpfs, figures):
    answers = workdir / "answers"
    big = {"pad": "x" * (1 << 20)}  # 1 MiB of body, 256 KiB of disk
    lines = [event("good.key", big, id="big"), event("good.key", {"small": 1}, id="small")]
    looper = scripted(lines=lines, answers=str(answers))
    looper["max_line_length"] = "4MiB"
    cfg = true_config(workdir, [looper], executor={"max_parallel": 1})
    sup = supervisor(cfg)
    wait_until(lambda: len(read_answers(answers)) == 2, 30, what="both answers")
    got = {a["id"]: a for a in read_answers(answers)}
    vars_path = small_tmpfs / "vars" / "job-1.yml"
    reason = f"cannot write vars file {vars_path}: No space left on device"
    assert got["big"] == {"id": "big", "result": "failed", "exit_code": None, "error": reason,
                          "reason": reason}
    assert got["small"] == {"id": "small", "result": "succeeded", "exit_code": 0}
    assert f"job 1 (good.key) failed: cannot write vars file {vars_path}" in sup.log
    assert os.listdir(small_tmpfs / "vars") == []  # the partial file went with the job
    used = shutil.disk_usage(small_tmpfs).used
    figures.update(tmpfs_kib=256, body_kib=1024, answer=got["big"], next_event="succeeded",
                   bytes_left_on_tmpfs=used)
    assert sup.stop() == 0


ECHO = LOCAL_PLAY + """\
    - debug:
        msg: "{{ event.title }} {{ event.nested }} {{ loopabull_event_id }}"
    - copy:
        dest: "{{ event.out_dir }}/{{ loopabull_job_id }}.json"
        content: "{{ {'title': event.title, 'nested': event.nested, 'id': loopabull_event_id,
                      'key': loopabull_routing_key} | to_json }}"
"""
# Lines of `strace -ff -y` (one file per process): syscall(args) = result
TRACE_LINE = re.compile(r"^(\w+)\((.*)\) += (-?\d+|\?)(?: (E[A-Z0-9]+))?")
OPENED = re.compile(r'^(?:AT_FDCWD|-?\d+)(?:<([^>]*)>)?, "((?:[^"\\]|\\.)*)"')
FORKS = ("clone", "clone3", "fork", "vfork")


def supervisor_opens(prefix, root):
    """(path, result or errno name) of every open made by the supervisor's own code: the process `root` after
    it exec'd loopabull, and the processes it forks until they exec (after that, and in their
    forks, it is a looper's or a playbook's code); and the argv of every exec from it."""
    calls, parent = {}, {}
    for f in prefix.parent.glob(prefix.name + ".*"):
        pid = int(f.name.rsplit(".", 1)[1])
        calls[pid] = [m.groups() for m in map(TRACE_LINE.match, f.read_text(errors="replace")
                                              .splitlines()) if m]
        for call, _, result, _ in calls[pid]:
            if call in FORKS and result.isdigit():
                parent[int(result)] = pid

    def execed(pid):
        return any(c == "execve" and r == "0" for c, _, r, _ in calls.get(pid, []))

    def ours(pid):
        """Starts in the supervisor's code: forked by root, or by a child of ours that had not
        exec'd (the forks of a looper or a playbook run their code)."""
        while pid != root:
            if pid not in parent or (parent[pid] != root and execed(parent[pid])):
                return False
            pid = parent[pid]
        return True
    opens, execs = [], []
    for pid, lines in calls.items():
        if not ours(pid):
            continue
        started = pid != root
        for call, args, result, errno in lines:
            if call == "execve":
                if pid == root:
                    started = True
                    continue
                if result == "0":
                    execs.append(args)
                    break
            if not started or call not in ("open", "openat", "openat2"):
                continue
            o = OPENED.match(args if call != "open" else "AT_FDCWD, " + args)
            if o:
                base, path = o[1], o[2]
                full = path if path.startswith("/") or not base else f"{base}/{path}"
                opens.append((full, errno or result))
    return opens, execs


def shown(s, width=48):
    text = json.dumps(s)[1:-1]
    return text if len(text) <= width else f"{text[:width]}… ({len(s)} chars)"


EVIL = "{{ lookup('pipe', 'touch %s') }}"


def answers_by_line(path):
    """The answers, split on newlines only: an id may hold U+2028, which str.splitlines splits."""
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.split("\n") if line.strip()]


@needs_ansible
def test_injection_and_traversal_from_every_looper_field(workdir, supervisor, figures):
    if not shutil.which("strace"):
        pytest.skip("strace is not installed (tools/setup-deps installs it)")
    answers, out, trace = workdir / "answers", workdir / "out", workdir / "trace"
    playbooks = workdir / "playbooks"
    (playbooks / "test.echo.yml").write_text(ECHO)
    marker = workdir / "PWNED"
    evil = EVIL % marker
    jinja_block = "{%% for x in [1] %%}{{ lookup('pipe', 'touch %s') }}{%% endfor %%}" % marker
    lookalike = "\uff5b\uff5b 7*7 \uff5d\uff5d"  # fullwidth braces
    control = "a\u0000b\u001b[31m\u2028\u202e\r\n../../etc/passwd"
    # A playbook outside playbooks_dir that would leave the marker if it ever ran.
    outside = workdir / "outside"
    outside.mkdir()
    (outside / "evil.yml").write_text(LOCAL_PLAY + f"    - file: {{path: {marker}, state: touch}}\n")
    (playbooks / "planted.abs.yml").symlink_to(outside / "evil.yml")
    (playbooks / "planted.rel.yml").symlink_to("../outside/evil.yml")
    (playbooks / "planted.proc.yml").symlink_to("/proc/self/root" + str(outside / "evil.yml"))
    os.symlink(outside, playbooks / "planteddir")
    bodies = [
        {"out_dir": str(out), "title": evil, "nested": {"list": [jinja_block, {"deep": evil}],
                                                        evil: "{{ 7*7 }}"},
         evil: jinja_block, "../../etc/passwd": "x./etc/passwd", "ctl": control},
        {"out_dir": str(out), "title": "{{ 7*7 }}", "nested": {"x": lookalike, "ctl": control}},
    ]
    ids = [evil + "../../etc/passwd", control]
    keys = ["../../etc/passwd", "x./etc/passwd", "test/../../etc/passwd", "/etc/passwd",
            "test.echo\u0000.yml", "test.echo\n", "test\uff0eecho", "t\u0435st.echo",
            evil, "{{7*7}}", "planted.abs", "planted.rel", "planted.proc", "planteddir.evil",
            "planteddir", "..", ".", "test..echo", "-rf", "test.echo.yml", "a" * 300]
    lines = [event("test.echo", body, id=i) for body, i in zip(bodies, ids)]
    lines += [event(k, {"out_dir": str(out)}, id=f"key-{n}") for n, k in enumerate(keys)]
    lines += [event("test.echo", {"out_dir": str(out), "title": "t", "nested": {}}, id=bad)
              for bad in ([evil], {"x": evil})]
    cfg = base_config(workdir, [scripted(lines=lines, answers=str(answers))])
    # LeakSanitizer (in a sanitizer build) cannot work under ptrace and would fail the exit.
    asan = os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
    sup = supervisor(cfg, env={"ASAN_OPTIONS": asan.lstrip(":")},
                     wrapper=["strace", "-ff", "-y", "-qq", "-s", "4096", "-o", str(trace),
                              "-e", "trace=open,openat,openat2,execve,clone,clone3,fork,vfork"])
    expected = len(bodies) + len(keys)  # ids that are not a string or number get no answer
    wait_until(lambda: len(answers_by_line(answers)) >= expected, 180, what=f"{expected} answers")
    # The supervisor is strace's child: SIGTERM goes to it, and strace exits with its status.
    (loopabull,) = [p for p, (pp, _, c) in proc_table().items() if pp == sup.proc.pid]
    os.kill(loopabull, signal.SIGTERM)
    assert sup.proc.wait(30) == 0
    got = {json.dumps(a["id"]): a for a in answers_by_line(answers)}
    assert len(got) == expected
    for i in ids:
        assert got[json.dumps(i)]["result"] == "succeeded", got[json.dumps(i)]
    results = {k: got[json.dumps(f"key-{n}")]["result"] for n, k in enumerate(keys)}
    assert set(results.values()) <= {"rejected", "unrouted"}, results
    for k in ("planted.abs", "planted.rel", "planted.proc"):
        assert results[k] == "rejected" and "outside" in got[json.dumps(f"key-{keys.index(k)}")]["error"]
    # No payload was evaluated: no marker, and the playbook saw the literal strings.
    assert not marker.exists()
    seen = sorted((json.loads(f.read_text()) for f in out.glob("*.json")), key=lambda r: r["title"])
    assert [r["title"] for r in seen] == sorted([evil, "{{ 7*7 }}"])
    assert {r["id"] for r in seen} == set(ids)
    by_title = {r["title"]: r for r in seen}
    assert by_title[evil]["nested"] == bodies[0]["nested"]
    assert by_title["{{ 7*7 }}"]["nested"] == bodies[1]["nested"]
    # Nothing outside playbooks_dir was opened, or even tried, for a playbook: every open the
    # supervisor's code made is one of its own files or a playbook directly in the directory.
    opens, execs = supervisor_opens(trace, loopabull)
    pdir = str(playbooks)
    # playbook_cmd is ours too: the warm runner's plan reads its #! line (the interpreter).
    own = (str(workdir / "run"), str(sup.config_path), "/proc/", "/dev/", "/sys/", "/etc/",
           "/lib/", "/usr/lib/", "/lib64/", "/usr/share/zoneinfo", "/usr/bin/ansible-playbook")
    in_pdir = [p for p, _ in opens if p.startswith(pdir + "/")]
    strays = [(p, r) for p, r in opens
              if p != pdir and not p.startswith(pdir + "/") and not p.startswith(own)]
    assert strays == []
    for p in in_pdir:
        assert "/" not in p[len(pdir) + 1:] and p.endswith(".yml"), p
    assert not [p for p, _ in opens if "passwd" in p or str(outside) in p or "PWNED" in p]
    tried_planted = {p.rsplit("/", 1)[1]: r for p, r in opens if "/planted" in p}
    # The kernel refuses to follow them out of the directory; a directory is no playbook.
    assert tried_planted == {"planted.abs.yml": "EXDEV", "planted.rel.yml": "EXDEV",
                             "planted.proc.yml": "EXDEV", "planteddir.evil.yml": "ENOENT",
                             "planteddir.yml": "ENOENT"}, tried_planted
    playbook_execs = [a for a in execs if "ansible-playbook" in a]
    assert len(playbook_execs) == len(bodies)
    for a in playbook_execs:
        assert f'"{pdir}/test.echo.yml"' in a
    figures.update(events=len(lines), routing_keys_tried=len(keys), answered=len(got),
                   results={r: list(results.values()).count(r) for r in set(results.values())},
                   by_key={shown(k.replace(str(marker), "MARKER")): r for k, r in results.items()},
                   payload_events_run=len(bodies), marker_created=False,
                   supervisor_opens=len(opens), opens_in_playbooks_dir=len(in_pdir),
                   planted_symlink_opens=tried_planted, opens_outside=len(strays))
