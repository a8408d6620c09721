# SPDX-License-Identifier: GPL-3.0-or-later
"""Stop, reload, limits and containment of jobs, through the real binary."""
import os
import signal
import subprocess
import time

from conftest import BIN, LOOPER_DIR, base_config, event, read_answers, scripted, wait_until


def script(workdir, name, body):
    p = workdir / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)
    return str(p)


def cmd_config(workdir, loopers, playbook_cmd, **over):
    for key in ("good.key", "slow.key", "other.key"):
        (workdir / "playbooks" / f"{key}.yml").write_text("- hosts: localhost\n")
    return base_config(workdir, loopers,
                       ansible={"playbooks_dir": str(workdir / "playbooks"), "playbook_cmd": playbook_cmd},
                       **over)


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_sigterm_drains_running_jobs_and_cancels_queued(workdir, supervisor):
    answers = workdir / "answers"
    slow = script(workdir, "slow.sh", "sleep 2\n")
    lines = [event("slow.key", {}, id=str(i)) for i in range(4)]
    cfg = cmd_config(workdir, [scripted(lines=lines, answers=str(answers))], slow,
                     executor={"max_parallel": 2})
    sup = supervisor(cfg)
    sup.wait_log(r"job 2 started")
    sup.signal(signal.SIGTERM)
    assert sup.proc.wait(30) == 0
    got = {a["id"]: a["result"] for a in read_answers(answers)}
    assert got == {"0": "succeeded", "1": "succeeded", "2": "cancelled", "3": "cancelled"}
    assert "job 3 started" not in sup.log


def test_stop_timeout_cancels_running_jobs(workdir, supervisor):
    answers = workdir / "answers"
    slow = script(workdir, "slow.sh", "sleep 60\n")
    cfg = cmd_config(workdir, [scripted(lines=[event("slow.key", {}, id="s")], answers=str(answers))],
                     slow, executor={"stop_timeout": "1s", "kill_grace": "1s"})
    sup = supervisor(cfg)
    sup.wait_log(r"job 1 started")
    t0 = time.monotonic()
    sup.signal(signal.SIGTERM)
    assert sup.proc.wait(30) == 0
    assert time.monotonic() - t0 < 10
    assert read_answers(answers) == [{"id": "s", "result": "cancelled", "exit_code": 128 + 15}]


def test_timeout_kills_the_whole_process_group(workdir, supervisor):
    answers = workdir / "answers"
    pids = workdir / "pids"
    # Ignores SIGTERM, leaves a background sleeper behind, then hangs.
    hang = script(workdir, "hang.sh", f"trap '' TERM\nsleep 300 &\necho $! > {pids}\necho $$ >> {pids}\n"
                  "while :; do sleep 1; done\n")
    cfg = cmd_config(workdir, [scripted(lines=[event("slow.key", {}, id="t")], answers=str(answers))],
                     hang, executor={"timeout": "1s", "kill_grace": "1s"})
    sup = supervisor(cfg)
    wait_until(lambda: read_answers(answers), 20, what="the timeout answer")
    assert read_answers(answers) == [{"id": "t", "result": "timeout", "exit_code": 128 + 9}]
    for pid in map(int, pids.read_text().split()):
        wait_until(lambda: not os.path.exists(f"/proc/{pid}") or
                   open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z", 5,
                   what=f"process {pid} of the timed-out job to be gone")
    assert "ignored SIGTERM; sending SIGKILL" in sup.log
    assert sup.stop() == 0


def test_two_thousand_events_leak_no_descriptors(workdir, supervisor):
    """The original died with EMFILE after about 1,020 events; run under a limit of 256."""
    answers = workdir / "answers"
    n = 2000
    lines = [event("good.key", {"i": i}, id=i) for i in range(n)]
    cfg = cmd_config(workdir, [scripted(lines=lines, answers=str(answers))], "/bin/true",
                     executor={"max_parallel": 4, "queue_size": 100})
    import resource

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    sup = supervisor(cfg, preexec=low_limit)
    wait_until(lambda: len(read_answers(answers)) >= n, 180, interval=0.2, what=f"{n} answers")
    got = read_answers(answers)
    assert len(got) == n
    assert {a["result"] for a in got} == {"succeeded"}
    assert sorted(a["id"] for a in got) == list(range(n))
    # Descriptors after 2,000 jobs: the same handful as before any job ran.
    assert open_fds(sup.proc.pid) < 30
    assert os.listdir(workdir / "run" / "vars") == []
    assert sup.stop() == 0


