#!/usr/bin/env bash
# bench/run.sh - compare backup-sidecar with stunnel and HAProxy as a mutual-TLS proxy pair.
#
# Measured path, identical for each implementation and using the same certificates:
#
#   load tool -> client-side proxy (plaintext in, mTLS out, backup-agent leaf)
#             -> server-side proxy (mTLS in, client cert required, plaintext out, storage leaf)
#             -> backend (iperf3 -s or nginx)
#
# Everything listens on 127.0.0.1 only. Every process started here is stopped on exit.
# See bench/README.md for the meaning of each number and for fairness notes.
#
# Usage: bench/run.sh [--quick] [--only NAME[,NAME...]] [--no-build] [--help]
#   NAME: backup-sidecar (alias: sidecar, ours; the mux on, the default), backup-sidecar-raw
#         (--mux off: one mTLS connection per tunnel), stunnel, haproxy, baseline (no proxy)
# Environment:
#   SIDECAR_BIN          path to the backup-sidecar binary (default .build/release/backup-sidecar;
#                        when set, no build is attempted)
#   SIDECAR_EXTRA_ARGS   extra arguments added to both backup-sidecar command lines
#   BENCH_DURATION       seconds per measurement (default 8, or 2 with --quick)

set -uo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
cd "$ROOT" || exit 1

CMDLINE="bench/run.sh"
for a in "$@"; do CMDLINE+=" $(printf '%q' "$a")"; done

# ---------------------------------------------------------------- options
QUICK=0
NO_BUILD=0
ONLY=""
usage() { sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --no-build) NO_BUILD=1 ;;
    --only) shift; [ $# -gt 0 ] || { echo "--only needs a name" >&2; exit 2; }; ONLY+="${ONLY:+,}$1" ;;
    --only=*) ONLY+="${ONLY:+,}${1#--only=}" ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

ALL_IMPLS=(backup-sidecar backup-sidecar-raw stunnel haproxy)
IMPLS=()
RUN_BASELINE=1
if [ -n "$ONLY" ]; then
  RUN_BASELINE=0
  IFS=',' read -r -a only_list <<<"$ONLY"
  for n in "${only_list[@]}"; do
    case "$n" in
      backup-sidecar|sidecar|ours) IMPLS+=(backup-sidecar) ;;
      backup-sidecar-raw|raw) IMPLS+=(backup-sidecar-raw) ;;
      stunnel|stunnel4) IMPLS+=(stunnel) ;;
      haproxy) IMPLS+=(haproxy) ;;
      baseline|none|direct) RUN_BASELINE=1 ;;
      *) echo "unknown implementation for --only: $n (backup-sidecar|backup-sidecar-raw|stunnel|haproxy|baseline)" >&2; exit 2 ;;
    esac
  done
else
  IMPLS=("${ALL_IMPLS[@]}")
fi

if [ "$QUICK" = 1 ]; then DUR=${BENCH_DURATION:-2}; else DUR=${BENCH_DURATION:-8}; fi
CMD_TIMEOUT=$((DUR + 40))   # hard cap for every load-tool invocation

