"""Build a TensorRT engine from a fused ONNX export (FP16 by default; FP32; INT8 with calibration).

Uses TensorRT's Python API: the ONNX parser, a workspace limit, a persistent timing cache (later
builds of similar graphs take seconds instead of minutes), an optimisation profile for dynamic
exports, and a progress display (engine builds take minutes). The anomaly-score layers (ONNX
nodes named post/...) are pinned to FP32 so that an FP16 engine still scores in FP32.

Every engine gets a sidecar ``<engine>.json`` with its cache key (ONNX SHA-256, TensorRT version,
GPU name and compute capability, precision, shapes); an up-to-date engine is reused, a stale one
rebuilt, and the runtimes refuse engines whose key does not match the machine.

The equivalent `trtexec` command is printed first, for those who prefer it (e.g. on a Jetson):
  pebal build-engine --onnx out/pebal_1024x512.onnx                  # -> out/pebal_1024x512.fp16.engine
  pebal build-engine --onnx m.onnx --precision int8 --calib-dir frames/ --calib-frames 200
  pebal build-engine --onnx m.onnx --print-trtexec                   # only print the trtexec command
"""
from __future__ import annotations

import argparse
import datetime as _dt
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..cache import write_atomic
from ..graph.engine_cache import (EngineCache, EngineKey, StaleEngineError, read_sidecar, sha256_file,
                           shapes_string, write_sidecar)
from .onnx import ExportSpec, parse_hw, read_spec

POST_PREFIX = "post/"   # dynamo export (tagged in onnx.py); the TorchScript exporter names them /post/...


def is_post_layer(name: str) -> bool:
    return name.startswith(POST_PREFIX) or name.startswith("/" + POST_PREFIX)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")


def build_mode(spec: ExportSpec, precision: str, has_weak_fp16: bool, trt_version: str = "") -> str:
    """"weak" (TensorRT 10 builder precision flags) or "strong" (strongly typed network).

    A graph exported with ``--half`` carries its FP16 typing and is always built strongly typed.
    TensorRT >= 11 removed weak typing (BuilderFlag.FP16/INT8, INT8 calibrators), so there an FP32
    graph builds only as FP32, and FP16 needs the ``--half`` export."""
    if spec.net_dtype == "float16":
        if precision != "fp16":
            raise ValueError("this graph types its network FP16 (exported with --half): build it with "
                             "--precision fp16, or export without --half for fp32/int8 engines")
        return "strong"
    if has_weak_fp16:
        return "weak"
    if precision == "fp16":
        raise ValueError(
            f"TensorRT {trt_version} has no weakly-typed FP16 (removed in TensorRT 11): re-export with "
            "`pebal export --half` (FP16 network inside the graph) and build that, or use --precision fp32")
    if precision == "int8":
        raise ValueError(f"TensorRT {trt_version} removed implicit INT8 calibration (TensorRT 11 needs "
                         "explicitly quantised Q/DQ graphs): use TensorRT 10.x for --precision int8, or fp16")
    return "strong"


def default_engine_path(onnx_path: str | Path, precision: str) -> Path:
    p = Path(onnx_path)
    return p.with_name(f"{p.stem}.{precision}.engine")


def profile_shapes(spec: ExportSpec, min_hw=None, opt_hw=None, max_hw=None):
    """(min, opt, max) image shapes for the optimisation profile; all equal for a static export."""
    if spec.image_size is not None:
        s = (*spec.image_size, 3)
        return s, s, s
    mn, mx = min_hw or spec.min_hw, max_hw or spec.max_hw
    if mn is None or mx is None:
        raise ValueError("dynamic export without a recorded range: pass --min-hw and --max-hw")
    op = opt_hw or spec.opt_hw or mx
    for a, b in ((mn, op), (op, mx)):
        if a[0] > b[0] or a[1] > b[1]:
            raise ValueError(f"profile must satisfy min <= opt <= max, got {mn} {op} {mx}")
    return (*mn, 3), (*op, 3), (*mx, 3)


def post_node_names(onnx_path: str | Path) -> list[str]:
    import onnx
    model = onnx.load(str(onnx_path), load_external_data=False)
    float_ops = {"Exp", "Log", "ReduceSum", "ReduceMax", "Sub", "Neg", "Add", "Conv", "Pad", "Resize", "Mul"}
    return [n.name for n in model.graph.node if is_post_layer(n.name) and n.op_type in float_ops]


