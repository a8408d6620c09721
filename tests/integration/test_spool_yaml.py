# SPDX-License-Identifier: GPL-3.0-or-later
"""Differential: a YAML event means for the playbook what `ansible-playbook -e @file` makes of
the same file (issue 13, fault 4). Each document of the corpus goes through the spool looper and
the supervisor into a playbook that dumps its variables with to_json, and straight to
ansible-playbook with -e @file; the two dumps must be the same JSON, types included. Documents
that cannot be carried the same way are refused with a reason, never changed."""
import json
import os
import subprocess

import pytest

from conftest import ANSIBLE, needs_ansible, wait_until
from spool_helpers import events_left, spool_config

pytestmark = needs_ansible

CORPUS = {
    "restart": "v_restart: no\n",
    "booleans": """\
v_yes: yes
v_Yes: Yes
v_YES: YES
v_no: no
v_No: No
v_NO: NO
v_on: on
v_On: On
v_ON: ON
v_off: off
v_Off: Off
v_OFF: OFF
v_true: true
v_True: True
v_FALSE: FALSE
v_y: y
v_n: n
v_Y: Y
v_yEs: yEs
v_list: [yes, no, on, off, y, n]
""",
    "integers": """\
v_octal: 0755
v_octal2: 012
v_zip: 02134
v_yaml12_octal: 0o17
v_hex: 0x1A
v_hex_underscore: 0x_1a
v_binary: 0b1010
v_sexagesimal: 190:20:30
v_time_like: 12:30
v_underscore: 1_000_000
v_negative_hex: -0x10
v_not_octal: 08
v_minus_zero: -0
v_int64_max: 9223372036854775807
v_int64_min: -9223372036854775808
""",
    "floats": """\
v_plain: 1.5
v_trailing_dot: 1.
v_leading_dot: .5
v_exponent: 1.0e+3
v_no_dot_exponent: 1e3
v_unsigned_exponent: 1.0e3
v_underscore: 1_000.5
v_sexagesimal: 1:30.5
v_minus_zero: -0.0
v_tiny: 1.0e-300
v_inexact: 0.30000000000000004
v_huge: 1.5e+300
""",
    "nulls": """\
v_tilde: ~
v_null: null
v_Null: Null
v_NULL: NULL
v_empty:
v_not_null: nULL
v_list: [~, null, NULL]
""",
    "timestamps": """\
v_date: 2001-12-14
v_datetime: 2001-12-14t21:59:43.10-05:00
v_spaced: 2001-12-14 21:59:43.10 -5
v_utc: 2001-12-15T02:59:43.1Z
v_naive: 2001-12-15 2:59:43.10
v_whole: 2001-12-14T21:59:43.000
v_short_date: 2001-1-4
""",
    "anchors_and_merges": """\
v_base: &b {a: 1, b: 2}
v_other: &o {b: 3, c: 4}
v_merged_list:
  <<: [*b, *o]
  c: 5
v_merged_one:
  <<: *b
  a: 9
v_alias: *b
v_seq: &s [1, two, 3.0]
v_seq_again: *s
v_nested:
  inner: &i {deep: [yes, 0x10]}
  again: *i
""",
    "strings_that_look_like_numbers": """\
v_quoted_octal: "0755"
v_quoted_exponent: '1e3'
v_version: 1.2.3
v_ip: 10.0.0.1
v_phone: +1-555-0100
v_not_time: 12:30:99
v_tagged: !!str 0755
v_quoted_bool: 'yes'
v_quoted_date: "2001-12-14"
v_quoted_inf: ".inf"
v_dot_underscore: ._5
v_keys: {'yes': 1, "1": 2, "null": 3, plain: 4}
v_literal: |
  line one
  line two
v_folded: >
  folded
  text
v_unicode: "caf\\u00e9 \\u2603"
v_explicit: {i: !!int "0x10", f: !!float "1", b: !!bool "YES", n: !!null "", u: !unsafe 'x'}
""",
    "json_in_a_yml_file": '{"v_json_exponent": 1e3, "v_list": [1, 2.5, "yes", true]}\n',
}

