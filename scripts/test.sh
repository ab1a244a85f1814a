#!/usr/bin/env bash
# The whole test suite: installs what is missing (scripts/setup.sh), then runs every test in an optimised build
# (tests run the real model; debug numeric Swift is 10-100x slower).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift test -c release -Xswiftc -enable-testing "$@"
