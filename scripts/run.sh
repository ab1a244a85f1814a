#!/usr/bin/env bash
# The main job on the default model and data. Sets up first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build -c release --product kvc-demo
.build/release/kvc-demo "$@"
