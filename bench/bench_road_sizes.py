#!/usr/bin/env python3
"""ms/frame of the fused ONNX graph (uint8 frame in -> semantic, score, mask out) at candidate input sizes.

The graph is exported at the network input size, as the node runs it (the pipeline resizes the
camera frame to ``inference.input_size`` before the graph).

For choosing ``inference.input_size`` of the real-road model, and for checking that fine-tuning
did not change the network's cost: with ``--model`` and ``--baseline`` both graphs are exported
at every size and timed interleaved in one run, so their ratio is measured under the same machine
load. Medians of ``--iters`` timed calls after a warm-up, ONNX Runtime on the CPU.

  python3 bench/bench_road_sizes.py --sizes 256x512 320x640 384x768 512x1024 \\
      --model models/pebal_espnetv2_road.pt --baseline ../shared/data/weights/espnetv2_s_2.0_city_1024x512.pth
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from common import machine, network, parse_hw, timeit


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=parse_hw, nargs="+", default=[(256, 512), (384, 768), (512, 1024)],
                    help="HEIGHTxWIDTH network input sizes")
    ap.add_argument("--model", help="checkpoint to time (default: a freshly initialised ESPNetv2 s=2.0)")
    ap.add_argument("--baseline", help="second checkpoint, timed interleaved with --model (ratio)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", help="keep the ONNX files here")
    ap.add_argument("--cpu-time", action="store_true",
                    help="also report the process CPU time per frame with one thread: robust to other load on "
                         "a shared machine (wall time is not), the cost of a frame on one free core")
    args = ap.parse_args()

    from pebal_ros.export.onnx import export_fused
    from pebal_ros.graph.fused import build_fused
    from pebal_ros.runtime.onnx import OnnxRuntime

    work = Path(args.workdir or tempfile.mkdtemp(prefix="pebal_road_sizes_"))
    models = {"model": args.model}
    if args.baseline:
        models["baseline"] = args.baseline
    nets = {k: network("espnetv2", v, 2.0) for k, v in models.items()}
    print(f"machine: {machine()}; ONNX Runtime, {args.threads} threads")
    for h, w in args.sizes:
        runtimes = {}
        for k, net in nets.items():
            path = work / f"{k}_{h}x{w}.onnx"
            export_fused(build_fused(net), path, (h, w))
            runtimes[k] = OnnxRuntime(path, device="cpu", threads=args.threads, reuse_outputs=True)
        frame = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
        times: dict[str, list[float]] = {k: [] for k in runtimes}
        for _ in range(max(1, args.iters // 2)):      # interleaved: machine noise hits both alike
            for k, rt in runtimes.items():
                r = timeit(lambda: rt.infer(frame, -10.0), 2, warmup=1)
                times[k] += [r["median_ms"], r["min_ms"]]
        med = {k: float(np.median(v[0::2])) for k, v in times.items()}
        if args.cpu_time:
            for k, net in nets.items():
                rt1 = OnnxRuntime(work / f"{k}_{h}x{w}.onnx", device="cpu", threads=1, reuse_outputs=True)
                rt1.infer(frame, -10.0)
                cpu = []
                for _ in range(max(3, args.iters // 2)):
                    t0 = time.process_time()
                    rt1.infer(frame, -10.0)
                    cpu.append((time.process_time() - t0) * 1e3)
                print(f"{h}x{w}: {k} CPU time {float(np.median(cpu)):.1f} ms/frame on one thread "
                      f"({1000 / float(np.median(cpu)):.1f} fps on one free core)", flush=True)
        best = {k: float(np.min(v[1::2])) for k, v in times.items()}
        line = f"{h}x{w}: " + ", ".join(f"{k} median {med[k]:.1f} ms/frame ({1000 / med[k]:.1f} fps), "
                                        f"min {best[k]:.1f} ms" for k in med)
        if "baseline" in med:
            line += f" -> model/baseline = {med['model'] / med['baseline']:.3f}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
