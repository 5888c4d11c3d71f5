#!/usr/bin/env bash
# The main job (README quick start): backups cross the mesh through two backup-sidecars with
# mutual TLS and L7 intentions, and the mesh refuses their deletion.
#   1. restic backs up to `rclone serve restic` under deploy/intentions-restic.json: init,
#      two backups, restore, diff and check; `restic forget --prune` is refused with 403.
#   2. curl PUTs a 64 MiB snapshot to nginx WebDAV under deploy/intentions-l7.json, GETs it
#      back and tries to DELETE it (403).
# Each scenario gets its own embedded dev agent playing Consul (it loads deploy/'s files, runs
# the Connect CA and serves the sidecars their registrations, leaves and intentions).
# Exits 0 only when both scenarios verify. BACKUP_SIDECAR_BIN=/path skips the build.
# verify's compound conditions are single-quoted on purpose: eval expands them when it runs.
# shellcheck disable=SC2016
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh nginx restic rclone
if [ -n "${BACKUP_SIDECAR_BIN:-}" ]; then
  bin=$BACKUP_SIDECAR_BIN
  echo "== using $bin (BACKUP_SIDECAR_BIN set, not building)"
else
  echo "== building backup-sidecar"
  # Quiet unless it fails (dependencies print harmless warnings).
  swift build --product backup-sidecar >"${TMPDIR:-/tmp}/backup-sidecar-demo-build.log" 2>&1 \
    || { cat "${TMPDIR:-/tmp}/backup-sidecar-demo-build.log" >&2; exit 1; }
  bin="$(swift build --show-bin-path)/backup-sidecar"
fi

work=$(mktemp -d /tmp/backup-sidecar-demo.XXXXXX)
chmod 755 "$work"
. scripts/lib.sh
# lib.sh's trap stops the background processes; this one also says why the script died.
# shellcheck disable=SC2317 # (only the trap calls it)
finish() {
  local status=$?
  cleanup
  [ "$status" -eq 0 ] || echo "RESULT: FAILED (exit $status; logs in $work)" >&2
}
trap finish EXIT
failures=()
verify() { # DESCRIPTION COMMAND...: runs a check and records its outcome (the demo goes on).
  if "${@:2}"; then echo "   ok: $1"; else echo "   FAILED: $1" >&2; failures+=("$1"); fi
}
indent() { sed 's/^/   | /'; }

# audit FILE EVENT FORMAT [FIELD=VALUE...]: FORMAT (Python {field} names) for each audit line of
# that event matching the filters. The sidecar writes its log in batches milliseconds after a
# request, so this waits (up to 5 s) for a first match, then briefly for stragglers.
audit() {
  python3 - "$@" <<'PY'
import collections, json, sys, time
path, event, form, *filters = sys.argv[1:]
want = {"event": event, **dict(f.split("=", 1) for f in filters)}
def matches():
    lines = [json.loads(l) for l in open(path) if l.startswith("{") and l.endswith("}\n")]
    return [l for l in lines if all(str(l.get(k)) == v for k, v in want.items())]
deadline = time.time() + 5
while not matches() and time.time() < deadline:
    time.sleep(0.05)
time.sleep(0.05)
for line in matches():
    print(form.format_map(collections.defaultdict(str, line)))
PY
}

# start_mesh NAME BACKEND_PORT INTENTIONS_FILE: a dev agent loading deploy/consul's files (ports
# moved to free ones) plus INTENTIONS_FILE, and both sidecars configured only through it, as
# `consul connect proxy -sidecar-for` is. Sets dir, upstream, admin_storage and admin_agent.
start_mesh() {
  local name=$1 backend=$2 intentions=$3 public agent_public agent_app agent_http
  dir="$work/$name"; mkdir -p "$dir/consul"
  public=$(free_port); upstream=$(free_port); agent_public=$(free_port); agent_app=$(free_port)
  agent_http=$(free_port); admin_storage=$(free_port); admin_agent=$(free_port)
  python3 - "$dir/consul" "$intentions" "$backend" "$public" "$agent_app" "$agent_public" "$upstream" <<'PY'
import json, shutil, sys
out, intentions = sys.argv[1:3]
backend, public, agent_app, agent_public, upstream = map(int, sys.argv[3:])
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
shutil.copy(intentions, out)
PY
  "$bin" dev-agent -http-addr "127.0.0.1:$agent_http" -config-dir "$dir/consul" 2>"$dir/dev-agent.log" &
  pids+=($!)
  wait_port "$agent_http"
  echo "   dev agent at 127.0.0.1:$agent_http (development only) with $intentions"
  "$bin" run -sidecar-for storage -http-addr "127.0.0.1:$agent_http" --admin-bind "127.0.0.1:$admin_storage" \
    >"$dir/storage-audit.jsonl" 2>"$dir/storage-sidecar.log" &
  pids+=($!)
  "$bin" run -sidecar-for backup-agent -http-addr "127.0.0.1:$agent_http" --admin-bind "127.0.0.1:$admin_agent" \
    >"$dir/agent-audit.jsonl" 2>"$dir/agent-sidecar.log" &
  pids+=($!)
  wait_port "$backend"
  wait_ready "$admin_storage" "$admin_agent"
  echo "   client -> 127.0.0.1:$upstream [backup-agent sidecar] =mTLS=> 127.0.0.1:$public [storage sidecar] -> 127.0.0.1:$backend"
  local side
  for side in storage:$admin_storage backup-agent:$admin_agent; do
    curl -sS "http://127.0.0.1:${side#*:}/certs" | python3 -c 'import json, sys
leaf = json.load(sys.stdin)["leaf"]
print("   %-13s leaf %s serial %s" % (sys.argv[1], leaf["spiffe_id"], leaf["serial"]))' "${side%%:*}"
  done
}

