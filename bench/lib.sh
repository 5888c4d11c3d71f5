# shellcheck shell=bash
# bench/lib.sh - the launcher library of bench/run.sh, bench/scale.sh and bench/rotation.sh.
#
# Source it first, by its absolute path, from a bench script (before any cd), then cd "$ROOT":
# build_release and swift need the repository root; everything else uses absolute paths. It
# builds on scripts/lib.sh (the `pids` list, port_open, await_port, wait_port, wait_ready) and adds:
#   BENCH_DIR / ROOT          absolute bench/ and repository directories (symlinks resolved)
#   bench_usage / bench_help  the running script's header comment as its --help
#   log / die                 timestamped messages on stderr
#   new_workdir NAME          the temp dir /tmp/backup-sidecar-NAME.XXXXXX (WORK, CERTS)
#   start_bg / stop_pid       background processes: every one is stopped on exit (also on
#                             Ctrl-C or SIGTERM), children included, SIGKILL after 5 s
#   bench_subshell            first command of a `{ ...; } | tee` group: what it starts is
#                             stopped when it ends, fails or is interrupted
#   alloc_port VAR            a free 127.0.0.1 port outside the ephemeral range
#   proc_kib / tree_kib       VmRSS / VmHWM of a process (and its descendants)
#   tree_cpu_ticks PID        utime+stime of a process and its descendants, in clock ticks
#   make_certs                certificates from certs-dev/gen.sh, and nothing else
#   start_nginx, start_iperf_server / stop_iperf_server   the HTTP and bulk backends
#   build_release LOG         swift build -c release --scratch-path .build-release (BIN_DIR)
#   start_sidecar_server/_client, write_haproxy_pair, write_stunnel_pair, stop_pair
#                             an mTLS proxy pair: backup-sidecar, HAProxy or stunnel, same certs
#   bench_py NAME ARGS...     runs bench/py/NAME.py (the scripts' Python helpers)
# Every function works with and without `set -e` (scale.sh and rotation.sh use it, run.sh not).

# readlink -f: absolute, through symlinks, and no `cd` (CDPATH could print into the result).
BENCH_DIR=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
ROOT=$(dirname "$BENCH_DIR")
# The script being run, for bench_usage; $0 is still valid: nothing has changed directory yet.
BENCH_SCRIPT=$(readlink -f "$0")
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "$*"; exit 1; }

# bench_usage: the running script's header comment (after the shebang, up to the first line
# that is not a comment) without the leading "# ".
bench_usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$BENCH_SCRIPT"; }
# bench_help ARG...: prints bench_usage and exits 0 when ARG is -h or --help (call it with "$@"
# before anything slow: scale.sh and rotation.sh would otherwise start a build).
bench_help() {
  case "${1:-}" in -h|--help) bench_usage; exit 0 ;; esac
}

bench_py() { local name=$1; shift; python3 "$BENCH_DIR/py/$name.py" "$@"; }

# new_workdir NAME: creates WORK (mode 755: nginx workers that are not root read it) and names
# CERTS, its certificate directory, and PID_FILE (see start_bg). `work` is the same path for
# scripts/lib.sh's messages.
WORK=""; CERTS=""; work=""; PID_FILE=""
new_workdir() {
  WORK=$(mktemp -d "/tmp/backup-sidecar-$1.XXXXXX")
  chmod 755 "$WORK"
  CERTS="$WORK/certs"
  PID_FILE="$WORK/pids"
  # shellcheck disable=SC2034 # read by scripts/lib.sh
  work=$WORK
}

# ---------------------------------------------------------------- processes
LAST_PID=""
# start_bg LOGFILE CMD... : start CMD in the background, stdout+stderr to LOGFILE; sets LAST_PID.
# The PID goes into `pids` (this shell's cleanup stops it) and, after new_workdir, into
# PID_FILE: the main shell's cleanup also stops what a subshell started and left running.
start_bg() {
  local logf=$1; shift
  "$@" >"$logf" 2>&1 </dev/null &
  LAST_PID=$!
  pids+=("$LAST_PID")
  if [ -n "$PID_FILE" ]; then echo "$LAST_PID" >>"$PID_FILE"; fi
}