def trtexec_command(onnx_path: str | Path, engine_path: str | Path, precision: str, workspace_mib: int,
                    timing_cache: str | Path | None, shapes, calib_cache: str | Path | None = None,
                    fp32_layers: list[str] | None = None, strongly_typed: bool = False) -> str:
    """The trtexec invocation that builds the same engine (minus the sidecar: see docs)."""
    cmd = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}",
           f"--memPoolSize=workspace:{workspace_mib}"]
    if strongly_typed:
        cmd.append("--stronglyTyped")
    elif precision == "fp16":
        cmd.append("--fp16")
    elif precision == "int8":
        cmd += ["--int8", "--fp16"] + ([f"--calib={calib_cache}"] if calib_cache else [])
    if timing_cache:
        cmd.append(f"--timingCacheFile={timing_cache}")
    mn, op, mx = shapes
    if not (mn == op == mx):
        fmt = lambda s: "image:" + "x".join(str(v) for v in s)  # noqa: E731
        cmd += [f"--minShapes={fmt(mn)}", f"--optShapes={fmt(op)}", f"--maxShapes={fmt(mx)}"]
    if precision != "fp32" and fp32_layers and not strongly_typed:
        cmd += ["--precisionConstraints=prefer",
                "--layerPrecisions=" + ",".join(f"{n}:fp32" for n in fp32_layers)]
    return " ".join(shlex.quote(c) for c in cmd)