def test_back_pressure_blocks_a_fast_looper(workdir, supervisor):
    answers = workdir / "answers"
    written = workdir / "written"
    pad = "x" * 16384  # big lines fill the pipe quickly
    n = 60
    lines = [event("slow.key", {"pad": pad}, id=i) for i in range(n)]
    slow = script(workdir, "slow.sh", "sleep 0.3\n")
    cfg = cmd_config(workdir, [scripted(lines=lines, answers=str(answers), written=str(written))],
                     slow, executor={"max_parallel": 1, "queue_size": 2})
    sup = supervisor(cfg)
    sup.wait_log(r"queue full")
    time.sleep(1.0)
    # The looper is blocked in write(): the pipe and one read buffer hold only a few lines.
    blocked_at = int(written.read_text())
    assert blocked_at < n // 2, f"looper wrote {blocked_at} of {n} lines while 1 job ran"
    wait_until(lambda: len(read_answers(answers)) == n, 60, what="every event to run")
    assert [a["id"] for a in read_answers(answers)] == list(range(n))
    assert sup.stop() == 0


def test_sighup_reloads_and_keeps_old_config_when_bad(workdir, supervisor):
    answers = workdir / "answers"
    fifo = workdir / "fifo"
    os.mkfifo(fifo)
    cfg = cmd_config(workdir, [scripted(fifo=str(fifo), answers=str(answers))], "/bin/true",
                     routing_keys=["good.key"])
    sup = supervisor(cfg)
    f = open(fifo, "w")

    def send(key, id):
        f.write(event(key, {}, id=id) + "\n")
        f.flush()
        wait_until(lambda: any(a["id"] == id for a in read_answers(answers)), what=f"answer {id}")
        return next(a["result"] for a in read_answers(answers) if a["id"] == id)
    assert send("other.key", "before") == "unrouted"
    cfg["routing_keys"] = ["good.key", "other.key"]
    sup.write_config(cfg)
    sup.signal(signal.SIGHUP)
    sup.wait_log("configuration reloaded")
    assert send("other.key", "after") == "succeeded"
    # The looper kept running: same process, no restart.
    assert sup.log.count("looper test started") == 1
    sup.config_path.write_text("routing_keys: [all]\nloopers: []\nbogus: 1\n")
    sup.signal(signal.SIGHUP)
    sup.wait_log("keeping the current configuration")
    assert "unknown key 'bogus'" in sup.log
    assert send("other.key", "kept") == "succeeded"
    f.close()
    assert sup.stop() == 0


def test_reload_restarts_a_changed_looper(workdir, supervisor):
    marker = workdir / "marker"
    cfg = cmd_config(workdir, [scripted(marker=str(marker), version=1)], "/bin/true")
    sup = supervisor(cfg)
    wait_until(lambda: marker.exists(), what="the looper to start")
    cfg["loopers"][0]["config"]["version"] = 2
    sup.write_config(cfg)
    sup.signal(signal.SIGHUP)
    wait_until(lambda: len(marker.read_text().splitlines()) == 2, what="the restarted looper")
    assert "looper test changed; restarting it" in sup.log
    assert sup.stop() == 0


def test_playbook_symlink_escape_is_rejected(workdir, supervisor):
    answers = workdir / "answers"
    secret = workdir / "secret.yml"
    secret.write_text("- hosts: localhost\n")
    (workdir / "playbooks" / "planted.key.yml").symlink_to(secret)
    lines = [event("planted.key", {}, id="planted")]
    cfg = cmd_config(workdir, [scripted(lines=lines, answers=str(answers))], "/bin/true")
    sup = supervisor(cfg)
    wait_until(lambda: read_answers(answers), what="the answer")
    got = {a["id"]: a for a in read_answers(answers)}
    assert got["planted"]["result"] == "rejected"
    assert "outside the playbooks directory" in got["planted"]["error"]
    assert "refusing playbook" in sup.log
    assert "job 1 started" not in sup.log
    assert sup.stop() == 0


def test_directory_layout_symlinked_directory_escape_is_rejected(workdir, supervisor):
    answers = workdir / "answers"
    outside = workdir / "outside"
    outside.mkdir()
    (outside / "passwd.yml").write_text("- hosts: localhost\n")
    os.symlink(outside, workdir / "playbooks" / "etc")
    cfg = cmd_config(workdir, [scripted(lines=[event("etc.passwd", {}, id="etc")], answers=str(answers))],
                     "/bin/true")
    cfg["ansible"]["layout"] = "directory"
    sup = supervisor(cfg)
    wait_until(lambda: read_answers(answers), what="the answer")
    assert read_answers(answers)[0]["result"] == "rejected"
    assert "job 1 started" not in sup.log
    assert sup.stop() == 0


