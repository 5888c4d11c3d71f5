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
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=${1:-10000}
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
  swift build -c release --scratch-path .build-release >/tmp/scale-build.log 2>&1 || { cat /tmp/scale-build.log; exit 1; }
  BIN_DIR=$(swift build -c release --scratch-path .build-release --show-bin-path)
  SIDECAR_BIN="$BIN_DIR/backup-sidecar"
else
  BIN_DIR=$(dirname "$SIDECAR_BIN")
fi

work=$(mktemp -d /tmp/backup-sidecar-scale.XXXXXX)
mkdir -p bench/results
result="bench/results/scale-$(date -u +%Y%m%dT%H%M%SZ).txt"
. scripts/lib.sh

certs-dev/gen.sh "$work/certs" >/dev/null
cat "$work/certs/storage.pem" "$work/certs/storage.key" > "$work/storage-combined.pem"
cat "$work/certs/backup-agent.pem" "$work/certs/backup-agent.key" > "$work/agent-combined.pem"
echo_port=$(free_port)
"$BIN_DIR/mesh-load" echo "$echo_port" >"$work/echo.log" 2>&1 & pids+=($!)
wait_port "$echo_port"

start_sidecar_pair() { # PUBLIC LOCAL
  cat > "$work/server.json" <<JSON
{"service":{"kind":"connect-proxy","name":"storage-sidecar-proxy","port":$1,"address":"127.0.0.1",
 "proxy":{"destination_service_name":"storage","local_service_port":$echo_port}}}
JSON
  cat > "$work/client.json" <<JSON
{"service":{"kind":"connect-proxy","name":"backup-agent-sidecar-proxy",
 "proxy":{"destination_service_name":"backup-agent","upstreams":[{"destination_name":"storage","local_bind_port":$2}]}}}
JSON
  echo '[{"Kind":"service-intentions","Name":"storage","Sources":[{"Name":"backup-agent","Action":"allow"}]}]' > "$work/intentions.json"
  "$SIDECAR_BIN" run --admin-bind off --audit-log /dev/null --max-connections $((N + 100)) --service-file "$work/server.json" \
    --intentions-file "$work/intentions.json" --cert "$work/certs/storage.pem" --key "$work/certs/storage.key" \
    --ca "$work/certs/ca.pem" --mux "${SIDECAR_MUX:-prefer}" 2>"$work/sidecar-server.log" & SERVER_PID=$!
  "$SIDECAR_BIN" run --admin-bind off --audit-log /dev/null --max-connections $((N + 100)) --service-file "$work/client.json" \
    --upstream-endpoint "storage=127.0.0.1:$1" --cert "$work/certs/backup-agent.pem" --key "$work/certs/backup-agent.key" \
    --ca "$work/certs/ca.pem" --mux "${SIDECAR_MUX:-prefer}" 2>"$work/sidecar-client.log" & CLIENT_PID=$!
}

start_haproxy_pair() { # PUBLIC LOCAL
  local global="global
    nbthread 2
    maxconn $((N + 100))
    ssl-default-bind-options ssl-min-ver TLSv1.2
    ssl-default-server-options ssl-min-ver TLSv1.2
defaults
    mode tcp
    maxconn $((N + 100))
    timeout connect 5s
    timeout client 10m
    timeout server 10m"
  printf '%s\nfrontend inbound\n    bind 127.0.0.1:%s ssl crt %s ca-file %s verify required\n    default_backend app\nbackend app\n    server app 127.0.0.1:%s\n' \
    "$global" "$1" "$work/storage-combined.pem" "$work/certs/ca.pem" "$echo_port" > "$work/haproxy-server.cfg"
  printf '%s\nfrontend upstream\n    bind 127.0.0.1:%s\n    default_backend mesh\nbackend mesh\n    server storage 127.0.0.1:%s ssl crt %s ca-file %s verify required\n' \
    "$global" "$2" "$1" "$work/agent-combined.pem" "$work/certs/ca.pem" > "$work/haproxy-client.cfg"
  haproxy -db -f "$work/haproxy-server.cfg" >"$work/haproxy-server.log" 2>&1 & SERVER_PID=$!
  haproxy -db -f "$work/haproxy-client.cfg" >"$work/haproxy-client.log" 2>&1 & CLIENT_PID=$!
}

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

