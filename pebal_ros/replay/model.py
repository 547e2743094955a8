"""Which model a command runs: the bundled default, exported to ONNX once and cached, or a user's file.

The default model is a PyTorch checkpoint in ``models/``; replay, demo and infer run it with ONNX
Runtime (no GPU, no torch at inference time). The fused ONNX graph is exported on first use and
cached in the user cache folder (:func:`pebal_ros.paths.cache_dir`, ``$PEBAL_CACHE``);
the cache key covers the checkpoint (path, size, modification time), the input size and the
inference settings, so a retrained checkpoint or a changed preset is re-exported.

Inference settings (input size, normalisation, blur, threshold) come from, in order of priority:
``--preset/--config/--set`` on the command line; for the bundled default model its preset
(``synthetic``, which holds the calibrated threshold); the configuration a ``pebal finetune``
checkpoint stores in its meta; the defaults.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..paths import DEFAULT_MODEL_NAME, bundled_model, cache_dir

DEFAULT_PRESET = "synthetic"


def default_model() -> Path:
    return bundled_model()


def _is_default_model(path: Path) -> bool:
    try:
        return path.name == DEFAULT_MODEL_NAME and path.resolve() == bundled_model().resolve()
    except FileNotFoundError:
        return False


MODEL_PRESET_HELP = "input size, normalisation and threshold of the model (default: the bundled model's)"


def config_from_args(args: argparse.Namespace) -> Any:
    """The Config the user asked for on the command line, or None when they asked for nothing."""
    if not (getattr(args, "preset", None) or getattr(args, "config", None) or getattr(args, "overrides", None)):
        return None
    from ..config import resolve_config
    return resolve_config(args)


def preset_config(name: str) -> Any:
    from ..config import resolve_config
    return resolve_config(argparse.Namespace(preset=name, config=None, overrides=[]))


def checkpoint_config(checkpoint: str | Path) -> Any:
    """The Config a checkpoint was trained with (``pebal finetune`` stores it in its meta), so the
    export uses the model's own input size, normalisation and threshold; defaults otherwise."""
    from ..config import Config, from_dict
    from ..models import read_checkpoint

    meta = read_checkpoint(checkpoint).get("meta") or {}
    cfg = meta.get("config")
    if isinstance(cfg, dict):
        try:
            return from_dict(cfg)
        except (ValueError, TypeError):
            pass   # a config written by another version: fall back to the defaults
    return Config()


def model_config(path: Path, config: Any = None) -> Any:
    """Explicit config > the default model's preset > the checkpoint's own > defaults."""
    if config is not None:
        return config
    if _is_default_model(path):
        return preset_config(DEFAULT_PRESET)
    if path.suffix.lower() in (".pt", ".pth"):
        return checkpoint_config(path)
    return None


def _cache_name(checkpoint: Path, size: tuple[int, int], cfg: Any) -> str:
    from ..config import to_dict

    st = checkpoint.stat()
    settings = json.dumps(to_dict(cfg.inference), sort_keys=True)
    key = hashlib.sha256(f"{checkpoint.resolve()}|{st.st_size}|{int(st.st_mtime)}|{settings}".encode()
                         ).hexdigest()[:10]
    return f"{checkpoint.stem}_{size[0]}x{size[1]}_{key}.onnx"


def cached_onnx(checkpoint: str | Path, image_size: tuple[int, int] | None = None,
                quiet: bool = False, config: Any = None) -> Path:
    """The fused ONNX export of ``checkpoint`` for ``image_size`` (H, W; default: the config's input
    size), exporting it if needed. ``config`` as resolved by :func:`model_config`."""
    from ..export.onnx import export_checkpoint

    checkpoint = Path(checkpoint)
    cfg = model_config(checkpoint, config)
    size: tuple[int, int] = tuple(image_size or cfg.inference.input_size)  # type: ignore[assignment]
    name = _cache_name(checkpoint, size, cfg)
    # One user cache, never the model's own folder: that may be a package's share/ or install tree.
    target = cache_dir() / "onnx" / name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"exporting {checkpoint.name} to ONNX ({target}); done once, then cached", flush=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp.onnx")
    export_checkpoint(checkpoint, tmp, image_size=size, config=cfg)
    os.replace(tmp, target)    # atomic: parallel workers never load a half-written file
    return target


def open_runtime(model: str | Path | None = None, *, kind: str | None = None, device: str = "cpu",
                 threads: int | None = None, image_size: tuple[int, int] | None = None,
                 quiet: bool = False, config: Any = None) -> Any:
    """A Runtime for ``model`` (None: the default model through ONNX Runtime).

    A ``.pt`` checkpoint with ``kind`` "onnxruntime" (the default for the default model) is exported
    and cached first; any other file goes to :func:`pebal_ros.runtime.load_runtime` as it is.
    """
    from ..runtime import load_runtime, runtime_kind

    path = Path(model) if model is not None else default_model()
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if model is None and kind is None:
        kind = "onnxruntime"
    opts: dict[str, Any] = {}
    resolved = runtime_kind(path, kind)
    if resolved == "onnxruntime" and path.suffix.lower() in (".pt", ".pth"):
        path = cached_onnx(path, image_size, quiet=quiet, config=config)
    elif resolved == "torch":
        cfg = model_config(path, config)
        if cfg is not None:
            opts["config"] = cfg
    if resolved == "onnxruntime" and threads:
        opts["threads"] = threads
    return load_runtime(path, kind=resolved, device=device, **opts)


def default_threshold(runtime: Any) -> float:
    """The threshold the model was exported/calibrated with, else the config default."""
    try:
        value = runtime.describe().get("default_threshold")
    except Exception:  # noqa: BLE001 - describe() is informational; never fail a replay on it
        value = None
    if value is None:
        from ..config import InferenceConfig
        value = InferenceConfig().threshold
    return float(value)


def resolve_threshold(explicit: float | None, config: Any, runtime: Any) -> float:
    """--threshold, else the threshold of an explicitly given config, else the model's own."""
    if explicit is not None:
        return float(explicit)
    if config is not None:
        return float(config.inference.threshold)
    return default_threshold(runtime)
