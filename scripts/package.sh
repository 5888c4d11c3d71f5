#!/usr/bin/env bash
# Builds the Debian packages in OUTDIR (default dist/): backup-sidecar_<version>_<arch>.deb and
# its symbols, backup-sidecar-dbgsym_<version>_<arch>.deb; prints both paths.
# Usage: scripts/package.sh [OUTDIR]
#
# The binary is a static-Swift-runtime release build (no Swift toolchain on the backup host);
# Depends: comes from what it really links (dpkg-shlibdeps), so it is never stale.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=$(mkdir -p "${1:-dist}" && cd "${1:-dist}" && pwd)

scripts/install-deps.sh dpkg-dev binutils help2man >/dev/null
# shellcheck source=scripts/shipped-build.sh
. scripts/shipped-build.sh
build_flags=("${SHIPPED_BUILD_FLAGS[@]}")
echo "building: swift build ${build_flags[*]}" >&2
# SwiftPM runs the BuildInfo prebuild command (git commit for --version) only when it plans
# the build anew; without a new plan an incremental build keeps an old commit. Drop the plan.
rm -rf .build-static/plugins/outputs .build-static/release.yaml .build-static/release/description.json
swift build "${build_flags[@]}" >&2
binary="$(swift build "${build_flags[@]}" --show-bin-path)/backup-sidecar"
expected=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [ "$expected" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no)" ]; then expected="$expected-dirty"; fi
"$binary" --version | head -n 1 | grep -qF "(commit $expected)" \
  || { echo "the built binary does not report commit $expected: $("$binary" --version | head -n 1)" >&2; exit 1; }

version=$("$binary" --version | head -n 1 | awk '{print $2}')
arch=$(dpkg --print-architecture)
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "unexpected version from --version: $version" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/root"
doc="$root/usr/share/doc/backup-sidecar"
install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$doc/examples/consul" "$root/usr/share/man/man1"
install -m 0755 "$binary" "$root/usr/bin/backup-sidecar"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/bin/backup-sidecar"
# Symbols for crash reports. The shipped binary exports no dynamic symbols (shipped-build.sh),
# so once stripped a core dump of it shows bare addresses. As Debian's debhelper does, a
# -dbgsym package holds the symbols and debug info where gdb, eu-stack and systemd-coredump
# find them by the binary's GNU build ID (which strip keeps).
build_id=$(LC_ALL=C readelf -n "$root/usr/bin/backup-sidecar" | sed -n 's/.*Build ID: *//p')
[ "${#build_id}" -gt 2 ] || { echo "the packaged binary has no GNU build ID" >&2; exit 1; }
dbg_root="$work/dbgsym"
dbg_file="$dbg_root/usr/lib/debug/.build-id/${build_id:0:2}/${build_id:2}.debug"
install -d -m 0755 "$dbg_root/DEBIAN" "$(dirname "$dbg_file")" "$dbg_root/usr/share/doc"
objcopy --only-keep-debug --compress-debug-sections=zlib "$binary" "$dbg_file"
chmod 0644 "$dbg_file"
ln -s backup-sidecar "$dbg_root/usr/share/doc/backup-sidecar-dbgsym"
install -m 0644 deploy/systemd/*.service "$root/lib/systemd/system/"
install -m 0644 deploy/*.json "$doc/examples/"
install -m 0644 deploy/consul/*.json "$doc/examples/consul/"
install -d -m 0755 "$doc/examples/prometheus" "$doc/examples/grafana"
install -m 0644 deploy/prometheus/*.yml "$doc/examples/prometheus/"
install -m 0644 deploy/grafana/*.json "$doc/examples/grafana/"
install -m 0644 deploy/README.md "$doc/README.deploy.md"
install -m 0644 deploy/audit-schema.md "$doc/audit-schema.md"
install -m 0644 README.md "$doc/README.md"
# Static-Built-Using (below; deb-control(5), dpkg 1.21.3) is newer than Debian 12's lintian.
install -d -m 0755 "$root/usr/share/lintian/overrides"
printf '%s\n' "backup-sidecar: unknown-field Static-Built-Using" > "$root/usr/share/lintian/overrides/backup-sidecar"
chmod 0644 "$root/usr/share/lintian/overrides/backup-sidecar"

# The manual page, from the binary's own --help (and `help run`), so it cannot drift.
{
  echo "[RUN OPTIONS]"
  echo ".nf"
  "$binary" help run | sed -e 's/\\/\\e/g' -e "s/^\([.']\)/\\\\\&\1/"
  echo ".fi"
  echo "[SEE ALSO]"
  echo "/usr/share/doc/backup-sidecar/README.md, /usr/share/doc/backup-sidecar/README.deploy.md"
} > "$work/run.h2m"
help2man --no-info --no-discard-stderr --name "Consul Connect mTLS sidecar for backup traffic" \
  --version-string "$version" --include "$work/run.h2m" --output "$work/backup-sidecar.1" "$root/usr/bin/backup-sidecar"
gzip -9n -c "$work/backup-sidecar.1" > "$root/usr/share/man/man1/backup-sidecar.1.gz"
chmod 0644 "$root/usr/share/man/man1/backup-sidecar.1.gz"

# Debian policy: the copyright file, and the changelogs compressed.
cat > "$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: backup-sidecar
Source: https://github.com/backup-sidecar/backup-sidecar

Files: *
Copyright: 2026 The backup-sidecar authors
License: Apache-2.0

License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 can be found in
 /usr/share/common-licenses/Apache-2.0.
EOF
gzip -9n -c CHANGELOG.md > "$doc/changelog.gz"
{
  echo "backup-sidecar ($version) unstable; urgency=medium"
  echo
  echo "  * Release $version; see /usr/share/doc/backup-sidecar/changelog.gz."
  echo
  echo " -- backup-sidecar maintainers <maintainers@backup-sidecar.invalid>  $(date -R -u -d "@$(git log -1 --format=%ct 2>/dev/null || date +%s)")"
} | gzip -9n > "$doc/changelog.Debian.gz"

# Depends from the binary's real needs.
mkdir -p "$work/debian"
printf 'Source: backup-sidecar\n\nPackage: backup-sidecar\nArchitecture: any\n' > "$work/debian/control"
depends=$(cd "$work" && dpkg-shlibdeps -O -e"root/usr/bin/backup-sidecar" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$depends" ] || { echo "dpkg-shlibdeps found no dependencies" >&2; exit 1; }
# dpkg-shlibdeps reads versioned symbols, not version references: packed relative relocations
# (DT_RELR, scripts/shipped-build.sh) need glibc 2.36 through GLIBC_ABI_DT_RELR, which it misses
# (it answers libc6 >= 2.35, and the binary would not start on 2.35). Raise the bound, never lower it.
if readelf -V "$root/usr/bin/backup-sidecar" | grep -q 'GLIBC_ABI_DT_RELR'; then
  libc_min=$(sed -n 's/.*libc6 (>= \([^)]*\)).*/\1/p' <<<"$depends")
  if [ -z "$libc_min" ]; then
    depends="libc6 (>= 2.36), $depends"
  elif dpkg --compare-versions "$libc_min" lt 2.36; then
    depends=${depends/"libc6 (>= $libc_min)"/"libc6 (>= 2.36)"}
  fi
