#!/usr/bin/env python3
"""Count the storage leaf serials new connections saw (bench/rotation.sh).

Usage: leaf_serials.py AGENT_AUDIT_JSONL

Reads the backup-agent sidecar's audit log and prints how many times the serial named in
the reason of consecutive "upstream_connected" events changed (the first serial counts as one).
"""
import json, sys
seen = []
for line in open(sys.argv[1]):
    event = json.loads(line)
    if event.get("event") == "upstream_connected":
        serial = event.get("reason", "").split("serial ")[-1].split(" ")[0]
        if not seen or seen[-1] != serial:
            seen.append(serial)
print(len(seen))
