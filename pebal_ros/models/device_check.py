"""Quick GPU check of the networks (for the one device run): ``python3 -m pebal_ros.models.device_check``.

Runs what the CPU test-suite cannot: both networks on CUDA at full resolution (ESPNetv2 1024x512
latency, WRN38 2048x1024 inference memory and time), the PEBAL head on CUDA (``add_abstention`` with
a CPU generator, freezing, one fine-tuning step with only the final block receiving gradients), and a
checkpoint saved from CUDA tensors loading back on the CPU. With ``--weights`` (the EdgeNets s=2.0
file) it also checks CPU/GPU agreement of the real network. Prints one JSON object; exit status 1 if
a check fails. Dry run of the script itself on a CPU: ``--device cpu --scale 16 --repeats 1``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from . import add_abstention, build_model, count_parameters, freeze_all_but_final, load_model, save_checkpoint


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[Any, float]:
    out = fn()  # warm-up (cuDNN autotune, lazy init)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    _sync(device)
    return out, (time.perf_counter() - t0) / repeats * 1000.0


def run(weights: Path | None, repeats: int, device: str = "cuda", scale: int = 1) -> dict[str, Any]:
    """``scale`` > 1 divides the image sizes (a quick CPU dry run of the script itself)."""
    if device == "cuda" and not torch.cuda.is_available():
        return {"skipped": "CUDA not available"}
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    res: dict[str, Any] = {"device": name, "torch": torch.__version__, "scale": scale}
    torch.backends.cudnn.benchmark = True

    esp = (load_model(weights) if weights else build_model("espnetv2", s=2.0)).to(dev).eval()
    x = torch.randn(1, 3, 512 // scale, 1024 // scale, device=dev)
    with torch.no_grad():
        y, ms = _timed(lambda: esp(x), dev, repeats)
    res["espnetv2_s2_ms_fp32"] = round(ms, 2)
    res["espnetv2_out_shape"] = list(y.shape)
    if weights:
        cpu = load_model(weights).eval()
        with torch.no_grad():
            ref = cpu(x.cpu())
            # Ampere+ GPUs run FP32 convolutions in TF32 by default (10-bit mantissa): measured on an
            # H200, that alone moves 0.2 % of argmax decisions. Parity is judged in true FP32; the
            # TF32 figure is reported beside it because it is what a default PyTorch deployment gets.
            res["espnetv2_cpu_gpu_tf32_argmax_agree"] = float((ref.argmax(1) == y.cpu().argmax(1)).float().mean())
            tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
            try:
                y32 = esp(x)
            finally:
                torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
        res["espnetv2_cpu_gpu_max_abs_diff"] = float((ref - y32.float().cpu()).abs().max())
        res["espnetv2_cpu_gpu_argmax_agree"] = float((ref.argmax(1) == y32.cpu().argmax(1)).float().mean())

    gen = torch.Generator().manual_seed(0)
    add_abstention(esp, generator=gen)
    freeze_all_but_final(esp)
    esp.train()
    opt = torch.optim.Adam([p for p in esp.parameters() if p.requires_grad], lr=1e-5)
    loss = esp(torch.randn(2, 3, 256 // scale, 512 // scale, device=dev)).logsumexp(1).mean()
    loss.backward()
    opt.step()
    grads = {n for n, p in esp.named_parameters() if p.grad is not None}
    res["espnetv2_finetune_step_ok"] = bool(grads) and all(n.startswith("bu_dec_l4.") for n in grads)

    with tempfile.TemporaryDirectory() as tmp:
        path = save_checkpoint(esp, Path(tmp) / "gpu.pth", note="saved from cuda")
        back = load_model(path, map_location="cpu")
        res["cuda_checkpoint_loads_on_cpu"] = (back.has_abstention and
                                               next(back.parameters()).device.type == "cpu")
    del esp, opt

    wrn = build_model("wrn38_deeplabv3plus").to(dev).eval()
    res["wrn38_params"] = count_parameters(wrn)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    xw = torch.randn(1, 3, 1024 // scale, 2048 // scale, device=dev)
    with torch.no_grad():
        yw, msw = _timed(lambda: wrn(xw), dev, max(1, repeats // 10))
    res["wrn38_ms_fp32"] = round(msw, 1)
    if dev.type == "cuda":
        res["wrn38_peak_mem_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    res["wrn38_out_shape"] = list(yw.shape)
    res["wrn38_finite"] = bool(torch.isfinite(yw).all())
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=None, help="espnetv2_s_2.0_city_1024x512.pth (optional)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    ap.add_argument("--scale", type=int, default=1, help="divide image sizes by this (CPU dry run)")
    args = ap.parse_args(argv)
    res = run(args.weights, args.repeats, args.device, args.scale)
    print(json.dumps(res, indent=1))
    if "skipped" in res:
        return 0
    checks = [res["espnetv2_finetune_step_ok"], res["cuda_checkpoint_loads_on_cpu"]]
    if "espnetv2_cpu_gpu_argmax_agree" in res:
        checks.append(res["espnetv2_cpu_gpu_argmax_agree"] > 0.999)
    return 0 if all(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