def test_stale_vars_files_are_removed_at_start(workdir, supervisor):
    vars_dir = workdir / "run" / "vars"
    vars_dir.mkdir(parents=True)
    (vars_dir / "job-7.yml").write_text("secret: data\n")
    sup = supervisor(cmd_config(workdir, [scripted()], "/bin/true"))
    assert not (vars_dir / "job-7.yml").exists()
    assert "removed 1 vars files left by a previous run" in sup.log
    assert sup.stop() == 0


def test_check_config_lists_every_problem(workdir):
    cfg = workdir / "bad.yml"
    cfg.write_text("routing_keys: [all, 'a..b']\n"
                   "loopers:\n"
                   "  - name: x\n"
                   "    comand: [spool]\n"
                   "ansible:\n"
                   "  playbooks_dir: /nonexistent\n"
                   "executor:\n"
                   "  timeout: 5 minutes\n"
                   "  max_parallel: 0\n")
    r = subprocess.run([str(BIN), "--check-config", str(cfg)], capture_output=True, text=True,
                       env={**os.environ, "LOOPABULL_LOOPER_DIR": str(LOOPER_DIR)})
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert f"{cfg}:1:21: invalid routing key pattern 'a..b': empty word (two dots in a row, or a leading or trailing dot)" in lines
    assert f"{cfg}:4:5: unknown key 'comand' in a looper; did you mean 'command'?" in lines
    assert f"{cfg}:3:5: looper 'x' has no 'command'" in lines
    assert f"{cfg}:6:18: playbooks_dir '/nonexistent' is not a directory" in lines
    assert any(l.startswith(f"{cfg}:8:12: 'timeout': invalid duration '5 minutes'") for l in lines)
    assert f"{cfg}:9:17: 'max_parallel' must be a whole number from 1 to 1024, not '0'" in lines
    assert len(lines) == 6


def test_check_config_accepts_a_good_file_and_usage_errors(workdir):
    cfg = workdir / "good.yml"
    cfg.write_text(f"routing_keys: [all]\nloopers:\n  - name: s\n    command: [spool, {workdir}/spool]\n"
                   f"ansible:\n  playbooks_dir: {workdir / 'playbooks'}\n  playbook_cmd: /bin/true\n")
    env = {**os.environ, "LOOPABULL_LOOPER_DIR": str(LOOPER_DIR)}
    r = subprocess.run([str(BIN), "--check-config", str(cfg)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout
    r = subprocess.run([str(BIN)], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "exactly one CONFIG" in r.stderr
    r = subprocess.run([str(BIN), "--instance", "../x", str(cfg)], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "invalid instance name" in r.stderr
    r = subprocess.run([str(BIN), "--version"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout.startswith("loopabull ")


def test_playbook_environment_is_small_and_overridable(workdir, supervisor):
    """Only PATH, HOME, the locale and a few more come from the supervisor; ansible.environment
    adds variables and overrides kept ones (each name once); secrets in the supervisor's
    environment do not leak into jobs."""
    out = workdir / "out" / "env"
    dump = script(workdir, "dump-env.sh", f"env > {out}\n")
    answers = workdir / "answers"
    cfg = cmd_config(workdir, [scripted(lines=[event("good.key", {}, id="e")], answers=str(answers))], dump)
    cfg["ansible"]["environment"] = {"PATH": "/opt/tools/bin:/usr/bin:/bin", "EXTRA": "yes"}
    cfg["ansible"]["cfg_file_path"] = str(workdir / "ansible.cfg")
    (workdir / "ansible.cfg").write_text("[defaults]\n")
    sup = supervisor(cfg, env={"SUPERVISOR_SECRET": "hunter2", "LANG": "C.UTF-8"})
    wait_until(lambda: read_answers(answers), what="the answer")
    names = [line.split("=", 1)[0] for line in out.read_text().splitlines()]
    env = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert len(names) == len(set(names)), names
    assert env["PATH"] == "/opt/tools/bin:/usr/bin:/bin"
    assert env["EXTRA"] == "yes"
    assert env["ANSIBLE_CONFIG"] == str(workdir / "ansible.cfg")
    assert env["LANG"] == "C.UTF-8"
    assert "SUPERVISOR_SECRET" not in env and "LOOPABULL_LOOPER_DIR" not in env
    assert sup.stop() == 0
