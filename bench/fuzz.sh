#!/usr/bin/env bash
# libFuzzer + AddressSanitizer over the parsers and encoders that take outside input.
# Usage: bench/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default 60 s, every target)
# Seeds: bench/fuzz-corpus/<target>/ (committed). Corpus growth, crashes and logs go to
# bench/results/fuzz/ (ignored). Exits 1 if any target found a crash, leak or timeout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(SPIFFEIDFuzz ConfigDecodeFuzz IntentionsFuzz ProxyProtocolFuzz PathNormalizerFuzz HTTPRequestFuzz)

# Own scratch path: the instrumented build must not mix with the normal .build.
flags=(--scratch-path .build-fuzz -c debug -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING)
for target in "${targets[@]}"; do
    swift build "${flags[@]}" --product "$target" 2>&1 | grep -v "Cannot export local symbol" | tail -1
done
bin="$(swift build "${flags[@]}" --show-bin-path)"

results=bench/results/fuzz
mkdir -p "$results"
# libFuzzer reports the crash itself; Swift's backtracer would only slow each crash down.
export SWIFT_BACKTRACE=enable=no
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"

status=0
summary=()
for target in "${targets[@]}"; do
    corpus="$results/$target/corpus"
    mkdir -p "$corpus" "$results/$target/crashes"
    dict="bench/fuzz-corpus/$target.dict"
    args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1
          -artifact_prefix="$results/$target/crashes/")
    [ -f "$dict" ] && args+=(-dict="$dict")
    log="$results/$target/fuzz.log"
    echo "== $target: ${seconds}s"
    if "$bin/$target" "${args[@]}" "$corpus" "bench/fuzz-corpus/$target" >"$log" 2>&1; then
        outcome=ok
    else
        outcome="CRASH (see $results/$target/crashes/, $log)"
        status=1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' || true)
    summary+=("$(printf '%-18s %-8s execs %-9s exec/s %-6s %s' "$target" "${outcome%% *}" "${execs:-?}" "${rate:-?}" "$last")")
    [ "$outcome" = ok ] || grep -m3 -E 'invariant violated|Fatal error|ERROR: AddressSanitizer|ERROR: libFuzzer' "$log" || true
done

echo
echo "== fuzz summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
exit $status
