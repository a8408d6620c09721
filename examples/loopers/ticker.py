#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Example looper: emits the event examples.tick with body {"n": N} every `interval` seconds.

A timer is the simplest event source there is, which makes this a template for loopers that
poll something (an API, a database) instead of being told. Config: {"interval": SECONDS},
default 60. Answers are logged, so the outcome of each playbook run shows up next to the tick.
"""

import json
import os
import selectors
import signal
import sys
import time


def log(message):
    # stderr lines end up in loopabull's log, tagged with this looper's name.
    print(message, file=sys.stderr, flush=True)


def read_interval():
    path = os.environ.get("LOOPABULL_CONFIG_FILE")
    config = {}
    if path:
        with open(path, encoding="utf-8") as file:
            config = json.load(file)
    interval = config.get("interval", 60)
    # bool is an int in Python; "interval: true" is a mistake, not one second.
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
        raise ValueError(f"interval must be a positive number of seconds, not {interval!r}")
    return interval


def log_answers(pending):
    """Logs the complete answer lines read from stdin; returns the unfinished rest, or None at EOF."""
    data = os.read(sys.stdin.fileno(), 65536)
    if not data:
        return None
    *lines, pending = (pending + data).split(b"\n")
    for line in lines:
        log(f"answer: {line.decode('utf-8', 'replace')}")
    return pending


def main():
    # SIGTERM comes from loopabull if it stops without closing stdin first; leave cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        interval = read_interval()
    except (OSError, ValueError) as error:
        log(f"bad config: {error}")
        return 1
    selector = selectors.DefaultSelector()
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ)
    n, pending = 0, b""
    # A deadline keeps the rhythm steady however long answer handling takes; after a long
    # stall (a suspended machine) it skips the missed ticks instead of sending a burst.
    deadline = time.monotonic()
    while True:
        if time.monotonic() >= deadline:
            n += 1
            print(json.dumps({"routing_key": "examples.tick", "body": {"n": n}, "id": n}), flush=True)
            deadline = max(deadline + interval, time.monotonic())
        if selector.select(max(0.0, deadline - time.monotonic())):
            pending = log_answers(pending)
            if pending is None:
                return 0  # loopabull closed our stdin: it is stopping


if __name__ == "__main__":
    sys.exit(main())
