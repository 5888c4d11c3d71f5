#!/usr/bin/env bash
# bench/hostile.sh - how much a sidecar holds while a hostile party sends one-byte pieces toward
# a stalled one: the two cases the test suite cannot pace (each piece has to land in a read of
# its own), measured as the RSS growth of the sidecar in between.
#
#   raw:    a mesh peer (Python's ssl, no mux) sends a 384 KiB head, then COUNT one-byte TLS
#           records, to a storage sidecar whose app (a unix socket) reads nothing
#   caller: a local caller sends a head, then COUNT one-byte writes, into an agent sidecar's
#           upstream; the storage sidecar's app reads nothing, so the mux stream is held back.
#           The heads (1.7-1.9 MB) leave the agent's stream queue between empty and its
#           512 KiB mark on this host; outside it nothing queues in the sidecar at all.
#
# Each run then releases the app and checks it received every byte in order (sha256).
# Usage: bench/hostile.sh
# Environment: SIDECAR_BIN (default: release build), BASE_BIN (a second build, measured
#              alternately with the first, for a before/after), COUNT (default 20000).
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
cd "$ROOT"
bench_help "$@"
COUNT=${COUNT:-20000}
if [ -z "${SIDECAR_BIN:-}" ]; then
  build_release /tmp/hostile-build.log
  SIDECAR_BIN="$BIN_DIR/backup-sidecar"
fi
new_workdir hostile
make_certs

# storage_sidecar BIN DIR PUBLIC: a storage sidecar in front of a stalled app on DIR/app.sock.
storage_sidecar() {
  local bin=$1 d=$2 public=$3
  cat >"$d/storage.json" <<J
{"service":{"kind":"connect-proxy","name":"storage-sidecar-proxy","port":$public,"address":"127.0.0.1","proxy":{"destination_service_name":"storage","local_service_socket_path":"$d/app.sock"}}}
J
  echo '[{"Kind":"service-intentions","Name":"storage","Sources":[{"Name":"backup-agent","Action":"allow"}]}]' >"$d/intentions.json"
  start_bg "$d/app.out" python3 "$BENCH_DIR/py/stalled_app.py" "$d/app.sock"
  APP_PID=$LAST_PID
  start_bg "$d/storage.log" "$bin" run --admin-bind off --service-file "$d/storage.json" \
    --intentions-file "$d/intentions.json" --cert "$CERTS/storage.pem" --key "$CERTS/storage.key" \
    --ca "$CERTS/ca.pem" --drain-timeout 1s
  STORAGE_PID=$LAST_PID
}

# wait_listening PORT: up to 10 s for a listener on 127.0.0.1:PORT, without connecting to it.
wait_listening() {
  local entry
  entry=$(printf ':%04X 00000000:0000 0A' "$1")
  for _ in $(seq 100); do grep -q "$entry" /proc/net/tcp && return 0; sleep 0.1; done
  die "nothing listens on port $1"
}

# measure PID TRICKLE_OUT: RSS growth of PID (KiB) from the head's pause to the trickle's end.
measure() {
  local pid=$1 out=$2 before after
  sleep 0.8
  before=$(proc_kib "$pid" VmRSS)
  while ! [ -s "$out" ]; do sleep 0.1; done
  sleep 1
  after=$(proc_kib "$pid" VmRSS)
  echo $((after - before))
}

# intact D: the app, released, got what the trickle sent.
intact() {
  local d=$1
  kill -USR1 "$APP_PID"
  for _ in $(seq 300); do [ -s "$d/app.out" ] && break; sleep 0.1; done
  [ "$(cat "$d/app.out")" = "$(cat "$d/trickle.out")" ] && echo yes || echo "NO (app: $(cat "$d/app.out"); sent: $(cat "$d/trickle.out"))"
}

raw_run() { # BIN LABEL
  local d public growth
  d=$(mktemp -d "$WORK/raw.XXXX"); alloc_port public
  storage_sidecar "$1" "$d" "$public"; wait_port "$public"
  start_bg "$d/trickle.out" python3 "$BENCH_DIR/py/trickle.py" tls "$public" "$CERTS" 393216 "$COUNT"
  local trickle=$LAST_PID
  growth=$(measure "$STORAGE_PID" "$d/trickle.out")
  log "raw    $2: storage sidecar RSS +$growth KiB for $COUNT one-byte records; intact: $(intact "$d")"
  stop_pid "$trickle"
  stop_pid "$STORAGE_PID"; stop_pid "$APP_PID"
}

caller_run() { # BIN LABEL HEAD
  local d public local_port growth
  d=$(mktemp -d "$WORK/caller.XXXX"); alloc_port public; alloc_port local_port
  storage_sidecar "$1" "$d" "$public"
  cat >"$d/agent.json" <<J
{"service":{"kind":"connect-proxy","name":"backup-agent-sidecar-proxy","proxy":{"destination_service_name":"backup-agent","upstreams":[{"destination_name":"storage","local_bind_address":"127.0.0.1","local_bind_port":$local_port}]}}}
J
  start_bg "$d/agent.log" "$1" run --admin-bind off --service-file "$d/agent.json" --cert "$CERTS/backup-agent.pem" \
    --key "$CERTS/backup-agent.key" --ca "$CERTS/ca.pem" --upstream-endpoint "storage=127.0.0.1:$public" --drain-timeout 1s
  local agent=$LAST_PID
  # Not wait_port on the upstream: its probe would open a tunnel, and the app would accept
  # that connection instead of the trickle's.
  wait_port "$public"; wait_listening "$local_port"
  start_bg "$d/trickle.out" python3 "$BENCH_DIR/py/trickle.py" tcp "$local_port" "$3" "$COUNT"
  local trickle=$LAST_PID
  growth=$(measure "$agent" "$d/trickle.out")
  log "caller $2: agent sidecar RSS +$growth KiB for $COUNT one-byte writes after a $3-byte head; intact: $(intact "$d")"
  stop_pid "$trickle"; stop_pid "$agent"; stop_pid "$STORAGE_PID"; stop_pid "$APP_PID"
}

bins=("$SIDECAR_BIN"); labels=(new)
if [ -n "${BASE_BIN:-}" ]; then bins=("$BASE_BIN" "$SIDECAR_BIN"); labels=(base new); fi
for i in "${!bins[@]}"; do raw_run "${bins[$i]}" "${labels[$i]}"; done
for head in 1700000 1800000 1900000; do
  for i in "${!bins[@]}"; do caller_run "${bins[$i]}" "${labels[$i]}" "$head"; done
done
