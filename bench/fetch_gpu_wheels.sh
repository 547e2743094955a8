#!/usr/bin/env bash
# Fetch, on this (internet-connected) machine, the wheels the GPU check would need on the device
# machine (x86-64, Python 3.12, CUDA 13 driver; no network there) into .whl/ (git-ignored),
# which the device call carries. The carry limit is 64 MiB for the whole working tree.
#
# What the device image already has (device/KINDS.md): torch 2.11+cu130, onnx, onnxscript,
# onnxruntime (CPU build), cuda-bindings, opencv, pyyaml, tqdm, scipy, scikit-learn: everything
# pebal_ros' export/runtime code imports. What it lacks, with the sizes measured with pip download
# on 2026-11-26:
#   onnxruntime-gpu 1.31.1 (cp312, CUDA 13)    255.6 MB  -> over the 64 MiB carry limit: not fetched
#   tensorrt-cu13-libs 11.4 / 10.16           no wheel on PyPI (a 15 kB sdist that downloads the
#                                             libraries from pypi.nvidia.com at install time, which
#                                             neither this machine nor the device can reach)
#   tensorrt-cu13-bindings 10.16.1.11           1.3 MB  (useless without the libs)
#   tensorrt-lean-cu13-libs 11.4               44.4 MB  (lean runtime only: it cannot build engines,
#                                             and there is no builder to make one with)
# So by default nothing is fetched and gpu_check.sh checks PyTorch CUDA FP16/FP32, cuda-python
# buffers/streams, ONNX Runtime (CPU provider) and the TensorRT-unavailable error path.
# --ort-gpu fetches onnxruntime-gpu anyway (for a device call that can carry 256 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || grep -qxF '/.whl/' .gitignore || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PLAT=(--only-binary=:all: --no-deps --python-version 3.12 --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
if [[ "${1:-}" == "--ort-gpu" ]]; then
  python3 -m pip download "${PLAT[@]}" -d .whl "onnxruntime-gpu==1.31.1"
fi
du -ch .whl/*.whl 2>/dev/null | tail -1 || echo "no wheels fetched (none needed; see the notes above)"