REFUSED = {
    "infinity": ("v: .inf\n", "infinite or not a number"),
    "nan": ("v: .NaN\n", "infinite or not a number"),
    "boolean_key": ("yes: 1\n", 'the mapping key "yes" is true to Ansible'),
    "integer_key": ("1: a\n", 'the mapping key "1" is 1 to Ansible'),
    "binary": ("v: !!binary aGk=\n", "!!binary data cannot be passed"),
    "no_such_date": ("v: 2001-02-30\n", "not a valid date"),
    "set": ("v: !!set {a, b}\n", "a set has no JSON form"),
    "two_documents": ("v: 1\n---\nw: 2\n", "more than one YAML document"),
}


def dump_playbook(path, out):
    # The body is `event` once the supervisor namespaces it (issue 12); until then, and with
    # -e @file, it is the top-level variables v_*.
    names = "lookup('ansible.builtin.varnames', '^v_', wantlist=True)"
    path.write_text(f"""\
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - copy:
        dest: "{out}/{{{{ loopabull_event_id }}}}.json"
        content: "{{{{ (event if event is defined else dict({names} | zip(query('ansible.builtin.vars', *{names})))) | to_json }}}}"
""")


def canonical(text):
    return json.dumps(json.loads(text), sort_keys=True)


def test_yaml_events_mean_what_ansible_reads(workdir, supervisor):
    spool = workdir / "spool"
    spool.mkdir()
    out = workdir / "dumps"
    out.mkdir()
    playbook = workdir / "playbooks" / "test.dump.yml"
    dump_playbook(playbook, out)
    # One routing key a document, with names of loopabull 0.1 (test.dump.NAME.yml), so that the
    # test also runs against its looper.
    for name in [*CORPUS, *REFUSED]:
        dump_playbook(workdir / "playbooks" / f"test.dump.{name}.yml", out)
    docs = workdir / "docs"
    docs.mkdir()
    direct = []
    for name, text in CORPUS.items():
        (docs / f"{name}.yml").write_text(text)
        direct.append(subprocess.Popen(
            [ANSIBLE, str(playbook), "-e", f"@{docs / name}.yml",
             "-e", f"loopabull_event_id=direct-{name}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "ANSIBLE_LOCALHOST_WARNING": "false"}))
    sup = supervisor(spool_config(workdir, spool))
    for name, text in {**CORPUS, **{k: v for k, (v, _) in REFUSED.items()}}.items():
        (spool / f".{name}").write_text(text)
        os.rename(spool / f".{name}", spool / f"test.dump.{name}.yml")
    for p in direct:
        assert p.wait(300) == 0, p.stdout.read()
    wait_until(lambda: events_left(spool) == [], 300, what="every event to be handled")
    differences = []
    for name in CORPUS:
        ours = out / f"test.dump.{name}.yml.json"
        assert ours.exists(), f"{name} did not run:\n{sup.log[-3000:]}"
        a, b = canonical(ours.read_text()), canonical((out / f"direct-{name}.json").read_text())
        if a != b:
            differences.append(f"{name}:\n  spool:  {a}\n  -e @file: {b}")
    assert not differences, "\n".join(differences)
    for name, (_, why) in REFUSED.items():
        reason = (spool / "failed" / f"test.dump.{name}.yml.reason").read_text()
        assert why in reason, (name, reason)
    assert sup.stop() == 0


def test_json_events_keep_big_integers_exact(tmp_path):
    """A .json body is passed on as written: 2**64 and beyond are not rounded by the looper
    (what the supervisor then does is issue 12's)."""
    from spool_helpers import SpoolLooper, drop
    spool = tmp_path / "spool"
    spool.mkdir()
    lp = SpoolLooper(spool, tmp_path)
    try:
        drop(spool, "test.big.json",
             '{"big": 18446744073709551616,\n "huge": 123456789012345678901234567890}')
        drop(spool, "test.big.yml", "big: 18446744073709551616\nhex: 0x1FFFFFFFFFFFFFFFFFFFF\n")
        raw = {}
        for _ in range(2):
            e = lp.event()
            raw[e["id"]] = e["body"]
        assert raw["test.big.json"] == {"big": 2**64, "huge": 123456789012345678901234567890}
        assert raw["test.big.yml"] == {"big": 2**64, "hex": 0x1FFFFFFFFFFFFFFFFFFFF}
    finally:
        lp.close()
