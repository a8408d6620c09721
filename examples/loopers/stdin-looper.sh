#!/bin/sh
# SPDX-License-Identifier: GPL-3.0-or-later
# Example looper in POSIX sh: turns lines `ROUTING_KEY JSON_BODY` from a FIFO or file into
# events, to show that a looper needs nothing but printf and read. Config: {"input": PATH}.
#
# Try it (see examples/configs/stdin-shell.yml):
#     mkfifo /tmp/loopabull-stdin-sh.fifo
#     echo 'org.example.hello {"who": "sh"}' > /tmp/loopabull-stdin-sh.fifo
set -u

log() { printf '%s\n' "$*" >&2; } # stderr ends up in loopabull's log, tagged with our name

# The config is one JSON object. A sed expression is enough for one flat string key and keeps
# the example free of dependencies; a real looper should use a JSON parser.
input=$(sed -n 's/.*"input"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' \
    "${LOOPABULL_CONFIG_FILE:-/dev/null}")
[ -n "$input" ] || { log 'no input file configured (config: {"input": PATH})'; exit 1; }

# sh cannot wait on two inputs at once, so answers are read by a background subshell. Such a
# subshell gets /dev/null as stdin unless redirected explicitly, hence the copy on fd 4.
# When stdin closes, loopabull is stopping: the reader tells the main shell to stop too.
main=$$
exec 4<&0
(
    while IFS= read -r answer; do log "answer: $answer"; done
    kill -TERM "$main" 2>/dev/null
) <&4 &
reader=$!
exec 4<&-
trap 'exit 0' TERM INT
trap 'kill "$reader" 2>/dev/null' EXIT

id=0
emit() {
    while read -r key body; do
        case $key in
        '') continue ;;
        *[!A-Za-z0-9_.-]*) log "skipping line with a bad routing key: $key"; continue ;;
        esac
        id=$((id + 1))
        # The body is passed on unchecked: loopabull rejects a line that is not valid JSON.
        printf '{"routing_key": "%s", "body": %s, "id": "sh-%d"}\n' "$key" "${body:-"{}"}" "$id"
    done
}

# Opened read-write, a FIFO never reaches EOF when a writer leaves, so one open serves any
# number of writers, and the open does not wait for the first one.
if [ -p "$input" ]; then exec 5<>"$input"; else exec 5<"$input"; fi || exit 1
emit <&5
wait # a plain file is done; keep logging answers until stdin closes