descendants() { # PID -> all descendant PIDs (children first level, then deeper)
  local c
  for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do
    echo "$c"
    descendants "$c"
  done
}

# stop_pid PID: SIGTERM, up to 5 s to exit, then SIGKILL; its descendants are killed too.
stop_pid() {
  local pid=$1 kids p
  [ -n "$pid" ] || return 0
  kids=$(descendants "$pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  for p in $kids; do kill -KILL "$p" 2>/dev/null || true; done
  local keep=()
  for p in "${pids[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  pids=("${keep[@]}")
  if [ -f "$PID_FILE" ]; then sed -i "/^$pid\$/d" "$PID_FILE" 2>/dev/null || true; fi
}

# Replaces scripts/lib.sh's cleanup (its EXIT trap calls this one): proxies and backends get
# SIGKILL when they do not stop, and their children go with them. The main shell also stops
# every PID still in PID_FILE (started by a subshell that died without its own cleanup).
cleanup() {
  local p recorded=""
  for p in "${pids[@]}"; do stop_pid "$p"; done
  if [ "$BASHPID" = "$$" ] && [ -f "$PID_FILE" ]; then recorded=$(<"$PID_FILE"); fi
  for p in $recorded; do stop_pid "$p"; done
}
# bench_traps: cleanup on exit, on Ctrl-C and on SIGTERM, in the shell that calls it (bash
# gives a subshell none of these traps).
bench_traps() {
  trap cleanup EXIT
  trap 'log "interrupted"; exit 130' INT
  trap 'log "terminated"; exit 143' TERM
}
bench_traps
# bench_subshell: call it first in a `{ ...; } | tee` group, which bash runs in a subshell: the
# processes started there (and only those) are stopped when the group ends, fails (set -e,
# die, wait_port) or is interrupted.
bench_subshell() { pids=(); bench_traps; }

# ---------------------------------------------------------------- ports
declare -A USED_PORTS=()
# alloc_port VAR : store a currently free 127.0.0.1 TCP port in VAR (never handed out twice per
# run). Ports come from 20000-32767, below the kernel's ephemeral range, so the load tools'
# outgoing connections never race with our listeners.
alloc_port() {
  local p
  p=$(bench_py free_port "${!USED_PORTS[@]}")
  USED_PORTS[$p]=1
  printf -v "$1" '%s' "$p"
}

# ---------------------------------------------------------------- memory
# proc_kib PID FIELD: FIELD (VmRSS, VmHWM, ...) of /proc/PID/status in KiB; fails when PID is gone.
proc_kib() { awk -v field="$2:" '$1 == field {print $2}' "/proc/$1/status" 2>/dev/null; }
tree_pids() { echo "$1"; descendants "$1"; }
# tree_kib PID FIELD: FIELD summed over PID and its descendants.
tree_kib() {
  local p s=0 v
  for p in $(tree_pids "$1"); do
    v=$(proc_kib "$p" "$2") || true
    if [ -n "$v" ]; then s=$((s + v)); fi
  done
  echo "$s"
}

# tree_cpu_ticks PID: utime + stime (fields 14 and 15 of /proc/PID/stat, counted after the
# ")" that ends the command name) summed over PID and its descendants, in CLK_TCK ticks.
tree_cpu_ticks() {
  local p s=0 v
  for p in $(tree_pids "$1"); do
    v=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null) || true
    if [ -n "$v" ]; then s=$((s + v)); fi
  done
  echo "$s"
}

