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
cd "$(dirname "${BASH_SOURCE[0]}")/.."

STREAMS=${STREAMS:-8}
BYTES=${BYTES:-2147483648}
DURATION=${DURATION:-600}
ROTATE_AT=${ROTATE_AT:-$((DURATION / 2))}
LEAF_TTL=${LEAF_TTL:-5s}
if [ -z "${BIN_DIR:-}" ]; then
  echo "== building (release)"
  swift build -c release --scratch-path .build-release >/tmp/rotation-build.log 2>&1 || { cat /tmp/rotation-build.log; exit 1; }
  BIN_DIR=$(swift build -c release --scratch-path .build-release --show-bin-path)
fi

work=$(mktemp -d /tmp/backup-sidecar-rotation.XXXXXX)
mkdir -p bench/results
result="bench/results/rotation-$(date -u +%Y%m%dT%H%M%SZ).txt"
. scripts/lib.sh
agent=$(free_port); echo_port=$(free_port); public=$(free_port); upstream=$(free_port)
admin_storage=$(free_port); admin_agent=$(free_port)

mkdir -p "$work/consul"
cat > "$work/consul/services.json" <<JSON
{"services": [
  {"name": "storage", "port": $echo_port, "connect": {"sidecar_service": {"port": $public}}},
  {"name": "backup-agent", "port": $(free_port), "connect": {"sidecar_service": {"port": $(free_port),
    "proxy": {"upstreams": [{"destination_name": "storage", "local_bind_port": $upstream}]}}}}
]}
JSON
cat > "$work/consul/intentions.json" <<JSON
{"Kind": "service-intentions", "Name": "storage", "Sources": [{"Name": "backup-agent", "Action": "allow"}]}
JSON

"$BIN_DIR/backup-sidecar" dev-agent -http-addr "127.0.0.1:$agent" -config-dir "$work/consul" -leaf-ttl "$LEAF_TTL" \
  2>"$work/dev-agent.log" & pids+=($!)
"$BIN_DIR/mesh-load" echo "$echo_port" >"$work/echo.log" 2>&1 & pids+=($!)
wait_port "$echo_port"
"$BIN_DIR/backup-sidecar" run -sidecar-for storage -http-addr "127.0.0.1:$agent" --admin-bind "127.0.0.1:$admin_storage" \
  --audit-log "$work/storage-audit.jsonl" 2>"$work/storage.log" & pids+=($!)
"$BIN_DIR/backup-sidecar" run -sidecar-for backup-agent -http-addr "127.0.0.1:$agent" --admin-bind "127.0.0.1:$admin_agent" \
  --audit-log "$work/agent-audit.jsonl" 2>"$work/agent.log" & pids+=($!)
wait_ready "$admin_storage" "$admin_agent"

agent_process=${pids[0]}; storage_pid=${pids[2]}; agent_pid=${pids[3]}
if [ -n "${AGENT_OUTAGE_AT:-}" ]; then
  (sleep "$AGENT_OUTAGE_AT"; kill -STOP "$agent_process"; echo "dev agent frozen at ${AGENT_OUTAGE_AT}s"
   sleep "${AGENT_OUTAGE_FOR:-60}"; kill -CONT "$agent_process"; echo "dev agent back after ${AGENT_OUTAGE_FOR:-60}s") & pids+=($!)
fi
# Soak check every 10 s: both sidecars' resident memory and the allocator's bytes in use by
# live objects (flat in-use memory = no leak under churn; RSS also holds glibc's free cache).
heap_kib() { curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null | awk '/^backup_sidecar_heap_in_use_bytes/ {printf "%d", $2 / 1024}' || echo 0; }
(while sleep 10; do
   echo "$(date +%s) $(awk '/VmRSS/ {print $2}' /proc/$storage_pid/status 2>/dev/null || echo 0) $(awk '/VmRSS/ {print $2}' /proc/$agent_pid/status 2>/dev/null || echo 0) $(heap_kib "$admin_storage") $(heap_kib "$admin_agent")"
 done) >"$work/rss.log" & pids+=($!)

{
  echo "# bench/rotation.sh, $(date -u +%FT%TZ): $STREAMS streams x $BYTES bytes repeated for ${DURATION}s,"
  echo "# leaf TTL $LEAF_TTL, CA rotation at ${ROTATE_AT}s; $(nproc) cores"
  "$BIN_DIR/mesh-load" run "$upstream" --streams "$STREAMS" --bytes "$BYTES" --duration "$DURATION" \
    --rotate-at "$ROTATE_AT" --rotate-url "http://127.0.0.1:$agent/v1/connect/ca/configuration" && status=0 || status=$?
  serials=$(python3 - "$work/agent-audit.jsonl" <<'PY'
import json, sys
seen = []
for line in open(sys.argv[1]):
    event = json.loads(line)
    if event.get("event") == "upstream_connected":
        serial = event.get("reason", "").split("serial ")[-1].split(" ")[0]
        if not seen or seen[-1] != serial:
            seen.append(serial)
print(len(seen))
PY
)
  echo "storage leaf serials seen by new connections, in order of change: $serials"
  echo "certificate rotations applied: storage $(grep -c 'certificates rotated' "$work/storage.log" || true), backup-agent $(grep -c 'certificates rotated' "$work/agent.log" || true)"
  python3 - "$work/rss.log" <<'PY'
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
PY
  echo "result: $([ "$status" = 0 ] && echo PASS || echo FAIL)"
  exit "$status"
} 2>&1 | tee "$result"
exit "${PIPESTATUS[0]}"
