#!/usr/bin/env python3
"""Parse one saved wrk output (bench/run.sh's run_wrk).

Usage: wrk_result.py FILE

Prints one line "RPS P99 ERRORS":
  RPS     the "Requests/sec:" value as wrk printed it; n/a when missing or when wrk
          completed 0 requests
  P99     the "99%" line of --latency converted to milliseconds (3 decimals), else n/a
  ERRORS  "Non-2xx or 3xx responses" plus all "Socket errors" counters; n/a when the
          "N requests in" line is missing (wrk produced no summary)
"""
import re, sys
txt = open(sys.argv[1]).read()
m = re.search(r"^Requests/sec:\s*([0-9.]+)", txt, re.M)
rps = m.group(1) if m else "n/a"
n_req = re.search(r"^\s*(\d+) requests in", txt, re.M)
errs = 0
m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", txt)
if m: errs += int(m.group(1))
m = re.search(r"Socket errors:\s*connect (\d+), read (\d+), write (\d+), timeout (\d+)", txt)
if m: errs += sum(int(x) for x in m.groups())
if not n_req:
    errs = "n/a"
p99 = "n/a"
m = re.search(r"^\s*99%\s+([0-9.]+)(us|ms|s|m|h)\s*$", txt, re.M)
if m:
    f = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}[m.group(2)]
    p99 = f"{float(m.group(1)) * f:.3f}"
if rps != "n/a" and n_req and int(n_req.group(1)) == 0:
    rps = "n/a"
print(rps, p99, errs)
