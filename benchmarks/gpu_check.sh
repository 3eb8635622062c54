#!/usr/bin/env bash
# The prepared GPU check (see benchmarks/gpu_check.py): run it from anywhere, with this checkout on the path.
#   bash benchmarks/gpu_check.sh                 # on a GPU: about 9 minutes on one H100
#   bash benchmarks/gpu_check.sh --dry           # on a CPU: tiny sizes, a few steps
# Extra arguments go to gpu_check.py (--out, --export, --budget, --sections, --peak-tflops).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" "$root/benchmarks/gpu_check.py" "$@"
