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
# Usage: bench/run.sh [--quick] [--only NAME[,NAME...]] [--no-build] [--check] [--help]
#   --check: then compare our columns with HAProxy's against bench/ratio-floors.tsv (exit 1 on
#         a regression, 3 when inconclusive: HAProxy not run, or the host stole the CPU)
#   NAME: backup-sidecar (alias: sidecar, ours; the mux on, the default), backup-sidecar-raw
#         (--mux off: one mTLS connection per tunnel), stunnel, haproxy, baseline (no proxy)
# Environment:
#   SIDECAR_BIN          path to the backup-sidecar binary (default .build-static/release/backup-sidecar,
#                        built as scripts/package.sh builds the shipped one: release, static Swift
#                        runtime; when set, no build is attempted)
#   SIDECAR_EXTRA_ARGS   extra arguments added to both backup-sidecar command lines
#   BENCH_DURATION       seconds per measurement (default 8, or 2 with --quick)

set -uo pipefail

SCRIPT_DIR=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")   # from any directory, via symlinks
# shellcheck source=bench/lib.sh
. "$SCRIPT_DIR/lib.sh"   # ROOT, log, processes, ports, certificates, proxy pairs (see there)
cd "$ROOT" || exit 1

CMDLINE="bench/run.sh"
for a in "$@"; do CMDLINE+=" $(printf '%q' "$a")"; done

