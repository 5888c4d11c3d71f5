#!/usr/bin/env bash
# A real deployment's shape on one machine: a Consul host, a backup host and two storage hosts,
# each its own network namespace on a private bridge (192.0.2.0/24, documentation range; the
# bridge lives in a namespace of its own, so nothing leaves them). Everything is found through
# the dev agent by real addresses. Then the faults: a storage host's link goes down mid-run,
# and the Consul host is unreachable for 60 s.
#
# Usage: scripts/multihost.sh [BINARY]   (default: the debug build's backup-sidecar)
# Needs root (ip netns), socat, curl. Prints one line per check; exits 1 on the first failure,
# 77 when network namespaces cannot be created here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bin="${1:-$(swift build --show-bin-path 2>/dev/null)/backup-sidecar}"
[ -x "$bin" ] || { echo "multihost: no binary at $bin (swift build first)" >&2; exit 1; }
tag="bs$$"
work="$(mktemp -d)"
hosts=(consul backup s1 s2)
declare -A address=([consul]=192.0.2.10 [backup]=192.0.2.20 [s1]=192.0.2.31 [s2]=192.0.2.32)
pids=()

cleanup() {
  # Everything started inside a host (sidecars, agent, echo servers, clients) goes with it;
  # what ran outside ends when its pipes do.
  for host in "${hosts[@]}"; do ip netns pids "$tag-$host" 2>/dev/null | xargs -r kill -9 2>/dev/null || true; done
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for host in "${hosts[@]}" sw; do ip netns del "$tag-$host" 2>/dev/null || true; done
  if [ "${keep_logs:-0}" = 1 ]; then echo "multihost: logs in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

fail() { echo "FAIL: $*"; keep_logs=1; exit 1; }
pass() { echo "PASS: $*"; }
in_ns() { local host=$1; shift; ip netns exec "$tag-$host" "$@"; }
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }

# --- hosts -------------------------------------------------------------------------------
if ! ip netns add "$tag-sw" 2>/dev/null; then
  echo "multihost: cannot create network namespaces here (needs root and CAP_SYS_ADMIN)" >&2
  exit 77
fi
ip -n "$tag-sw" link add br0 type bridge
ip -n "$tag-sw" link set br0 up
for host in "${hosts[@]}"; do
  ip netns add "$tag-$host"
  ip link add "p-$host" netns "$tag-sw" type veth peer name eth0 netns "$tag-$host"
  ip -n "$tag-sw" link set "p-$host" master br0 up
  ip -n "$tag-$host" addr add "${address[$host]}/24" dev eth0
  ip -n "$tag-$host" link set eth0 up
  ip -n "$tag-$host" link set lo up
done
# A host goes dark: its address leaves its interface, so packets to it vanish (its kernel no
# longer owns the address: no reply, no reset) and it sends nothing; "up" puts it back. (Taking
# the switch port down instead also disturbs the bridge's other ports for a few seconds here.)
link() {
  if [ "$2" = down ]; then ip -n "$tag-$1" addr del "${address[$1]}/24" dev eth0
  else ip -n "$tag-$1" addr add "${address[$1]}/24" dev eth0; fi
}

# --- Consul host: the dev agent and the registrations ---------------------------------------
mkdir -p "$work/consul.d"
storage_service() {
  cat > "$work/consul.d/storage-$1.json" <<EOF
{"service": {"id": "storage-$1", "name": "storage", "address": "$2", "port": 8080,
  "connect": {"sidecar_service": {"address": "$2", "port": 21000}}}}
EOF
}
storage_service 1 "${address[s1]}"
storage_service 2 "${address[s2]}"
cat > "$work/consul.d/backup-agent.json" <<EOF
{"service": {"name": "backup-agent", "address": "${address[backup]}", "port": 9100,
  "connect": {"sidecar_service": {"address": "${address[backup]}", "port": 21000,
    "proxy": {"config": {"handshake_timeout_ms": 2000},
              "upstreams": [{"destination_name": "storage", "local_bind_port": 19100,
                             "config": {"connect_timeout_ms": 2000}}]}}}}}
EOF
cat > "$work/consul.d/intentions.json" <<EOF
{"Kind": "service-intentions", "Name": "storage", "Sources": [{"Name": "backup-agent", "Action": "allow"}]}
EOF
agent="http://${address[consul]}:8500"
in_ns consul "$bin" dev-agent -http-addr "${address[consul]}:8500" -config-dir "$work/consul.d" \
  -default-intention-policy deny >"$work/consul.log" 2>&1 &
pids+=($!)

# --- storage hosts: an echo service and a sidecar each; the backup host's sidecar ----------
for host in s1 s2; do
  in_ns "$host" socat TCP-LISTEN:8080,bind=127.0.0.1,reuseaddr,fork EXEC:cat >"$work/$host-echo.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 100); do in_ns backup curl -sf "$agent/v1/agent/services" >/dev/null && break; sleep 0.1; done
in_ns backup curl -sf "$agent/v1/agent/services" >/dev/null || fail "dev agent not reachable at $agent from the backup host"
pass "dev agent reachable at $agent from another host"