# ---------------------------------------------------------------- backends
# start_nginx: nginx serving a 100-byte page on HTTP_PORT (NGINX_PID). start_iperf_server
# LOGFILE: iperf3 -s on IPERF_PORT (IPERF_PID); stop_iperf_server stops it.
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
  await_port "$HTTP_PORT" "$NGINX_PID" 20 || { log "nginx did not start, see $d/"; exit 1; }
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
  await_port "$IPERF_PORT" "$IPERF_PID" 20
}
stop_iperf_server() { stop_pid "$IPERF_PID"; IPERF_PID=""; }

# ---------------------------------------------------------------- certificates and build
# make_certs: a fresh PKI from certs-dev/gen.sh in CERTS (log: WORK/gen-certs.log), plus
# certificate+key files for HAProxy: WORK/backup-agent-combined.pem, WORK/storage-combined.pem.
# Exits the script when gen.sh fails or a file the benchmarks use is missing.
make_certs() {
  local f
  mkdir -p "$CERTS"
  if ! bash "$ROOT/certs-dev/gen.sh" "$CERTS" >"$WORK/gen-certs.log" 2>&1; then
    sed 's/^/  /' "$WORK/gen-certs.log" >&2
    die "certs-dev/gen.sh failed (output above and in $WORK/gen-certs.log); the benchmarks use no other certificates"
  fi
  for f in ca.pem backup-agent.pem backup-agent.key storage.pem storage.key other-backup-agent.pem other-backup-agent.key; do
    [ -s "$CERTS/$f" ] || die "certificate file missing after certs-dev/gen.sh: $CERTS/$f"
  done
  cat "$CERTS/backup-agent.pem" "$CERTS/backup-agent.key" >"$WORK/backup-agent-combined.pem"
  cat "$CERTS/storage.pem" "$CERTS/storage.key" >"$WORK/storage-combined.pem"
}

# build_release LOG: release build in .build-release (quiet; on failure LOG is printed and the
# script exits); sets BIN_DIR.
build_release() {
  swift build -c release --scratch-path .build-release >"$1" 2>&1 || { cat "$1"; exit 1; }
  # shellcheck disable=SC2034 # for the caller
  BIN_DIR=$(swift build -c release --scratch-path .build-release --show-bin-path)
}

# ---------------------------------------------------------------- mTLS proxy pairs
# load -> 127.0.0.1:LOCAL client side (backup-agent leaf) =mTLS=> 127.0.0.1:PUBLIC server side
# (storage leaf, client certificate required) -> 127.0.0.1:BACKEND. Every proxy logs to
# DIR/{server,client}.log; SERVER_PID and CLIENT_PID are set.
SERVER_PID=""; CLIENT_PID=""

# start_sidecar_server DIR PUBLIC BACKEND [ARG...]: backup-sidecar (SIDECAR_BIN) in file mode as
# the storage sidecar, with an intentions file allowing backup-agent -> storage.
start_sidecar_server() {
  local d=$1 public=$2 backend=$3; shift 3
  cat >"$d/server-service.json" <<EOF
{"service":{"kind":"connect-proxy","name":"storage-sidecar-proxy","port":$public,"address":"127.0.0.1","proxy":{"destination_service_name":"storage","local_service_address":"127.0.0.1","local_service_port":$backend}}}
EOF
  cat >"$d/intentions.json" <<'EOF'
[{"Kind":"service-intentions","Name":"storage","Sources":[{"Name":"backup-agent","Action":"allow"}]}]
EOF
  start_bg "$d/server.log" "$SIDECAR_BIN" run --admin-bind off --service-file "$d/server-service.json" \
    --cert "$CERTS/storage.pem" --key "$CERTS/storage.key" --ca "$CERTS/ca.pem" \
    --intentions-file "$d/intentions.json" "$@"
  SERVER_PID=$LAST_PID
}

