#!/usr/bin/env bash
# Checkpoint -> fused ONNX -> TensorRT engine in one go (run on the machine that will run the engine:
# engines are specific to the GPU model and TensorRT version).
#   export/export_and_build.sh models/pebal_synthetic_espnetv2.pt out/pebal 512x1024 [fp16|fp32] [rgb|bgr]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
ckpt=${1:?checkpoint .pt}; stem=${2:?output stem, e.g. out/pebal}; size=${3:-512x1024}
precision=${4:-fp16}; order=${5:-rgb}
python3 "$here/export_onnx.py" --model "$ckpt" --output "${stem}_${size}_${order}.onnx" --size "$size" --channel-order "$order"
python3 "$here/build_engine.py" --onnx "${stem}_${size}_${order}.onnx" --precision "$precision"
