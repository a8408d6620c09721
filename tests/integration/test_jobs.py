# SPDX-License-Identifier: GPL-3.0-or-later
"""Events become real ansible-playbook runs, with the right variables and answers."""
import json
import os
import pwd

from conftest import (SCRIPTED, Supervisor, base_config, event, needs_ansible, read_answers, scripted,
                      wait_until)

pytestmark = needs_ansible


def run_events(workdir, supervisor, lines, count, **over):
    answers = workdir / "answers"
    cfg = base_config(workdir, [scripted(lines=lines, answers=str(answers))], **over)
    sup = supervisor(cfg)
    wait_until(lambda: len(read_answers(answers)) >= count, 120, what=f"{count} answers")
    return sup, read_answers(answers)


def test_event_runs_playbook_with_its_variables(workdir, supervisor):
    out = str(workdir / "out")
    payload = {"n": 3, "f": 1.5, "ok": True, "none": None, "list": [1, "two"],
               "text": "héllo \"quoted\" \\ back\nslash\t\u2028", "nested": {"a": {"b": "c"}}}
    lines = [event("test.record", {"out_dir": out, "payload": payload}, id="ev-1")]
    sup, answers = run_events(workdir, supervisor, lines, 1)
    assert answers == [{"id": "ev-1", "result": "succeeded", "exit_code": 0}]
    files = os.listdir(out)
    assert len(files) == 1
    got = json.loads((workdir / "out" / files[0]).read_text())
    assert got["payload"] == payload
    assert got["routing_key"] == "test.record"
    assert got["instance"] == "test"
    assert got["looper"] == "test"
    assert got["event_id"] == "ev-1"
    assert got["job_id"] == files[0].removesuffix(".json")
    assert sup.stop() == 0


def test_results_reach_the_looper(workdir, supervisor):
    out = str(workdir / "out")
    lines = [
        event("test.record", {"out_dir": out}, id="ok"),
        event("test.fail", {}, id="fails"),
        event("test.nothing.here", {}, id=17),
        event("test.bad..key", {}, id="bad"),
        event("test.record", [1, 2], id="notobject"),
    ]
    sup, answers = run_events(workdir, supervisor, lines, 5)
    by_id = {a["id"]: a for a in answers}
    assert by_id["ok"] == {"id": "ok", "result": "succeeded", "exit_code": 0}
    assert by_id["fails"]["result"] == "failed"
    assert by_id["fails"]["exit_code"] == 2  # ansible-playbook: a task failed
    assert by_id[17] == {"id": 17, "result": "unrouted", "exit_code": None}
    assert by_id["bad"]["result"] == "rejected" and "routing key" in by_id["bad"]["error"]
    assert by_id["notobject"]["result"] == "rejected" and "object" in by_id["notobject"]["error"]
    assert sup.stop() == 0


def test_routing_keys_select_events(workdir, supervisor):
    out = str(workdir / "out")
    lines = [event("test.record", {"out_dir": out}, id="selected"),
             event("test.fail", {}, id="not-selected")]
    sup, answers = run_events(workdir, supervisor, lines, 2, routing_keys=["*.record", "other.#"])
    by_id = {a["id"]: a for a in answers}
    assert by_id["selected"]["result"] == "succeeded"
    assert by_id["not-selected"] == {"id": "not-selected", "result": "unrouted", "exit_code": None}


def test_directory_layout(workdir, supervisor):
    out = str(workdir / "out")
    lines = [event("test.dir.layout", {"out_dir": out}, id="d")]
    _, answers = run_events(workdir, supervisor, lines, 1,
                            ansible={"playbooks_dir": str(workdir / "playbooks"), "layout": "directory"})
    assert answers[0]["result"] == "succeeded"
    assert [f for f in os.listdir(out) if f.startswith("layout-")]


def test_template_injection_is_not_evaluated(workdir, supervisor):
    out = workdir / "out"
    pwned = workdir / "PWNED"
    evil = "{{ lookup('pipe', 'touch %s') }}" % pwned
    body = {"out_dir": str(out), "title": evil,
            "nested": {"list": [evil], "map": {"deep": evil}}, evil: evil}
    sup, answers = run_events(workdir, supervisor, [event("test.render", body, id="x")], 1)
    assert answers[0]["result"] == "succeeded", sup.log[-3000:]
    assert not pwned.exists()
    assert (out / "rendered.txt").read_text().strip() == evil
    assert sup.stop() == 0


def test_trusted_payloads_are_templated(workdir, supervisor):
    """The opt-in exists and does what it says: proof the test above can fail."""
    pwned = workdir / "PWNED"
    body = {"out_dir": str(workdir / "out"), "title": "{{ lookup('pipe', 'touch %s') }}" % pwned,
            "nested": {"list": ["a"], "map": {"deep": "b"}}}
    _, answers = run_events(workdir, supervisor, [event("test.render", body, id="x")], 1,
                            ansible={"playbooks_dir": str(workdir / "playbooks"),
                                     "trusted_payloads": True})
    assert answers[0]["result"] == "succeeded"
    assert pwned.exists()