# start_sidecar_client [--inbound] DIR LOCAL PUBLIC [ARG...]: backup-sidecar as the backup-agent
# sidecar, upstream storage on LOCAL, sent to PUBLIC. --inbound also gives it its own public
# listener and service port (free ports; nothing uses them).
start_sidecar_client() {
  local own="" service_port="" agent_public agent_local
  if [ "$1" = --inbound ]; then
    alloc_port agent_public; alloc_port agent_local
    own="\"port\":$agent_public,\"address\":\"127.0.0.1\","
    service_port="\"local_service_port\":$agent_local,"
    shift
  fi
  local d=$1 local_port=$2 public=$3; shift 3
  cat >"$d/client-service.json" <<EOF
{"service":{"kind":"connect-proxy","name":"backup-agent-sidecar-proxy",$own"proxy":{"destination_service_name":"backup-agent",$service_port"upstreams":[{"destination_name":"storage","local_bind_address":"127.0.0.1","local_bind_port":$local_port}]}}}
EOF
  start_bg "$d/client.log" "$SIDECAR_BIN" run --admin-bind off --service-file "$d/client-service.json" \
    --cert "$CERTS/backup-agent.pem" --key "$CERTS/backup-agent.key" --ca "$CERTS/ca.pem" \
    --upstream-endpoint "storage=127.0.0.1:$public" "$@"
  CLIENT_PID=$LAST_PID
}

# write_haproxy_pair DIR PUBLIC LOCAL BACKEND MAXCONN TIMEOUT [FRONTEND_MAXCONN]: DIR/server.cfg
# and DIR/client.cfg for `haproxy -db -f`, mode tcp, nbthread 2 (the box has 2 cores and
# backup-sidecar uses at most 2 event-loop threads), TLS 1.2 minimum; TIMEOUT is the client and
# server timeout, FRONTEND_MAXCONN, when given, goes into `defaults`. HAProxy reuses TLS
# sessions toward the server by default, like backup-sidecar and stunnel (sessionResume = yes).
write_haproxy_pair() {
  local d=$1 public=$2 local_port=$3 backend=$4 maxconn=$5 timeout=$6 frontend_maxconn=""
  [ -z "${7:-}" ] || frontend_maxconn="
    maxconn $7"
  local global="global
    nbthread 2
    maxconn $maxconn
    ssl-default-bind-options ssl-min-ver TLSv1.2
    ssl-default-server-options ssl-min-ver TLSv1.2

defaults
    mode tcp$frontend_maxconn
    timeout connect 5s
    timeout client $timeout
    timeout server $timeout"
  cat >"$d/server.cfg" <<EOF
$global

frontend storage_inbound
    bind 127.0.0.1:$public ssl crt $WORK/storage-combined.pem ca-file $CERTS/ca.pem verify required
    default_backend storage_local

backend storage_local
    server storage 127.0.0.1:$backend
EOF
  cat >"$d/client.cfg" <<EOF
$global

frontend storage_upstream
    bind 127.0.0.1:$local_port
    default_backend storage_remote

backend storage_remote
    server storage 127.0.0.1:$public ssl crt $WORK/backup-agent-combined.pem ca-file $CERTS/ca.pem verify required
EOF
}

# write_stunnel_pair DIR PUBLIC LOCAL BACKEND: DIR/server.conf and DIR/client.conf for stunnel4
# (foreground). Both: no per-connection logging (debug = warning), TCP_NODELAY both ways,
# TLS 1.2 minimum, session resumption on (sessionResume = yes), like the other two.
write_stunnel_pair() {
  local d=$1 public=$2 local_port=$3 backend=$4
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
accept = 127.0.0.1:$public
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
accept = 127.0.0.1:$local_port
connect = 127.0.0.1:$public
cert = $CERTS/backup-agent.pem
key = $CERTS/backup-agent.key
CAfile = $CERTS/ca.pem
verifyChain = yes
sslVersionMin = TLSv1.2
sessionResume = yes
EOF
}

# stop_pair: stops the client side, then the server side.
stop_pair() {
  if [ -n "$CLIENT_PID" ]; then stop_pid "$CLIENT_PID"; fi
  if [ -n "$SERVER_PID" ]; then stop_pid "$SERVER_PID"; fi
  CLIENT_PID=""; SERVER_PID=""
}
