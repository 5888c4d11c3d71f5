#!/usr/bin/env bash
# bench/scale.sh - 10,000 concurrent idle mTLS connections through a proxy pair, backup-sidecar
# and HAProxy side by side with the same certificates: resident memory per connection of the
# two proxy processes, then every connection transfers 1 MiB and gets it back intact.
#
#   driver (N connections) -> client-side proxy =mTLS=> server-side proxy -> echo backend
#
# Usage: bench/scale.sh [N]   (default 10000). Needs root or a hard fd limit >= 4N.
# Environment: SIDECAR_BIN (default: release build), TRANSFER_CONCURRENCY (default 500),
#              ONLY=backup-sidecar|haproxy (measure one side only, for experiments),
#              SIDECAR_MUX=prefer|off (default prefer: the tunnels ride pooled mux connections;
#              off: one mTLS connection per tunnel, the comparison that costs handshakes).
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
cd "$ROOT"
bench_help "$@"
N=${1:-10000}
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "N must be a positive integer, not: $N" >&2; bench_usage >&2; exit 2; }
# Each proxy process holds two descriptors per connection (its two sides).
ulimit -n $((N * 2 + 1024)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt $((N * 2 + 1024)) ]; then
  capped=$(( ($(ulimit -n) - 1024) / 2 ))
  echo "fd limit $(ulimit -n) (raising it needs CAP_SYS_RESOURCE): N lowered from $N to $capped"
  N=$capped
fi
echo "fd limit: $(ulimit -n), N = $N"
command -v haproxy >/dev/null || scripts/install-deps.sh haproxy
if [ -z "${SIDECAR_BIN:-}" ]; then
  build_release /tmp/scale-build.log
  SIDECAR_BIN="$BIN_DIR/backup-sidecar"
else
  BIN_DIR=$(dirname "$SIDECAR_BIN")
fi

new_workdir scale
mkdir -p bench/results
result="bench/results/scale-$(date -u +%Y%m%dT%H%M%SZ).txt"

make_certs
echo_port=""; alloc_port echo_port
start_bg "$WORK/echo.log" "$BIN_DIR/mesh-load" echo "$echo_port"
wait_port "$echo_port"

start_pair() { # sidecar|haproxy DIR PUBLIC LOCAL: both sides at once, in front of the echo backend
  local d=$2 public=$3 local_port=$4
  mkdir -p "$d"
  if [ "$1" = sidecar ]; then
    local args=(--audit-log /dev/null --max-connections $((N + 100)) --mux "${SIDECAR_MUX:-prefer}")
    start_sidecar_server "$d" "$public" "$echo_port" "${args[@]}"
    start_sidecar_client "$d" "$local_port" "$public" "${args[@]}"
  else
    write_haproxy_pair "$d" "$public" "$local_port" "$echo_port" $((N + 100)) 10m $((N + 100))
    start_bg "$d/server.log" haproxy -db -f "$d/server.cfg"; SERVER_PID=$LAST_PID
    start_bg "$d/client.log" haproxy -db -f "$d/client.cfg"; CLIENT_PID=$LAST_PID
  fi
}

measure() { # NAME sidecar|haproxy
  local name=$1 public local_port
  alloc_port public; alloc_port local_port
  start_pair "$2" "$WORK/$name" "$public" "$local_port"
  wait_port "$public"; wait_port "$local_port"
  sleep 1
  local before_server before_client
  before_server=$(proc_kib "$SERVER_PID" VmRSS); before_client=$(proc_kib "$CLIENT_PID" VmRSS)
  bench_py scale_driver "$local_port" "$N" "${TRANSFER_CONCURRENCY:-500}" "$SERVER_PID" "$CLIENT_PID" "$before_server" "$before_client" "$name"
  stop_pair
}

{
  bench_subshell   # a failing measure must not leave its proxy pair running
  echo "# bench/scale.sh $N, $(date -u +%FT%TZ), $(nproc) cores; backup-sidecar $(git rev-parse --short HEAD) --mux ${SIDECAR_MUX:-prefer}, $(haproxy -v 2>&1 | head -1)"
  [ "${ONLY:-haproxy}" = haproxy ] && [ -n "${ONLY:-}" ] || measure backup-sidecar sidecar
  [ "${ONLY:-backup-sidecar}" = backup-sidecar ] && [ -n "${ONLY:-}" ] || measure haproxy haproxy
} 2>&1 | tee "$result"
grep -q "RESULT backup-sidecar .*intact=$N opened=$N" "$result"
