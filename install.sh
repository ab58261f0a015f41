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
  # The CPU build of torch (+cpu): PyPI's Linux wheel of the same version pulls ~2.6 GB of CUDA
  # libraries. From the machine's own wheels or index where it has one, else from PyTorch's CPU
  # index; where neither has it (e.g. macOS, whose PyPI wheel is the CPU build), the plain pin.
  if ! .venv/bin/pip install -q "torch==2.13.0+cpu" 2>/dev/null; then
    echo "install.sh: torch 2.13.0+cpu from https://download.pytorch.org/whl/cpu" >&2
    .venv/bin/pip install -q --extra-index-url https://download.pytorch.org/whl/cpu \
      "torch==2.13.0+cpu" || .venv/bin/pip install -q torch==2.13.0
  fi
  .venv/bin/pip install -q -e ".[train,video,runtime,detectors,mat,dev]"
fi
if .venv/bin/pip list 2>/dev/null | grep -E -i '^(nvidia-|triton|cuda-)' ; then
  echo "install.sh: CUDA packages were pulled in: no torch 2.13.0+cpu was found (none here and" \
       "https://download.pytorch.org/whl/cpu unreachable), or the torch pin leaked" >&2
  exit 1
fi
echo "install.sh: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
