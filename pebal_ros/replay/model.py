"""Which model a command runs: the bundled default, exported to ONNX once and cached, or a user's file.

The default model is a PyTorch checkpoint in ``models/``; replay, demo and infer run it with ONNX
Runtime (no GPU, no torch at inference time). The fused ONNX graph is exported on first use and
cached next to the checkpoint when that folder is writable, else under ``~/.cache/pebal_ros``;
the cache key includes the input size and the checkpoint's modification time and size, so a
retrained checkpoint is re-exported.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO_ROOT / "models" / "pebal_synthetic_espnetv2.pt"
CACHE_DIR = Path(os.environ.get("PEBAL_CACHE", Path.home() / ".cache" / "pebal_ros"))


def default_model() -> Path:
    if not DEFAULT_MODEL.is_file():
        raise FileNotFoundError(
            f"the default model {DEFAULT_MODEL} is missing: run from a clone of the repository "
            "(pip install -e .), or pass --model PATH (.onnx / .pt / .engine)")
    return DEFAULT_MODEL


def _cache_name(checkpoint: Path, size: tuple[int, int] | None) -> str:
    st = checkpoint.stat()
    key = hashlib.sha256(f"{checkpoint.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:10]
    tag = f"{size[0]}x{size[1]}" if size else "dynamic"
    return f"{checkpoint.stem}_{tag}_{key}.onnx"


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
        except ValueError:
            pass   # a config written by another version: fall back to the defaults
    return Config()


def cached_onnx(checkpoint: str | Path, image_size: tuple[int, int] | None = None,
                quiet: bool = False) -> Path:
    """The fused ONNX export of ``checkpoint`` for ``image_size`` (H, W; default: the input size the
    checkpoint was trained for), exporting it if needed."""
    from ..export.onnx import export_checkpoint

    checkpoint = Path(checkpoint)
    cfg = checkpoint_config(checkpoint)
    image_size = tuple(image_size or cfg.inference.input_size)  # type: ignore[assignment]
    name = _cache_name(checkpoint, image_size)
    for folder in (checkpoint.parent, CACHE_DIR):
        if (folder / name).is_file():
            return folder / name
    target = checkpoint.parent / name if os.access(checkpoint.parent, os.W_OK) else CACHE_DIR / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"exporting {checkpoint.name} to ONNX ({target}); done once, then cached", flush=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp.onnx")
    export_checkpoint(checkpoint, tmp, image_size=image_size, config=cfg)
    os.replace(tmp, target)    # atomic: parallel workers never load a half-written file
    return target


def open_runtime(model: str | Path | None = None, *, kind: str | None = None, device: str = "cpu",
                 threads: int | None = None, image_size: tuple[int, int] | None = None,
                 quiet: bool = False) -> Any:
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
        path = cached_onnx(path, image_size, quiet=quiet)
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
