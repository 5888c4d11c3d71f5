#!/usr/bin/env bash
# Regenerates scripts/link-order.txt: the functions a running sidecar executes, hottest first,
# which the shipped link (scripts/shipped-build.sh) lays out together at the start of .text,
# then the constants and variables a started sidecar touches, laid out at the start of .rodata
# and .bss the same way.
# Why: the kernel maps code in 64 KiB windows around each page a process touches. With the
# executed 1-2 MB spread over 13 MB of text, an idle sidecar had 9 MB of code resident.
#
# How: the shipped binary runs under valgrind's callgrind, which records every function that
# executes, through (1) the demo (Consul mode on the dev agent: ACL login, leaf and roots
# watches, intentions, restic through the mesh) and (2) the bench's file-mode pairs, raw and
# multiplexed, under wrk (new connections, keep-alive) and iperf3 (bulk). The dev agent itself
# runs natively: it is a test stand-in, not what ships. (3) For data, valgrind's lackey traces
# each side of a file-mode pair in turn through start and one request.
#
# The order only moves code; a stale file costs memory, never correctness: names it lists
# that no longer exist are ignored, and new functions land after the listed ones.
# Usage: scripts/link-order.sh   (about 6 minutes; run after large changes, commit the result)
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
  # Audit lines go to stdout in the mux pairs (as in the bench) and to files in the raw ones
  # (as the packaged systemd units have it), so both sinks' code is ordered.
  extra=(); [ "$mode" = raw ] && extra=(--mux off)
  server_audit=(); client_audit=()
  [ "$mode" = raw ] && server_audit=(--audit-log "$WORK/audit-server.jsonl") client_audit=(--audit-log "$WORK/audit-client.jsonl")
  public="" web_local="" bulk_public="" bulk_local=""
  alloc_port public; alloc_port web_local; alloc_port bulk_public; alloc_port bulk_local
  start_sidecar_server "$WORK" "$public" "$HTTP_PORT" "${extra[@]}" "${server_audit[@]}"; web_server=$SERVER_PID
  start_sidecar_client "$WORK" "$web_local" "$public" "${extra[@]}" "${client_audit[@]}"; web_client=$CLIENT_PID
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

# Data: the constants (.rodata) and zero-initialised variables (.bss) a sidecar reads or writes
# from start through one request, under valgrind's lackey, which prints every load and store.
# They are spread over 2.7 MB, and the Swift runtime's first protocol-conformance lookup alone
# reads every conformance descriptor; listed, they are laid out together at the start of their
# sections. One side at a time runs under lackey (it starts in about a minute); it is killed
# while idle, so what only shutdown touches stays out.
echo "link-order: data a started pair touches, under lackey" >&2
mkdir "$WORK/touched"
cat >"$WORK/touched.py" <<'PY'
# touched.py PID BINARY OUT: reads lackey's trace on stdin; writes the byte ranges ("start end",
# hex offsets from the load base) of BINARY's image that were loaded, stored or modified.
import os, struct, sys
pid, binary, out = sys.argv[1], sys.argv[2], sys.argv[3]
# The image ends where its last PT_LOAD does in memory: .bss runs on past the file's pages.
with open(binary, "rb") as elf:
    header = elf.read(64)
    phoff, phentsize, phnum = struct.unpack_from("<Q", header, 32)[0], *struct.unpack_from("<HH", header, 54)
    elf.seek(phoff)
    table = elf.read(phentsize * phnum)
image_size = max(vaddr + memsz for kind, _, _, vaddr, _, _, memsz, _ in
                 (struct.unpack_from("<IIQQQQQQ", table, i * phentsize) for i in range(phnum)) if kind == 1)
base = None
touched = bytearray(image_size)
for line in sys.stdin:
    if line[:2] not in (" L", " S", " M"):
        continue
    if base is None:  # the client's image is mapped before its first instruction runs
        base = min(int(m.split("-")[0], 16) for m in open(f"/proc/{pid}/maps") if m.rstrip().endswith(binary))
    comma = line.index(",", 3)
    offset = int(line[3:comma], 16) - base
    if 0 <= offset < image_size:
        size = min(int(line[comma + 1:]), image_size - offset)
        touched[offset:offset + size] = b"\1" * size
ranges, start = [], None
for offset, byte in enumerate(touched):
    if byte and start is None:
        start = offset
    elif not byte and start is not None:
        ranges.append(f"{start:x} {offset:x}\n")
        start = None
with open(out + ".part", "w") as f:
    f.write("".join(ranges))
