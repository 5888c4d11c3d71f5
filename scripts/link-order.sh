#!/usr/bin/env bash
# Regenerates scripts/link-order.txt: the functions a running sidecar executes, hottest first,
# which the shipped link (scripts/shipped-build.sh) lays out together at the start of .text.
# Why: the kernel maps code in 64 KiB windows around each page a process touches. With the
# executed 1-2 MB spread over 13 MB of text, an idle sidecar had 9 MB of code resident.
#
# How: the shipped binary runs under valgrind's callgrind, which records every function that
# executes, through (1) the demo (Consul mode on the dev agent: ACL login, leaf and roots
# watches, intentions, restic through the mesh) and (2) the bench's file-mode pairs, raw and
# multiplexed, under wrk (new connections, keep-alive) and iperf3 (bulk). The dev agent itself
# runs natively: it is a test stand-in, not what ships.
#
# The order only moves code; a stale file costs memory, never correctness: names it lists
# that no longer exist are ignored, and new functions land after the listed ones.
# Usage: scripts/link-order.sh   (about 3 minutes; run after large changes, commit the result)
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../bench/lib.sh"
cd "$ROOT"
scripts/install-deps.sh valgrind iperf3 wrk nginx >/dev/null

# shellcheck source=scripts/shipped-build.sh
. scripts/shipped-build.sh
swift build "${SHIPPED_BUILD_FLAGS[@]}" >&2
binary="$(swift build "${SHIPPED_BUILD_FLAGS[@]}" --show-bin-path)/backup-sidecar"

new_workdir link-order
trap 'cleanup; rm -rf "$WORK"' EXIT
mkdir "$WORK/callgrind"
# valgrind 3.19 (Debian 12) cannot read the DWARF 5 the toolchain emits; the symbol table is enough.
strip --strip-debug -o "$WORK/backup-sidecar" "$binary"
SIDECAR_BIN="$WORK/sidecar-under-callgrind"
cat >"$SIDECAR_BIN" <<EOF
#!/bin/sh
if [ "\$1" = dev-agent ]; then exec "$binary" "\$@"; fi
exec valgrind --quiet --tool=callgrind --demangle=no --callgrind-out-file="$WORK/callgrind/%p.out" "$WORK/backup-sidecar" "\$@"
EOF
chmod +x "$SIDECAR_BIN"

echo "link-order: demo under callgrind" >&2
BACKUP_SIDECAR_BIN="$SIDECAR_BIN" scripts/demo.sh >"$WORK/demo.log" 2>&1 \
  || { tail -n 30 "$WORK/demo.log" >&2; echo "link-order: the demo failed under callgrind" >&2; exit 1; }

echo "link-order: bench pairs under callgrind" >&2
make_certs
start_nginx
start_iperf_server "$WORK/iperf-server.log"
for mode in mux raw; do
  extra=(); [ "$mode" = raw ] && extra=(--mux off)
  public="" web_local="" bulk_public="" bulk_local=""
  alloc_port public; alloc_port web_local; alloc_port bulk_public; alloc_port bulk_local
  start_sidecar_server "$WORK" "$public" "$HTTP_PORT" "${extra[@]}"; web_server=$SERVER_PID
  start_sidecar_client "$WORK" "$web_local" "$public" "${extra[@]}"; web_client=$CLIENT_PID
  await_port "$web_local" "$web_client" 180; await_port "$public" "$web_server" 180
  wrk -t1 -c4 -d5s -H 'Connection: close' "http://127.0.0.1:$web_local/" >/dev/null
  wrk -t1 -c4 -d5s "http://127.0.0.1:$web_local/" >/dev/null
  kill -TERM "$web_server" "$web_client"; wait "$web_server" "$web_client" 2>/dev/null || true
  start_sidecar_server "$WORK" "$bulk_public" "$IPERF_PORT" "${extra[@]}"; bulk_server=$SERVER_PID
  start_sidecar_client "$WORK" "$bulk_local" "$bulk_public" "${extra[@]}"; bulk_client=$CLIENT_PID
  await_port "$bulk_local" "$bulk_client" 180; await_port "$bulk_public" "$bulk_server" 180
  # iperf3 -s serves one test at a time and refuses others: await_port's probe reached it
  # through the (slow, instrumented) tunnel and may still hold it. Try again until it is free.
  for attempt in 1 2 3 4 5 6; do
    iperf3 -c 127.0.0.1 -p "$bulk_local" -t 3 -P 2 >/dev/null && break
    [ "$attempt" = 6 ] && { echo "link-order: iperf3 through the $mode pair failed" >&2; exit 1; }
    sleep 5
  done
  kill -TERM "$bulk_server" "$bulk_client"; wait "$bulk_server" "$bulk_client" 2>/dev/null || true
done

# The link map says which input section holds each function. A function whose object was
# compiled without one section per function (the toolchain's prebuilt stdlib, Foundation and
# Dispatch archives) would drag its object's whole .text (up to 1.6 MB) into the ordered run
# and spread it out; those stay where they are.
rm -f "$binary"
# --no-demangle: the map names C++ functions as the symbol table and callgrind do.
swift build "${SHIPPED_BUILD_FLAGS[@]}" -Xlinker -Map="$WORK/link.map" -Xlinker --no-demangle >&2
python3 - "$WORK/link.map" "$WORK"/callgrind/*.out >"$WORK/link-order.txt" <<'PY'
import re, sys
# Names never defined in a large .text input section. lld moves every section that holds a
# listed name: a prebuilt archive's undivided .text (the stdlib's is 1.6 MB) would come along
# whole. A small local helper that recurs across objects (__swift_instantiateConcreteTypeFrom-
# MangledName) stays listed: all its copies move, a few bytes each, and so do the executed ones
# (listing only names defined once cost 0.4 MiB of idle RSS).
small, large, section_size = set(), set(), None
for line in open(sys.argv[1], errors="replace"):
    fields = line.split(None, 4)
    if len(fields) < 5:
        continue
    try:
        size = int(fields[2], 16)
    except ValueError:
        continue
    if ":(" in fields[4]:
        section_size = size if ":(.text" in fields[4] else None
    elif section_size is not None:
        (small if section_size < 32 * 1024 else large).add(fields[4].strip())
splittable = small - large
# Self cost per function over all callgrind outputs. A cost line follows its fn= line; the
# line after a calls= line is the callee's inclusive cost and is not the caller's own.
cost = {}
for path in sys.argv[2:]:
    names, current, skip = {}, None, False
    for line in open(path, errors="replace"):
        if line.startswith(("fn=", "cfn=")):
            match = re.match(r"c?fn=\((\d+)\)(?: (.+))?$", line.rstrip("\n"))
            if not match:
                continue
            if match.group(2):
                names[match.group(1)] = match.group(2)
            if line.startswith("fn="):
                current = names.get(match.group(1))
                cost.setdefault(current, 0)
            continue
        if line.startswith("calls="):
            skip = True
            continue
        if line[:1].isdigit() or line[:1] in "+-*":
            if skip:
                skip = False
            elif current is not None:
                cost[current] += int(line.split()[-1])
executed = sorted((name for name in cost if name in splittable), key=lambda name: (-cost[name], name))
print("# Generated by scripts/link-order.sh (functions executed by a running sidecar, hottest")
print("# first); used by scripts/shipped-build.sh. Regenerate after large changes.")
print("\n".join(executed))
PY
mv "$WORK/link-order.txt" scripts/link-order.txt
echo "link-order: $(grep -vc '^#' scripts/link-order.txt) functions in scripts/link-order.txt" >&2
