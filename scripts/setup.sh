#!/usr/bin/env bash
# Set up everything on a fresh machine: a virtualenv in .venv with the CPU build of torch and the
# tcurlora package (with test, benchmark and federated extras; the last is NVIDIA FLARE, for
# `tcurlora federate`). Safe to run again; it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TCURLORA_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch is pinned here to the CPU wheel (a GPU machine brings its own); the package accepts torch>=2.1.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  "$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
fi
"$VENV/bin/python" -m pip install --quiet -e ".[test,bench,federated]"