SIDECAR_BIN_SET=0
[ -n "${SIDECAR_BIN:-}" ] && SIDECAR_BIN_SET=1
SIDECAR_BIN=${SIDECAR_BIN:-.build/release/backup-sidecar}
case "$SIDECAR_BIN" in /*) ;; *) SIDECAR_BIN="$ROOT/$SIDECAR_BIN" ;; esac
read -r -a SIDECAR_EXTRA <<<"${SIDECAR_EXTRA_ARGS:-}"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------- temp dir + process bookkeeping
WORK=$(mktemp -d /tmp/backup-sidecar-bench.XXXXXX)
chmod 755 "$WORK"
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
PIDS=()
LAST_PID=""

# start_bg LOGFILE CMD... : start CMD in the background, stdout+stderr to LOGFILE; sets LAST_PID
start_bg() {
  local logf=$1; shift
  "$@" >"$logf" 2>&1 </dev/null &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

descendants() { # PID -> all descendant PIDs (children first level, then deeper)
  local c
  for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do
    echo "$c"
    descendants "$c"
  done
}

stop_pid() {
  local pid=$1 kids i p
  [ -n "$pid" ] || return 0
  kids=$(descendants "$pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null
  for p in $kids; do kill -KILL "$p" 2>/dev/null; done
  local keep=()
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

cleanup() {
  local p
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ---------------------------------------------------------------- tools
ensure_tools() {
  local missing=() spec cmd pkg
  for spec in iperf3:iperf3 wrk:wrk nginx:nginx stunnel4:stunnel4 haproxy:haproxy socat:socat \
              openssl:openssl curl:curl python3:python3 ps:procps timeout:coreutils; do
    cmd=${spec%%:*}; pkg=${spec#*:}
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing missing packages: ${missing[*]}"
    if [ "$(id -u)" = 0 ]; then
      apt-get update >"$WORK/apt.log" 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >>"$WORK/apt.log" 2>&1 \
        || log "apt-get failed (see $WORK/apt.log); continuing, affected implementations will be n/a"
    else
      log "not root: cannot apt-get install ${missing[*]}"
    fi
  fi
  for cmd in iperf3 wrk nginx openssl curl python3 ps timeout; do
    command -v "$cmd" >/dev/null 2>&1 || { log "required tool missing: $cmd"; exit 1; }
  done
}

# ---------------------------------------------------------------- ports
declare -A USED_PORTS=()
alloc_port() { # VAR : store a currently free 127.0.0.1 TCP port in VAR (never handed out twice per run)
  local p
  # Ports come from 20000-32767, below the kernel's ephemeral range, so the load tools' outgoing
  # connections never race with our listeners.
  p=$(python3 - "${!USED_PORTS[@]}" <<'EOF'
import random, socket, sys
used = set(int(x) for x in sys.argv[1:])
for _ in range(500):
    p = random.randrange(20000, 32768)
    if p in used:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
EOF
)
  USED_PORTS[$p]=1
  printf -v "$1" '%s' "$p"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port PORT PID [SECONDS] : wait until PORT accepts TCP while PID is alive
wait_port() {
  local port=$1 pid=$2 max=${3:-20} i
  for i in $(seq 1 $((max * 10))); do
    kill -0 "$pid" 2>/dev/null || return 1
    port_open "$port" && return 0
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------- results
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RESULTS"; }  # impl metric value

# ---------------------------------------------------------------- certificates
CERTS="$WORK/certs"
CERT_NOTE=""
make_certs() {
  mkdir -p "$CERTS"
  if [ -f "$ROOT/certs-dev/gen.sh" ]; then
    log "generating certificates with certs-dev/gen.sh"
    if ! bash "$ROOT/certs-dev/gen.sh" "$CERTS" >"$WORK/gen-certs.log" 2>&1; then
      log "certs-dev/gen.sh failed, see $WORK/gen-certs.log"; exit 1
    fi
  else
    CERT_NOTE="certs-dev/gen.sh was not present; equivalent throw-away certificates were generated with the openssl CLI"
    log "WARNING: $CERT_NOTE"
    fallback_certs >"$WORK/gen-certs.log" 2>&1   # files are checked below
  fi
  local f
  for f in ca.pem backup-agent.pem backup-agent.key storage.pem storage.key; do
    [ -s "$CERTS/$f" ] || { log "certificate file missing after generation: $CERTS/$f"; exit 1; }
  done
  # HAProxy wants certificate and key in one file.
  cat "$CERTS/backup-agent.pem" "$CERTS/backup-agent.key" >"$WORK/backup-agent-combined.pem"
  cat "$CERTS/storage.pem" "$CERTS/storage.key" >"$WORK/storage-combined.pem"
  # A client certificate from a foreign CA, for the "does the server side really verify" check:
  # gen.sh's other-backup-agent (same service name, other root) when present, else a self-signed one.
  if [ -s "$CERTS/other-backup-agent.pem" ] && [ -s "$CERTS/other-backup-agent.key" ]; then
    cp "$CERTS/other-backup-agent.pem" "$WORK/foreign.pem"; cp "$CERTS/other-backup-agent.key" "$WORK/foreign.key"
  else
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=intruder" \
      -keyout "$WORK/foreign.key" -out "$WORK/foreign.pem" >>"$WORK/gen-certs.log" 2>&1
  fi
}

# Used only when certs-dev/gen.sh does not exist: EC P-256 CA plus SPIFFE leaves.
fallback_certs() (
  set -e
  local trust uuid name
  uuid=$(cat /proc/sys/kernel/random/uuid)
  trust="spiffe://$uuid.consul"
  cd "$CERTS"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key
  openssl req -x509 -new -key ca.key -sha256 -days 7 -subj "/CN=Bench Consul CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectAltName=URI:$trust" -out ca.pem
  for name in backup-agent storage; do
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$name.key"
    openssl req -new -key "$name.key" -subj "/CN=$name" -out "$name.csr"
    cat >"$name.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyAgreement
extendedKeyUsage=serverAuth,clientAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
subjectAltName=URI:$trust/ns/default/dc/dc1/svc/$name
EOF
    openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 7 -sha256 \
      -extfile "$name.ext" -out "$name.pem"
  done
)

# ---------------------------------------------------------------- backends
HTTP_PORT=""
NGINX_PID=""
start_nginx() {
  local d="$WORK/nginx"
  mkdir -p "$d/www" "$d/tmp"
  # 100-byte body
  printf '%099d\n' 0 | tr 0 x >"$d/www/index.html"
  alloc_port HTTP_PORT
  {
    [ "$(id -u)" = 0 ] && echo "user root;"
    cat <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $d/nginx.pid;
error_log $d/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http {
    access_log off;
    default_type text/html;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 100000;
    keepalive_timeout 65s;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    server {
        listen 127.0.0.1:$HTTP_PORT backlog=4096;
        root $d/www;
        index index.html;
        location / { }
    }
}
EOF
  } >"$d/nginx.conf"
  start_bg "$d/stderr.log" nginx -p "$d/" -c "$d/nginx.conf" -e "$d/error.log"
  NGINX_PID=$LAST_PID
  wait_port "$HTTP_PORT" "$NGINX_PID" 20 || { log "nginx did not start, see $d/"; exit 1; }
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$HTTP_PORT/")
  [ "$code" = 200 ] || { log "nginx answered $code instead of 200"; exit 1; }
  log "nginx backend on 127.0.0.1:$HTTP_PORT (pid $NGINX_PID)"
}

IPERF_PORT=""
IPERF_PID=""
start_iperf_server() { # LOGFILE
  alloc_port IPERF_PORT
  start_bg "$1" iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT"
  IPERF_PID=$LAST_PID
  wait_port "$IPERF_PORT" "$IPERF_PID" 20
}
stop_iperf_server() { stop_pid "$IPERF_PID"; IPERF_PID=""; }

# ---------------------------------------------------------------- proxy pairs
# start_pair IMPL BACKEND_PORT TAG : starts server-side then client-side proxy.
# Sets LOCAL_PORT, PUBLIC_PORT, CLIENT_PID, SERVER_PID; on failure sets FAIL_REASON and returns 1.
LOCAL_PORT=""; PUBLIC_PORT=""; CLIENT_PID=""; SERVER_PID=""; FAIL_REASON=""; FAIL_LOG=""
start_pair() {
  local impl=$1 backend=$2 tag=$3
  local d="$WORK/$impl/$tag"
  mkdir -p "$d"
  CLIENT_PID=""; SERVER_PID=""; FAIL_REASON=""; FAIL_LOG=""
  alloc_port LOCAL_PORT
  alloc_port PUBLIC_PORT
  # Ours runs twice: with the mux (default) and pinned to one mTLS connection per tunnel.
  SIDECAR_MODE=(); [ "$impl" = backup-sidecar-raw ] && SIDECAR_MODE=(--mux off)
  case "$impl" in
    backup-sidecar|backup-sidecar-raw) start_sidecar_pair "$d" "$backend" ;;
    stunnel) start_stunnel_pair "$d" "$backend" ;;
    haproxy) start_haproxy_pair "$d" "$backend" ;;
  esac
  if [ -z "$SERVER_PID" ] || ! wait_port "$PUBLIC_PORT" "$SERVER_PID" 20; then
    FAIL_REASON="server-side proxy did not start"; FAIL_LOG="$d/server.log"
    stop_pair; return 1
  fi
  case "$impl" in
    backup-sidecar|backup-sidecar-raw) start_sidecar_client "$d" ;;
    stunnel) start_bg "$d/client.log" stunnel4 "$d/client.conf"; CLIENT_PID=$LAST_PID ;;
    haproxy) start_bg "$d/client.log" haproxy -db -f "$d/client.cfg"; CLIENT_PID=$LAST_PID ;;
  esac
  if [ -z "$CLIENT_PID" ] || ! wait_port "$LOCAL_PORT" "$CLIENT_PID" 20; then
    FAIL_REASON="client-side proxy did not start"; FAIL_LOG="$d/client.log"
    stop_pair; return 1
  fi
  return 0
}

stop_pair() {
  [ -n "$CLIENT_PID" ] && stop_pid "$CLIENT_PID"
  [ -n "$SERVER_PID" ] && stop_pid "$SERVER_PID"
  CLIENT_PID=""; SERVER_PID=""
}

start_sidecar_pair() {
  local d=$1 backend=$2
  cat >"$d/server-service.json" <<EOF
{"service":{"kind":"connect-proxy","name":"storage-sidecar-proxy","port":$PUBLIC_PORT,"address":"127.0.0.1","proxy":{"destination_service_name":"storage","local_service_address":"127.0.0.1","local_service_port":$backend}}}
EOF
  cat >"$d/intentions.json" <<'EOF'
[{"Kind":"service-intentions","Name":"storage","Sources":[{"Name":"backup-agent","Action":"allow"}]}]
EOF
  start_bg "$d/server.log" "$SIDECAR_BIN" run --admin-bind off --service-file "$d/server-service.json" \
    --cert "$CERTS/storage.pem" --key "$CERTS/storage.key" --ca "$CERTS/ca.pem" \
    --intentions-file "$d/intentions.json" "${SIDECAR_MODE[@]}" "${SIDECAR_EXTRA[@]}"
  SERVER_PID=$LAST_PID
}

start_sidecar_client() {
  local d=$1 agent_public agent_local
  alloc_port agent_public   # inbound listener of the backup-agent sidecar (unused by the benchmark)
  alloc_port agent_local    # the backup-agent service itself (nothing listens there)
  cat >"$d/client-service.json" <<EOF
{"service":{"kind":"connect-proxy","name":"backup-agent-sidecar-proxy","port":$agent_public,"address":"127.0.0.1","proxy":{"destination_service_name":"backup-agent","local_service_port":$agent_local,"upstreams":[{"destination_name":"storage","local_bind_address":"127.0.0.1","local_bind_port":$LOCAL_PORT}]}}}
EOF
  start_bg "$d/client.log" "$SIDECAR_BIN" run --admin-bind off --service-file "$d/client-service.json" \
    --cert "$CERTS/backup-agent.pem" --key "$CERTS/backup-agent.key" --ca "$CERTS/ca.pem" \
    --upstream-endpoint "storage=127.0.0.1:$PUBLIC_PORT" "${SIDECAR_MODE[@]}" "${SIDECAR_EXTRA[@]}"
  CLIENT_PID=$LAST_PID
}

start_stunnel_pair() {
  local d=$1 backend=$2
  # Shared settings: no per-connection logging (debug = warning), TCP_NODELAY both ways,
  # TLS 1.2 minimum, no session resumption so every connection is a full mTLS handshake.
  local common="foreground = yes
syslog = no
debug = warning
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1"
  cat >"$d/server.conf" <<EOF
$common
pid = $d/server.pid
output = $d/server-output.log

[storage-inbound]
accept = 127.0.0.1:$PUBLIC_PORT
connect = 127.0.0.1:$backend
cert = $CERTS/storage.pem
key = $CERTS/storage.key
CAfile = $CERTS/ca.pem
verifyChain = yes
requireCert = yes
sslVersionMin = TLSv1.2
sessionResume = yes
EOF
  cat >"$d/client.conf" <<EOF
$common
pid = $d/client.pid
output = $d/client-output.log

[storage-upstream]
client = yes
accept = 127.0.0.1:$LOCAL_PORT
connect = 127.0.0.1:$PUBLIC_PORT
cert = $CERTS/backup-agent.pem
key = $CERTS/backup-agent.key
CAfile = $CERTS/ca.pem
verifyChain = yes
sslVersionMin = TLSv1.2
sessionResume = yes
EOF
  start_bg "$d/server.log" stunnel4 "$d/server.conf"
  SERVER_PID=$LAST_PID
}

start_haproxy_pair() {
  local d=$1 backend=$2
  # nbthread 2: the box has 2 cores and backup-sidecar uses at most 2 event-loop threads.
  local global="global
    nbthread 2
    maxconn 4096
    ssl-default-bind-options ssl-min-ver TLSv1.2
    ssl-default-server-options ssl-min-ver TLSv1.2

defaults
    mode tcp
    timeout connect 5s
    timeout client 1m
    timeout server 1m"
  cat >"$d/server.cfg" <<EOF
$global

frontend storage_inbound
    bind 127.0.0.1:$PUBLIC_PORT ssl crt $WORK/storage-combined.pem ca-file $CERTS/ca.pem verify required
    default_backend storage_local

backend storage_local
    server storage 127.0.0.1:$backend
EOF
  # HAProxy reuses TLS sessions toward the server by default, like backup-sidecar and stunnel
  # (sessionResume = yes): the "new connections" row compares resumed handshakes for all three.
  cat >"$d/client.cfg" <<EOF
$global

frontend storage_upstream
    bind 127.0.0.1:$LOCAL_PORT
    default_backend storage_remote

backend storage_remote
    server storage 127.0.0.1:$PUBLIC_PORT ssl crt $WORK/backup-agent-combined.pem ca-file $CERTS/ca.pem verify required
EOF
  start_bg "$d/server.log" haproxy -db -f "$d/server.cfg"
  SERVER_PID=$LAST_PID
}

# ---------------------------------------------------------------- measurements
pids_of_tree() { echo "$1"; descendants "$1"; }
hwm_kib() { # PID -> sum of VmHWM (KiB) over PID and its descendants
  local p s=0 v
  for p in $(pids_of_tree "$1"); do
    v=$(awk '/^VmHWM:/{print $2}' "/proc/$p/status" 2>/dev/null)
    [ -n "$v" ] && s=$((s + v))
  done
  echo "$s"
}

# Peak RSS per side, kept as the maximum over the phases of one implementation.
declare -A RSS_MAX=()
note_rss() { # IMPL
  local c s
  c=$(hwm_kib "$CLIENT_PID"); s=$(hwm_kib "$SERVER_PID")
  echo "client pid(s) $(pids_of_tree "$CLIENT_PID" | tr '\n' ' ') VmHWM ${c} KiB; server pid(s) $(pids_of_tree "$SERVER_PID" | tr '\n' ' ') VmHWM ${s} KiB" \
    >>"$WORK/$1/rss.txt"
  [ "${RSS_MAX[$1.client]:-0}" -lt "$c" ] && RSS_MAX[$1.client]=$c
  [ "${RSS_MAX[$1.server]:-0}" -lt "$s" ] && RSS_MAX[$1.server]=$s
}

run_iperf() { # IMPL PORT STREAMS -> records iperf_pN
  local impl=$1 port=$2 n=$3 out="$WORK/$1/iperf-P$3.json" v
  log "$impl: iperf3 -P $n for ${DUR}s"
  timeout "$CMD_TIMEOUT" iperf3 -c 127.0.0.1 -p "$port" -t "$DUR" -P "$n" -J >"$out" 2>"$out.stderr"
  v=$(python3 - "$out" <<'EOF'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
    if d.get("error"):
        raise ValueError(d["error"])
    bps = d["end"]["sum_received"]["bits_per_second"]
    print(f"{bps / 8e6:.1f}" if bps > 0 else "n/a")
except Exception as e:
    print("n/a")
EOF
)
  record "$impl" "iperf_p$n" "$v"
  [ "$v" = "n/a" ] && record "$impl" note "iperf3 -P $n failed: $(python3 -c 'import json,sys
try: print(json.load(open(sys.argv[1])).get("error","no result"))
except Exception: print("no JSON output")' "$out" | head -c 200) (see $out)"
  log "$impl: iperf3 -P $n -> $v MB/s"
}

# run_wrk IMPL PORT NAME WRK_ARGS... -> records NAME (req/s), NAME_p99 (ms), adds to error count
declare -A ERRS=()
run_wrk() {
  local impl=$1 port=$2 name=$3; shift 3
  local out="$WORK/$impl/wrk-$name.txt" parsed rps p99 errs
  log "$impl: wrk $* (${DUR}s)"
  timeout "$CMD_TIMEOUT" wrk "$@" -d "${DUR}s" "http://127.0.0.1:$port/" >"$out" 2>&1
  echo "exit=$?" >>"$out"
  parsed=$(python3 - "$out" <<'EOF'
import re, sys
txt = open(sys.argv[1]).read()
m = re.search(r"^Requests/sec:\s*([0-9.]+)", txt, re.M)
rps = m.group(1) if m else "n/a"
n_req = re.search(r"^\s*(\d+) requests in", txt, re.M)
errs = 0
m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", txt)
if m: errs += int(m.group(1))
m = re.search(r"Socket errors:\s*connect (\d+), read (\d+), write (\d+), timeout (\d+)", txt)
if m: errs += sum(int(x) for x in m.groups())
if not n_req:
    errs = "n/a"
p99 = "n/a"
m = re.search(r"^\s*99%\s+([0-9.]+)(us|ms|s|m|h)\s*$", txt, re.M)
if m:
    f = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}[m.group(2)]
    p99 = f"{float(m.group(1)) * f:.3f}"
if rps != "n/a" and n_req and int(n_req.group(1)) == 0:
    rps = "n/a"
print(rps, p99, errs)
EOF
)
  read -r rps p99 errs <<<"$parsed"
  record "$impl" "$name" "$rps"
  [ "$rps" = "n/a" ] && record "$impl" note "wrk $name produced no result, see $out"
  [ "$p99" != "n/a" ] && record "$impl" "${name}_p99" "$p99"
  if [ "$errs" = "n/a" ]; then
    ERRS[$impl]="n/a"
  elif [ "${ERRS[$impl]:-0}" != "n/a" ]; then
    ERRS[$impl]=$(( ${ERRS[$impl]:-0} + errs ))
  fi
  log "$impl: $name -> $rps req/s, p99 $p99 ms, errors $errs"
}

run_http_suite() { # IMPL PORT
  local impl=$1 port=$2
  run_wrk "$impl" "$port" conn_rate -t2 -c16 -H 'Connection: close'
  sleep 1   # let TIME_WAIT sockets and the CPU settle
  run_wrk "$impl" "$port" ka_rps -t2 -c16
  sleep 1
  run_wrk "$impl" "$port" lat -t1 -c1 --latency
}

# mTLS enforcement on the server-side proxy: a client without certificate, and one with a certificate
# from a foreign CA, must both fail to get an HTTP answer.
check_mtls() { # IMPL
  local impl=$1 nocert foreign
  nocert=$(curl -sk --http1.1 --max-time 5 -o /dev/null -w '%{http_code}' "https://127.0.0.1:$PUBLIC_PORT/" 2>/dev/null)
  foreign=$(curl -sk --http1.1 --max-time 5 --cert "$WORK/foreign.pem" --key "$WORK/foreign.key" \
    -o /dev/null -w '%{http_code}' "https://127.0.0.1:$PUBLIC_PORT/" 2>/dev/null)
  local a=yes b=yes
  [ "$nocert" = 200 ] && a="NO"
  [ "$foreign" = 200 ] && b="NO"
  record "$impl" mtls "$a / $b"
  log "$impl: rejects client without cert: $a, rejects foreign-CA client cert: $b"
}

e2e_ok() { # PORT : plaintext HTTP through the pair answers 200 (retries for up to 5 s)
  local i code
  for i in $(seq 1 10); do
    code=$(curl -s --max-time 3 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/" 2>/dev/null)
    [ "$code" = 200 ] && return 0
    sleep 0.5
  done
  return 1
}

bench_impl() {
  local impl=$1
  mkdir -p "$WORK/$impl"
  log "=== $impl ==="
  if [[ "$impl" = backup-sidecar* ]] && [ ! -x "$SIDECAR_BIN" ]; then
    record "$impl" status "n/a: binary not found"
    record "$impl" note "binary not found: $SIDECAR_BIN$([ "$BUILD_FAILED" = 1 ] && echo " (swift build failed, see $WORK/build.log)")"
    log "$impl: n/a, binary not found: $SIDECAR_BIN"
    return
  fi
  # Phase 1: HTTP (nginx backend)
  if ! start_pair "$impl" "$HTTP_PORT" http; then
    record "$impl" status "n/a: $FAIL_REASON"; record "$impl" note "$FAIL_REASON, see $FAIL_LOG"
    log "$impl: n/a: $FAIL_REASON (see $FAIL_LOG)"; return
  fi
  log "$impl: client pid $CLIENT_PID on :$LOCAL_PORT -> server pid $SERVER_PID on :$PUBLIC_PORT -> nginx :$HTTP_PORT"
  if ! e2e_ok "$LOCAL_PORT"; then
    record "$impl" status "n/a: no HTTP 200 through the pair"
    record "$impl" note "no HTTP 200 through the proxy pair; logs in $WORK/$impl/http/"
    log "$impl: n/a: no HTTP 200 through the proxy pair"
    stop_pair; return
  fi
  check_mtls "$impl"
  run_http_suite "$impl" "$LOCAL_PORT"
  note_rss "$impl"
  stop_pair

  # Phase 2: bulk throughput (iperf3 backend)
  if ! start_iperf_server "$WORK/$impl/iperf-server.log"; then
    log "$impl: iperf3 server did not start"; stop_iperf_server
    record "$impl" note "iperf3 server did not start, see $WORK/$impl/iperf-server.log"
  elif ! start_pair "$impl" "$IPERF_PORT" iperf; then
    log "$impl: iperf phase: $FAIL_REASON (see $FAIL_LOG)"; stop_iperf_server
    record "$impl" note "iperf phase: $FAIL_REASON, see $FAIL_LOG"
  else
    run_iperf "$impl" "$LOCAL_PORT" 1
    sleep 1
    run_iperf "$impl" "$LOCAL_PORT" 4
    note_rss "$impl"
    stop_pair
    stop_iperf_server
  fi
  record "$impl" rss_client "${RSS_MAX[$impl.client]:-n/a}"
  record "$impl" rss_server "${RSS_MAX[$impl.server]:-n/a}"
  record "$impl" errors "${ERRS[$impl]:-n/a}"
  record "$impl" status ok
}

bench_baseline() {
  local impl=baseline
  mkdir -p "$WORK/$impl"
  log "=== no proxy (reference) ==="
  run_http_suite "$impl" "$HTTP_PORT"
  if start_iperf_server "$WORK/$impl/iperf-server.log"; then
    run_iperf "$impl" "$IPERF_PORT" 1
    sleep 1
    run_iperf "$impl" "$IPERF_PORT" 4
  fi
  stop_iperf_server
  bench_tcp_pair_ceiling
  record "$impl" errors "${ERRS[$impl]:-n/a}"
  record "$impl" status ok
}

# The ceiling for new connections/s through any proxy pair on this machine: HAProxy as two
# plain-TCP hops (no TLS at all) in front of the same nginx. Reported in the reference column.
bench_tcp_pair_ceiling() {
  local d="$WORK/tcp-pair" hop
  mkdir -p "$d"
  alloc_port LOCAL_PORT
  alloc_port PUBLIC_PORT
  for hop in client server; do
    local listen=$LOCAL_PORT target=$PUBLIC_PORT
    [ "$hop" = server ] && { listen=$PUBLIC_PORT; target=$HTTP_PORT; }
    printf 'global\n    nbthread 2\n    maxconn 4096\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1m\n    timeout server 1m\nfrontend hop\n    bind 127.0.0.1:%s\n    default_backend next\nbackend next\n    server next 127.0.0.1:%s\n' \
      "$listen" "$target" >"$d/$hop.cfg"
  done
  start_bg "$d/server.log" haproxy -db -f "$d/server.cfg"; SERVER_PID=$LAST_PID
  start_bg "$d/client.log" haproxy -db -f "$d/client.cfg"; CLIENT_PID=$LAST_PID
  if wait_port "$PUBLIC_PORT" "$SERVER_PID" 20 && wait_port "$LOCAL_PORT" "$CLIENT_PID" 20; then
    run_wrk baseline "$LOCAL_PORT" tcp_pair_conn_rate -t2 -c16 -H 'Connection: close'
  else
    record baseline note "plain-TCP HAProxy pair did not start, see $d/"
  fi
  stop_pair
}

build_sidecar() {
  local want=0 i
  for i in "${IMPLS[@]}"; do [[ "$i" = backup-sidecar* ]] && want=1; done
  [ "$want" = 1 ] || return 0
  if [ "$SIDECAR_BIN_SET" = 1 ] || [ "$NO_BUILD" = 1 ]; then return 0; fi
  if ! command -v swift >/dev/null 2>&1; then
    log "swift not found; backup-sidecar will be n/a unless $SIDECAR_BIN exists"; return 0
  fi
  log "building backup-sidecar: swift build -c release (log: $WORK/build.log)"
  if ! swift build -c release >"$WORK/build.log" 2>&1; then
    log "swift build failed (see $WORK/build.log); backup-sidecar will be n/a"
    BUILD_FAILED=1
  fi
}

# ---------------------------------------------------------------- report
versions() {
  echo "- iperf3: $(iperf3 --version 2>&1 | head -1)"
  echo "- wrk: $(wrk -v 2>&1 | head -1)"
  echo "- nginx: $(nginx -v 2>&1 | head -1)"
  echo "- stunnel: $(stunnel4 -version 2>&1 | grep -m1 '^stunnel')"
  echo "- haproxy: $(haproxy -v 2>&1 | head -1)"
  echo "- openssl: $(openssl version 2>&1)"
  if command -v swift >/dev/null 2>&1; then echo "- swift: $(swift --version 2>&1 | grep -m1 -i 'swift version')"; fi
  if [ -x "$SIDECAR_BIN" ]; then
    echo "- backup-sidecar: $SIDECAR_BIN (git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ', dirty tree'))"
  fi
}

render_table() {
  python3 - "$RESULTS" "${IMPLS[*]}" "$RUN_BASELINE" <<'EOF'
import sys
from collections import defaultdict
res = defaultdict(dict)
notes = []
for line in open(sys.argv[1]):
    parts = line.rstrip("\n").split("\t")
    if len(parts) == 3:
        if parts[1] == "note":
            notes.append(f"- {parts[0]}: {parts[2]}")
        else:
            res[parts[0]][parts[1]] = parts[2]
ran = set(sys.argv[2].split())
baseline = sys.argv[3] == "1"
impls = ["backup-sidecar", "backup-sidecar-raw", "stunnel", "haproxy"]

def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None

# derived metrics
for impl in impls:
    r = res[impl]
    c, s = num(r.get("rss_client")), num(r.get("rss_server"))
    for k in ("rss_client", "rss_server"):
        if num(r.get(k)) is not None:
            r[k] = f"{num(r[k]) / 1024:.1f}"
    if c is not None and s is not None:
        r["rss_total"] = f"{(c + s) / 1024:.1f}"

rows = [
    ("status", "Status", None),
    ("iperf_p1", "iperf3 throughput, 1 stream (MB/s, higher is better)", "hi"),
    ("iperf_p4", "iperf3 throughput, 4 streams (MB/s, higher is better)", "hi"),
    ("conn_rate", "New connections/s, an mTLS handshake each, resumed where the proxy can (wrk -c16, Connection: close; higher is better)", "hi"),
    ("tcp_pair_conn_rate", "New connections/s through HAProxy as two plain-TCP hops, no TLS: the ceiling for any proxy pair here (reference column only)", None),
    ("ka_rps", "Keep-alive requests/s (wrk -c16; higher is better)", "hi"),
    ("lat_p99", "p99 latency, 1 keep-alive connection (ms, lower is better)", "lo"),
    ("rss_client", "Peak RSS client-side proxy (MiB, lower is better)", "lo"),
    ("rss_server", "Peak RSS server-side proxy (MiB, lower is better)", "lo"),
    ("rss_total", "Peak RSS both proxies (MiB, lower is better)", "lo"),
    ("errors", "wrk errors: non-2xx + socket errors, all wrk runs (lower is better)", None),
    ("mtls", "Server side rejects client with no cert / foreign-CA cert", None),
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
        if key.startswith("rss") or key == "mtls":
            b = "—"
        line.append(b if b else "n/a")
    out.append("| " + " | ".join(s.replace("|", "/") for s in line) + " |")
print("\n".join(out))
if notes:
    print("\nNotes:\n")
    print("\n".join(notes))
EOF
}

# ---------------------------------------------------------------- main
START_TS=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
BUILD_FAILED=0
log "work dir: $WORK (logs and raw outputs stay here)"
ensure_tools
build_sidecar
make_certs
start_nginx

for impl in "${IMPLS[@]}"; do
  bench_impl "$impl"
  sleep 1
done
[ "$RUN_BASELINE" = 1 ] && bench_baseline

TABLE=$(render_table)
END_TS=$(date -u '+%Y-%m-%d %H:%M:%S UTC')

mkdir -p "$SCRIPT_DIR/results"
{
  echo "# backup-sidecar benchmark results"
  echo
  echo "- date: $START_TS (finished $END_TS)"
  echo "- command: \`$CMDLINE\`"
  echo "- kernel: $(uname -r); CPUs: $(nproc) ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'))"
  echo "- duration per measurement: ${DUR}s; implementations run: ${IMPLS[*]:-none}$([ "$RUN_BASELINE" = 1 ] && echo ', no-proxy reference')"
  [ -n "$ONLY" ] && echo "- partial run (--only $ONLY): columns marked 'not run' were skipped"
  [ -n "$CERT_NOTE" ] && echo "- note: $CERT_NOTE"
  [ "$BUILD_FAILED" = 1 ] && echo "- note: swift build -c release failed"
  echo
  echo "Tool versions:"
  echo
  versions
  echo
  echo "$TABLE"
  echo
  echo "Measurements: iperf3 -c 127.0.0.1 -p LOCAL -t $DUR -P {1,4} -J (sum_received, 10^6 bytes/s);"
  echo "wrk -t2 -c16 -d${DUR}s -H 'Connection: close'; wrk -t2 -c16 -d${DUR}s; wrk -t1 -c1 -d${DUR}s --latency (99% line)."
  echo "Peak RSS is VmHWM from /proc/PID/status of each proxy process (and any children), the max over the HTTP and iperf phases."
} >"$SCRIPT_DIR/results/latest.md"

echo
echo "$TABLE"
echo
echo "Results written to bench/results/latest.md"
echo "Logs, configs and raw outputs: $WORK"
