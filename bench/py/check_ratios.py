#!/usr/bin/env python3
"""The benchmark-only regression check of bench/run.sh --check.

Usage: check_ratios.py RESULTS_TSV FLOORS_TSV

Compares our columns with HAProxy's in the same run (the only comparison that survives a
different or busier host) against the bounds in FLOORS_TSV, and also requires no wrk errors
and the mTLS rejections. Exit status: 0 within bounds, 1 a regression, 3 inconclusive (HAProxy
or one of our columns did not run, or the host stole more than STEAL_LIMIT seconds of CPU
from a column: its figures say nothing about the code).
"""
import sys
from collections import defaultdict

STEAL_LIMIT = 5.0
res = defaultdict(dict)
for line in open(sys.argv[1]):
    parts = line.rstrip("\n").split("\t")
    if len(parts) == 3:
        res[parts[0]][parts[1]] = parts[2]


def num(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


for impl, figures in res.items():  # as render_table derives it: both sides' peak RSS
    client, server = num(figures.get("rss_client")), num(figures.get("rss_server"))
    if client is not None and server is not None:
        figures["rss_total"] = str(client + server)


floors = []
for line in open(sys.argv[2]):
    if line.strip() and not line.startswith("#"):
        impl, metric, op, bound = line.split("\t")[:4]
        floors.append((impl, metric, op, float(bound)))

inconclusive, failures, passes = [], [], []
for impl in sorted({f[0] for f in floors} | {"haproxy"}):
    if res[impl].get("status") != "ok":
        inconclusive.append(f"{impl} did not run (status: {res[impl].get('status', 'not run')})")
    steal = num(res[impl].get("steal"))
    if steal is not None and steal > STEAL_LIMIT:
        inconclusive.append(f"the host stole {steal:.1f} s of CPU while {impl} was measured")
if not inconclusive:
    for impl, metric, op, bound in floors:
        ours, theirs = num(res[impl].get(metric)), num(res["haproxy"].get(metric))
        if ours is None or not theirs:
            inconclusive.append(f"{impl} {metric}: no figure to compare ({ours} / {theirs})")
            continue
        ratio = ours / theirs
        ok = ratio >= bound if op == ">=" else ratio <= bound
        (passes if ok else failures).append(f"{impl} {metric}: {ratio:.2f} of HAProxy (bound {op} {bound:.2f})")
    for impl in sorted({f[0] for f in floors}):
        if res[impl].get("errors") not in ("0", None):
            failures.append(f"{impl}: {res[impl].get('errors')} wrk errors")
        if res[impl].get("mtls") != "yes / yes":
            failures.append(f"{impl}: mTLS rejections {res[impl].get('mtls')}, not yes / yes")

for line in passes:
    print(f"  ok          {line}")
for line in failures:
    print(f"  REGRESSION  {line}")
for line in inconclusive:
    print(f"  INCONCLUSIVE {line}")
if inconclusive:
    print("check: inconclusive; run again on a quieter host")
    sys.exit(3)
if failures:
    print(f"check: {len(failures)} regression(s) against HAProxy")
    sys.exit(1)
print(f"check: all {len(passes)} ratios within bench/ratio-floors.tsv")
