#!/bin/bash
# One check of the project's GPU path, with one report: bench/gpu_check.py (its docstring says what it checks).
#   bash bench/gpu_check.sh [OUT_DIR]       # default OUT_DIR: $OUT, else runs/gpu_check
# PYTHON (default python3) runs it and every step. The check itself needs only Python's standard library: with a
# PYTHON that is not there, python3 runs it, to say so in one line.
cd "$(dirname "$0")/.." || exit 2
PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null 2>&1 && exec "$PYTHON" -m bench.gpu_check "$@"
exec python3 -m bench.gpu_check "$@"
