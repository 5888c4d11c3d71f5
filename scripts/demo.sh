#!/usr/bin/env bash
# The main job (README quick start): a backup agent stores a 64 MiB snapshot on a storage
# service and restores it, every byte crossing the mesh through two backup-sidecars with
# mutual TLS and intentions. File mode: no Consul needed. Exits 0 when the round trip verifies.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

scripts/install-deps.sh nginx
echo "== building backup-sidecar"
swift build --product backup-sidecar >/dev/null
bin="$(swift build --show-bin-path)/backup-sidecar"

work=$(mktemp -d /tmp/backup-sidecar-demo.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "port $1 did not open; logs in $work" >&2; exit 1
}
audit_field() { # FILE EVENT FIELD: the field of the last audit line of that event
  python3 - "$@" <<'PY'
import json, sys
path, event, field = sys.argv[1:4]
lines = [json.loads(l) for l in open(path) if l.startswith("{")]
match = [l for l in lines if l.get("event") == event]
print(match[-1].get(field, "") if match else "(none)")
PY
}

echo "== dev CA in Consul's shape (certs-dev/gen.sh)"
certs-dev/gen.sh "$work/certs" >/dev/null
echo "   trust domain: $(cat "$work/certs/trust-domain.txt")"

backend=$(free_port); public=$(free_port); upstream=$(free_port); admin_storage=$(free_port); admin_agent=$(free_port)

# The storage service: nginx with WebDAV PUT, a stand-in for a backup repository.
mkdir -p "$work/storage/snapshots" "$work/nginx-body"
chmod 777 "$work/storage" "$work/storage/snapshots" "$work/nginx-body"
cat > "$work/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events {}
http {
  access_log off;
  client_body_temp_path $work/nginx-body;
  client_max_body_size 0;
  server {
    listen 127.0.0.1:$backend;
    root $work/storage;
    location /snapshots/ { dav_methods PUT; create_full_put_path on; dav_access user:rw group:r all:r; }
  }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)

cat > "$work/storage-sidecar.json" <<JSON
{"service": {"kind": "connect-proxy", "name": "storage-sidecar-proxy", "address": "127.0.0.1", "port": $public,
  "proxy": {"destination_service_name": "storage", "local_service_address": "127.0.0.1", "local_service_port": $backend}}}
JSON
cat > "$work/backup-agent-sidecar.json" <<JSON
{"service": {"kind": "connect-proxy", "name": "backup-agent-sidecar-proxy",
  "proxy": {"destination_service_name": "backup-agent",
    "upstreams": [{"destination_name": "storage", "local_bind_address": "127.0.0.1", "local_bind_port": $upstream}]}}}
JSON
cp deploy/intentions.json "$work/intentions.json"

"$bin" run --admin-bind "127.0.0.1:$admin_storage" --service-file "$work/storage-sidecar.json" --intentions-file "$work/intentions.json" \
  --cert "$work/certs/storage.pem" --key "$work/certs/storage.key" --ca "$work/certs/ca.pem" \
  >"$work/storage-audit.jsonl" 2>"$work/storage-sidecar.log" &
pids+=($!)
"$bin" run --admin-bind "127.0.0.1:$admin_agent" --service-file "$work/backup-agent-sidecar.json" --upstream-endpoint "storage=127.0.0.1:$public" \
  --cert "$work/certs/backup-agent.pem" --key "$work/certs/backup-agent.key" --ca "$work/certs/ca.pem" \
  >"$work/agent-audit.jsonl" 2>"$work/agent-sidecar.log" &
pids+=($!)
wait_port "$backend"; wait_port "$public"; wait_port "$upstream"
echo "== mesh up"
echo "   backup agent -> 127.0.0.1:$upstream [backup-agent sidecar] =mTLS=> 127.0.0.1:$public [storage sidecar] -> nginx 127.0.0.1:$backend"

head -c $((64 << 20)) /dev/urandom > "$work/snapshot.bin"
sent=$(sha256sum "$work/snapshot.bin" | cut -d' ' -f1)
echo "== backup: PUT 64 MiB snapshot through the mesh (sha256 $sent)"
code=$(curl -sS -o /dev/null -w '%{http_code}' -T "$work/snapshot.bin" "http://127.0.0.1:$upstream/snapshots/demo-1.bin")
echo "   storage answered HTTP $code"
sleep 0.2
echo "   storage sidecar authorized: $(audit_field "$work/storage-audit.jsonl" authorization source)"
echo "     client cert serial $(audit_field "$work/storage-audit.jsonl" authorization source_serial)"
echo "     decision $(audit_field "$work/storage-audit.jsonl" authorization decision): $(audit_field "$work/storage-audit.jsonl" authorization reason)"
echo "   backup-agent sidecar verified server: $(audit_field "$work/agent-audit.jsonl" upstream_connected destination)"
echo "     $(audit_field "$work/agent-audit.jsonl" upstream_connected reason)"

echo "== restore: GET the snapshot back through the mesh"
curl -sS -o "$work/restored.bin" "http://127.0.0.1:$upstream/snapshots/demo-1.bin"
restored=$(sha256sum "$work/restored.bin" | cut -d' ' -f1)
stored=$(sha256sum "$work/storage/snapshots/demo-1.bin" | cut -d' ' -f1)
echo "   sha256 sent      $sent"
echo "   sha256 stored    $stored"
echo "   sha256 restored  $restored"

echo "== an identity from another CA tries the storage sidecar directly"
if curl -sS -k --max-time 5 --cert "$work/certs/other-backup-agent.pem" --key "$work/certs/other-backup-agent.key" \
     "https://127.0.0.1:$public/snapshots/demo-1.bin" -o /dev/null 2>/dev/null; then
  echo "   UNEXPECTED: it was let in" >&2; exit 1
fi
sleep 0.2
echo "   refused: $(audit_field "$work/storage-audit.jsonl" handshake_rejected reason)"

echo "== storage sidecar metrics (http://127.0.0.1:$admin_storage/metrics)"
curl -sS "http://127.0.0.1:$admin_storage/metrics" | grep -E '^backup_sidecar_(connections_total|intention_decisions_total|bytes_total)' | sed 's/^/   /'
echo "== audit logs and sidecar logs: $work"
if [ "$code" = "201" ] && [ "$sent" = "$stored" ] && [ "$sent" = "$restored" ]; then
  echo "RESULT: round trip verified, sha256 equal at both ends"
  trap - EXIT; cleanup
  exit 0
fi
echo "RESULT: FAILED (HTTP $code)" >&2
exit 1