start_sidecar() {
  local host=$1 service=$2
  in_ns "$host" "$bin" run -sidecar-for "$service" -http-addr "$agent" --admin-bind 127.0.0.1:19000 \
    --startup-timeout 30s --log-format json >"$work/$host-sidecar.log" 2>&1 &
  pids+=($!)
}
start_sidecar s1 storage-1
start_sidecar s2 storage-2
start_sidecar backup backup-agent
for host in s1 s2 backup; do
  for _ in $(seq 300); do in_ns "$host" curl -sf http://127.0.0.1:19000/ready >/dev/null 2>&1 && break; sleep 0.1; done
  in_ns "$host" curl -sf http://127.0.0.1:19000/ready >/dev/null 2>&1 || fail "sidecar on $host not ready (log: $(tail -3 "$work/$host-sidecar.log"))"
done
instances() { in_ns backup curl -sf http://127.0.0.1:19000/config | grep -o "${address[s1]}:21000\|${address[s2]}:21000" | sort -u | wc -l; }
for _ in $(seq 100); do [ "$(instances)" = 2 ] && break; sleep 0.1; done
[ "$(instances)" = 2 ] || fail "the backup sidecar does not know both storage instances"
pass "three sidecars ready; the backup host dials storage at ${address[s1]} and ${address[s2]}"

# transfer BYTES NAME: random bytes through the backup host's upstream and back; writes
# NAME.sent / NAME.received digests and NAME.seconds.
transfer() {
  local bytes=$1 name=$2 started
  started=$(now)
  head -c "$bytes" /dev/urandom | tee >(sha256sum | cut -d' ' -f1 >"$work/$name.sent") \
    | in_ns backup socat -T 60 -t 30 - TCP:127.0.0.1:19100 | sha256sum | cut -d' ' -f1 >"$work/$name.received" || true
  since "$started" >"$work/$name.seconds"
}
same() { [ -s "$work/$1.sent" ] && [ "$(cat "$work/$1.sent")" = "$(cat "$work/$1.received")" ]; }

transfer $((256 << 20)) big
same big || fail "256 MiB round trip: digests differ"
pass "256 MiB backup round trip across hosts in $(cut -c1-5 "$work/big.seconds") s, sha256 equal"

# --- a storage host goes dark mid-run --------------------------------------------------------
transfer $((256 << 20)) during-a &
pids+=($!)
transfer $((256 << 20)) during-b &
pids+=($!)
sleep 0.3
link s1 down
# The transfer on s1 is lost with its host; the one on s2 must finish intact (wait for it,
# not for the lost one, whose carrier is found dead by the keepalive or the next stream open).
survivors=0
for _ in $(seq 300); do
  survivors=0
  for name in during-a during-b; do same "$name" && survivors=$((survivors + 1)); done
  [ "$survivors" -ge 1 ] && break
  sleep 0.1
done
[ "$survivors" -ge 1 ] || fail "no transfer survived a storage host going dark"
pass "storage host s1 dark mid-run: the concurrent transfer on s2 completed intact"

slow=0
worst=0
for i in $(seq 10); do
  transfer 4096 "after-$i"
  same "after-$i" || fail "tunnel $i after the fault failed"
  seconds=$(cat "$work/after-$i.seconds")
  # Paying the dead host's 2 s connect timeout shows as 2 s and more.
  [ "$(echo "$seconds > 1.9" | bc)" = 1 ] && slow=$((slow + 1))
  [ "$(echo "$seconds > $worst" | bc)" = 1 ] && worst=$seconds
done
[ "$slow" -le 2 ] || fail "$slow of 10 new tunnels waited for the dead host (expected at most 2: ejection)"
[ "$(echo "$worst < 10" | bc)" = 1 ] || fail "a new tunnel took $worst s (connect timeout is 2 s)"
pass "10 new tunnels after the fault all succeeded; $slow paid the 2 s connect timeout, the slowest took $(echo "$worst" | cut -c1-5) s"
link s1 up

# --- the Consul host is unreachable for 60 s -------------------------------------------------
link consul down
outage_started=$(now)
round=0
while [ "$(echo "$(since "$outage_started") < 60" | bc)" = 1 ]; do
  round=$((round + 1))
  transfer $((16 << 20)) "outage-$round"
  same "outage-$round" || fail "transfer $round during the Consul outage failed"
  sleep 5
done
link consul up
pass "Consul unreachable for 60 s: $round transfers (new connections each) succeeded on the last good certificates and intentions"

# Watches resume: a deny written now reaches the backup host's traffic.
in_ns consul curl -sf -X PUT --data-binary \
  '{"Kind": "service-intentions", "Name": "storage", "Sources": [{"Name": "backup-agent", "Action": "deny"}]}' \
  "$agent/v1/config" >/dev/null || fail "could not write the deny intention"
denied=0
deny_started=$(now)
while [ "$(echo "$(since "$deny_started") < 180" | bc)" = 1 ]; do
  transfer 4096 probe
  if ! same probe; then denied=1; break; fi
  sleep 2
done
[ "$denied" = 1 ] || fail "watches did not resume: a deny written after the outage never applied"
pass "Consul back: watches resumed, a new deny applied after $(since "$deny_started" | cut -c1-5) s"
echo "multihost: all checks passed"
