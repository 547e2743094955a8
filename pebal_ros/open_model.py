"""A Runtime for resolved model settings: the one place every tool and the node open a model.

It sits above both ``export`` (a checkpoint run on ONNX Runtime is exported first) and ``runtime``.

A checkpoint run with ONNX Runtime is exported to the fused graph once and cached in the user
cache folder (:func:`pebal_ros.paths.cache_dir`, ``$PEBAL_CACHE``); the cache key covers the
checkpoint (path, size, modification time) and every resolved setting, so a retrained checkpoint
or a changed setting is re-exported, and the graph's metadata says what the model is and where
its threshold came from. ``runtime.precision: fp16`` exports it with an FP16 network (``--half``).

The ``runtime`` options (:class:`pebal_ros.config.RuntimeConfig`, already checked against the
backend and device by the settings resolution) become the backend's keyword options here.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .config import to_dict
from .model_settings import ModelSettings
from .paths import cache_dir
from .runtime import load_runtime
from .runtime.base import Runtime
from .runtime.common import RuntimeUnavailable

_SWITCH = {"auto": None, "on": True, "off": False}


def _cache_name(checkpoint: Path, size: tuple[int, int], settings: ModelSettings) -> str:
    st = checkpoint.stat()
    # Threshold, region size and picture scale are run-time inputs, not part of the graph: changing them must not
    # cost a re-export (the cached file's metadata keeps the first export's threshold as a hint;
    # a checkpoint's threshold always comes from resolve_settings, never from the cache).
    baked = {k: v for k, v in to_dict(settings.inference).items()
             if k not in ("threshold", "min_region_area", "heatmap_span")}
    described: dict[str, Any] = {"inference": baked, "kind": settings.info.kind}
    if _half_export(settings):     # only then: FP32 exports keep the names they were cached under
        described["net_dtype"] = "float16"
    key = hashlib.sha256(f"{checkpoint.resolve()}|{st.st_size}|{int(st.st_mtime)}|"
                         f"{json.dumps(described, sort_keys=True)}".encode()).hexdigest()[:10]
    return f"{checkpoint.stem}_{size[0]}x{size[1]}_{key}.onnx"


def cached_onnx(settings: ModelSettings, image_size: tuple[int, int] | None = None, quiet: bool = False) -> Path:
    """The fused ONNX export of the settings' checkpoint (at ``image_size``, default the resolved
    input size), exported on first use."""
    from .export.onnx import export_checkpoint

    checkpoint = settings.model
    size: tuple[int, int] = tuple(image_size or settings.inference.input_size)  # type: ignore[assignment]
    # One user cache, never the model's own folder: that may be a package's share/ or install tree.
    target = cache_dir() / "onnx" / _cache_name(checkpoint, size, settings)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"exporting {checkpoint.name} to ONNX ({target}); done once, then cached", flush=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp.onnx")
    try:
        export_checkpoint(checkpoint, tmp, image_size=size, config=settings.config,
                          model_kind=settings.info.kind, threshold_calibrated=settings.threshold_calibrated,
                          threshold_source=settings.source("threshold"), half=_half_export(settings))
        os.replace(tmp, target)    # atomic: parallel workers never load a half-written file
    finally:
        tmp.unlink(missing_ok=True)
    return target


def runtime_path(settings: ModelSettings, image_size: tuple[int, int] | None = None, quiet: bool = False) -> Path:
    """The file the backend loads: the cached export for a checkpoint on ONNX Runtime, else the model."""
    if settings.runtime == "onnxruntime" and settings.info.format == "checkpoint":
        return cached_onnx(settings, image_size, quiet=quiet)
    return settings.model


def _half_export(settings: ModelSettings) -> bool:
    return settings.options.precision == "fp16" and settings.info.format == "checkpoint"


def backend_options(settings: ModelSettings, threads: int | None = None) -> tuple[str, dict[str, Any], str]:
    """(device, load_runtime keyword options, why CUDA is required or "") for ``settings``.

    ``threads``: the caller's default for ONNX Runtime (e.g. cores per replay worker), used when
    ``runtime.threads`` is 0. FP16 from a checkpoint and ``cuda_graph: on`` are GPU paths: with
    device auto they ask for CUDA, so a machine without it says so instead of running something else.
    """
    o = settings.options
    device = settings.device
    opts: dict[str, Any] = {}
    needs_cuda = [f"runtime.{k}={getattr(o, k)} ({settings.source('runtime.' + k)})"
                  for k, on in (("precision", _half_export(settings)), ("cuda_graph", o.cuda_graph == "on")) if on]
    if settings.runtime == "torch":
        opts.update(config=settings.config, channel_order=settings.inference.channel_order,
                    half={"auto": None, "fp32": False, "fp16": True}[o.precision],
                    cuda_graph=_SWITCH[o.cuda_graph], compile=o.compile, batch=_SWITCH[o.batch])
    elif settings.runtime == "onnxruntime":
        # ONNX Runtime's CUDA graph needs every node on the CUDA provider: opt-in ("auto" = off)
        opts["cuda_graph"] = o.cuda_graph == "on"
        if o.threads or threads:
            opts["threads"] = o.threads or threads
    if needs_cuda and device == "auto":
        device = "cuda"
    return device, opts, " and ".join(needs_cuda)


def open_runtime(settings: ModelSettings, threads: int | None = None, image_size: tuple[int, int] | None = None,
                 quiet: bool = False, path: Path | None = None) -> Runtime:
    """The backend for ``settings`` (``path``: an already exported file to load instead;
    ``threads``: see :func:`backend_options`)."""
    device, opts, needs_cuda = backend_options(settings, threads)
    path = path or runtime_path(settings, image_size, quiet)
    try:
        return load_runtime(path, kind=settings.runtime, device=device, **opts)
    except RuntimeUnavailable as exc:
        if needs_cuda and settings.device == "auto":
            raise RuntimeUnavailable(f"{needs_cuda} needs CUDA, which is not available here ({exc}); "
                                     "leave it at auto to run on the CPU") from None
        raise