# ---------------------------------------------------------------- options
QUICK=0
NO_BUILD=0
CHECK=0
ONLY=""
usage() { bench_usage; }   # the header above (its path was resolved before the cd)
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --no-build) NO_BUILD=1 ;;
    --check) CHECK=1 ;;
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
SIDECAR_BIN=${SIDECAR_BIN:-.build-static/release/backup-sidecar}
case "$SIDECAR_BIN" in /*) ;; *) SIDECAR_BIN="$ROOT/$SIDECAR_BIN" ;; esac
read -r -a SIDECAR_EXTRA <<<"${SIDECAR_EXTRA_ARGS:-}"

# ---------------------------------------------------------------- temp dir
new_workdir bench
RESULTS="$WORK/results.tsv"
: >"$RESULTS"

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

# ---------------------------------------------------------------- results
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RESULTS"; }  # impl metric value

# ---------------------------------------------------------------- proxy pairs
# start_pair IMPL BACKEND_PORT TAG : starts server-side then client-side proxy.
# Sets LOCAL_PORT, PUBLIC_PORT, CLIENT_PID, SERVER_PID; on failure sets FAIL_REASON and returns 1.
LOCAL_PORT=""; PUBLIC_PORT=""; FAIL_REASON=""; FAIL_LOG=""
start_pair() {
  local impl=$1 backend=$2 tag=$3
  local d="$WORK/$impl/$tag"
  mkdir -p "$d"
  CLIENT_PID=""; SERVER_PID=""; FAIL_REASON=""; FAIL_LOG=""
  alloc_port LOCAL_PORT
  alloc_port PUBLIC_PORT
  # Ours runs twice: with the mux (default) and pinned to one mTLS connection per tunnel.
  local sidecar_args=(); [ "$impl" = backup-sidecar-raw ] && sidecar_args=(--mux off)
  sidecar_args+=("${SIDECAR_EXTRA[@]}")
  case "$impl" in
    backup-sidecar|backup-sidecar-raw) start_sidecar_server "$d" "$PUBLIC_PORT" "$backend" "${sidecar_args[@]}" ;;
    stunnel) write_stunnel_pair "$d" "$PUBLIC_PORT" "$LOCAL_PORT" "$backend"
             start_bg "$d/server.log" stunnel4 "$d/server.conf"; SERVER_PID=$LAST_PID ;;
    haproxy) write_haproxy_pair "$d" "$PUBLIC_PORT" "$LOCAL_PORT" "$backend" 4096 1m
             start_bg "$d/server.log" haproxy -db -f "$d/server.cfg"; SERVER_PID=$LAST_PID ;;
  esac
  if [ -z "$SERVER_PID" ] || ! await_port "$PUBLIC_PORT" "$SERVER_PID" 20; then
    FAIL_REASON="server-side proxy did not start"; FAIL_LOG="$d/server.log"
    stop_pair; return 1
  fi
  case "$impl" in
    backup-sidecar|backup-sidecar-raw) start_sidecar_client --inbound "$d" "$LOCAL_PORT" "$PUBLIC_PORT" "${sidecar_args[@]}" ;;
    stunnel) start_bg "$d/client.log" stunnel4 "$d/client.conf"; CLIENT_PID=$LAST_PID ;;
    haproxy) start_bg "$d/client.log" haproxy -db -f "$d/client.cfg"; CLIENT_PID=$LAST_PID ;;
  esac
  if [ -z "$CLIENT_PID" ] || ! await_port "$LOCAL_PORT" "$CLIENT_PID" 20; then
    FAIL_REASON="client-side proxy did not start"; FAIL_LOG="$d/client.log"
    stop_pair; return 1
  fi
  return 0
}

# ---------------------------------------------------------------- measurements
# Peak RSS per side, kept as the maximum over the phases of one implementation.
declare -A RSS_MAX=()
note_rss() { # IMPL
  local c s
  c=$(tree_kib "$CLIENT_PID" VmHWM); s=$(tree_kib "$SERVER_PID" VmHWM)
  echo "client pid(s) $(tree_pids "$CLIENT_PID" | tr '\n' ' ') VmHWM ${c} KiB; server pid(s) $(tree_pids "$SERVER_PID" | tr '\n' ' ') VmHWM ${s} KiB" \
    >>"$WORK/$1/rss.txt"
  [ "${RSS_MAX[$1.client]:-0}" -lt "$c" ] && RSS_MAX[$1.client]=$c
  [ "${RSS_MAX[$1.server]:-0}" -lt "$s" ] && RSS_MAX[$1.server]=$s
}

# Idle RSS: VmRSS of each side after start and one request, then 1 s of nothing; the larger
# side is the figure (what one proxy costs a host that is not transferring).
note_idle_rss() { # IMPL
  sleep 1
  local c s ca sa
  c=$(tree_kib "$CLIENT_PID" VmRSS); s=$(tree_kib "$SERVER_PID" VmRSS)
  ca=$(tree_kib "$CLIENT_PID" RssAnon); sa=$(tree_kib "$SERVER_PID" RssAnon)
  echo "idle: client VmRSS ${c} KiB (RssAnon ${ca}); server VmRSS ${s} KiB (RssAnon ${sa})" >>"$WORK/$1/rss.txt"
  record "$1" idle_rss "$(( c > s ? c : s ))"
  # Private memory only: RSS also counts the program's mapped code and libraries, pages
  # the page cache shares with every other process running the same files.
  record "$1" idle_anon "$(( ca > sa ? ca : sa ))"
}

# CPU per GiB: utime+stime of both proxies (and their children) over every iperf3 run of one
# implementation, divided by the bytes the iperf3 server received in those runs.
declare -A BULK_TICKS=() BULK_BYTES=()
run_iperf() { # IMPL PORT STREAMS -> records iperf_pN; adds to BULK_TICKS and BULK_BYTES
  local impl=$1 port=$2 n=$3 out="$WORK/$1/iperf-P$3.json" v bytes t0=0 t1=0
  [ -n "$CLIENT_PID" ] && t0=$(( $(tree_cpu_ticks "$CLIENT_PID") + $(tree_cpu_ticks "$SERVER_PID") ))
  log "$impl: iperf3 -P $n for ${DUR}s"
  timeout "$CMD_TIMEOUT" iperf3 -c 127.0.0.1 -p "$port" -t "$DUR" -P "$n" -J >"$out" 2>"$out.stderr"
  [ -n "$CLIENT_PID" ] && t1=$(( $(tree_cpu_ticks "$CLIENT_PID") + $(tree_cpu_ticks "$SERVER_PID") ))
  v=$(bench_py iperf3_result "$out")
  bytes=$(bench_py iperf3_result --bytes "$out")
  if [ "$bytes" != n/a ] && [ "${BULK_BYTES[$impl]:-0}" != n/a ]; then
    BULK_TICKS[$impl]=$(( ${BULK_TICKS[$impl]:-0} + t1 - t0 ))
    BULK_BYTES[$impl]=$(( ${BULK_BYTES[$impl]:-0} + bytes ))
  else
    BULK_BYTES[$impl]=n/a
  fi
  record "$impl" "iperf_p$n" "$v"
  [ "$v" = "n/a" ] && record "$impl" note "iperf3 -P $n failed: $(bench_py iperf3_result --error "$out" | head -c 200) (see $out)"
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
  parsed=$(bench_py wrk_result "$out")
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
  foreign=$(curl -sk --http1.1 --max-time 5 --cert "$CERTS/other-backup-agent.pem" --key "$CERTS/other-backup-agent.key" \
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

# steal_ticks: CPU time the hypervisor gave to others while we were runnable (/proc/stat, all
# CPUs). A column measured while it grew is the host's noise, not the implementation's.
steal_ticks() { awk '$1 == "cpu" {print $9}' /proc/stat; }
record_steal() { # IMPL TICKS_AT_START
  record "$1" steal "$(python3 -c "import sys; print(f'{(int(sys.argv[1]) - int(sys.argv[2])) / int(sys.argv[3]):.1f}')" \
    "$(steal_ticks)" "$2" "$(getconf CLK_TCK)")"
}

bench_impl() {
  local impl=$1 steal_start
  steal_start=$(steal_ticks)
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
  note_idle_rss "$impl"
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
    if [ "${BULK_BYTES[$impl]:-n/a}" != n/a ] && [ "${BULK_BYTES[$impl]}" -gt 0 ]; then
      record "$impl" cpu_per_gib "$(python3 -c "import sys; t, hz, b = map(int, sys.argv[1:]); print(f'{t / hz / (b / 2**30):.3f}')" \
        "${BULK_TICKS[$impl]}" "$(getconf CLK_TCK)" "${BULK_BYTES[$impl]}")"
    fi
  fi
  record "$impl" rss_client "${RSS_MAX[$impl.client]:-n/a}"
  record "$impl" rss_server "${RSS_MAX[$impl.server]:-n/a}"
  record "$impl" errors "${ERRS[$impl]:-n/a}"
  record_steal "$impl" "$steal_start"
  record "$impl" status ok
}

bench_baseline() {
  local impl=baseline steal_start
  steal_start=$(steal_ticks)
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
  record_steal "$impl" "$steal_start"
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
  if await_port "$PUBLIC_PORT" "$SERVER_PID" 20 && await_port "$LOCAL_PORT" "$CLIENT_PID" 20; then
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
  # shellcheck source=scripts/shipped-build.sh
  . "$ROOT/scripts/shipped-build.sh" || { log "scripts/shipped-build.sh failed; backup-sidecar will be n/a"; BUILD_FAILED=1; return 0; }
  log "building backup-sidecar as shipped: swift build ${SHIPPED_BUILD_FLAGS[*]} (log: $WORK/build.log)"
  if ! swift build "${SHIPPED_BUILD_FLAGS[@]}" >"$WORK/build.log" 2>&1; then
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

render_table() { bench_py render_table "$RESULTS" "${IMPLS[*]}" "$RUN_BASELINE"; }

# ---------------------------------------------------------------- main
START_TS=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
BUILD_FAILED=0
log "work dir: $WORK (logs and raw outputs stay here)"
ensure_tools
build_sidecar
log "generating certificates with certs-dev/gen.sh"
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
  echo "Idle RSS is VmRSS of the larger side 1 s after start and one request; idle private memory is RssAnon,"
  echo "the same reading without file-backed pages (code and libraries, shared through the page cache). CPU per GiB is utime+stime"
  echo "(/proc/PID/stat) of both proxies over both iperf3 runs, divided by the bytes iperf3 received."
} >"$SCRIPT_DIR/results/latest.md"

echo
echo "$TABLE"
echo
echo "Results written to bench/results/latest.md"
echo "Logs, configs and raw outputs: $WORK"
if [ "$CHECK" = 1 ]; then
  echo
  echo "Regression check against HAProxy (bench/ratio-floors.tsv):"
  bench_py check_ratios "$RESULTS" "$SCRIPT_DIR/ratio-floors.tsv"
  exit $?
fi
