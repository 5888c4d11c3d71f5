#!/usr/bin/env python3
"""Render bench/run.sh's results as the markdown table of bench/results/latest.md.

Usage: render_table.py RESULTS_TSV "IMPL IMPL..." RUN_BASELINE

RESULTS_TSV holds one "impl<TAB>metric<TAB>value" line per measurement (run.sh's record);
metric "note" lines become the notes printed after the table. The second argument names
the implementations that ran (the others show "not run"), the third is 1 when the no-proxy
reference column ran. RSS values arrive in KiB and are shown in MiB; the ratio columns are
ours (mux) / best of stunnel and HAProxy, and mux / raw.
"""
import sys
from bench_results import num, read
res, notes = read(sys.argv[1])
ran = set(sys.argv[2].split())
baseline = sys.argv[3] == "1"
impls = ["backup-sidecar", "backup-sidecar-raw", "stunnel", "haproxy"]

# memory figures arrive in KiB and are shown in MiB
for impl in impls:
    r = res[impl]
    for k in ("rss_client", "rss_server", "rss_total", "idle_rss", "idle_anon"):
        if num(r.get(k)) is not None:
            r[k] = f"{num(r[k]) / 1024:.1f}"

rows = [
    ("status", "Status", None),
    ("iperf_p1", "iperf3 throughput, 1 stream (MB/s, higher is better)", "hi"),
    ("iperf_p4", "iperf3 throughput, 4 streams (MB/s, higher is better)", "hi"),
    ("conn_rate", "New connections/s, an mTLS handshake each, resumed where the proxy can (wrk -c16, Connection: close; higher is better)", "hi"),
    ("tcp_pair_conn_rate", "New connections/s through HAProxy as two plain-TCP hops, no TLS: the ceiling for any proxy pair here (reference column only)", None),
    ("ka_rps", "Keep-alive requests/s (wrk -c16; higher is better)", "hi"),
    ("lat_p99", "p99 latency, 1 keep-alive connection (ms, lower is better)", "lo"),
    ("cpu_per_gib", "CPU-seconds per GiB through the pair, both proxies, iperf3 runs (lower is better)", "lo"),
    ("idle_rss", "Idle RSS, one proxy: the larger side after start and one request (MiB, lower is better)", "lo"),
    ("idle_anon", "Idle private memory (RssAnon), one proxy, the larger side: RSS without the shared code and libraries (MiB, lower is better)", "lo"),
    ("rss_client", "Peak RSS client-side proxy (MiB, lower is better)", "lo"),
    ("rss_server", "Peak RSS server-side proxy (MiB, lower is better)", "lo"),
    ("rss_total", "Peak RSS both proxies (MiB, lower is better)", "lo"),
    ("errors", "wrk errors: non-2xx + socket errors, all wrk runs (lower is better)", None),
    ("mtls", "Server side rejects client with no cert / foreign-CA cert", None),
    ("steal", "Host steal time while the column was measured (s, all CPUs; more than a few: the host took the CPU, distrust the column)", None),
]

def cell(impl, key):
    if key == "tcp_pair_conn_rate":
        return "—"
    if impl not in ran and impl != "baseline":
        return "not run"
    st = res[impl].get("status", "")
    v = res[impl].get(key)
    if key == "status":
        return st or "n/a"
    if st.startswith("n/a"):
        return "n/a"
    return v if v not in (None, "") else "n/a"

cols = ["Metric", "backup-sidecar (mux)", "backup-sidecar --mux off", "stunnel", "haproxy", "ratio ours (mux)/best-of-others", "mux/raw"]
if baseline:
    cols.append("no proxy (reference)")
out = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|"]
for key, label, better in rows:
    vals = [cell(i, key) for i in impls]
    ratio = mux_raw = "—"
    if better:
        ours = num(vals[0])
        others = [num(v) for v in vals[2:] if num(v) is not None]
        if ours is not None and others:
            best = max(others) if better == "hi" else min(others)
            ratio = f"{ours / best:.2f}" if best > 0 else "n/a"
        else:
            ratio = "n/a"
        raw = num(vals[1])
        mux_raw = f"{ours / raw:.2f}" if ours is not None and raw else "n/a"
    line = [label] + vals + [ratio, mux_raw]
    if baseline:
        b = res["baseline"].get(key)
        if key.startswith("rss") or key in ("mtls", "idle_rss", "idle_anon", "cpu_per_gib"):
            b = "—"
        line.append(b if b else "n/a")
    out.append("| " + " | ".join(s.replace("|", "/") for s in line) + " |")
print("\n".join(out))
if notes:
    print("\nNotes:\n")
    print("\n".join(notes))
