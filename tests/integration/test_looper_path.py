# SPDX-License-Identifier: GPL-3.0-or-later
"""How a looper's command is found, as systemd's ExecStart= finds a program: a bare name is a
bundled looper first, else looked up in PATH; a name with a '/' is a path (relative ones
against the configuration file's directory). --check-config -v and the log say which."""
import os
import subprocess

from conftest import BIN, LOOPER_DIR, base_config, read_answers, wait_until

# Prints one event, records the answer, waits for EOF: a looper in POSIX sh.
LOOPER_SH = """#!/bin/sh
echo '{"routing_key": "good.key", "id": "1"}'
read -r answer && echo "$answer" >> "$1"
cat >/dev/null
"""


def write_looper(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(LOOPER_SH)
    path.chmod(0o755)
    return path


def config(workdir, command):
    (workdir / "playbooks" / "good.key.yml").write_text("- hosts: localhost\n")
    return base_config(workdir, [{"name": "mine", "command": command}],
                       ansible={"playbooks_dir": str(workdir / "playbooks"),
                                "playbook_cmd": "/bin/true"})


def check(workdir, cfg, path_env, *args):
    import yaml
    f = workdir / "check.yml"
    f.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "LOOPABULL_LOOPER_DIR": str(LOOPER_DIR), "PATH": path_env}
    return subprocess.run([str(BIN), "--check-config", *args, str(f)], capture_output=True,
                          text=True, env=env, cwd="/")


def test_bundled_name_is_the_bundled_looper_even_when_path_has_one(workdir):
    bindir = workdir / "bin"
    write_looper(bindir / "spool")
    path_env = f"{bindir}:/usr/bin:/bin"
    r = check(workdir, config(workdir, ["spool", str(workdir / "spooldir")]), path_env, "-v")
    assert r.returncode == 0, r.stderr
    assert f"looper mine: {LOOPER_DIR}/spool (the bundled looper 'spool')" in r.stdout, r.stdout


def test_bare_name_found_in_path_runs(workdir, supervisor):
    bindir = workdir / "bin"
    write_looper(bindir / "my-looper")
    answers = workdir / "answers"
    path_env = f"/nonexistent:{bindir}:/usr/bin:/bin"
    cfg = config(workdir, ["my-looper", str(answers)])
    r = check(workdir, cfg, path_env, "--verbose")
    assert r.returncode == 0, r.stderr
    assert f"looper mine: {bindir}/my-looper ('my-looper' found in PATH)" in r.stdout, r.stdout
    sup = supervisor(cfg, env={"PATH": path_env})
    wait_until(lambda: read_answers(answers), what="the answer")
    assert read_answers(answers)[0]["result"] == "succeeded"
    assert f"looper mine: {bindir}/my-looper ('my-looper' found in PATH)" in sup.log
    assert sup.stop() == 0


def test_interpreter_from_path_with_arguments(workdir, supervisor):
    # The forms people write: an interpreter by name and a script, or sh -c.
    answers = workdir / "answers"
    script = write_looper(workdir / "looper.sh")
    cfg = config(workdir, ["sh", str(script), str(answers)])
    sup = supervisor(cfg, env={"PATH": "/usr/bin:/bin"})
    wait_until(lambda: read_answers(answers), what="the answer")
    assert read_answers(answers)[0]["result"] == "succeeded"
    assert "('sh' found in PATH)" in sup.log
    assert sup.stop() == 0


def test_bare_name_not_found_names_path(workdir):
    path_env = f"{workdir}/bin:/usr/bin:/bin"
    r = check(workdir, config(workdir, ["nosuchlooper"]), path_env)
    assert r.returncode == 1
    assert ("unknown looper 'nosuchlooper': not a bundled looper (bundled loopers: amqp, "
            f"fedmsg, fedmsgrabbitmq, spool) and not found in PATH ({path_env})") in r.stderr, r.stderr


def test_relative_path_is_relative_to_the_config_file(workdir, supervisor):
    answers = workdir / "answers"
    write_looper(workdir / "loopers" / "rel.sh")
    for command in (["./loopers/rel.sh", str(answers)], ["loopers/rel.sh", str(answers)]):
        r = check(workdir, config(workdir, command), "/usr/bin:/bin", "-v")
        assert r.returncode == 0, r.stderr
        assert f"looper mine: {workdir}/loopers/rel.sh (a path)" in r.stdout, r.stdout
    # The supervisor runs from another directory: the path still resolves.
    sup = supervisor(config(workdir, ["loopers/rel.sh", str(answers)]))
    wait_until(lambda: read_answers(answers), what="the answer")
    assert sup.stop() == 0
    r = check(workdir, config(workdir, ["loopers/missing.sh"]), "/usr/bin:/bin")
    assert r.returncode == 1
    assert f"looper command '{workdir}/loopers/missing.sh' is not an executable file" in r.stderr


def test_absolute_path(workdir):
    script = write_looper(workdir / "abs" / "looper.sh")
    r = check(workdir, config(workdir, [str(script)]), "/usr/bin:/bin", "-v")
    assert r.returncode == 0, r.stderr
    assert f"looper mine: {script} (a path)" in r.stdout
    script.chmod(0o644)
    r = check(workdir, config(workdir, [str(script)]), "/usr/bin:/bin")
    assert r.returncode == 1
    assert f"looper command '{script}' is not an executable file" in r.stderr
