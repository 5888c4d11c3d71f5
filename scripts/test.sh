#!/usr/bin/env bash
# The test command (README quick start; .ci/run calls it): installs what is needed, builds
# the package including the binary the command-line tests run, and runs the whole suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh nginx restic rclone socat bc iproute2 prometheus
swift build --build-tests
swift test "$@"
