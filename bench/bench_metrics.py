"""Memory/speed check of the streaming metrics at LostAndFound scale (not a test).

Feeds N synthetic 2048x1024 frames (float32 energy-like scores, uint8 0/1/255 labels, train-id
maps) to OODMetrics and SegMetrics, prints the per-frame time, the peak RSS and the extrapolation
to the 1,203 frames of the LostAndFound test set. Usage:

    python3 bench/bench_metrics.py --frames 50
"""
from __future__ import annotations

import argparse
import resource
import sys
import time

from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without pip install
from pebal_ros.metrics import OODMetrics, SegMetrics, ood_metrics

LAF_FRAMES = 1203


def peak_rss_mib() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


def make_frames(n_distinct: int, h: int, w: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_distinct):
        label = np.zeros((h, w), np.uint8)
        label[: h // 8] = 255                                   # void band
        r, c = rng.integers(h // 4, h - 200), rng.integers(0, w - 200)
        label[r:r + 150, c:c + 180] = 1                         # one anomaly
        score = rng.normal(-12, 1.5, (h, w)).astype(np.float32) + 5 * (label == 1)
        gt = rng.integers(0, 19, (h, w)).astype(np.uint8)
        gt[: h // 8] = 255
        pred = np.where(rng.random((h, w)) < 0.8, gt, rng.integers(0, 19, (h, w))).astype(np.uint8)
        pred[pred == 255] = 0
        frames.append((score, label, pred, gt))
    return frames


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--distinct", type=int, default=4, help="distinct frames generated and cycled")
    ap.add_argument("--exact-check", action="store_true", help="also compare with exact sklearn on the fed pixels")
    args = ap.parse_args()

    frames = make_frames(args.distinct, args.height, args.width)
    rss0 = peak_rss_mib()
    ood, seg = OODMetrics(), SegMetrics()
    t_ood = t_seg = 0.0
    for i in range(args.frames):
        score, label, pred, gt = frames[i % len(frames)]
        t0 = time.perf_counter()
        ood.update(score, label)
        t1 = time.perf_counter()
        seg.update(pred, gt)
        t_seg += time.perf_counter() - t1
        t_ood += t1 - t0
    t0 = time.perf_counter()
    res = ood.compute()
    t_compute = time.perf_counter() - t0
    segres = seg.compute()
    px = args.frames * args.height * args.width
    print(f"frames {args.frames} x {args.height}x{args.width} = {px / 1e9:.3f} G pixels")
    print(f"OODMetrics.update  {1e3 * t_ood / args.frames:7.1f} ms/frame  ({px / t_ood / 1e6:.0f} Mpx/s)")
    print(f"SegMetrics.update  {1e3 * t_seg / args.frames:7.1f} ms/frame")
    print(f"OODMetrics.compute {t_compute:7.2f} s  -> AUROC {res['auroc']:.6f} AP {res['ap']:.6f} "
          f"FPR95 {res['fpr95']:.6f} (AUROC bin bound {res['auroc_bin_error_bound']:.1e})")
    print(f"SegMetrics: mIoU {segres['miou']:.4f} pixel acc {segres['pixel_acc']:.4f}")
    print(f"peak RSS {peak_rss_mib():.0f} MiB (after generating {args.distinct} frames: {rss0:.0f} MiB); "
          f"accumulator state {ood.counts.nbytes / 2**20:.0f} MiB, independent of the frame count")
    per_frame = (t_ood + t_seg) / args.frames
    print(f"extrapolated to LostAndFound ({LAF_FRAMES} frames): {per_frame * LAF_FRAMES:.0f} s of metric "
          f"updates, same peak memory")
    if args.exact_check:
        n = len(frames)
        reps = [args.frames // n + (1 if k < args.frames % n else 0) for k in range(n)]
        s = np.concatenate([np.repeat(f[0].ravel()[None], r, 0).ravel() for f, r in zip(frames, reps) if r])
        y = np.concatenate([np.repeat(f[1].ravel()[None], r, 0).ravel() for f, r in zip(frames, reps) if r])
        exact = ood_metrics(s, y)
        print("exact - streaming: " + ", ".join(f"{k} {exact[k] - res[k]:+.2e}" for k in ("auroc", "ap", "fpr95")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