def calibration_frames(folder: str | Path, hw: tuple[int, int], channel_order: str,
                       limit: int | None = None) -> Iterator[np.ndarray]:
    """uint8 HxWx3 frames (in the graph's channel order, resized to ``hw``) from an image folder."""
    import cv2

    from ..image_limits import read_image
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder} for INT8 calibration")
    for path in files[:limit]:
        bgr = read_image(path, cv2.IMREAD_COLOR)   # the decode cap's default: a bomb raises, named
        if bgr is None:
            raise ValueError(f"cannot read calibration image {path}")
        if bgr.shape[:2] != tuple(hw):
            bgr = cv2.resize(bgr, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
        yield np.ascontiguousarray(bgr if channel_order == "bgr" else bgr[..., ::-1])


def _progress_monitor(trt):
    """A trt.IProgressMonitor drawing one tqdm bar per build phase (nested phases indent)."""
    from tqdm import tqdm

    class TqdmProgress(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self._bars: dict[str, Any] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            depth = 0
            parent = parent_phase
            while parent is not None and parent in self._bars:
                depth += 1
                parent = getattr(self._bars[parent], "_pebal_parent", None)
            bar = tqdm(total=num_steps, desc="  " * depth + phase_name, leave=depth == 0,
                       position=depth, file=sys.stderr, dynamic_ncols=True)
            bar._pebal_parent = parent_phase
            self._bars[phase_name] = bar

        def step_complete(self, phase_name, step):
            bar = self._bars.get(phase_name)
            if bar is not None:
                bar.update(step + 1 - bar.n)
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            bar = self._bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return TqdmProgress()


def _calibrator(trt, frames: list[np.ndarray], cache_path: Path):
    """Entropy calibrator feeding the fused graph's uint8 image (threshold fixed at 0)."""
    from ..runtime.cuda import DeviceBuffer, PinnedBuffer, Stream

    class FolderCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.frames, self.i = frames, 0
            self.host = PinnedBuffer(frames[0].shape, np.uint8)
            self.dev = DeviceBuffer(self.host.nbytes)
            self.thr_host = PinnedBuffer((1,), np.float32)
            self.thr_host.array[0] = 0.0
            self.thr_dev = DeviceBuffer(4)
            self.stream = Stream()

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            if self.i >= len(self.frames):
                return None
            np.copyto(self.host.array, self.frames[self.i])
            self.i += 1
            self.stream.h2d(self.dev, self.host, self.host.nbytes)
            self.stream.h2d(self.thr_dev, self.thr_host, 4)
            self.stream.synchronize()
            return [self.dev.ptr if n == "image" else self.thr_dev.ptr for n in names]

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache):
            cache_path.write_bytes(bytes(cache))

    return FolderCalibrator()


def build_engine(onnx_path: str | Path, output: str | Path | None = None, precision: str = "fp16",
                 workspace_mib: int = 2048, timing_cache: str | Path | None = None,
                 min_hw=None, opt_hw=None, max_hw=None, calib_dir: str | Path | None = None,
                 calib_frames: int = 100, calib_cache: str | Path | None = None,
                 cache_dir: str | Path | None = None, force: bool = False, device: int = 0,
                 verbose: bool = False, progress: bool = True) -> Path:
    """Build (or reuse an up-to-date) engine for ``onnx_path``; returns the engine's path."""
    from ..runtime.cuda import probe_cuda
    from ..runtime.tensorrt import import_tensorrt

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {onnx_path}")
    spec = read_spec(onnx_path)
    if spec.network_only:
        raise ValueError(f"{onnx_path} is a network-only export; build engines from the fused graph")
    if precision not in ("fp16", "fp32", "int8"):
        raise ValueError(f"precision must be fp16, fp32 or int8, got {precision!r}")
    if precision == "int8" and calib_dir is None and not (calib_cache and Path(calib_cache).is_file()):
        raise ValueError("INT8 needs --calib-dir (a folder of camera frames) or an existing --calib-cache")
    shapes = profile_shapes(spec, min_hw, opt_hw, max_hw)
    timing_cache = Path(timing_cache) if timing_cache else onnx_path.with_name("timing.cache")
    calib_cache = Path(calib_cache) if calib_cache else onnx_path.with_name(f"{onnx_path.stem}.int8.calib")
    planned = Path(output) if output else default_engine_path(onnx_path, precision)
    print("equivalent trtexec command (the pebal sidecar .json is written only by pebal build-engine):\n  "
          + trtexec_command(onnx_path, planned, precision, workspace_mib, timing_cache, shapes,
                            calib_cache if precision == "int8" else None, post_node_names(onnx_path),
                            strongly_typed=spec.net_dtype == "float16"))

    gpu = probe_cuda(device)          # before TensorRT: the lean runtime segfaults without a GPU
    trt = import_tensorrt()
    key = EngineKey(sha256_file(onnx_path), trt.__version__, gpu.name, gpu.compute_capability,
                    precision, shapes_string(spec.image_size, shapes[0][:2], shapes[1][:2], shapes[2][:2]))
    if cache_dir is not None and output is None:
        cache = EngineCache(cache_dir)
        planned = cache.path_for(key, onnx_path.stem)
        hit = cache.lookup(key, onnx_path.stem)
        if hit and not force:
            print(f"engine cache hit: {hit} (key {key.digest()[:16]})")
            return hit
    elif planned.is_file() and not force:
        try:
            old = EngineKey.from_dict(read_sidecar(planned))
            if old == key:
                print(f"{planned} is up to date (same ONNX, TensorRT {key.tensorrt_version}, {gpu.name}, "
                      f"{precision}, {key.shapes}); use --force to rebuild")
                return planned
            print(f"rebuilding stale {planned}: " + "; ".join(old.differences(key)))
        except StaleEngineError as exc:
            print(f"rebuilding {planned}: {exc}")
    planned.parent.mkdir(parents=True, exist_ok=True)

    mode = build_mode(spec, precision, hasattr(trt.BuilderFlag, "FP16"), trt.__version__)
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0   # explicit batch is the only mode since TensorRT 10
    if mode == "strong":
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"TensorRT {trt.__version__} could not parse {onnx_path}:\n{errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    cache_obj = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache_obj, ignore_mismatch=False)
    if progress and hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _progress_monitor(trt)
    if mode == "weak" and precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
        pinned = 0
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if not is_post_layer(layer.name):
                continue
            outs = [layer.get_output(j) for j in range(layer.num_outputs)]
            if outs and all(o.dtype in (trt.float32, trt.float16) for o in outs):
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.float32)
                pinned += 1
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        print(f"pinned {pinned} post-processing layers to FP32")
    profile = builder.create_optimization_profile()
    profile.set_shape("image", *shapes)
    config.add_optimization_profile(profile)
    if mode == "weak" and precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        frames = [] if calib_dir is None else list(
            calibration_frames(calib_dir, shapes[1][:2], spec.channel_order, calib_frames))
        if not frames:   # cache only: the calibrator is asked for the cache, never for batches
            frames = [np.zeros(shapes[1], np.uint8)]
        config.int8_calibrator = _calibrator(trt, frames, calib_cache)
        config.set_calibration_profile(profile)
    t0 = time.perf_counter()
    print(f"building {precision} ({mode}ly typed) engine for {gpu.name} (sm {gpu.compute_capability}) with TensorRT "
          f"{trt.__version__}, workspace {workspace_mib} MiB, shapes {key.shapes} ...")
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise RuntimeError("TensorRT failed to build the engine (see the log above)")
    seconds = time.perf_counter() - t0
    # mkstemp + os.replace: a reader never sees half an engine, and a symlink planted at the
    # engine's name is replaced, never written through
    write_atomic(planned, bytes(blob), mode=0o644)
    write_atomic(timing_cache, bytes(config.get_timing_cache().serialize()), mode=0o644)
    # model: the ONNX file's metadata, so the engine carries what the model is (model_settings)
    write_sidecar(planned, key, onnx_path=str(onnx_path), channel_order=spec.channel_order,
                  threshold=spec.threshold, fast=spec.fast, model=spec.to_metadata(), workspace_mib=workspace_mib,
                  build_seconds=round(seconds, 1),
                  built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    print(f"wrote {planned} ({planned.stat().st_size / 2**20:.1f} MiB) in {seconds:.0f} s; "
          f"timing cache {timing_cache}")
    return planned


# --- CLI ------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--onnx", required=True, help="fused .onnx written by `pebal export`")
    p.add_argument("--output", "-o", help="engine path (default: <onnx stem>.<precision>.engine beside it)")
    p.add_argument("--precision", choices=("fp16", "fp32", "int8"), default="fp16",
                   help="engine precision: fp16 (default), fp32, or int8 (calibrated on --calib-dir frames "
                        "or --calib-cache)")
    p.add_argument("--workspace-mib", type=int, default=2048, help="builder workspace limit (MiB)")
    p.add_argument("--timing-cache", help="timing cache file (default: timing.cache beside the ONNX)")
    p.add_argument("--min-hw", type=parse_hw, help="dynamic exports: profile minimum HEIGHTxWIDTH")
    p.add_argument("--opt-hw", type=parse_hw, help="dynamic exports: profile optimum HEIGHTxWIDTH")
    p.add_argument("--max-hw", type=parse_hw, help="dynamic exports: profile maximum HEIGHTxWIDTH")
    p.add_argument("--calib-dir", help="INT8: folder of camera frames to calibrate on")
    p.add_argument("--calib-frames", type=int, default=100, help="INT8: frames to use (default 100)")
    p.add_argument("--calib-cache", help="INT8: calibration cache file (read if present, else written)")
    p.add_argument("--cache-dir", help="keep engines in this cache directory, named by their key")
    p.add_argument("--force", action="store_true", help="rebuild even if an up-to-date engine exists")
    p.add_argument("--device", type=int, default=0, help="CUDA device index")
    p.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    p.add_argument("--print-trtexec", action="store_true", help="print the trtexec command and exit")


def main(args: argparse.Namespace) -> int:
    from ..runtime.common import RuntimeUnavailable
    if args.print_trtexec:
        spec = read_spec(args.onnx)
        shapes = profile_shapes(spec, args.min_hw, args.opt_hw, args.max_hw)
        out = args.output or default_engine_path(args.onnx, args.precision)
        tc = args.timing_cache or Path(args.onnx).with_name("timing.cache")
        print(trtexec_command(args.onnx, out, args.precision, args.workspace_mib, tc, shapes,
                              args.calib_cache, post_node_names(args.onnx),
                              strongly_typed=spec.net_dtype == "float16"))
        return 0
    try:
        build_engine(args.onnx, args.output, args.precision, args.workspace_mib, args.timing_cache,
                     args.min_hw, args.opt_hw, args.max_hw, args.calib_dir, args.calib_frames,
                     args.calib_cache, args.cache_dir, args.force, args.device, args.verbose)
    except RuntimeUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
