"""Which model a command runs, for the command-line tools: resolve its settings once, say so, open it.

The resolution itself (what the model file says, its preset or calibration, then the user's
``--preset/--config/--set`` and flags) is :mod:`pebal_ros.model_settings`, shared with the ROS node;
opening the backend (and the cached ONNX export of a checkpoint) is :mod:`pebal_ros.open_model`.
This module keeps the function-level API the tests and benchmarks use on top of them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..model_settings import Layer, ModelSettings, resolve_settings

MODEL_PRESET_HELP = ("input size, normalisation and threshold, applied on top of the model's own settings "
                     "(stored in the model file, or the bundled model's preset)")


# -- the earlier function-level API (tests, benchmarks): a Config object as one file layer --------
def _settings(model: str | Path | None, kind: str | None, device: str, config: Any) -> ModelSettings:
    from ..config import to_dict
    layers = [Layer("config", {"inference": to_dict(config.inference)}, explicit=False)] if config is not None else []
    return resolve_settings(model, layers, runtime=kind, device=device)


def cached_onnx(checkpoint: str | Path, image_size: tuple[int, int] | None = None,
                quiet: bool = False, config: Any = None) -> Path:
    from ..open_model import cached_onnx as _cached
    return _cached(_settings(checkpoint, "onnxruntime", "cpu", config), image_size, quiet=quiet)


def open_runtime(model: str | Path | None = None, *, kind: str | None = None, device: str = "cpu",
                 threads: int | None = None, image_size: tuple[int, int] | None = None,
                 quiet: bool = False, config: Any = None) -> Any:
    from ..open_model import open_runtime as _open
    return _open(_settings(model, kind, device, config), threads=threads, image_size=image_size, quiet=quiet)


def default_threshold(runtime: Any) -> float:
    """The threshold the runtime's model was exported with, else the config default."""
    try:
        value = runtime.describe().get("default_threshold")
    except Exception:  # noqa: BLE001 - describe() is informational; never fail a replay on it
        value = None
    if value is None:
        from ..config import InferenceConfig
        value = InferenceConfig().threshold
    return float(value)


__all__ = ["MODEL_PRESET_HELP", "cached_onnx", "default_threshold", "open_runtime"]
