# shellcheck shell=bash
# The flags of the shipped binary's build, for scripts/package.sh and bench/run.sh (the bench
# measures what ships), sourced by both: one list, one scratch directory, no rebuild between them.
# - Static Swift runtime; no $ORIGIN run path (a packaged binary loads nothing from beside itself).
# - Full RELRO and immediate binding, as Debian's hardening defaults ask of network daemons.
# - Linked by the toolchain's lld, for two things gold cannot do. Packed relative relocations
#   (DT_RELR, glibc 2.36+): 57,000 relocations in 11 KB instead of a 1.3 MB table read at every
#   start. And a text order (scripts/link-order.txt, from scripts/link-order.sh): the functions
#   a running sidecar executes are laid out together in about 2 MB, so the kernel's fault-around
#   maps fewer 64 KiB windows of code (idle resident text 9.1 -> 6.3 MB; the rest is the
#   prebuilt stdlib, which cannot be reordered). Needs one section per function. The compiler's
#   private functions, which have no names to order by, are grouped by scripts/private-text.ld.
#   The same file orders the constants and variables a started sidecar touches to the start of
#   .rodata and .bss (resident 1.5 -> 1.2 MB).
# - libstdc++ and libgcc from their static archives (RE2 too, in Package.swift): the shared
#   libstdc++ costs every process its symbol tables and relocations (idle RSS about 0.7 MiB
#   lower without it and libre2.so), and the link keeps only the few functions the runtime and
#   RE2 call. The toolchain's static-stdlib arguments name -lstdc++ themselves, so a directory
#   searched before GCC's holds a libstdc++.so that is a linker script naming the archive.
SHIPPED_SCRATCH=.build-static # relative: the sourcing script runs from the repository root
SHIPPED_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)" # physical: one flag list per checkout
SHIPPED_ORDER="$SHIPPED_ROOT/scripts/link-order.txt"
SHIPPED_PRIVATE_TEXT="$SHIPPED_ROOT/scripts/private-text.ld"
SHIPPED_LLD="$(dirname "$(readlink -f "$(command -v swift)")")/ld.lld"
if [ ! -x "$SHIPPED_LLD" ]; then
  echo "shipped-build: the Swift toolchain's ld.lld is missing (looked for $SHIPPED_LLD)" >&2
  return 1 # sourced, never run
fi
shipped_clang="$(dirname "$SHIPPED_LLD")/clang" # finds the archives as the link does
mkdir -p "$SHIPPED_SCRATCH/static-cxx"
SHIPPED_LIBSTDCXX_A="$("$shipped_clang" -print-file-name=libstdc++.a)"
if [ ! -f "$SHIPPED_LIBSTDCXX_A" ]; then
  echo "shipped-build: libstdc++.a is missing (install libstdc++-12-dev)" >&2
  return 1
fi
printf 'INPUT(%s)\n' "$SHIPPED_LIBSTDCXX_A" >"$SHIPPED_SCRATCH/static-cxx/libstdc++.so"
# Sourcing this file may delete objects or the binary in $SHIPPED_SCRATCH (below): never source it
# while another build or bench run uses that directory.
printf '{ "schemaVersion": "1.0", "linker": { "path": "%s" } }\n' "$SHIPPED_LLD" >"$SHIPPED_SCRATCH/lld-toolset.json.new"
mv -f "$SHIPPED_SCRATCH/lld-toolset.json.new" "$SHIPPED_SCRATCH/lld-toolset.json"
# shellcheck disable=SC2034 # used by the scripts that source this file
SHIPPED_BUILD_FLAGS=(-c release --product backup-sidecar --static-swift-stdlib --disable-local-rpath
                     --scratch-path "$SHIPPED_SCRATCH" --toolset "$SHIPPED_SCRATCH/lld-toolset.json"
                     -Xswiftc -Xfrontend -Xswiftc -function-sections -Xcc -ffunction-sections
                     -Xlinker -z -Xlinker relro -Xlinker -z -Xlinker now
                     -Xlinker -z -Xlinker pack-relative-relocs -Xlinker --no-export-dynamic
                     -Xlinker --symbol-ordering-file="$SHIPPED_ORDER" -Xlinker --no-warn-symbol-ordering
                     -Xlinker -T -Xlinker "$SHIPPED_PRIVATE_TEXT"
                     -Xswiftc -Xclang-linker -Xswiftc "-L$SHIPPED_ROOT/$SHIPPED_SCRATCH/static-cxx"
                     -Xswiftc -Xclang-linker -Xswiftc -static-libgcc)
# The Swift frontend keeps an existing object file whose sources did not change, even when the
# code-generation flags did (seen with -function-sections): start from no objects when they change.
if [ "$(printf '%s\n' "${SHIPPED_BUILD_FLAGS[@]}")" != "$(cat "$SHIPPED_SCRATCH/flags.stamp" 2>/dev/null)" ]; then
  find "$SHIPPED_SCRATCH" -name '*.o' -delete
  printf '%s\n' "${SHIPPED_BUILD_FLAGS[@]}" >"$SHIPPED_SCRATCH/flags.stamp"
fi
# Nor does it know the static archives of the C++ runtime and RE2: relink when one changed (a
# security update), or the package would name, in Static-Built-Using, code it does not hold.
# Compared by content: dpkg installs them with the package's own, older, mtimes.
SHIPPED_STATIC_ARCHIVES=("$SHIPPED_LIBSTDCXX_A" "$("$shipped_clang" -print-file-name=libgcc_eh.a)"
                         "$("$shipped_clang" -print-file-name=libre2.a)")
shipped_archive_sums="$(sha256sum "${SHIPPED_STATIC_ARCHIVES[@]}")"
if [ "$shipped_archive_sums" != "$(cat "$SHIPPED_SCRATCH/static-archives.stamp" 2>/dev/null)" ]; then
  rm -f "$SHIPPED_SCRATCH/release/backup-sidecar"
  printf '%s\n' "$shipped_archive_sums" >"$SHIPPED_SCRATCH/static-archives.stamp"
fi
# The link does not know the order file and the linker script are inputs: relink when newer.
if [ "$SHIPPED_ORDER" -nt "$SHIPPED_SCRATCH/release/backup-sidecar" ] \
   || [ "$SHIPPED_PRIVATE_TEXT" -nt "$SHIPPED_SCRATCH/release/backup-sidecar" ]; then
  rm -f "$SHIPPED_SCRATCH/release/backup-sidecar"
fi
