#!/usr/bin/env bash
# bench/wan.sh - bulk through a backup-sidecar pair whose mTLS link has a round trip of an
# off-site storage node: a delay relay (bench/py/delay_relay.py; this kernel has no netem)
# between the two sidecars holds every byte ONE_WAY_MS in each direction.
#
#   iperf3 -c -> client sidecar -> delay relay -> server sidecar -> iperf3 -s
#
# Usage: bench/wan.sh [ONE_WAY_MS]   (default 10: a 20 ms round trip)
# Environment: SIDECAR_BIN (default: release build), BASE_BIN (a second build, measured
#              alternately with the first, for a before/after), ROUNDS (default 3), DUR
#              (seconds per iperf3 run, default 8), STREAMS (default "1 4").
# Only flow control above TCP sees the delay: TCP between the hops stays on loopback, so
# `--mux off` (TLS straight over TCP) is not limited by it and is shown as the reference.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
cd "$ROOT"
bench_help "$@"
ONE_WAY_MS=${1:-10}
[[ $ONE_WAY_MS =~ ^[0-9]+$ ]] || { echo "ONE_WAY_MS must be a whole number, not: $ONE_WAY_MS" >&2; bench_usage >&2; exit 2; }
ROUNDS=${ROUNDS:-3}; DUR=${DUR:-8}; STREAMS=${STREAMS:-1 4}
command -v iperf3 >/dev/null || scripts/install-deps.sh iperf3
if [ -z "${SIDECAR_BIN:-}" ]; then
  build_release /tmp/wan-build.log
  SIDECAR_BIN="$BIN_DIR/backup-sidecar"
fi

new_workdir wan
mkdir -p bench/results
result="bench/results/wan-$(date -u +%Y%m%dT%H%M%SZ).txt"
make_certs

measure() { # LABEL BIN MUX: one pair, each STREAMS count once; prints "RESULT LABEL P=n MB/s"
  local label=$1 public relay local_port backend d="$WORK/$1-$RANDOM" n out
  SIDECAR_BIN=$2
  alloc_port public; alloc_port relay; alloc_port local_port; alloc_port backend
  mkdir -p "$d"
  start_sidecar_server "$d" "$public" "$backend" --audit-log /dev/null --mux "$3"
  start_bg "$d/relay.log" python3 "$BENCH_DIR/py/delay_relay.py" "$relay" "$public" "$ONE_WAY_MS"
  local relay_pid=$LAST_PID
  start_sidecar_client "$d" "$local_port" "$relay" --mux "$3"
  wait_port "$public"; wait_port "$relay"; wait_port "$local_port"
  # Started only now: the probes above open tunnels, which an iperf3 server would take for a
  # test that never begins.
  start_bg "$d/iperf3.log" iperf3 -s -B 127.0.0.1 -p "$backend"
  local iperf_pid=$LAST_PID
  # Not a port probe: iperf3 takes any connection for a test's control connection.
  for _ in $(seq 200); do grep -q "Server listening" "$d/iperf3.log" && break; sleep 0.1; done
  for n in $STREAMS; do
    out="$d/iperf3-P$n.json"
    timeout $((DUR + 60)) iperf3 -c 127.0.0.1 -p "$local_port" -t "$DUR" -P "$n" -J >"$out" 2>"$out.stderr" || true
    echo "RESULT $label P=$n $(bench_py iperf3_result "$out") MB/s" | tee -a "$WORK/results"
  done
  stop_pair
  stop_pid "$relay_pid"
  stop_pid "$iperf_pid"
}

{
  bench_subshell
  echo "# bench/wan.sh $ONE_WAY_MS ms each way, $(date -u +%FT%TZ), $(nproc) cores; backup-sidecar $(git rev-parse --short HEAD) ($SIDECAR_BIN)${BASE_BIN:+, base $BASE_BIN}; $ROUNDS rounds of ${DUR}s"
  bin=$SIDECAR_BIN
  for _ in $(seq "$ROUNDS"); do
    measure mux "$bin" prefer
    if [ -n "${BASE_BIN:-}" ]; then measure base-mux "$BASE_BIN" prefer; fi
    measure raw "$bin" off
  done
  echo "# medians (MB/s):"
  for label in mux ${BASE_BIN:+base-mux} raw; do
    for n in $STREAMS; do
      printf '%s P=%s ' "$label" "$n"
      grep -h "^RESULT $label P=$n " "$WORK/results" | awk '$4 != "n/a" {print $4}' | sort -n \
        | awk '{v[NR]=$1} END {if (NR) print v[int((NR+1)/2)], "(" v[1] "-" v[NR] ")"; else print "n/a"}'
    done
  done
} 2>&1 | tee "$result"
echo "saved: $result"
