#!/usr/bin/env bash
# The main job (README quick start): a backup agent stores a 64 MiB snapshot on a storage
# service and restores it, every byte crossing the mesh through two backup-sidecars with
# mutual TLS and L7 intentions. The embedded dev agent plays Consul: it loads deploy/'s files,
# runs the Connect CA and serves the sidecars their registrations, leaves and intentions.
# Exits 0 when the round trip verifies and the append-only policy refused a DELETE.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

scripts/install-deps.sh nginx
echo "== building backup-sidecar"
# Quiet unless it fails (dependencies print harmless warnings).
swift build --product backup-sidecar >"${TMPDIR:-/tmp}/backup-sidecar-demo-build.log" 2>&1 \
  || { cat "${TMPDIR:-/tmp}/backup-sidecar-demo-build.log" >&2; exit 1; }
bin="$(swift build --show-bin-path)/backup-sidecar"

work=$(mktemp -d /tmp/backup-sidecar-demo.XXXXXX)
chmod 755 "$work"
. scripts/lib.sh
audit_field() { # FILE EVENT FIELD: the field of the last audit line of that event
  python3 - "$@" <<'PY'
import json, sys, time
path, event, field = sys.argv[1:4]
# The sidecar writes audit lines in batches a few milliseconds apart: let the latest land.
time.sleep(0.05)
lines = [json.loads(l) for l in open(path) if l.startswith("{") and l.endswith("}\n")]
match = [l for l in lines if l.get("event") == event]
print(match[-1].get(field, "") if match else "(none)")
PY
}

backend=$(free_port); public=$(free_port); upstream=$(free_port); admin_storage=$(free_port); admin_agent=$(free_port)
agent_http=$(free_port); agent_public=$(free_port); agent_app=$(free_port)

# The storage service: nginx with WebDAV PUT, a stand-in for a backup repository.
mkdir -p "$work/storage/repository" "$work/nginx-body"
chmod 777 "$work/storage" "$work/storage/repository" "$work/nginx-body"
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
    location /repository/ { dav_methods PUT DELETE; create_full_put_path on; dav_access user:rw group:r all:r; }
  }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)

# The control plane: the dev agent loads deploy/'s Consul files as they are, only the ports
# moved to free ones (service definitions, proxy-defaults, service-defaults, L7 intentions).
mkdir -p "$work/consul"
python3 - "$work/consul" "$backend" "$public" "$agent_app" "$agent_public" "$upstream" <<'PY'
import json, shutil, sys
out, backend, public, agent_app, agent_public, upstream = sys.argv[1], *map(int, sys.argv[2:])
storage = json.load(open("deploy/consul/storage.json"))
storage["service"]["port"] = backend
storage["service"]["connect"]["sidecar_service"]["port"] = public
agent = json.load(open("deploy/consul/backup-agent.json"))
agent["service"]["port"] = agent_app
agent["service"]["connect"]["sidecar_service"]["port"] = agent_public
agent["service"]["connect"]["sidecar_service"]["proxy"]["upstreams"][0]["local_bind_port"] = upstream
json.dump(storage, open(f"{out}/storage.json", "w"), indent=2)
json.dump(agent, open(f"{out}/backup-agent.json", "w"), indent=2)
for name in ["proxy-defaults.json", "service-defaults-storage.json"]:
    shutil.copy(f"deploy/consul/{name}", out)
shutil.copy("deploy/intentions-l7.json", f"{out}/intentions-l7.json")
PY
"$bin" dev-agent -http-addr "127.0.0.1:$agent_http" -config-dir "$work/consul" 2>"$work/dev-agent.log" &
pids+=($!)
wait_port "$agent_http"
consul() { curl -sS --fail "http://127.0.0.1:$agent_http$1"; }
echo "== dev agent up at 127.0.0.1:$agent_http (development only), Connect CA trust domain $(consul /v1/agent/connect/ca/roots | python3 -c 'import json,sys; print(json.load(sys.stdin)["TrustDomain"])')"
echo "   services: $(consul /v1/agent/services | python3 -c 'import json,sys; print(", ".join(sorted(json.load(sys.stdin))))')"

