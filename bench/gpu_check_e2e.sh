#!/usr/bin/env bash
# Second device run: the CUDA-marked tests (fine-tuning and evaluation on the GPU) and the main job
# end to end on a GPU: `pebal demo` writes and replays a recording (ONNX Runtime, CPU), then the same
# recording is replayed with the PyTorch runtime on CUDA, and the two result summaries are compared.
# Needs the pure-Python bag libraries carried as wheels (.whl/, see the device README):
#   rosbags mcap ruamel.yaml lz4 zstandard apsw backports.zstd for the machine's Python.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out="${OUT:-/tmp/pebal_gpu_e2e}"; mkdir -p "$out"
status=0
echo "=== 1/2 CUDA tests (pytest -m gpu)"
timeout -k 5 200 python3 -m pytest -q -m gpu -p no:cacheprovider test/test_train_finetune.py test/test_evaluate.py || status=1
echo "=== 2/2 demo (ONNX Runtime, CPU) and the same recording replayed with PyTorch on CUDA"
timeout -k 5 200 python3 -m pebal_ros.cli demo --part synthetic --out /tmp/demo --no-progress || status=1
timeout -k 5 150 python3 -m pebal_ros.cli replay /tmp/demo/synthetic/recording --model models/pebal_synthetic_espnetv2.pt \
  --preset synthetic --runtime torch --device cuda --out /tmp/replay_gpu --no-progress || status=1
python3 - "$out" <<'PY' || status=1
import json, sys
from pathlib import Path
def summary(root):
    found = sorted(Path(root).rglob("summary.json"))
    return json.loads(found[0].read_text()) if found else {}
cpu, gpu = summary("/tmp/demo/synthetic"), summary("/tmp/replay_gpu")
def pick(s):
    d, t = s.get("deterministic", {}), s.get("timing", {})
    gt = d.get("ground_truth") or {}
    return {"frames": d.get("frames"), "runtime": d.get("runtime"), "frames_per_s": t.get("frames_per_s"),
            "inference_ms": t.get("inference_ms"), "latency_ms": t.get("latency_ms"),
            "metrics": {k: v for k, v in gt.items() if k in ("metrics", "miou", "pixel_acc")}}
report = {"cpu_onnxruntime": pick(cpu), "cuda_torch": pick(gpu)}
text = json.dumps(report, indent=1, default=str)
print(text)
Path(sys.argv[1], "gpu_e2e_summary.json").write_text(text)
PY
echo "=== done (status $status)"
exit $status
