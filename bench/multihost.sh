#!/usr/bin/env bash
# The multi-host run (scripts/multihost.sh: a Consul host, a backup host and two storage hosts in
# network namespaces) with a chosen build, its PASS lines (failover times, the 256 MiB round
# trip, the Consul outage) kept under bench/results/.
#
# Usage: BIN_DIR=.build/release bench/multihost.sh   (default: the debug build). Needs root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin_dir="${BIN_DIR:-$(swift build --show-bin-path)}"
mkdir -p bench/results
out="bench/results/multihost-$(date -u +%Y%m%dT%H%M%SZ).txt"
{
  echo "# bench/multihost.sh with $bin_dir/backup-sidecar, $(date -u +%FT%TZ), $(nproc) cores"
  scripts/multihost.sh "$bin_dir/backup-sidecar"
} 2>&1 | tee "$out"
echo "saved: $out"
