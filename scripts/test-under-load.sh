#!/usr/bin/env bash
# The flake check (issue 19): the whole suite, ROUNDS times in a row (3 by default), while
# another process keeps every core busy. Exits non-zero at the first failing round and keeps
# its log. Builds once (scripts/test.sh), then reruns only `swift test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=${ROUNDS:-3}
logs=$(mktemp -d /tmp/backup-sidecar-load.XXXXXX)
burners=()
stop_burners() { for pid in "${burners[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap stop_burners EXIT
for _ in $(seq "$(nproc)"); do yes >/dev/null & burners+=($!); done
echo "== $(nproc) busy loops running; $rounds rounds; logs in $logs"
for round in $(seq "$rounds"); do
  started=$SECONDS
  if [ "$round" = 1 ]; then command=(scripts/test.sh); else command=(swift test --skip-build); fi
  if "${command[@]}" >"$logs/round-$round.log" 2>&1; then
    echo "round $round: $(grep -E 'Test run with' "$logs/round-$round.log" | tail -1) ($((SECONDS - started)) s)"
  else
    echo "round $round FAILED ($((SECONDS - started)) s):" >&2
    grep -E '✘' "$logs/round-$round.log" | head -20 >&2
    exit 1
  fi
done
echo "== all $rounds rounds passed under load"
