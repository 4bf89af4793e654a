#!/usr/bin/env bash
# The GPU acceptance run (examples/gpu/acceptance.py says what each step proves): on a machine with one
# NVIDIA GPU, from the repository root,
#     bash examples/gpu/acceptance.sh [--out DIR] [--budget SECONDS] [--dry-run]
# writes DIR/report.json (default runs/gpu-acceptance/report.json). Steps whose prerequisites are missing
# (onnxruntime-gpu, tensorrt, the upstream fixture) are listed as not run, with the reason.
# PYTHON picks the interpreter (default: .venv/bin/python where it exists, else python3); prumux-deploy must
# be installed in it (pip install -e '.[gpu-cu13]' or '.[gpu-cu12]': README, GPU).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" examples/gpu/acceptance.py "$@"
