#!/usr/bin/env python3
"""The benchmark-only regression check of bench/run.sh --check.

Usage: check_ratios.py RESULTS_TSV FLOORS_TSV

Compares our columns with HAProxy's in the same run (the only comparison that survives a
different or busier host) against the bounds in FLOORS_TSV, and also requires no wrk errors
and the mTLS rejections. Exit status:
  0  every ratio within its bound
  1  a regression (a figure of ours missing where HAProxy has one counts as one)
  2  the check itself could not run (unreadable or malformed input)
  3  inconclusive: HAProxy or one of our columns did not run, or the host stole more than
     STEAL_LIMIT seconds of CPU from a column (its figures say nothing about the code)
"""
import sys

from bench_results import num, read

STEAL_LIMIT = 5.0


def broken(message):
    print(f"check: cannot run: {message}")
    sys.exit(2)


try:
    res, _ = read(sys.argv[1])
except OSError as error:
    broken(error)

floors = []
try:
    for number, line in enumerate(open(sys.argv[2]), 1):
        if line.strip() and not line.startswith("#"):
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 4 or fields[2] not in (">=", "<="):
                broken(f"{sys.argv[2]}:{number}: want IMPL<TAB>METRIC<TAB>>= or <=<TAB>BOUND")
            floors.append((fields[0], fields[1], fields[2], float(fields[3])))
except (OSError, ValueError) as error:
    broken(error)
if not floors:
    broken(f"no bounds in {sys.argv[2]}")

inconclusive, failures, passes = [], [], []
ours_impls = sorted({floor[0] for floor in floors})
for impl in ours_impls + ["haproxy"]:
    if res[impl].get("status") != "ok":
        inconclusive.append(f"{impl} did not run (status: {res[impl].get('status', 'not run')})")
    steal = num(res[impl].get("steal"))
    if steal is not None and steal > STEAL_LIMIT:
        inconclusive.append(f"the host stole {steal:.1f} s of CPU while {impl} was measured")
if not inconclusive:
    for impl, metric, op, bound in floors:
        ours, theirs = num(res[impl].get(metric)), num(res["haproxy"].get(metric))
        if not theirs:
            inconclusive.append(f"{impl} {metric}: HAProxy has no figure to compare with")
            continue
        if ours is None:  # e.g. our iperf3 phase failed while HAProxy's ran
            failures.append(f"{impl} {metric}: no figure of ours (HAProxy: {theirs:g})")
            continue
        ratio = ours / theirs
        ok = ratio >= bound if op == ">=" else ratio <= bound
        (passes if ok else failures).append(f"{impl} {metric}: {ratio:.2f} of HAProxy (bound {op} {bound:.2f})")
    for impl in ours_impls:
        if res[impl].get("errors") != "0":
            failures.append(f"{impl}: wrk errors {res[impl].get('errors', 'not recorded')}")
        if res[impl].get("mtls") != "yes / yes":
            failures.append(f"{impl}: mTLS rejections {res[impl].get('mtls', 'not recorded')}, not yes / yes")

for line in passes:
    print(f"  ok           {line}")
for line in failures:
    print(f"  REGRESSION   {line}")
for line in inconclusive:
    print(f"  INCONCLUSIVE {line}")
if inconclusive:
    print("check: inconclusive; run again on a quieter host")
    sys.exit(3)
if failures:
    print(f"check: {len(failures)} regression(s) against HAProxy")
    sys.exit(1)
print(f"check: all {len(passes)} ratios within bench/ratio-floors.tsv")