fi
rm -rf "$work/debian"

# Static-Built-Using: the Debian sources whose code the binary carries from static archives
# (scripts/shipped-build.sh, Package.swift), so a security update to them is seen to need a
# rebuild of this package. Each archive is found as the link finds it.
static_sources=()
for archive in "${SHIPPED_STATIC_ARCHIVES[@]}"; do
  # "package:arch: /path" or "first, second: /path"; diversion lines do not match.
  owner=$(dpkg-query -S "$(readlink -f "$archive")" 2>/dev/null | sed -n 's/^\([^ ,]*\)[,:] .*/\1/p' | head -n 1) || true
  [ -n "$owner" ] || { echo "package: no Debian package owns $archive" >&2; exit 1; }
  static_sources+=("$(dpkg-query -W -f='${source:Package} (= ${source:Version})\n' "$owner" | head -n 1)")
done
static_built_using=$(printf '%s\n' "${static_sources[@]}" | LC_ALL=C sort -u | paste -sd, | sed 's/,/, /g')

# write_md5sums ROOT: DEBIAN/md5sums of every file a package root installs.
write_md5sums() {
  (cd "$1" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) > "$1/DEBIAN/md5sums"
  chmod 0644 "$1/DEBIAN/md5sums"
}
write_md5sums "$root"
installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<EOF
Package: backup-sidecar
Version: $version
Architecture: $arch
Maintainer: backup-sidecar maintainers <maintainers@backup-sidecar.invalid>
Installed-Size: $installed_size
Depends: $depends
Static-Built-Using: $static_built_using
Section: net
Priority: optional
Homepage: https://github.com/backup-sidecar/backup-sidecar
Description: mutually authenticated sidecar proxy for backup traffic
 A Consul Connect native sidecar proxy for backup agents and storage nodes:
 every snapshot and restore connection is mTLS with SPIFFE identities and
 checked against Consul intentions (L4 and HTTP L7) before it reaches the
 local service. Certificates rotate without dropping long transfers; every
 handshake and decision is written to an audit log.
 .
 Includes systemd units for file mode and Consul mode.
EOF

deb="$out/backup-sidecar_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >&2

write_md5sums "$dbg_root"
cat > "$dbg_root/DEBIAN/control" <<EOF
Package: backup-sidecar-dbgsym
Source: backup-sidecar
Version: $version
Architecture: $arch
Maintainer: backup-sidecar maintainers <maintainers@backup-sidecar.invalid>
Installed-Size: $(du -sk --exclude=DEBIAN "$dbg_root" | cut -f1)
Depends: backup-sidecar (= $version)
Section: debug
Priority: optional
Auto-Built-Package: debug-symbols
Build-Ids: $build_id
Description: debug symbols for backup-sidecar
EOF
dbgsym="$out/backup-sidecar-dbgsym_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$dbg_root" "$dbgsym" >&2
echo "$deb"
echo "$dbgsym"
