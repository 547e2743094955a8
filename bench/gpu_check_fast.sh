#!/usr/bin/env bash
# The device run for the GPU paths without TensorRT (issue 11), about 8 min on an H100/H200:
#   0. onnxruntime-gpu from pieces stashed by earlier calls (bench/wheel_pieces.sh), if any
#   1. the CUDA tests of the fast paths (CUDA graph FP32/FP16 vs eager, batched cameras, ORT CUDA graph,
#      chosen through the runtime settings)
#   2. bench/bench_gpu_paths.py: ESPNetv2 s=1.0/2.0 and WRN38 at 512x1024 and 1024x2048
#   3. bench/bench_batch.py: 1/2/4 cameras, one process_batch vs N process calls per tick (whole pipeline)
# Each section has its own time limit. Figures land in $OUT (the device tool's output folder) when set.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out="${OUT:-/tmp/pebal_gpu_check}"; mkdir -p "$out"
status=0
if ls "${PEBAL_PIECES:-/var/tmp/pebal_pieces}"/*.sha256 >/dev/null 2>&1; then
  echo "=== 0/3 onnxruntime-gpu from pieces"
  bash bench/wheel_pieces.sh install /tmp/site_ortgpu && export PYTHONPATH="/tmp/site_ortgpu:$PYTHONPATH" || status=1
fi
python3 -c 'import torch, onnxruntime as ort; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "", "| ort", ort.__version__, ort.get_available_providers())'
echo "=== 1/3 CUDA tests of the fast paths"
timeout -k 5 120 python3 -m pytest -q -m gpu -p no:cacheprovider test/test_runtime_torch_fast.py test/test_runtime_interface.py \
  test/test_pipeline_batch.py test/test_runtime_options.py \
  2>&1 | tee "$out/gpu_fast_tests.txt" || status=1
echo "=== 2/3 bench_gpu_paths"
(cd bench && timeout -k 5 330 python3 bench_gpu_paths.py --iters 50 --json "$out/gpu_paths.json" "$@") \
  2>&1 | tee "$out/gpu_paths.txt" || status=1
echo "=== 3/3 bench_batch"
(cd bench && timeout -k 5 200 python3 bench_batch.py --device cuda --iters 30 --outputs all --outputs status \
  --json "$out/batch.json") 2>&1 | tee "$out/batch.txt" || status=1
echo "=== done (status $status)"
exit $status
