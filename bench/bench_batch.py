#!/usr/bin/env python3
"""Multi-camera batching (issue 11): one ``FramePipeline.process_batch`` of N frames (the newest of
each camera) vs N ``process`` calls, per tick, through the whole pipeline (decode, resize, inference,
outputs back to camera size, regions, every requested message).

The PyTorch runtime runs the N frames as one network call (``batch=True``: by default it batches on
CUDA only, because on a CPU a batch pays for small frames only); ONNX Runtime has no batch dimension in
the fused graph, so its batched tick is N calls (the ratio shows what the batch API costs there:
about nothing). Both ways run on the same frames in the same run, interleaved (the order alternates
every iteration); medians of ``--iters`` ticks after a warm-up (CUDA graphs are captured then).

Frames: one synthetic street scene per camera (``drive_sequence``, a different street each),
bgr8 messages as most cameras send them, at the network input size. The threshold is each model's
99th score percentile on camera 0, so about 1 % of the pixels are anomalous (as on a real road);
networks are freshly initialised (speed does not depend on the weights) except the bundled model.

    python3 bench/bench_batch.py                                 # CPU or CUDA, whichever there is
    python3 bench/bench_batch.py --device cuda --iters 50 --json batch.json
    python3 bench/bench_batch.py --runtime torch --outputs all --outputs status --cameras 1,4
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import machine, network, parse_hw   # noqa: E402  (bench/ on sys.path)

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _frames(n: int, hw: tuple[int, int]) -> list[np.ndarray]:
    from pebal_ros.data.synthetic_scene import drive_sequence
    return [next(iter(drive_sequence(seed, 1, (hw[1], hw[0])))).image for seed in range(n)]


def _models(args) -> list[tuple[str, torch.nn.Module, tuple[int, int]]]:
    """(label, network, network input size) for every row group."""
    if args.dry_run:
        return [("espnetv2 s=0.5", network("espnetv2", s=0.5), (64, 128))]
    out = []
    for arch in args.arch or ["espnetv2:1.0", "espnetv2:2.0"]:
        name, _, s = arch.partition(":")
        label = f"{name} s={float(s or 2.0)}" if name == "espnetv2" else name
        for hw in [parse_hw(x) for x in (args.size or ["512x1024"])]:
            out.append((label, network(name, s=float(s or 2.0)), hw))
    if not args.no_bundled:
        from pebal_ros.models import load_model
        from pebal_ros.paths import bundled_model
        path = bundled_model()
        out.append((f"bundled {path.name}", load_model(str(path), map_location="cpu").eval(), (128, 256)))
    return out


def _runtime(kind: str, net, hw, device: str, threads: int, tmp: Path):
    if kind == "torch":
        from pebal_ros.runtime.torch import TorchRuntime
        # batch=True: the CPU default runs N calls (a batch does not pay there); measure the batch anyway
        return TorchRuntime(net, device=device, input_size=hw, batch=True), ""
    import onnxruntime as ort
    if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        return None, f"ONNX Runtime CUDA skipped (providers: {ort.get_available_providers()})"
    from pebal_ros.export.onnx import export_fused
    from pebal_ros.graph.fused import build_fused
    from pebal_ros.runtime.onnx import OnnxRuntime
    path = tmp / f"m_{id(net)}_{hw[0]}x{hw[1]}.onnx"
    if not path.exists():
        export_fused(build_fused(net), path, hw)
    return OnnxRuntime(path, device=device, threads=threads), ""


def _agreement(seq, bat) -> dict:
    """The batched results against the sequential ones (PyTorch batches sum in another order)."""
    return {"max_abs_dscore": max(float(np.abs(a.outputs.score - b.outputs.score).max()) for a, b in zip(seq, bat)),
            "semantic_pct": 100.0 * float(np.mean([(a.outputs.semantic == b.outputs.semantic).mean()
                                                   for a, b in zip(seq, bat)])),
            "mask_pct": 100.0 * float(np.mean([(a.outputs.mask == b.outputs.mask).mean() for a, b in zip(seq, bat)]))}


def _tick_ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def bench_cameras(pipe, msgs, iters: int, warmup: int) -> dict:
    """N process() calls vs one process_batch(), interleaved; ms per tick, medians."""
    def sequential():
        for m in msgs:
            pipe.process(m)

    def batched():
        for r in pipe.process_batch(msgs):
            if isinstance(r, Exception):
                raise r
    seq = [pipe.process(m) for m in msgs]
    bat = pipe.process_batch(msgs)
    agree = _agreement(seq, bat)
    for _ in range(warmup):
        sequential()
        batched()
    t_seq, t_bat = [], []
    for k in range(iters):
        if k % 2:
            t_bat.append(_tick_ms(batched))
            t_seq.append(_tick_ms(sequential))
        else:
            t_seq.append(_tick_ms(sequential))
            t_bat.append(_tick_ms(batched))
    s, b = statistics.median(t_seq), statistics.median(t_bat)
    return {"sequential_ms": s, "batched_ms": b, "speedup": s / b, "iters": iters, **agree}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", action="append", help="espnetv2:S or wrn38 (repeatable; default espnetv2:1.0, espnetv2:2.0)")
    p.add_argument("--size", action="append", help="network input HxW for --arch (repeatable; default 512x1024)")
    p.add_argument("--no-bundled", action="store_true", help="skip the bundled model at 128x256")
    p.add_argument("--runtime", action="append", choices=("torch", "ort"), help="repeatable; default both")
    p.add_argument("--cameras", default="1,2,4", help="camera counts, comma-separated")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--outputs", action="append", help="messages built per frame, comma-separated, or 'all' "
                                                      "(the node's default); repeatable: rows for each (default all)")
    p.add_argument("--iters", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch and ONNX Runtime (1: the box is shared)")
    p.add_argument("--json", type=Path, help="write the rows here")
    p.add_argument("--dry-run", action="store_true", help="CPU, ESPNetv2 s=0.5 at 64x128, 1-2 cameras, 2 ticks")
    args = p.parse_args(argv)

    from pebal_ros.pipeline import FramePipeline, MessageFactory, PipelineConfig
    from pebal_ros.pipeline.messages import OUTPUT_NAMES

    device = "cpu" if args.dry_run else args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cameras = [1, 2] if args.dry_run else [int(c) for c in args.cameras.split(",")]
    iters, warmup = (2, 1) if args.dry_run else (args.iters, args.warmup)
    output_sets = [OUTPUT_NAMES if o == "all" else tuple(x for x in o.split(",") if x) for o in args.outputs or ["all"]]
    torch.set_num_threads(args.threads)
    factory = MessageFactory.for_rosbags()
    print(machine(), flush=True)
    print(f"device {device}; {args.threads} CPU threads; "
          f"medians of {iters} interleaved ticks after {warmup} warm-up", flush=True)

    rows, failed = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for label, net, hw in _models(args):
            frames = _frames(max(cameras), hw)
            msgs = [factory.image(factory.header(k, 0, f"cam{k}"), np.ascontiguousarray(f[..., ::-1]), "bgr8")
                    for k, f in enumerate(frames)]
            for kind in args.runtime or ["torch", "ort"]:
                try:
                    rt, note = _runtime(kind, net, hw, device, args.threads, Path(tmp))
                    if rt is None:
                        print(f"{label} {kind}: {note}", flush=True)
                        continue
                    thr = float(np.percentile(rt.infer(np.ascontiguousarray(frames[0]), 0.0).score, 99))
                    for outputs in output_sets:
                        pipe = FramePipeline(rt, PipelineConfig(threshold=thr, outputs=outputs), factory)
                        what = "all" if outputs == OUTPUT_NAMES else ",".join(outputs)
                        for n in cameras:
                            r = bench_cameras(pipe, msgs[:n], iters, warmup)
                            row = {"model": label, "size": f"{hw[0]}x{hw[1]}", "runtime": kind, "device": device,
                                   "batch_dim": bool(getattr(rt, "supports_batch", False)), "outputs": what,
                                   "cameras": n, **r}
                            rows.append(row)
                            print(f"{label:30s} {row['size']:9s} {kind:5s} outputs {what:14s} {n} cam: sequential "
                                  f"{r['sequential_ms']:8.2f} ms/tick, batched {r['batched_ms']:8.2f} ms/tick -> "
                                  f"{r['speedup']:5.2f}x  (sem {r['semantic_pct']:.3f} %, mask {r['mask_pct']:.3f} %, "
                                  f"|Δs| {r['max_abs_dscore']:.1e})", flush=True)
                    del rt, pipe
                except Exception as exc:   # one runtime failing must not hide the others' figures
                    print(f"{label} {kind}: FAILED {type(exc).__name__}: {exc}", flush=True)
                    failed += 1
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "device": device, "rows": rows}, indent=1))
    return 0 if rows and not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
