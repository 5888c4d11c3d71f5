#!/usr/bin/env python3
"""Summarise bench/rotation.sh's soak samples: RSS and heap in use of both sidecars.

Usage: soak_summary.py RSS_LOG

RSS_LOG has one line per 10 s sample: "EPOCH RSS_STORAGE RSS_AGENT HEAP_STORAGE HEAP_AGENT"
(all KiB); lines with another field count are skipped. With at least 3 samples, prints per
sidecar and per measure (MiB): the first value, the value after a third of the run, the
last, the max, and min/max after the first third. Prints nothing with fewer samples.
"""
import sys
rows = [list(map(int, l.split())) for l in open(sys.argv[1]) if len(l.split()) == 5]
if len(rows) >= 3:
    third = max(1, len(rows) // 3)
    for what, offset in (("RSS", 1), ("heap in use", 3)):
        for name, column in (("storage", offset), ("backup-agent", offset + 1)):
            values = [r[column] / 1024 for r in rows]
            # Growth over the last two thirds (after warm-up): a leak keeps climbing there.
            later = values[third:]
            print(f"{what} {name} sidecar (MiB): first {values[0]:.1f}, after 1/3 {values[third]:.1f}, "
                  f"last {values[-1]:.1f}, max {max(values):.1f}, min/max after 1/3 {min(later):.1f}/{max(later):.1f}")
