#!/usr/bin/env bash
# The one device run (about 6-8 min on an H100/H200): every check that needs CUDA, in one go.
#   1. export/runtime: cuda-python buffers + stream, fused PyTorch FP32 vs FP16 parity and speed,
#      official-style vs fused pipeline (bench/gpu_check.sh)
#   2. pebal_loss on CUDA vs the CPU float64 result, gradients, fwd+bwd time at 8x900x900
#   3. both networks on CUDA at full resolution, PEBAL head fine-tuning step, CUDA->CPU checkpoints
# Each section has its own time limit so one hang cannot eat the others' time.
# Figures land in $OUT (the device tool's output folder) when it is set.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out="${OUT:-/tmp/pebal_gpu_check}"; mkdir -p "$out"
python3 -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())'
status=0
echo "=== 1/3 export + runtime (bench/gpu_check.sh)"
timeout -k 5 300 bash bench/gpu_check.sh --budget 240 "$@" || status=1
echo "=== 2/3 pebal_loss on CUDA"
timeout -k 5 90 python3 bench/gpu_check_losses.py 2>&1 | tee "$out/gpu_check_losses.txt" || status=1
echo "=== 3/3 networks on CUDA"
# The real EdgeNets weights do not travel with the repository (../shared stays behind): carry a
# copy in an ignored folder and name it in PEBAL_WEIGHTS to add the real-network CPU/GPU agreement.
weights=()
[ -f "${PEBAL_WEIGHTS:-}" ] && weights=(--weights "$PEBAL_WEIGHTS")
timeout -k 5 150 python3 -m pebal_ros.models.device_check "${weights[@]}" 2>&1 | tee "$out/gpu_check_models.json" || status=1
echo "=== done (status $status)"
exit $status
