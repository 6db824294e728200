#!/usr/bin/env bash
# The numerical check on an NVIDIA GPU, in one call (see tests/gpu/check.py): the Jetson Nano's sm_53 PTX
# kernels (target `cuda`) with TVM, and TensorRT engines from model.onnx, against PyTorch; timings labelled
# with the GPU.  Not part of `make test`: it needs a GPU.  Usage: tests/gpu/run.sh [--paper] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" tests/gpu/check.py "$@"