# show_metrics: both sidecars' traffic and decision counters from their /metrics.
show_metrics() {
  local side
  for side in storage:$admin_storage backup-agent:$admin_agent; do
    echo "   ${side%%:*} sidecar (http://127.0.0.1:${side#*:}/metrics):"
    curl -sS "http://127.0.0.1:${side#*:}/metrics" \
      | grep -E '^backup_sidecar_(connections_total|mux_connections_total|intention_decisions_total|bytes_total)' \
      | sort | sed 's/^/     /'
  done
}

scenario_restic() {
  echo "== scenario 1: restic -> rclone serve restic, policy deploy/intentions-restic.json"
  local backend data="$work/restic/data" restored="$work/restic/restored"
  backend=$(free_port)
  mkdir -p "$work/restic/repository"
  # --append-only as the policy asks (the server refuses overwrites); a DELETE never reaches it.
  rclone serve restic --append-only --addr "127.0.0.1:$backend" "$work/restic/repository" \
    2>"$work/restic-rclone.log" &
  pids+=($!)
  start_mesh restic "$backend" deploy/intentions-restic.json
  export RESTIC_REPOSITORY="rest:http://127.0.0.1:$upstream/demo/" RESTIC_PASSWORD=demo-only \
    RESTIC_CACHE_DIR="$work/restic/cache"

  echo "-- init the repository through the mesh ($RESTIC_REPOSITORY)"
  restic init | sed -n 1p | indent
  echo "-- backup 1: a generated tree of a few MiB"
  mkdir -p "$data/db" "$data/photos/2024/summer" "$data/etc"
  head -c $((3 << 20)) /dev/urandom > "$data/db/dump.sql.gz"
  head -c $((2 << 20)) /dev/urandom > "$data/photos/2024/summer/beach.jpg"
  seq 1 50000 > "$data/etc/inventory.txt"
  : > "$data/etc/empty.conf"
  restic backup --host demo "$data" | indent
  echo "-- backup 2: one file changed, one added"
  echo "changed $(date)" >> "$data/etc/inventory.txt"
  head -c $((1 << 20)) /dev/urandom > "$data/photos/2024/summer/sunset.jpg"
  restic backup --host demo "$data" | indent
  echo "-- restore latest into a new directory, then verify"
  restic restore latest --target "$restored" | indent
  verify "restored tree equals the source (diff -r)" diff -r "$data" "$restored$data"
  verify "restic check: repository intact" eval 'restic check 2>&1 | indent'

  echo "-- ransomware drill: restic forget --keep-last 1 --prune (DELETE of a snapshot)"
  echo "   the mesh answers 403; restic 0.14 retries each failed request for about 45 s (no option"
  echo "   shortens that) before it gives up, so this takes a while"
  local started=$SECONDS status=0
  # Live: each refused attempt as restic reports it; the whole output goes to forget.log.
  restic forget --keep-last 1 --prune 2>&1 | tee "$work/restic/forget.log" \
    | grep --line-buffered -E '^(Remove|unable)' | indent || status=${PIPESTATUS[0]}
  verify "forget --prune failed (exit $status after $((SECONDS - started)) s) with 403" \
    eval '[ "$status" != 0 ] && grep -q "403 Forbidden" "$work/restic/forget.log"'
  local snapshots
  snapshots=$(restic snapshots)
  indent <<<"$snapshots"
  verify "both snapshots are still there" grep -qx '2 snapshots' <<<"$snapshots"
  echo "-- storage sidecar audit: refused DELETEs (event http_request, decision deny)"
  local denied allowed
  denied=$(audit "$dir/storage-audit.jsonl" http_request '{method} {path}: {decision}, {reason}' decision=deny method=DELETE)
  sort <<<"$denied" | uniq -c | sed -E 's/^ *([0-9]+) /\1 x /' | indent
  # rclone --append-only would refuse too: this shows that it was the mesh.
  verify "the storage sidecar refused the snapshot DELETE" grep -q '^DELETE .*/snapshots/' <<<"$denied"
  allowed=$(audit "$dir/storage-audit.jsonl" http_request '{path}' decision=allow method=DELETE)
  echo "   DELETEs allowed (decision allow): $(grep -c . <<<"$allowed"), of which under locks/: $(grep -c /locks/ <<<"$allowed")"
  verify "restic removed its own locks, and nothing else" eval '[ -n "$allowed" ] && ! grep -qv /locks/ <<<"$allowed"'
  echo "-- the audit log is hash-chained: backup-sidecar audit verify"
  # A copy taken while the mesh is idle; then the same copy with one refusal turned into an allow.
  cp "$dir/storage-audit.jsonl" "$dir/audit-copy.jsonl"
  "$bin" audit verify "$dir/audit-copy.jsonl" | indent
  local forged_status=0
  sed -i '0,/"decision":"deny"/s//"decision":"allow"/' "$dir/audit-copy.jsonl"
  echo "   after turning the first \"deny\" into \"allow\":"
  "$bin" audit verify "$dir/audit-copy.jsonl" | indent || forged_status=$?
  verify "audit verify accepts the log as written and names the edited line" \
    eval '"$bin" audit verify "$dir/storage-audit.jsonl" >/dev/null && [ "$forged_status" = 1 ]'
  echo "-- metrics"
  show_metrics
}