measure() { # NAME
  local name=$1 public local_port
  public=$(free_port); local_port=$(free_port)
  "start_$2_pair" "$public" "$local_port"
  pids+=("$SERVER_PID" "$CLIENT_PID")
  wait_port "$public"; wait_port "$local_port"
  sleep 1
  local before_server before_client
  before_server=$(rss_kib "$SERVER_PID"); before_client=$(rss_kib "$CLIENT_PID")
  python3 - "$local_port" "$N" "${TRANSFER_CONCURRENCY:-500}" "$SERVER_PID" "$CLIENT_PID" "$before_server" "$before_client" "$name" <<'PY'
import asyncio, hashlib, os, sys, time
port, n, concurrency = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
server_pid, client_pid, before_server, before_client, name = sys.argv[4], sys.argv[5], int(sys.argv[6]), int(sys.argv[7]), sys.argv[8]
def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"): return int(line.split()[1])
block = os.urandom(1 << 20)
async def main():
    connections = []
    opened = asyncio.Semaphore(200)  # open in waves: a SYN flood would only measure the backlog
    async def open_one(i):
        async with opened:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"x"); await writer.drain()
            assert await asyncio.wait_for(reader.readexactly(1), 60) == b"x"
            return reader, writer
    start = time.time()
    results = await asyncio.gather(*(open_one(i) for i in range(n)), return_exceptions=True)
    connections = [r for r in results if not isinstance(r, BaseException)]
    failed_open = n - len(connections)
    await asyncio.sleep(2)
    server_kib, client_kib = rss(server_pid), rss(client_pid)
    per_conn = (server_kib - before_server + client_kib - before_client) * 1024 / max(1, len(connections)) / 2
    print(f"{name}: {len(connections)} idle mTLS connections open ({failed_open} failed) in {time.time() - start:.1f}s; "
          f"RSS server-side {before_server/1024:.1f} -> {server_kib/1024:.1f} MiB, client-side {before_client/1024:.1f} -> {client_kib/1024:.1f} MiB; "
          f"{per_conn/1024:.1f} KiB per connection per proxy", flush=True)
    if os.environ.get("HOLD_SECONDS"):  # experiments: inspect the proxies with everything idle
        await asyncio.sleep(float(os.environ["HOLD_SECONDS"]))
    transfer = asyncio.Semaphore(concurrency)
    async def move(index, pair):
        reader, writer = pair
        payload = index.to_bytes(8, "little") + block[8:]
        async with transfer:
            writer.write(payload); await writer.drain(); writer.write_eof()
            echoed = await asyncio.wait_for(reader.read(-1), 120)
            writer.close()
            return echoed == payload
    start = time.time()
    outcomes = await asyncio.gather(*(move(i, p) for i, p in enumerate(connections)), return_exceptions=True)
    good = sum(1 for o in outcomes if o is True)
    print(f"{name}: {good}/{len(connections)} connections moved 1 MiB each way intact in {time.time() - start:.1f}s", flush=True)
    print(f"RESULT {name} per_conn_kib={per_conn/1024:.1f} intact={good} opened={len(connections)} n={n}", flush=True)
asyncio.run(main())
PY
  kill "$SERVER_PID" "$CLIENT_PID" 2>/dev/null || true
  wait "$SERVER_PID" "$CLIENT_PID" 2>/dev/null || true
}

{
  echo "# bench/scale.sh $N, $(date -u +%FT%TZ), $(nproc) cores; backup-sidecar $(git rev-parse --short HEAD) --mux ${SIDECAR_MUX:-prefer}, $(haproxy -v 2>&1 | head -1)"
  [ "${ONLY:-haproxy}" = haproxy ] && [ -n "${ONLY:-}" ] || measure backup-sidecar sidecar
  [ "${ONLY:-backup-sidecar}" = backup-sidecar ] && [ -n "${ONLY:-}" ] || measure haproxy haproxy
} 2>&1 | tee "$result"
grep -q "RESULT backup-sidecar .*intact=$N opened=$N" "$result"
