#!/usr/bin/env bash
# The test command (README quick start; .ci/run calls it): installs what is needed, builds
# the package including the binary the command-line tests run, builds the Debian package the
# packaging tests inspect (before the suite, so its release build never competes with timed
# tests for the CPU), and runs the whole suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh nginx restic rclone socat bc iproute2 prometheus lintian logrotate systemd gdb
# The BuildInfo plugin (commit for --version) runs only when SwiftPM plans the build anew.
rm -rf .build/plugins/outputs .build/debug.yaml .build/debug/description.json
swift build --build-tests
rm -rf .build/test-dist
scripts/package.sh .build/test-dist >/dev/null
swift test "$@"