scenario_webdav() {
  echo "== scenario 2: curl -> nginx WebDAV, policy deploy/intentions-l7.json"
  local backend code delete_code sent stored restored
  backend=$(free_port)
  # nginx with WebDAV PUT and DELETE on: only the mesh protects the snapshot.
  mkdir -p "$work/webdav/storage/repository" "$work/webdav/nginx-body"
  chmod 777 "$work/webdav/storage" "$work/webdav/storage/repository" "$work/webdav/nginx-body"
  cat > "$work/webdav/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
pid $work/webdav/nginx.pid;
error_log $work/webdav/nginx-error.log;
events {}
http {
  access_log off;
  client_body_temp_path $work/webdav/nginx-body;
  client_max_body_size 0;
  server {
    listen 127.0.0.1:$backend;
    root $work/webdav/storage;
    location /repository/ { dav_methods PUT DELETE; create_full_put_path on; dav_access user:rw group:r all:r; }
  }
}
NGINX
  nginx -c "$work/webdav/nginx.conf" -p "$work/webdav" &
  pids+=($!)
  start_mesh webdav "$backend" deploy/intentions-l7.json

  head -c $((64 << 20)) /dev/urandom > "$work/webdav/snapshot.bin"
  sent=$(sha256sum "$work/webdav/snapshot.bin" | cut -d' ' -f1)
  echo "-- backup: PUT a 64 MiB snapshot through the mesh (sha256 $sent)"
  code=$(curl -sS -o /dev/null -w '%{http_code}' -T "$work/webdav/snapshot.bin" "http://127.0.0.1:$upstream/repository/demo-1.bin")
  echo "   storage answered HTTP $code"
  audit "$dir/storage-audit.jsonl" authorization \
    '   storage sidecar authorized {source} (client cert serial {source_serial}): {decision}, {reason}' | tail -1
  audit "$dir/agent-audit.jsonl" upstream_connected '   backup-agent sidecar verified server {destination}: {reason}' | tail -1
  echo "-- restore: GET the snapshot back through the mesh"
  curl -sS -o "$work/webdav/restored.bin" "http://127.0.0.1:$upstream/repository/demo-1.bin"
  stored=$(sha256sum "$work/webdav/storage/repository/demo-1.bin" | cut -d' ' -f1)
  restored=$(sha256sum "$work/webdav/restored.bin" | cut -d' ' -f1)
  echo "   sha256 sent $sent, stored $stored, restored $restored"
  verify "PUT answered 201 and all three sha256 are equal" \
    eval '[ "$code" = 201 ] && [ "$sent" = "$stored" ] && [ "$sent" = "$restored" ]'
  echo "-- ransomware drill: DELETE the snapshot"
  delete_code=$(curl -sS -o /dev/null -w '%{http_code}' -X DELETE "http://127.0.0.1:$upstream/repository/demo-1.bin")
  audit "$dir/storage-audit.jsonl" http_request '   storage sidecar: {method} {path}: {decision}, {reason}' \
    decision=deny method=DELETE
  verify "DELETE answered HTTP $delete_code (403 expected) and the snapshot is still there" \
    eval '[ "$delete_code" = 403 ] && [ -f "$work/webdav/storage/repository/demo-1.bin" ]'
  echo "-- metrics"
  show_metrics
}

started=$SECONDS
scenario_restic
scenario_webdav
echo "== audit logs, sidecar and server logs: $work"
if [ ${#failures[@]} -gt 0 ]; then
  printf '   failed: %s\n' "${failures[@]}" >&2
  exit 1 # finish prints the RESULT line
fi
rm -f "$work"/webdav/*.bin "$work"/webdav/storage/repository/*.bin # 192 MiB of random data
echo "RESULT: both scenarios verified in $((SECONDS - started)) s (restic backup/restore/check, forget --prune refused; 64 MiB round trip, DELETE refused)"
