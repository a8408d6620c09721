#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""A misbehaving looper for the fault-injection tests (test_faults.py), driven by its config.

Config keys (JSON from $LOOPABULL_CONFIG_FILE):
  mode      "flood":     write `count` events as fast as possible while reading answers
            "longline":  write one line of `size` bytes and no newline, then a newline and a
                         good event with id "after"; read answers
            "noread":    write `count` events and read no answer until the file `go` exists
  count     number of events (flood, noread)
  key       routing key of the events (flood, noread)
  every     flood: every `every`-th event uses `routed_key` instead (runs a job)
  routed_key
  size      longline: bytes in the long line
  go        noread: path whose existence starts the reading of answers
  status    path of a JSON file updated with {"written": N, "answered": N, "max_in_flight": N,
            "ids_missing": N, "done": bool}
"""
import json
import os
import sys
import threading
import time

cfg = json.load(open(os.environ["LOOPABULL_CONFIG_FILE"]))
out = sys.stdout.buffer
state = {"written": 0, "answered": 0, "max_in_flight": 0, "done": False, "results": {}}
lock = threading.Lock()


def save_status():
    if not cfg.get("status"):
        return
    # Both threads save: one at a time, or one's rename would take the other's file away.
    with lock:
        tmp = cfg["status"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.rename(tmp, cfg["status"])


def line(i):
    key = cfg.get("key", "flood.key")
    every = cfg.get("every")
    if every and i % every == 0:
        key = cfg["routed_key"]
    return b'{"routing_key":"%s","id":%d,"body":{"i":%d}}\n' % (key.encode(), i, i)


def write_events(count):
    batch = 256
    for start in range(0, count, batch):
        out.write(b"".join(line(i) for i in range(start, min(count, start + batch))))
        out.flush()
        with lock:
            state["written"] = min(count, start + batch)
            in_flight = state["written"] - state["answered"]
            state["max_in_flight"] = max(state["max_in_flight"], in_flight)
        if start % (batch * 64) == 0:
            save_status()
    save_status()


def read_answers(expected):
    seen = bytearray(expected if cfg["mode"] != "longline" else 0)
    for raw in sys.stdin.buffer:
        a = json.loads(raw)
        with lock:
            state["answered"] += 1
            state["results"][a["result"]] = state["results"].get(a["result"], 0) + 1
        if isinstance(a["id"], int) and 0 <= a["id"] < len(seen):
            seen[a["id"]] = 1
        elif isinstance(a["id"], str):
            with lock:
                state.setdefault("by_id", {})[a["id"]] = a
        if state["answered"] % 16384 == 0:
            save_status()
        if expected and state["answered"] >= expected:
            break
    with lock:
        state["ids_missing"] = seen.count(0)
        state["done"] = True
    save_status()


mode = cfg["mode"]
if mode == "flood":
    reader = threading.Thread(target=read_answers, args=(cfg["count"],))
    reader.start()
    write_events(cfg["count"])
    reader.join()
elif mode == "noread":
    writer = threading.Thread(target=write_events, args=(cfg["count"],), daemon=True)
    writer.start()
    while not os.path.exists(cfg["go"]):
        time.sleep(0.05)
    read_answers(cfg["count"])
elif mode == "longline":
    chunk = b"x" * (1 << 20)
    out.write(b'{"routing_key": "good.key", "id": "long", "body": {"pad": "')
    for _ in range(cfg["size"] >> 20):
        out.write(chunk)
        out.flush()
    out.write(b'"}}\n{"routing_key": "good.key", "id": "after"}\n')
    out.flush()
    read_answers(1)
# Stay until the supervisor closes our stdin.
sys.stdin.buffer.read()
