#!/usr/bin/env python3
"""Benchmark 1: the fused graph vs the network-only graph in ONNX Runtime (same model, same size).

The difference is the price of doing the per-frame post-processing inside the graph (logit
upsampling, argmax, free energy, 7x7 Gaussian blur, threshold) plus the uint8 input handling; the
network-only graph is the conventional export (normalised float in, 20-channel logits out), with
its outputs bound to preallocated buffers as well, so both sides do zero Python-side work.

  python3 bench/bench_fused.py --arch espnetv2 --size 512x1024 --iters 10
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from common import machine, network, parse_hw, timeit


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="espnetv2")
    ap.add_argument("--s", type=float, default=2.0, help="ESPNetv2 width multiplier")
    ap.add_argument("--model", help="checkpoint (default: freshly initialised network)")
    ap.add_argument("--size", type=parse_hw, default=(512, 1024), help="HEIGHTxWIDTH")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", help="keep the ONNX files here")
    args = ap.parse_args()

    import onnxruntime as ort

    from pebal_ros.graph.fused import build_fused
    from pebal_ros.export.onnx import export_fused, export_network_only
    from pebal_ros.runtime.onnx import OnnxRuntime

    work = Path(args.workdir or tempfile.mkdtemp(prefix="pebal_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    net = network(args.arch, args.model, args.s)
    h, w = args.size
    fused_path, net_path = work / f"{args.arch}_fused.onnx", work / f"{args.arch}_net.onnx"
    print(f"exporting {args.arch} at {h}x{w} to {work} ...", flush=True)
    export_fused(build_fused(net), fused_path, (h, w))
    export_network_only(net, net_path, (h, w))

    fused = OnnxRuntime(fused_path, device="cpu", threads=args.threads, reuse_outputs=True)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(str(net_path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
    logits = np.empty((1, 20, h, w), np.float32)
    io = sess.io_binding()
    io.bind_cpu_input("input", x)
    io.bind_output("logits", "cpu", 0, np.float32, logits.shape, logits.ctypes.data)
    image = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)

    # interleave the two so that machine noise (other processes on shared cores) hits both alike
    t_net, t_fused = [], []
    rounds = max(1, args.iters // 2)
    for _ in range(rounds):
        t_net.append(timeit(lambda: sess.run_with_iobinding(io), 2, warmup=1)["median_ms"])
        t_fused.append(timeit(lambda: fused.infer(image, -10.0), 2, warmup=1)["median_ms"])
    a, b = float(np.median(t_net)), float(np.median(t_fused))
    print(f"machine: {machine()}; ONNX Runtime {ort.__version__}, {args.threads} threads")
    print(f"{args.arch} {h}x{w}: network-only {a:.1f} ms, fused {b:.1f} ms "
          f"-> fused/network-only = {b / a:.3f} (post-processing costs {100 * (b / a - 1):+.1f} %), "
          f"{2 * rounds} runs each (+warm-ups), medians")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
