#!/usr/bin/env bash
# Idempotent set-up of .venv with everything the project, its tests and the embedded default need.
# torch is pinned through a constraints file for EVERY pip call: an unpinned torch pulls ~2.6 GB of
# CUDA packages on these CPU machines. TensorRT/pycuda are never installed here (GPU extras only).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
export PIP_CONSTRAINT="$PWD/.ci/constraints.txt"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, ray, deepspeed, decord, onnxruntime, tsal_dist, tsal_runtime" 2>/dev/null; then
  .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q -e ".[train,video,runtime,detectors,mat,dev]"
fi
if .venv/bin/pip list 2>/dev/null | grep -E -i '^(nvidia-|triton|cuda-)' ; then
  echo "install.sh: CUDA packages were pulled in; the torch pin leaked" >&2
  exit 1
fi
echo "install.sh: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
