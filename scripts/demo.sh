#!/usr/bin/env bash
# Set up (idempotent) and run growkit's main job on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec growkit demo "$@"
