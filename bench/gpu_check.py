#!/usr/bin/env python3
"""One-shot GPU check of the deployment path (run by bench/gpu_check.sh on a CUDA machine).

Sections, each independent (a failure is reported and the next one runs), all under a time budget:
  1. environment: GPU, driver-side CUDA, torch / ONNX Runtime providers / TensorRT / cuda-python
  2. cuda-python buffers: pinned host + device buffers + one stream (the TensorRT runtime's
     memory path): H2D + D2H round trip, bytes compared, bandwidth
  3. PyTorch fused model on CUDA, FP32 vs FP16: score max|diff|, semantic and mask agreement, and
     ms/frame (end to end: uint8 frame in, three arrays out) for ESPNetv2 and WRN38-DeepLabV3+
     at 512x1024, plus the official-style pipeline (eager FP32 forward, separate scoring steps)
  4. ONNX Runtime: the fused ESPNetv2 graph on the CUDA execution provider if this onnxruntime has
     it, else on the CPU provider with all cores (fused vs network-only ratio)
  5. TensorRT: FP16 engine build + runtime parity/speed if tensorrt imports; otherwise check that
     asking for it fails with the clear error that names the ONNX alternative
Without CUDA it prints that the GPU checks are skipped and exits 0; --dry-run runs sections 3-4
on the CPU at a tiny size so the script's own logic is tested where there is no GPU.
Figures are printed and, if $OUT is set, also written to $OUT/gpu_check.txt.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import network, timeit  # noqa: E402  (also puts the repo on sys.path)

import torch  # noqa: E402

LINES: list[str] = []
T0 = time.perf_counter()


def say(msg: str = "") -> None:
    print(msg, flush=True)
    LINES.append(msg)


def elapsed() -> float:
    return time.perf_counter() - T0


def compare(ref, other, thr: float) -> dict[str, float]:
    """Parity figures of two FrameOutputs (ref = FP32)."""
    return {"score_max_abs_diff": float(np.abs(ref.score - other.score).max()),
            "semantic_agreement": float((ref.semantic == other.semantic).mean()),
            "mask_agreement": float((ref.mask == other.mask).mean())}


def fmt_parity(p: dict[str, float]) -> str:
    return (f"score max|diff| {p['score_max_abs_diff']:.2e}, semantic {100 * p['semantic_agreement']:.3f} %, "
            f"mask {100 * p['mask_agreement']:.3f} %")


def test_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth, road-scene-like frame (gradients + blobs + mild noise) rather than white noise,
    whose logits are closer to real frames' (white noise exaggerates FP16 argmax flips)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([120 + 80 * np.sin(x / w * 6 + c) * np.cos(y / h * 4 - c) for c in range(3)], -1)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(h / 20, h / 6)
        img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def section_env(args) -> bool:
    say(f"== 1. environment ({platform.node()}, Python {platform.python_version()}, {platform.machine()})")
    say(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        say(f"GPU: {p.name}, sm {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
            f"torch CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    try:
        import onnxruntime as ort
        say(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}")
    except ImportError as exc:
        say(f"onnxruntime: not importable ({exc})")
    try:
        import tensorrt as trt
        say(f"tensorrt {trt.__version__}")
    except ImportError:
        say("tensorrt: not installed (tensorrt-cu13-libs has no wheel on PyPI: its sdist downloads "
            "the libraries from pypi.nvidia.com, unreachable here)")
    try:
        from pebal_ros.runtime.cuda import cudart
        rt = cudart()
        say(f"cuda-python: {rt.__name__}, runtime {rt.cudaRuntimeGetVersion()[1]}, "
            f"driver {rt.cudaDriverGetVersion()[1]}")
    except Exception as exc:
        say(f"cuda-python: unavailable ({exc})")
    return torch.cuda.is_available()


def section_cuda_buffers(args) -> None:
    from pebal_ros.runtime.cuda import DeviceBuffer, PinnedBuffer, Stream, probe_cuda
    say("== 2. cuda-python pinned/device buffers + stream (the TensorRT runtime's memory path)")
    gpu = probe_cuda(0)
    say(f"probe_cuda: {gpu}")
    shape = (1024, 2048, 3)
    src, dst = PinnedBuffer(shape, np.uint8), PinnedBuffer(shape, np.uint8)
    dev = DeviceBuffer(src.nbytes)
    stream = Stream()
    src.array[...] = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    dst.array[...] = 0
    reps = 20
    t = time.perf_counter()
    for _ in range(reps):
        stream.h2d(dev, src, src.nbytes)
        stream.d2h(dst, dev, src.nbytes)
    stream.synchronize()
    dt = time.perf_counter() - t
    ok = np.array_equal(src.array, dst.array)
    say(f"stream handle as int (what execute_async_v3 takes): {stream.ptr:#x}")
    say(f"round trip of a 2048x1024x3 uint8 frame: bytes equal = {ok}; "
        f"{2 * reps * src.nbytes / dt / 1e9:.1f} GB/s H2D+D2H (pinned, one stream)")
    for b in (src, dst, dev):
        b.free()
    stream.destroy()
    if not ok:
        raise RuntimeError("cuda-python round trip corrupted the data")


def section_torch(args) -> None:
    from pebal_ros.graph.fused import reference_outputs
    from pebal_ros.runtime.torch import TorchRuntime
    dev = args.device
    say(f"== 3. PyTorch fused model on {dev}: FP32 vs FP16 parity and speed at {args.h}x{args.w}")
    image = test_image(args.h, args.w)
    noise = np.random.default_rng(1).integers(0, 256, (args.h, args.w, 3), dtype=np.uint8)
    for arch in args.archs:
        if elapsed() > args.budget:
            say(f"{arch}: skipped, time budget of {args.budget} s used up")
            continue
        try:
            net = network(arch, args.model if arch == "espnetv2" else None, args.s)
            kw = getattr(net, "arch_kwargs", {}) or {}
            s_txt = f" s={kw.get('s', args.s)}" if arch == "espnetv2" else ""
            label = f"{arch}{s_txt}" + (" (checkpoint)" if args.model and arch == "espnetv2" else " (random init)")
            fp32 = TorchRuntime(net, device=dev, half=False)
            fp16 = TorchRuntime(net, device=dev, half=not args.dry_run) if not args.dry_run else fp32
            sync = torch.cuda.synchronize if dev == "cuda" else None
            for name, img in (("scene-like", image), ("noise", noise)):
                a = fp32.infer(img, 0.0)
                thr = float(np.median(a.score))
                a, b = fp32.infer(img, thr), fp16.infer(img, thr)
                what = "FP32 vs FP32 (dry run: no FP16 on CPU)" if args.dry_run else "FP16 vs FP32"
                say(f"{label} {name} image: {what} {fmt_parity(compare(a, b, thr))} (threshold = median score)")
            t32 = timeit(lambda: fp32.infer(image, 0.0), args.iters, warmup=3, sync=sync)["median_ms"]
            t16 = timeit(lambda: fp16.infer(image, 0.0), args.iters, warmup=3, sync=sync)["median_ms"]
            netc = net.to(dev)

            def official():
                # the official-style steps, on the same device, FP32
                from pebal_ros import scoring
                x = torch.from_numpy(image).to(dev).permute(2, 0, 1).float().div(255)
                x = (x - torch.tensor([0.485, 0.456, 0.406], device=dev).view(3, 1, 1)) / torch.tensor(
                    [0.229, 0.224, 0.225], device=dev).view(3, 1, 1)
                with torch.inference_mode():
                    z = netc(x[None]).float()
                    s = scoring.anomaly_score(z, size=image.shape[:2])
                    sem = scoring.semantic_map(z)
                return s.cpu().numpy(), sem.cpu().numpy(), (s > 0).cpu().numpy()
            toff = timeit(official, args.iters, warmup=3, sync=sync)["median_ms"]
            say(f"{label}: end-to-end ms/frame (uint8 in, 3 arrays out, median of {args.iters}): "
                f"fused FP32 {t32:.2f}, fused FP16 {t16:.2f} (x{t32 / t16:.2f}), official-style FP32 {toff:.2f}")
            if dev == "cpu":   # dry run: also cross-check against the independent reference
                _, rs, _ = reference_outputs(net.cpu(), image, 0.0)
                say(f"{label}: fused vs reference score max|diff| {np.abs(fp32.infer(image, 0.0).score - rs).max():.2e}")
            del fp32, fp16, netc, net
            if dev == "cuda":
                torch.cuda.empty_cache()
        except Exception as exc:
            say(f"{arch}: FAILED {type(exc).__name__}: {exc}")
            traceback.print_exc()


def section_ort(args) -> None:
    import onnxruntime as ort

    from pebal_ros.graph.fused import build_fused
    from pebal_ros.export.onnx import export_fused, export_network_only
    from pebal_ros.runtime.onnx import OnnxRuntime
    from pebal_ros.runtime.torch import TorchRuntime
    cuda_ep = "CUDAExecutionProvider" in ort.get_available_providers() and args.device == "cuda"
    say(f"== 4. ONNX Runtime {ort.__version__} ({'CUDA' if cuda_ep else 'CPU, ' + str(os.cpu_count()) + ' cores'}) "
        f"fused ESPNetv2 at {args.h}x{args.w}")
    if elapsed() > args.budget:
        say("skipped: time budget used up")
        return
    work = Path(tempfile.mkdtemp(prefix="pebal_gpu_"))
    net = network("espnetv2", args.model, args.s)
    t = time.perf_counter()
    export_fused(build_fused(net), work / "fused.onnx", (args.h, args.w))
    export_network_only(net, work / "net.onnx", (args.h, args.w))
    say(f"export (dynamo, opset 18) took {time.perf_counter() - t:.1f} s")
    image = test_image(args.h, args.w)
    ref = TorchRuntime(net, device="cpu").infer(image, 0.0)
    rt = OnnxRuntime(work / "fused.onnx", device="cuda" if cuda_ep else "cpu")
    out = rt.infer(image, 0.0)
    say(f"ONNX Runtime ({rt.session.get_providers()[0]}) vs PyTorch CPU FP32: {fmt_parity(compare(ref, out, 0.0))}")
    tf = timeit(lambda: rt.infer(image, 0.0), args.iters, warmup=2)["median_ms"]
    so = ort.SessionOptions()
    sess = ort.InferenceSession(str(work / "net.onnx"), so, providers=rt.session.get_providers())
    x = np.random.default_rng(0).standard_normal((1, 3, args.h, args.w)).astype(np.float32)
    tn = timeit(lambda: sess.run(None, {"input": x}), args.iters, warmup=2)["median_ms"]
    say(f"ms/frame: fused {tf:.2f}, network-only {tn:.2f} -> fused/network-only {tf / tn:.3f}")


def section_tensorrt(args) -> None:
    from pebal_ros.runtime import RuntimeUnavailable, load_runtime
    say("== 5. TensorRT")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        p = Path(tempfile.mkdtemp()) / "x.engine"
        p.write_bytes(b"not an engine")
        try:
            load_runtime(p)
            say("UNEXPECTED: load_runtime accepted an engine without TensorRT")
        except RuntimeUnavailable as exc:
            say(f"not installed; load_runtime('x.engine') raises RuntimeUnavailable: {exc}")
        return
    if elapsed() > args.budget:
        say("skipped: time budget used up")
        return
    from pebal_ros.graph.fused import build_fused
    from pebal_ros.export.onnx import export_fused
    from pebal_ros.export.tensorrt import build_engine
    from pebal_ros.runtime.torch import TorchRuntime
    work = Path(tempfile.mkdtemp(prefix="pebal_trt_"))
    net = network("espnetv2", args.model, args.s)
    export_fused(build_fused(net), work / "fused.onnx", (args.h, args.w))
    t = time.perf_counter()
    engine = build_engine(work / "fused.onnx", precision="fp16", progress=False)
    say(f"FP16 engine built in {time.perf_counter() - t:.0f} s")
    rt = load_runtime(engine)
    image = test_image(args.h, args.w)
    ref = TorchRuntime(net, device="cuda", half=False).infer(image, 0.0)
    out = rt.infer(image, 0.0)
    say(f"TensorRT FP16 vs PyTorch FP32: {fmt_parity(compare(ref, out, 0.0))}")
    tt = timeit(lambda: rt.infer(image, 0.0), args.iters, warmup=3)["median_ms"]
    say(f"TensorRT FP16 end-to-end {tt:.2f} ms/frame")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="run the sections on the CPU at a tiny size")
    ap.add_argument("--model", help="ESPNetv2 checkpoint (default: models/pebal_synthetic_espnetv2.pt if present)")
    ap.add_argument("--s", type=float, default=2.0)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--budget", type=float, default=270.0, help="seconds after which sections are skipped")
    args = ap.parse_args()
    default_ckpt = Path(__file__).resolve().parents[1] / "models" / "pebal_synthetic_espnetv2.pt"
    if args.model is None and default_ckpt.is_file():
        args.model = str(default_ckpt)
    args.archs = ["espnetv2", "wrn38_deeplabv3plus"]
    args.h, args.w = 512, 1024
    has_cuda = False
    try:
        has_cuda = section_env(args)
    except Exception as exc:
        say(f"environment: FAILED {exc}")
    if args.dry_run:
        args.device, args.h, args.w, args.iters, args.s = "cpu", 64, 128, 2, 0.5
        args.archs = ["espnetv2"]
        torch.set_num_threads(2)
        sections = [section_torch, section_ort, section_tensorrt]
    elif not has_cuda:
        say("no CUDA device: GPU checks skipped (use --dry-run to exercise the script on the CPU)")
        sections = []
    else:
        args.device = "cuda"
        torch.backends.cudnn.benchmark = True
        sections = [section_cuda_buffers, section_torch, section_ort, section_tensorrt]
    failures = 0
    for sec in sections:
        try:
            sec(args)
        except Exception as exc:
            failures += 1
            say(f"{sec.__name__}: FAILED {type(exc).__name__}: {exc}")
            traceback.print_exc()
    say(f"== done in {elapsed():.0f} s, {failures} section(s) failed")
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "gpu_check.txt").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
