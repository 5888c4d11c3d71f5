#!/usr/bin/env bash
# Installs the Debian (and Python) packages backup-sidecar needs to build and test, if any are missing.
# Usage: scripts/install-deps.sh [extra packages...]
set -euo pipefail

packages=(libssl-dev libnghttp2-dev libre2-dev pkg-config openssl curl nghttp2-client python3 "$@")
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python packages the tests use as independent peers (h11: a strict HTTP/1.1 parser; h2: HTTP/2; py-consul: a Consul client).
python_packages=(h11==0.16.0 h2==4.4.1 py-consul==1.8.0)
missing_python=()
for package in "${python_packages[@]}"; do
  python3 -c "import importlib.metadata as m, sys; sys.exit(m.version('${package%%==*}') != '${package##*==}')" 2>/dev/null \
    || missing_python+=("$package")
done
if [ ${#missing_python[@]} -gt 0 ]; then
  echo "installing: ${missing_python[*]}" >&2
  python3 -m pip install -q --disable-pip-version-check "${missing_python[@]}" 2>&1 | grep -v "Running pip as the 'root' user" || true
fi
