#!/usr/bin/env bash
# bench/rotation.sh - issue 5's long proof: certificates renewed every few seconds and the CA
# rotated once while bulk streams and a steady stream of new connections run through a
# backup-agent sidecar and a storage sidecar, both configured only by the dev agent.
#
#   mesh-load run -> backup-agent sidecar (upstream) =mTLS=> storage sidecar -> mesh-load echo
#
# Reports failed connections, bytes lost and throughput before/after the CA rotation; exits 0
# only when nothing failed. Everything on 127.0.0.1; every process is stopped on exit.
#
# Usage: bench/rotation.sh            (8 streams x 2 GiB, repeated for 10 minutes)
# Environment: STREAMS (8), BYTES (2147483648), DURATION (600 s), ROTATE_AT (DURATION/2),
#              LEAF_TTL (5s: renewal every 3-4.5 s), BIN_DIR (default: release build),
#              AGENT_OUTAGE_AT / AGENT_OUTAGE_FOR (seconds; the dev agent is frozen with SIGSTOP
#              for that long: unreachable, state kept, as a real agent restarting from disk).
#              For the outage run give the leaf a TTL longer than the outage, e.g.
#              LEAF_TTL=10m AGENT_OUTAGE_AT=60 AGENT_OUTAGE_FOR=60 ROTATE_AT=999999 DURATION=180
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
cd "$ROOT"
bench_help "$@"
[ $# -eq 0 ] || { echo "unexpected argument: $1 (settings are environment variables)" >&2; bench_usage >&2; exit 2; }

STREAMS=${STREAMS:-8}
BYTES=${BYTES:-2147483648}
DURATION=${DURATION:-600}
ROTATE_AT=${ROTATE_AT:-$((DURATION / 2))}
LEAF_TTL=${LEAF_TTL:-5s}
if [ -z "${BIN_DIR:-}" ]; then
  echo "== building (release)"
  build_release /tmp/rotation-build.log
fi

new_workdir rotation
mkdir -p bench/results
result="bench/results/rotation-$(date -u +%Y%m%dT%H%M%SZ).txt"
agent="" echo_port="" public="" upstream="" admin_storage="" admin_agent="" agent_app="" agent_public=""
for port in agent echo_port public upstream admin_storage admin_agent agent_app agent_public; do alloc_port "$port"; done

mkdir -p "$WORK/consul"
cat > "$WORK/consul/services.json" <<JSON
{"services": [
  {"name": "storage", "port": $echo_port, "connect": {"sidecar_service": {"port": $public}}},
  {"name": "backup-agent", "port": $agent_app, "connect": {"sidecar_service": {"port": $agent_public,
    "proxy": {"upstreams": [{"destination_name": "storage", "local_bind_port": $upstream}]}}}}
]}
JSON
cat > "$WORK/consul/intentions.json" <<JSON
{"Kind": "service-intentions", "Name": "storage", "Sources": [{"Name": "backup-agent", "Action": "allow"}]}
JSON

start_bg "$WORK/dev-agent.log" "$BIN_DIR/backup-sidecar" dev-agent -http-addr "127.0.0.1:$agent" \
  -config-dir "$WORK/consul" -leaf-ttl "$LEAF_TTL"
agent_process=$LAST_PID
start_bg "$WORK/echo.log" "$BIN_DIR/mesh-load" echo "$echo_port"
wait_port "$echo_port"
start_bg "$WORK/storage.log" "$BIN_DIR/backup-sidecar" run -sidecar-for storage -http-addr "127.0.0.1:$agent" \
  --admin-bind "127.0.0.1:$admin_storage" --audit-log "$WORK/storage-audit.jsonl"
storage_pid=$LAST_PID
start_bg "$WORK/agent.log" "$BIN_DIR/backup-sidecar" run -sidecar-for backup-agent -http-addr "127.0.0.1:$agent" \
  --admin-bind "127.0.0.1:$admin_agent" --audit-log "$WORK/agent-audit.jsonl"
agent_pid=$LAST_PID
wait_ready "$admin_storage" "$admin_agent"

if [ -n "${AGENT_OUTAGE_AT:-}" ]; then
  (sleep "$AGENT_OUTAGE_AT"; kill -STOP "$agent_process"; echo "dev agent frozen at ${AGENT_OUTAGE_AT}s"
   sleep "${AGENT_OUTAGE_FOR:-60}"; kill -CONT "$agent_process"; echo "dev agent back after ${AGENT_OUTAGE_FOR:-60}s") & pids+=($!)
fi
# Soak check every 10 s: both sidecars' resident memory and the allocator's bytes in use by
# live objects (flat in-use memory = no leak under churn; RSS also holds glibc's free cache).
# shellcheck disable=SC2317 # (soak_samples calls it)
heap_kib() { curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null | awk '/^backup_sidecar_heap_in_use_bytes/ {printf "%d", $2 / 1024}' || echo 0; }
# shellcheck disable=SC2317 # (start_bg runs it)
soak_samples() { # one line per 10 s: EPOCH RSS_STORAGE RSS_AGENT HEAP_STORAGE HEAP_AGENT (KiB)
  while sleep 10; do
    echo "$(date +%s) $(proc_kib "$storage_pid" VmRSS || echo 0) $(proc_kib "$agent_pid" VmRSS || echo 0) $(heap_kib "$admin_storage") $(heap_kib "$admin_agent")"
  done
}
start_bg "$WORK/rss.log" soak_samples

{
  echo "# bench/rotation.sh, $(date -u +%FT%TZ): $STREAMS streams x $BYTES bytes repeated for ${DURATION}s,"
  echo "# leaf TTL $LEAF_TTL, CA rotation at ${ROTATE_AT}s; $(nproc) cores"
  "$BIN_DIR/mesh-load" run "$upstream" --streams "$STREAMS" --bytes "$BYTES" --duration "$DURATION" \
    --rotate-at "$ROTATE_AT" --rotate-url "http://127.0.0.1:$agent/v1/connect/ca/configuration" && status=0 || status=$?
  serials=$(bench_py leaf_serials "$WORK/agent-audit.jsonl") || serials="n/a"
  echo "storage leaf serials seen by new connections, in order of change: $serials"
  echo "certificate rotations applied: storage $(grep -c 'certificates rotated' "$WORK/storage.log" || true), backup-agent $(grep -c 'certificates rotated' "$WORK/agent.log" || true)"
  bench_py soak_summary "$WORK/rss.log"
  echo "result: $([ "$status" = 0 ] && echo PASS || echo FAIL)"
  exit "$status"
} 2>&1 | tee "$result"
exit "${PIPESTATUS[0]}"
