# SPDX-License-Identifier: GPL-3.0-or-later
"""The vars files of the varsfile fuzzer's corpus, read by Ansible's own loader (PyYAML through
ansible.parsing.utils.yaml.from_yaml, what ansible-playbook does with -e @FILE): each reads back
as its event body, and every string in it, key or value, at any depth, is AnsibleUnsafe, so
Ansible never templates it. tools/fuzz writes the files (fuzz-varsfile with
LOOPABULL_FUZZ_VARS_DUMP=DIR over the corpus) and runs this with that variable set."""
import json
import os
import pathlib

import pytest
from ansible.parsing.utils.yaml import from_yaml
from ansible.utils.unsafe_proxy import AnsibleUnsafe

DUMP = os.environ.get("LOOPABULL_FUZZ_VARS_DUMP")
pytestmark = pytest.mark.skipif(not DUMP, reason="LOOPABULL_FUZZ_VARS_DUMP not set (tools/fuzz sets it)")


def strings_not_unsafe(value, where="$"):
    """Where a str that is not AnsibleUnsafe sits in value. The top-level loopabull_* keys and
    `event` are loopabull's own names (events cannot set them), written plain; their values are
    tagged."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not (where == "$" and (k.startswith("loopabull_") or k == "event")):
                yield from strings_not_unsafe(k, f"{where} key {k!r}")
            yield from strings_not_unsafe(v, f"{where}[{k!r}]")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from strings_not_unsafe(v, f"{where}[{i}]")
    elif isinstance(value, str) and not isinstance(value, AnsibleUnsafe):
        yield where


def test_corpus_reads_back_through_ansible():
    files = sorted(pathlib.Path(DUMP).glob("*.yml"))
    assert len(files) >= 5, f"too few vars files in {DUMP}: is the corpus there?"
    for yml in files:
        expected = json.loads(yml.with_suffix(".json").read_text())
        loaded = from_yaml(yml.read_text(), file_name=str(yml), show_content=True)
        assert loaded == expected, yml
        assert list(strings_not_unsafe(loaded)) == [], yml
