#!/usr/bin/env python3
"""Count the storage leaf serials new connections saw (bench/rotation.sh).

Usage: leaf_serials.py AGENT_AUDIT_JSONL
       leaf_serials.py --selftest

Reads the backup-agent sidecar's audit log and prints how many times the serial named in
the reason of consecutive "upstream_connected" events changed (the first serial counts as one).
The sidecar may still be writing the log: a last line without its newline is skipped, and so
is any line that is not a JSON object. An unreadable log prints a message on stderr, exit 1.
"""
import json, sys


def serial_changes(lines):
    seen = []
    for line in lines:
        if not line.endswith("\n"):
            continue  # the line being written: incomplete
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict) or event.get("event") != "upstream_connected":
            continue
        reason = event.get("reason")
        if not isinstance(reason, str) or "serial " not in reason:
            continue
        serial = reason.split("serial ")[-1].split(" ")[0]
        if not seen or seen[-1] != serial:
            seen.append(serial)
    return len(seen)


def selftest():
    line = '{"event":"upstream_connected","reason":"127.0.0.1:1 serial %s TLSv1.3"}\n'
    lines = [line % "0a", line % "0a", '{"event":"connection_closed"}\n', "not json\n", "[1]\n",
             '{"event":"upstream_connected","reason":null}\n', line % "0b", line % "0a",
             '{"event":"upstream_connected","reason":"127.0.0.1:1 serial 0c TL']  # mid-line
    assert serial_changes(lines) == 3, serial_changes(lines)
    assert serial_changes(lines[:-1] + [(line % "0c").rstrip("\n")]) == 3  # no newline yet
    assert serial_changes([]) == 0
    print("leaf_serials.py selftest: ok")


if __name__ == "__main__":
    if sys.argv[1:] == ["--selftest"]:
        selftest()
        sys.exit(0)
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().split("\n\n")[1])
    try:
        # errors="replace": a multi-byte character cut at the end of the file does not raise.
        with open(sys.argv[1], encoding="utf-8", errors="replace") as log:
            print(serial_changes(log))
    except OSError as error:
        sys.exit(f"leaf_serials.py: cannot read the audit log: {error}")
