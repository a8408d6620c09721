# SPDX-License-Identifier: GPL-3.0-or-later
"""10,000 events through the supervisor of a sanitized build (meson -Dsanitize=true): every event
answered, a clean exit on SIGTERM, and LeakSanitizer (which runs at exit) finds no leak, nor does
ASan or UBSan report anything on the way. tools/run-tests runs the integration suite on that
build too; on a plain build this test is skipped (it says so)."""
import signal

import pytest

from conftest import BUILD, SANITIZED, base_config, event, read_answers, scripted, wait_until

EVENTS = 10_000
ROUTED = 1_000  # run /bin/true as the playbook; the rest is unrouted


@pytest.mark.skipif(not SANITIZED, reason=f"{BUILD} is not a -Dsanitize=true build")
def test_ten_thousand_events_leak_nothing(workdir, supervisor):
    answers = workdir / "answers"
    (workdir / "playbooks" / "leak.routed.yml").write_text("- hosts: localhost\n")
    lines = [event("leak.routed" if i < ROUTED else "leak.unrouted", {"n": i, "s": "x" * (i % 100)},
                   id=str(i)) for i in range(EVENTS)]
    cfg = base_config(workdir, [scripted(lines=lines, answers=str(answers))], loglevel="info",
                      ansible={"playbooks_dir": str(workdir / "playbooks"), "playbook_cmd": "/bin/true"},
                      executor={"max_parallel": 4, "queue_size": 100})
    # A leak makes the exit status 23; the reports go to stderr, which is the supervisor's log.
    env = {"ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1:exitcode=23",
           "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}
    sup = supervisor(cfg, env=env)
    wait_until(lambda: len(read_answers(answers)) >= EVENTS, timeout=600,
               what=f"{EVENTS} answers")
    got = read_answers(answers)
    results = {a["id"]: a["result"] for a in got}
    assert len(got) == EVENTS and len(results) == EVENTS
    assert sum(r == "succeeded" for r in results.values()) == ROUTED
    assert sum(r == "unrouted" for r in results.values()) == EVENTS - ROUTED
    sup.signal(signal.SIGTERM)
    status = sup.proc.wait(60)
    for report in ("LeakSanitizer", "AddressSanitizer", "runtime error"):
        assert report not in sup.log, sup.log[-8000:]
    assert status == 0, sup.log[-4000:]
