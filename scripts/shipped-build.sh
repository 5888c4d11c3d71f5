# shellcheck shell=bash
# The flags of the shipped binary's build, for scripts/package.sh and bench/run.sh (the bench
# measures what ships), sourced by both: one list, one scratch directory, no rebuild between them.
# Static Swift runtime; no $ORIGIN run path (a packaged binary loads nothing from beside itself).
# Full RELRO and immediate binding, as Debian's hardening defaults ask of network daemons.
# shellcheck disable=SC2034 # used by the scripts that source this file
SHIPPED_BUILD_FLAGS=(-c release --product backup-sidecar --static-swift-stdlib --disable-local-rpath --scratch-path .build-static
                     -Xlinker -z -Xlinker relro -Xlinker -z -Xlinker now)