os.rename(out + ".part", out)
PY
LACKEY_BIN="$WORK/sidecar-under-lackey"
cat >"$LACKEY_BIN" <<EOF
#!/bin/bash
exec 3> >(exec python3 "$WORK/touched.py" \$\$ "$WORK/backup-sidecar" "$WORK/touched/\$\$.txt")
exec valgrind --quiet --tool=lackey --trace-mem=yes --log-fd=3 "$WORK/backup-sidecar" "\$@"
EOF
chmod +x "$LACKEY_BIN"
for traced in server client; do
  public="" web_local=""
  alloc_port public; alloc_port web_local
  # Audit lines to files, as the packaged systemd units have them.
  SIDECAR_BIN=$binary; [ "$traced" = server ] && SIDECAR_BIN=$LACKEY_BIN
  start_sidecar_server "$WORK" "$public" "$HTTP_PORT" --audit-log "$WORK/data-audit-server.jsonl"; data_server=$SERVER_PID
  SIDECAR_BIN=$binary; [ "$traced" = client ] && SIDECAR_BIN=$LACKEY_BIN
  start_sidecar_client "$WORK" "$web_local" "$public" --audit-log "$WORK/data-audit-client.jsonl"; data_client=$CLIENT_PID
  await_port "$public" "$data_server" 300; await_port "$web_local" "$data_client" 300
  # Under lackey a first handshake can outlast the client's connect timeout: try again.
  curl -fsS --max-time 120 --retry 5 --retry-all-errors --retry-delay 2 --retry-max-time 600 -o /dev/null \
    "http://127.0.0.1:$web_local/" \
    || { echo "link-order: a request through the pair (lackey on the $traced) failed" >&2; exit 1; }
  sleep 2
  kill -KILL "$data_server" "$data_client" 2>/dev/null || true
  wait "$data_server" "$data_client" 2>/dev/null || true
done
traces_written() { [ "$(find "$WORK/touched" -name '*.txt' | wc -l)" -ge 2 ]; } # a filter renames its file when done
for _ in $(seq 1 600); do traces_written && break; sleep 0.5; done
traces_written || { echo "link-order: lackey's traces are missing" >&2; exit 1; }

# The link map says which input section holds each function. A function whose object was
# compiled without one section per function (the toolchain's prebuilt stdlib, Foundation and
# Dispatch archives) would drag its object's whole .text (up to 1.6 MB) into the ordered run
# and spread it out; those stay where they are.
rm -f "$binary"
# --no-demangle: the map names C++ functions as the symbol table and callgrind do.
swift build "${SHIPPED_BUILD_FLAGS[@]}" -Xlinker -Map="$WORK/link.map" -Xlinker --no-demangle >&2
python3 - "$WORK/link.map" "$WORK/touched" "$WORK"/callgrind/*.out >"$WORK/link-order.txt" <<'PY'
import bisect, os, re, sys
# Names never defined in a large .text input section. lld moves every section that holds a
# listed name: a prebuilt archive's undivided .text (the stdlib's is 1.6 MB) would come along
# whole. A small local helper that recurs across objects (__swift_instantiateConcreteTypeFrom-
# MangledName) stays listed: all its copies move, a few bytes each, and so do the executed ones
# (listing only names defined once cost 0.4 MiB of idle RSS).
small, large, text_size = set(), set(), None
# The data part's view of the same map (see below): input sections of .rodata and .bss, the
# first symbol in each, and how often each name is defined.
output, sections, first_symbol, definitions = None, [], {}, {}
entry = re.compile(r"^\s*([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\d+ (\s*)(\S.*?)\s*$")
for line in open(sys.argv[1], errors="replace"):
    match = entry.match(line)
    if not match:
        continue
    address, size, depth, name = int(match.group(1), 16), int(match.group(2), 16), len(match.group(3)), match.group(4)
    if depth == 0:
        output = name
    if ":(" in name:
        text_size = size if ":(.text" in name else None
    elif text_size is not None:
        (small if text_size < 32 * 1024 else large).add(name)
    if depth == 16:
        definitions[name] = definitions.get(name, 0) + 1
    if depth == 8 and output in (".rodata", ".bss"):
        sections.append((address, size))
    elif depth == 16 and output in (".rodata", ".bss") and sections and len(sections) - 1 not in first_symbol:
        first_symbol[len(sections) - 1] = name
splittable = small - large
# Self cost per function over all callgrind outputs. A cost line follows its fn= line; the
# line after a calls= line is the callee's inclusive cost and is not the caller's own.
cost = {}
for path in sys.argv[3:]:
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
# Data: the input sections of .rodata and .bss holding a byte lackey saw touched, named by
# their first symbol, in address order. Sections without a symbol (merged strings) stay put,
# and so do those whose first symbol is a local name defined more than once (__unnamed_N):
# listing it would move every section that defines it.
touched = []  # the union of both sides' ranges, merged: sorted and disjoint
for start, end in sorted(tuple(int(x, 16) for x in line.split()) for path in os.listdir(sys.argv[2])
                         for line in open(os.path.join(sys.argv[2], path))):
    if touched and start <= touched[-1][1]:
        touched[-1][1] = max(touched[-1][1], end)
    else:
        touched.append([start, end])
touched_starts = [start for start, _ in touched]
data = []
for index, (start, size) in enumerate(sections):
    # A touched range overlaps [start, start + size) if one starts before the end and the
    # last one starting there ends after the start (the ranges are disjoint and sorted).
    at = bisect.bisect_left(touched_starts, start + size) - 1
    if index in first_symbol and definitions[first_symbol[index]] == 1 and at >= 0 and touched[at][1] > start:
        data.append(first_symbol[index])
print("# Data a started sidecar touches (.rodata, .bss), in address order.")
print("\n".join(dict.fromkeys(data)))
PY
mv "$WORK/link-order.txt" scripts/link-order.txt
echo "link-order: $(grep -vc '^#' scripts/link-order.txt) names in scripts/link-order.txt" >&2
