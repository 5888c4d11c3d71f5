#!/usr/bin/env python3
"""Read one `iperf3 -J` output file (bench/run.sh's run_iperf).

Usage: iperf3_result.py FILE          -> received MB/s (end.sum_received.bits_per_second
                                         / 8 / 10^6, one decimal), or "n/a"
       iperf3_result.py --bytes FILE  -> bytes received (end.sum_received.bytes), or "n/a"
       iperf3_result.py --error FILE  -> iperf3's "error" field, "no result" when there is
                                         none, or "no JSON output" when FILE is not JSON
"""
import json
import sys


def throughput(path):
    try:
        d = json.load(open(path))
        if d.get("error"):
            raise ValueError(d["error"])
        bps = d["end"]["sum_received"]["bits_per_second"]
        print(f"{bps / 8e6:.1f}" if bps > 0 else "n/a")
    except Exception as e:
        print("n/a")


def received_bytes(path):
    try:
        n = int(json.load(open(path))["end"]["sum_received"]["bytes"])
        print(n if n > 0 else "n/a")
    except Exception:
        print("n/a")


def error(path):
    try: print(json.load(open(path)).get("error","no result"))
    except Exception: print("no JSON output")


if sys.argv[1] == "--error":
    error(sys.argv[2])
elif sys.argv[1] == "--bytes":
    received_bytes(sys.argv[2])
else:
    throughput(sys.argv[1])
