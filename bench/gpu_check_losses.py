"""GPU check of pebal_loss (not a test): CUDA float32 vs the CPU float64 result (which the test
suite checks against independent references), gradients included, plus forward+backward timing
at the official crop size. Exits 1 on a mismatch, 0 (with a note) where CUDA is absent.

    python3 bench/gpu_check_losses.py [--batch 8 --size 900]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pebal_ros.losses import pebal_loss  # noqa: E402


def batch(b: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, 20, size, size, generator=g) * 2 + 6
    t = torch.randint(0, 19, (b, size, size), generator=g)
    t[:, : size // 10] = 255
    for i in range(0, b, 2):                      # every other image is mixed
        t[i, size // 3: size // 2, size // 4: size // 2] = 254
    return z, t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=900)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("CUDA not available: nothing to check")
        return 0
    # Accuracy on a small batch: CUDA float32 vs CPU float64.
    z, t = batch(4, 96)
    zc = z.double().requires_grad_(True)
    ref = pebal_loss(zc, t)
    ref["total"].backward()
    zg = z.cuda().requires_grad_(True)
    got = pebal_loss(zg, t.cuda())
    got["total"].backward()
    ok = True
    for k in ("total", "pal_inlier", "pal_mixed", "energy"):
        rel = abs(float(got[k]) - float(ref[k])) / abs(float(ref[k]))
        ok &= rel < 1e-5
        print(f"{k:12s} cpu64 {float(ref[k]):.8f} cuda32 {float(got[k]):.8f} rel {rel:.1e}")
    gerr = float((zg.grad.double().cpu() - zc.grad).abs().max() / zc.grad.abs().max())
    ok &= gerr < 1e-4
    print(f"grad max rel err {gerr:.1e}")
    # Speed at the official fine-tuning batch (8 x 900x900 crops).
    z, t = batch(args.batch, args.size)
    z, t = z.cuda().requires_grad_(True), t.cuda()
    for i in range(4):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        pebal_loss(z, t)["total"].backward()
        torch.cuda.synchronize()
        if i:
            print(f"forward+backward {args.batch}x20x{args.size}x{args.size}: {1e3 * (time.perf_counter() - t0):.1f} ms")
    print(f"peak CUDA memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB on {torch.cuda.get_device_name()}")
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
