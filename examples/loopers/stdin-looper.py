#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Example looper in Python: turns lines `ROUTING_KEY JSON_BODY` from a FIFO or file into events.

It shows the whole looper protocol with nothing but the standard library:
- the config arrives as JSON in the file named by $LOOPABULL_CONFIG_FILE ({"input": PATH});
- each event is one JSON line on stdout, flushed at once, with an id so loopabull answers it;
- answers arrive as JSON lines on stdin, and EOF there means "stop now".

Try it (see examples/configs/stdin-python.yml):
    mkfifo /tmp/loopabull-stdin.fifo
    echo 'org.example.hello {"who": "python"}' > /tmp/loopabull-stdin.fifo
"""

import json
import os
import selectors
import signal
import stat
import sys


def log(message):
    # stderr lines end up in loopabull's log, tagged with this looper's name.
    print(message, file=sys.stderr, flush=True)


def read_config():
    # Run by hand without loopabull there is no config file; fall back to an empty one.
    path = os.environ.get("LOOPABULL_CONFIG_FILE")
    if not path:
        return {}
    with open(path, encoding="utf-8") as config:
        return json.load(config)


def open_input(path):
    # A FIFO opened read-write never reports EOF when a writer goes away, so one looper run
    # serves any number of `echo ... > fifo`; O_NONBLOCK keeps the open from waiting for one.
    is_fifo = stat.S_ISFIFO(os.stat(path).st_mode)
    return os.open(path, (os.O_RDWR | os.O_NONBLOCK) if is_fifo else os.O_RDONLY)


class Lines:
    """Splits what arrives on a descriptor into lines, whatever the chunk boundaries."""

    def __init__(self, fd):
        self.fd = fd
        self.pending = b""

    def read(self):
        """Returns the complete lines read, or None at end of file."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        if not data:
            return None
        *lines, self.pending = (self.pending + data).split(b"\n")
        return [line.decode("utf-8", "replace") for line in lines]


def to_event(line, event_id):
    """Returns the protocol line for one input line, or None if the line is not usable."""
    key, _, body = line.strip().partition(" ")
    if not key:
        return None
    try:
        body = json.loads(body) if body.strip() else {}
    except ValueError as error:
        log(f"skipping {line!r}: body is not JSON ({error})")
        return None
    # An integer id is fine too; loopabull echoes it back as given.
    return json.dumps({"routing_key": key, "body": body, "id": event_id})


def main():
    # SIGTERM comes from loopabull if it stops without closing stdin first; leave cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    path = read_config().get("input")
    if not path:
        log('no input file configured (config: {"input": PATH})')
        return 1
    inputs, answers = Lines(open_input(path)), Lines(sys.stdin.fileno())
    # poll, not the default epoll: epoll refuses regular files.
    selector = selectors.PollSelector()
    selector.register(inputs.fd, selectors.EVENT_READ, inputs)
    selector.register(answers.fd, selectors.EVENT_READ, answers)
    next_id = 1
    while True:
        for key, _ in selector.select():
            lines = key.data.read()
            if lines is None and key.data is answers:
                return 0  # loopabull closed our stdin: it is stopping
            if lines is None:
                selector.unregister(inputs.fd)  # a plain file is done; keep answering
                continue
            for line in lines:
                if key.data is answers:
                    log(f"answer: {line}")
                elif (event := to_event(line, next_id)) is not None:
                    print(event, flush=True)
                    next_id += 1


if __name__ == "__main__":
    sys.exit(main())
