# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures of the system tier: a real systemd booted in a container (see machine.py).

  machine            a booted Machine, fresh for each test (about 1 s to boot and tear down)
  installed_machine  the same with `meson install --no-rebuild` of LOOPABULL_BUILD_DIR into it
                     first (like the integration tier, it uses the build as it is: build first)
  machine_factory    machine_factory(**Machine kwargs) -> a booted Machine, torn down after the test
  build_dir          LOOPABULL_BUILD_DIR, default <repo>/build

Tests skip only if not root or systemd-nspawn is missing (CI runs as root with tools/setup-deps).
"""
import contextlib
import os
from pathlib import Path

import pytest

# tests/waiting.py: shared with the integration tier.
import sys
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import Machine, unavailable_reason

BUILD_DIR = Path(os.environ.get("LOOPABULL_BUILD_DIR") or Path(__file__).parents[2] / "build").resolve()


@pytest.fixture(scope="session")
def build_dir():
    if not (BUILD_DIR / "build.ninja").exists():
        pytest.fail(f"no meson build in {BUILD_DIR} (set LOOPABULL_BUILD_DIR or run meson setup)")
    return BUILD_DIR


@pytest.fixture
def machine_factory():
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with contextlib.ExitStack() as stack:
        def make(**kwargs):
            return stack.enter_context(Machine(**kwargs))
        yield make


@pytest.fixture
def machine(machine_factory):
    return machine_factory()


@pytest.fixture
def installed_machine(machine_factory, build_dir):
    return machine_factory(build_dir=build_dir, rebuild=False)
