#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""A test looper driven by its config: emits raw lines, records answers.

Config keys (JSON from $LOOPABULL_CONFIG_FILE):
  lines        list of strings emitted verbatim (each gets "\n" unless raw_tail)
  hex_lines    list of hex strings emitted as raw bytes (NUL, invalid UTF-8), each + "\n"
  raw_tail     hex bytes written last without a newline (a partial line)
  fifo         path of a FIFO whose bytes are forwarded verbatim to stdout
  answers      path of a file that receives every answer line
  marker       path of a file appended with "start PID" on each start (restart tests)
  exit_after   "emit": exit right after emitting; default: wait for stdin EOF
  exit_code    status to exit with (default 0)
  written      path of a file updated with the count of lines written (back-pressure)
"""
import json
import os
import sys
import threading

cfg = json.load(open(os.environ["LOOPABULL_CONFIG_FILE"]))
out = sys.stdout.buffer


def record(path, text):
    with open(path, "a") as f:
        f.write(text)
        f.flush()


if cfg.get("marker"):
    record(cfg["marker"], "start %d %s\n" % (os.getpid(), os.environ.get("LOOPABULL_LOOPER")))


def emit(data):
    out.write(data)
    out.flush()


def emit_all():
    count = 0
    for line in cfg.get("lines", []):
        emit(line.encode() + b"\n")
        count += 1
        if cfg.get("written"):
            with open(cfg["written"] + ".tmp", "w") as f:
                f.write(str(count))
            os.rename(cfg["written"] + ".tmp", cfg["written"])
    for h in cfg.get("hex_lines", []):
        emit(bytes.fromhex(h) + b"\n")
    if cfg.get("raw_tail"):
        emit(bytes.fromhex(cfg["raw_tail"]))


def forward_fifo(path):
    with open(path, "rb", buffering=0) as f:
        while True:
            chunk = f.read(65536)
            if not chunk:
                return
            emit(chunk)


def read_answers():
    for line in sys.stdin.buffer:
        if cfg.get("answers"):
            record(cfg["answers"], line.decode("utf-8", "replace"))


emit_all()
if cfg.get("exit_after") == "emit":
    sys.exit(cfg.get("exit_code", 0))
if cfg.get("fifo"):
    threading.Thread(target=forward_fifo, args=(cfg["fifo"],), daemon=True).start()
read_answers()
sys.exit(cfg.get("exit_code", 0))
