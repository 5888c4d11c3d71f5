#!/usr/bin/env bash
# Intention decisions per second (pure engine, no I/O) with 1,000 intentions.
# Usage: bench/intentions.sh [INTENTIONS] [SECONDS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
swift build -c release --product intentions-microbench >/dev/null
"$(swift build -c release --show-bin-path)/intentions-microbench" "${1:-1000}" "${2:-2}"
