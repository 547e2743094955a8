#!/usr/bin/env python3
"""Benchmark 2: fused ONNX Runtime pipeline vs the official-style pipeline, per frame.

Official-style (as the PEBAL reference code runs inference): numpy image -> torch tensor ->
ToTensor/Normalize -> PyTorch eager forward -> free energy (torch.logsumexp) -> GaussianBlur ->
argmax -> threshold, each a separate step, float32 on CPU. Fused: one ONNX Runtime call on the
uint8 image (pebal_ros.runtime.onnx). Both use the same number of threads and the same network.

  python3 bench/bench_pipeline.py --arch espnetv2 --iters 6
  python3 bench/bench_pipeline.py --arch wrn38_deeplabv3plus --iters 2   # slow on 2 cores
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from common import machine, network, parse_hw, timeit


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="espnetv2")
    ap.add_argument("--s", type=float, default=2.0, help="ESPNetv2 width multiplier")
    ap.add_argument("--model", help="checkpoint (default: freshly initialised network)")
    ap.add_argument("--size", type=parse_hw, default=(512, 1024), help="HEIGHTxWIDTH")
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir")
    args = ap.parse_args()

    import onnxruntime as ort

    from pebal_ros.graph.fused import build_fused, reference_outputs
    from pebal_ros.export.onnx import export_fused
    from pebal_ros.runtime.onnx import OnnxRuntime

    torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="pebal_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    net = network(args.arch, args.model, args.s)
    h, w = args.size
    path = work / f"{args.arch}_{h}x{w}_fused.onnx"
    print(f"exporting {args.arch} at {h}x{w} ...", flush=True)
    export_fused(build_fused(net), path, (h, w))
    rt = OnnxRuntime(path, device="cpu", threads=args.threads)
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)

    # the two must agree before their speeds are compared
    a = rt.infer(image, -10.0)
    _, ref_score, _ = reference_outputs(net, image, -10.0)
    diff = float(np.abs(a.score - ref_score).max())

    t_off, t_fused = [], []
    for _ in range(max(1, args.iters)):
        t_off.append(timeit(lambda: reference_outputs(net, image, -10.0), 1, warmup=0)["median_ms"])
        t_fused.append(timeit(lambda: rt.infer(image, -10.0), 1, warmup=0)["median_ms"])
    off, fus = float(np.median(t_off)), float(np.median(t_fused))
    print(f"machine: {machine()}; ONNX Runtime {ort.__version__}; {args.threads} threads each")
    print(f"{args.arch} {h}x{w}: official-style (torch eager + separate scoring) {off:.0f} ms, "
          f"fused ONNX Runtime {fus:.0f} ms -> speed-up {off / fus:.2f}x "
          f"({args.iters} interleaved runs each after one warm-up, medians; score max|diff| {diff:.1e})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
