#!/usr/bin/env python3
"""Benchmark 3: full-resolution vs fast scoring variant: time ratio (ONNX Runtime) and AP cost.

Both graphs take a camera-size image and resize it to the network size inside the graph.
Full: upsample the 20-channel logits to camera size, then energy + 7x7 blur + argmax there.
Fast: energy + blur + argmax at the network size, then upsample the 1-channel score (bilinear)
and the semantic map (nearest) to camera size.

The AP cost is read from `pebal evaluate --fast` (the same network, pixels scored both ways) on
an anomaly benchmark, e.g. the synthetic test set, when --model and --dataset are given.

  python3 bench/bench_fast_variant.py --camera 1024x2048 --net 512x1024 --iters 6 \
      --model models/pebal_synthetic_espnetv2.pt --dataset fs_static=data/synthetic/anomaly_test
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import REPO, machine, network, parse_hw, timeit


def time_ratio(net, camera, net_size, iters: int, threads: int, work: Path) -> tuple[float, float]:
    from pebal_ros.graph.fused import build_fused
    from pebal_ros.export.onnx import export_fused
    from pebal_ros.runtime.onnx import OnnxRuntime
    rts = {}
    for fast in (False, True):
        path = work / f"{'fast' if fast else 'full'}.onnx"
        export_fused(build_fused(net, net_size=net_size, fast=fast), path, camera)
        rts[fast] = OnnxRuntime(path, device="cpu", threads=threads, reuse_outputs=True)
    image = np.random.default_rng(0).integers(0, 256, (*camera, 3), dtype=np.uint8)
    t = {False: [], True: []}
    for _ in range(max(1, iters)):
        for fast in (False, True):
            t[fast].append(timeit(lambda: rts[fast].infer(image, -10.0), 1, warmup=1)["median_ms"])
    return float(np.median(t[False])), float(np.median(t[True]))


def ap_difference(model: str, dataset: str, input_size: tuple[int, int], limit: int | None, work: Path):
    cmd = [sys.executable, "-m", "pebal_ros.cli", "evaluate", "--model", f"pebal={model}",
           "--dataset", dataset, "--fast", "--methods", "pebal", "--device", "cpu",
           "--input-size", str(input_size[0]), str(input_size[1]), "--out", str(work / "eval"),
           "--no-progress"]
    if limit:
        cmd += ["--limit", str(limit)]
    print("running:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)
    res = json.loads((work / "eval" / "results.json").read_text())
    per_ds = res["anomaly"]["pebal"]
    out = {}
    for ds, methods in per_ds.items():
        out[ds] = (methods["pebal"], methods["pebal@network"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="espnetv2")
    ap.add_argument("--s", type=float, default=2.0)
    ap.add_argument("--model", help="checkpoint (timing uses it too; default: freshly initialised network)")
    ap.add_argument("--camera", type=parse_hw, default=(1024, 2048), help="camera HEIGHTxWIDTH")
    ap.add_argument("--net", type=parse_hw, default=(512, 1024), help="network HEIGHTxWIDTH")
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dataset", help="NAME=ROOT for the AP comparison, e.g. fs_static=data/synthetic/anomaly_test")
    ap.add_argument("--eval-size", type=parse_hw, help="network HEIGHTxWIDTH for the AP run (default --net)")
    ap.add_argument("--limit", type=int, help="evaluate only the first N images")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pebal_fast_"))
    net = network(args.arch, args.model, args.s)
    full, fast = time_ratio(net, args.camera, args.net, args.iters, args.threads, work)
    print(f"machine: {machine()}; {args.threads} threads")
    print(f"{args.arch}, camera {args.camera[0]}x{args.camera[1]}, network {args.net[0]}x{args.net[1]}: "
          f"full-resolution scoring {full:.0f} ms, fast {fast:.0f} ms -> full/fast = {full / fast:.2f}x "
          f"({args.iters} interleaved runs each, medians)")
    if args.model and args.dataset:
        for ds, (a, b) in ap_difference(args.model, args.dataset, args.eval_size or args.net, args.limit, work).items():
            print(f"{ds}: AP full {100 * a['ap']:.2f} %, fast {100 * b['ap']:.2f} % "
                  f"(difference {100 * (b['ap'] - a['ap']):+.2f} points); AUROC {100 * a['auroc']:.2f} / "
                  f"{100 * b['auroc']:.2f} %, FPR95 {100 * a['fpr95']:.2f} / {100 * b['fpr95']:.2f} %")
    else:
        print("AP comparison skipped (give --model and --dataset)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
