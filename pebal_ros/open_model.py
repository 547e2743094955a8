"""A Runtime for resolved model settings: the one place every tool and the node open a model.

It sits above both ``export`` (a checkpoint run on ONNX Runtime is exported first) and ``runtime``.

A checkpoint run with ONNX Runtime is exported to the fused graph once and cached in the user
cache folder (:func:`pebal_ros.paths.cache_dir`, ``$PEBAL_CACHE``); the cache key covers the
checkpoint (path, size, modification time) and every resolved setting, so a retrained checkpoint
or a changed setting is re-exported, and the graph's metadata says what the model is and where
its threshold came from.
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


def _cache_name(checkpoint: Path, size: tuple[int, int], settings: ModelSettings) -> str:
    st = checkpoint.stat()
    # Threshold and region size are run-time inputs, not part of the graph: changing them must not
    # cost a re-export (the cached file's metadata keeps the first export's threshold as a hint;
    # a checkpoint's threshold always comes from resolve_settings, never from the cache).
    baked = {k: v for k, v in to_dict(settings.inference).items() if k not in ("threshold", "min_region_area")}
    described = {"inference": baked, "kind": settings.info.kind}
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
                          threshold_source=settings.source("threshold"))
        os.replace(tmp, target)    # atomic: parallel workers never load a half-written file
    finally:
        tmp.unlink(missing_ok=True)
    return target


def runtime_path(settings: ModelSettings, image_size: tuple[int, int] | None = None, quiet: bool = False) -> Path:
    """The file the backend loads: the cached export for a checkpoint on ONNX Runtime, else the model."""
    if settings.runtime == "onnxruntime" and settings.info.format == "checkpoint":
        return cached_onnx(settings, image_size, quiet=quiet)
    return settings.model


def open_runtime(settings: ModelSettings, threads: int | None = None, image_size: tuple[int, int] | None = None,
                 quiet: bool = False, path: Path | None = None) -> Runtime:
    """The backend for ``settings`` (``path``: an already exported file to load instead)."""
    path = path or runtime_path(settings, image_size, quiet)
    opts: dict[str, Any] = {}
    if settings.runtime == "torch":
        opts.update(config=settings.config, channel_order=settings.inference.channel_order)
    if settings.runtime == "onnxruntime" and threads:
        opts["threads"] = threads
    return load_runtime(path, kind=settings.runtime, device=settings.device, **opts)
