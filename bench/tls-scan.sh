#!/usr/bin/env bash
# Scans the public (inbound) listener of a storage sidecar with sslyze (PyPI), presenting a
# valid client certificate, and prints what it accepts. Usage: bench/tls-scan.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python3 -m sslyze --help >/dev/null 2>&1 || pip install -q sslyze
swift build --product backup-sidecar >/dev/null
bin="$(swift build --show-bin-path)/backup-sidecar"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
certs-dev/gen.sh "$work/certs" >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/storage.json" <<JSON
{"service": {"kind": "connect-proxy", "name": "storage-sidecar-proxy", "address": "127.0.0.1", "port": $port,
  "proxy": {"destination_service_name": "storage", "local_service_port": 9}}}
JSON
"$bin" run --admin-bind off --service-file "$work/storage.json" --cert "$work/certs/storage.pem" \
  --key "$work/certs/storage.key" --ca "$work/certs/ca.pem" >/dev/null 2>&1 &
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
python3 -m sslyze --cert "$work/certs/backup-agent.pem" --key "$work/certs/backup-agent.key" \
  --sslv2 --sslv3 --tlsv1 --tlsv1_1 --tlsv1_2 --tlsv1_3 --compression --reneg --resum --heartbleed --robot \
  "127.0.0.1:$port"
