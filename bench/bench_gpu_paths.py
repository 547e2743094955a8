#!/usr/bin/env python3
"""The GPU paths that run without TensorRT, side by side, per network and frame size (issue 11).

Variants (each the whole fused step: uint8 frame in, semantic/score/mask arrays out, host to host):
  torch eager FP32         the plain PyTorch runtime (the reference for agreement)
  torch eager FP16         FP16 network, FP32 scoring
  torch FP16 NHWC          + channels_last
  torch graph FP16         + the fused step captured in a CUDA graph (the CUDA default)
  torch graph FP32         CUDA graph, FP32, channels_last
  ort cuda FP32 [+graph]   the fused .onnx on ONNX Runtime's CUDA execution provider (onnxruntime-gpu)
  ort cuda FP16 [+graph]   the --half export
and, with --cameras N, N cameras as N sequential calls vs one batched call (torch graph FP16).
Prints ms/frame p50/p99, frames/s and agreement with eager FP32 (semantic %, mask %, max |Δscore|);
--json writes the rows. --dry-run: CPU, tiny sizes, the variants a CPU runs (for the test suite).

    python3 bench/bench_gpu_paths.py --arch espnetv2:2.0 --arch wrn38 --size 512x1024 --size 1024x2048
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import machine, network, parse_hw   # noqa: E402  (bench/ on sys.path)

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _time(fn, iters: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    p99 = times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))]
    return {"p50_ms": statistics.median(times), "p99_ms": p99, "fps": 1e3 / statistics.median(times)}


def _agreement(ref, out) -> dict:
    return {"semantic_pct": 100.0 * float((ref.semantic == out.semantic).mean()),
            "mask_pct": 100.0 * float((ref.mask == out.mask).mean()),
            "max_abs_dscore": float(np.abs(ref.score - out.score).max())}


def torch_variants(cuda: bool) -> dict[str, dict]:
    if not cuda:
        return {"torch eager FP32": dict(half=False, channels_last=False, cuda_graph=False),
                "torch FP32 NHWC": dict(half=False, channels_last=True, cuda_graph=False)}
    return {"torch eager FP32": dict(half=False, channels_last=False, cuda_graph=False),
            "torch eager FP16": dict(half=True, channels_last=False, cuda_graph=False),
            "torch FP16 NHWC": dict(half=True, channels_last=True, cuda_graph=False),
            "torch graph FP16": dict(half=True, channels_last=True, cuda_graph=True),
            "torch graph FP32": dict(half=False, channels_last=True, cuda_graph=True)}


def ort_runtimes(net, hw, cuda: bool, tmp: Path):
    """(name, factory) for the ONNX Runtime CUDA variants, or a note why there are none."""
    import onnxruntime as ort
    if not cuda or "CUDAExecutionProvider" not in ort.get_available_providers():
        return [], f"ONNX Runtime CUDA skipped (providers: {ort.get_available_providers()})"
    from pebal_ros.graph.fused import build_fused
    from pebal_ros.export.onnx import export_fused
    from pebal_ros.runtime import load_runtime
    out = []
    for label, half in (("FP32", False), ("FP16", True)):
        path = tmp / f"m_{hw[0]}x{hw[1]}_{label}.onnx"
        export_fused(build_fused(net), path, hw, half=half)
        for graph in (False, True):
            name = f"ort cuda {label}" + (" +graph" if graph else "")
            out.append((name, lambda p=path, g=graph: load_runtime(p, device="cuda", cuda_graph=g)))
    return out, ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", action="append", help="espnetv2:S or wrn38 (repeatable; default espnetv2:1.0, "
                                                   "espnetv2:2.0, wrn38)")
    p.add_argument("--size", action="append", help="HxW (repeatable; default 512x1024 and 1024x2048)")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--cameras", type=int, default=4, help="cameras for the batched-vs-sequential row (0: off)")
    p.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime CUDA rows")
    p.add_argument("--json", type=Path, help="write the rows here")
    p.add_argument("--dry-run", action="store_true", help="CPU, 64x128, 3 iterations: checks the script runs")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.dry_run
    archs = args.arch or (["espnetv2:1.0"] if args.dry_run else ["espnetv2:1.0", "espnetv2:2.0", "wrn38"])
    sizes = [parse_hw(s) for s in (args.size or (["64x128"] if args.dry_run else ["512x1024", "1024x2048"]))]
    iters, warmup = (3, 1) if args.dry_run else (args.iters, args.warmup)
    if cuda:       # agreement against true FP32: TF32 alone moves argmax decisions on Hopper
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    device = "cuda" if cuda else "cpu"
    print(machine(), flush=True)
    from pebal_ros.runtime.torch import TorchRuntime

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            name, _, s = arch.partition(":")
            net = network(name, s=float(s or 2.0))
            for hw in sizes:
                image = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
                ref = None
                factories = [(v, lambda kw=kw: TorchRuntime(net, device=device, **kw))
                             for v, kw in torch_variants(cuda).items()]
                extra, note = ([], "") if args.no_ort else ort_runtimes(net, hw, cuda, Path(tmp))
                for variant, make in factories + extra:
                    try:
                        rt = make()
                        out = rt.infer(image, -5.0)
                    except Exception as exc:   # one variant failing must not hide the others' figures
                        print(f"{arch} {hw} {variant}: FAILED {type(exc).__name__}: {exc}", flush=True)
                        continue
                    ref = ref or out
                    row = {"arch": arch, "size": f"{hw[0]}x{hw[1]}", "variant": variant,
                           **_time(lambda: rt.infer(image, -5.0), iters, warmup), **_agreement(ref, out)}
                    rows.append(row)
                    print(f"{arch:13s} {row['size']:9s} {variant:22s} p50 {row['p50_ms']:8.2f} ms  "
                          f"p99 {row['p99_ms']:8.2f} ms  {row['fps']:8.1f} fps  sem {row['semantic_pct']:7.3f} %  "
                          f"mask {row['mask_pct']:7.3f} %  |Δs| {row['max_abs_dscore']:.2e}", flush=True)
                    del rt
                if note:
                    print(f"{arch} {hw}: {note}")
                if args.cameras > 1:
                    kw = torch_variants(cuda)["torch graph FP16" if cuda else "torch eager FP32"]
                    rt = TorchRuntime(net, device=device, **kw)
                    frames = [image] * args.cameras
                    seq = _time(lambda: [rt.infer(f, -5.0) for f in frames], iters, warmup)
                    bat = _time(lambda: rt.infer_batch(frames, -5.0), iters, warmup)
                    row = {"arch": arch, "size": f"{hw[0]}x{hw[1]}", "variant": f"{args.cameras} cameras",
                           "sequential_ms": seq["p50_ms"], "batched_ms": bat["p50_ms"],
                           "speedup": seq["p50_ms"] / bat["p50_ms"]}
                    rows.append(row)
                    print(f"{arch:13s} {row['size']:9s} {args.cameras} cameras: sequential {seq['p50_ms']:.2f} ms, "
                          f"batched {bat['p50_ms']:.2f} ms -> {row['speedup']:.2f}x", flush=True)
                # the aims of issue 11, as ratios measured in this run
                by = {r["variant"]: r for r in rows if r["arch"] == arch and r["size"] == f"{hw[0]}x{hw[1]}"}
                if "torch eager FP32" in by and "torch graph FP16" in by:
                    print(f"{arch} {hw}: graph FP16 vs eager FP32 {by['torch eager FP32']['p50_ms'] / by['torch graph FP16']['p50_ms']:.2f}x",
                          flush=True)
            del net
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