def test_vars_files_are_removed(workdir, supervisor):
    out = str(workdir / "out")
    lines = [event("test.record", {"out_dir": out}, id=str(i)) for i in range(3)]
    lines.append(event("test.fail", {}, id="f"))
    sup, answers = run_events(workdir, supervisor, lines, 4)
    vars_dir = workdir / "run" / "vars"
    assert vars_dir.is_dir()
    assert oct(vars_dir.stat().st_mode & 0o777) == "0o700"
    assert os.listdir(vars_dir) == []
    assert sup.stop() == 0


def own(path, user):
    """Hands a file the test wrote to the user the supervisor runs as."""
    if user:
        pw = pwd.getpwnam(user)
        os.lchown(path, pw.pw_uid, pw.pw_gid)


def ansible_cfg(workdir, user):
    """The unprivileged user's home may not exist ("nobody"): Ansible's temporary files go
    into the work directory, set through cfg_file_path as a deployment would."""
    cfg = workdir / "ansible.cfg"
    cfg.write_text(f"[defaults]\nremote_tmp = {workdir}/.ansible/tmp\nlocal_tmp = {workdir}/.ansible/local\n"
                   "retry_files_enabled = false\n")
    own(cfg, user)
    return str(cfg)


def bundled_wrapper(workdir, name, looper_config):
    """A looper installed under a bundled name, with its options baked in (the README dialect
    gives a looper no options of its own)."""
    looper_dir = workdir / "loopers"
    looper_dir.mkdir(exist_ok=True)
    cfg = workdir / f"{name}.json"
    cfg.write_text(json.dumps(looper_config))
    wrapper = looper_dir / name
    wrapper.write_text(f"#!/bin/sh\nLOOPABULL_CONFIG_FILE={cfg} exec {SCRIPTED}\n")
    wrapper.chmod(0o755)
    return looper_dir


def test_legacy_readme_dialect(user_workdir):
    workdir, user = user_workdir
    out = str(workdir / "out")
    answers = workdir / "answers"
    lines = [event("test.dir.layout", {"out_dir": out}, id="l"),
             event("test.record", {"out_dir": out}, id="r")]
    looper_dir = bundled_wrapper(workdir, "legacy", {"lines": lines, "answers": str(answers)})
    cfg = {"plugin": "legacy", "path_translator": "rkdirectory", "routing_keys": ["test.dir.layout"],
           "ansible": {"playbooks_dir": str(workdir / "playbooks"), "playbook_cmd": "ansible-playbook",
                       "inventory_path": "localhost,", "cfg_file_path": ansible_cfg(workdir, user)}}
    for f in (looper_dir, looper_dir / "legacy", workdir / "legacy.json"):
        own(f, user)
    sup = Supervisor(workdir, cfg, env={"LOOPABULL_LOOPER_DIR": str(looper_dir)}, user=user)
    try:
        wait_until(lambda: len(read_answers(answers)) == 2, 120, what="two answers")
        by_id = {a["id"]: a["result"] for a in read_answers(answers)}
        assert by_id == {"l": "succeeded", "r": "unrouted"}, sup.log[-4000:]
        assert sup.stop() == 0
    finally:
        if sup.proc.poll() is None:
            sup.kill()


def test_legacy_007_dialect(user_workdir):
    workdir, user = user_workdir
    out = str(workdir / "out")
    answers = workdir / "answers"
    looper_dir = workdir / "loopers"
    looper_dir.mkdir()
    (looper_dir / "scripted").symlink_to(SCRIPTED)
    cfg = {"loglevel": "info", "routing_keys": ["test.dir.layout"],
           "ansible": {"playbooks_dir": str(workdir / "playbooks"),
                       "playbook_cmd": "/usr/bin/ansible-playbook",
                       "cfg_file_path": ansible_cfg(workdir, user)},
           "plugins": {"looper": {"name": "scripted", "answers": str(answers),
                                  "lines": [event("test.dir.layout", {"out_dir": out}, id="l")]},
                       "translator": {"name": "rkdirectory"}}}
    own(looper_dir, user)
    sup = Supervisor(workdir, cfg, env={"LOOPABULL_LOOPER_DIR": str(looper_dir)}, user=user)
    try:
        wait_until(lambda: read_answers(answers), 120, what="the answer")
        assert read_answers(answers) == [{"id": "l", "result": "succeeded", "exit_code": 0}], sup.log[-4000:]
        assert sup.stop() == 0
    finally:
        if sup.proc.poll() is None:
            sup.kill()
