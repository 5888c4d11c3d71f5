# shellcheck shell=bash
# Shared by scripts/demo.sh and bench/lib.sh (the launcher library of bench/*.sh builds on it)
# for scripts that start background processes on 127.0.0.1.
# Source it; append every background PID to `pids` and they are stopped on exit.

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -f "${TMPDIR:-/tmp}/backup-sidecar-ports.$$"
}
trap cleanup EXIT

# free_port: a free 127.0.0.1 TCP port above the kernel's ephemeral range (where the client
# side of every connection on the host takes its port, so a port picked there can be taken
# before we bind it; the test suite's fixtures use 10000-32000), never the same twice in one
# run of the calling script (it runs in a subshell: the ports handed out are kept in a file).
free_port() {
  local used="${TMPDIR:-/tmp}/backup-sidecar-ports.$$" low port
  low=$(( $(cut -f2 /proc/sys/net/ipv4/ip_local_port_range) + 1 ))
  [ "$low" -lt 64000 ] || low=61000
  # shellcheck disable=SC2046
  port=$(python3 "$(dirname "${BASH_SOURCE[0]}")/../bench/py/free_port.py" --range "$low-65535" $(cat "$used" 2>/dev/null))
  echo "$port" >>"$used"
  echo "$port"
}

# port_open PORT: 127.0.0.1:PORT accepts a TCP connection right now.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# await_port PORT [PID] [SECONDS]: waits up to SECONDS (default 20) for 127.0.0.1:PORT to accept
# TCP; returns 1 when the time is up or, when PID is given, as soon as process PID is gone.
await_port() {
  local port=$1 pid=${2:-} max=${3:-20}
  for _ in $(seq 1 $((max * 10))); do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
    port_open "$port" && return 0
    sleep 0.1
  done
  return 1
}

# wait_port PORT: up to 10 s for 127.0.0.1:PORT to accept TCP; exits the script if it never does.
wait_port() {
  await_port "$1" "" 10 || { echo "port $1 never opened${work:+; logs in $work}" >&2; exit 1; }
}

# wait_ready ADMIN_PORT...: up to 20 s for every sidecar's /ready (registration, certificates
# and intentions loaded, listeners bound); exits the script if one never gets there.
wait_ready() {
  local port
  for port in "$@"; do
    for _ in $(seq 200); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break; sleep 0.1; done
    curl -sf "http://127.0.0.1:$port/ready" >/dev/null 2>&1 || { echo "sidecar with admin port $port not ready${work:+; logs in $work}" >&2; exit 1; }
  done
}