# Both sidecars are configured only through the agent, as `consul connect proxy -sidecar-for` is.
"$bin" run -sidecar-for storage -http-addr "127.0.0.1:$agent_http" --admin-bind "127.0.0.1:$admin_storage" \
  >"$work/storage-audit.jsonl" 2>"$work/storage-sidecar.log" &
pids+=($!)
"$bin" run -sidecar-for backup-agent -http-addr "127.0.0.1:$agent_http" --admin-bind "127.0.0.1:$admin_agent" \
  >"$work/agent-audit.jsonl" 2>"$work/agent-sidecar.log" &
pids+=($!)
wait_port "$backend"
wait_ready "$admin_storage" "$admin_agent"
echo "== mesh up"
echo "   backup agent -> 127.0.0.1:$upstream [backup-agent sidecar] =mTLS=> 127.0.0.1:$public [storage sidecar] -> nginx 127.0.0.1:$backend"
for side in storage:$admin_storage backup-agent:$admin_agent; do
  curl -sS "http://127.0.0.1:${side#*:}/certs" | python3 -c 'import json, sys
leaf = json.load(sys.stdin)["leaf"]
print("   %-13s leaf %s serial %s" % (sys.argv[1], leaf["spiffe_id"], leaf["serial"]))' "${side%%:*}"
done

head -c $((64 << 20)) /dev/urandom > "$work/snapshot.bin"
sent=$(sha256sum "$work/snapshot.bin" | cut -d' ' -f1)
echo "== backup: PUT 64 MiB snapshot through the mesh (sha256 $sent)"
code=$(curl -sS -o /dev/null -w '%{http_code}' -T "$work/snapshot.bin" "http://127.0.0.1:$upstream/repository/demo-1.bin")
echo "   storage answered HTTP $code"
sleep 0.2
echo "   storage sidecar authorized: $(audit_field "$work/storage-audit.jsonl" authorization source)"
echo "     client cert serial $(audit_field "$work/storage-audit.jsonl" authorization source_serial)"
echo "     decision $(audit_field "$work/storage-audit.jsonl" authorization decision): $(audit_field "$work/storage-audit.jsonl" authorization reason)"
echo "   backup-agent sidecar verified server: $(audit_field "$work/agent-audit.jsonl" upstream_connected destination)"
echo "     $(audit_field "$work/agent-audit.jsonl" upstream_connected reason)"

echo "== restore: GET the snapshot back through the mesh"
curl -sS -o "$work/restored.bin" "http://127.0.0.1:$upstream/repository/demo-1.bin"
restored=$(sha256sum "$work/restored.bin" | cut -d' ' -f1)
stored=$(sha256sum "$work/storage/repository/demo-1.bin" | cut -d' ' -f1)
echo "   sha256 sent      $sent"
echo "   sha256 stored    $stored"
echo "   sha256 restored  $restored"

echo "== ransomware drill: the backup agent tries to DELETE the snapshot (append-only policy)"
delete_code=$(curl -sS -o /dev/null -w '%{http_code}' -X DELETE "http://127.0.0.1:$upstream/repository/demo-1.bin")
sleep 0.2
echo "   storage sidecar answered HTTP $delete_code: $(audit_field "$work/storage-audit.jsonl" http_request reason)"
[ -f "$work/storage/repository/demo-1.bin" ] && echo "   the snapshot is still there"

echo "== storage sidecar metrics (http://127.0.0.1:$admin_storage/metrics)"
curl -sS "http://127.0.0.1:$admin_storage/metrics" | grep -E '^backup_sidecar_(connections_total|mux_connections_total|intention_decisions_total|bytes_total)' | sed 's/^/   /'
echo "== audit logs and sidecar logs: $work"
if [ "$code" = "201" ] && [ "$sent" = "$stored" ] && [ "$sent" = "$restored" ] && [ "$delete_code" = "403" ] \
   && [ -f "$work/storage/repository/demo-1.bin" ]; then
  echo "RESULT: round trip verified, sha256 equal at both ends"
  trap - EXIT; cleanup
  exit 0
fi
echo "RESULT: FAILED (PUT HTTP $code, DELETE HTTP $delete_code)" >&2
exit 1
