"""One runtime interface over TensorRT, ONNX Runtime and PyTorch.

    from pebal_ros.runtime import load_runtime
    rt = load_runtime("model.onnx")             # or .engine/.plan (TensorRT), .pt/.pth (PyTorch)
    out = rt.infer(image_uint8_hxwx3, threshold=rt.describe()["default_threshold"])
    out.semantic, out.score, out.mask

Backends are imported lazily, so importing this package needs neither a GPU nor TensorRT.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import FrameOutputs, Runtime
from .common import RuntimeUnavailable

KINDS = {"tensorrt": (".engine", ".plan"), "onnxruntime": (".onnx",), "torch": (".pt", ".pth")}
_ALIASES = {"trt": "tensorrt", "onnx": "onnxruntime", "ort": "onnxruntime", "pytorch": "torch"}


def runtime_kind(path: str | Path, kind: str | None = None) -> str:
    """The backend for ``path``: ``kind`` if given, else from the file suffix."""
    if kind is not None:
        k = _ALIASES.get(kind.lower(), kind.lower())
        if k not in KINDS:
            raise ValueError(f"unknown runtime kind {kind!r}; choose from {sorted(KINDS)}")
        return k
    suffix = Path(path).suffix.lower()
    for k, suffixes in KINDS.items():
        if suffix in suffixes:
            return k
    known = ", ".join(f"{s} ({k})" for k, ss in KINDS.items() for s in ss)
    raise ValueError(f"cannot tell the runtime from {Path(path).name!r}: expected one of {known}, "
                     "or pass kind=")


def load_runtime(path: str | Path, kind: str | None = None, device: str = "auto", **opts: Any) -> Runtime:
    """Load a model artefact behind the ``Runtime`` interface.

    device: "auto" (GPU where the backend can use one), "cpu" or "cuda". Extra keyword options go
    to the backend (e.g. ``threads``/``reuse_outputs`` for ONNX Runtime, ``half``/``channel_order``/
    ``config`` for PyTorch, ``allow_unverified`` for TensorRT).
    """
    k = runtime_kind(path, kind)
    if not Path(path).is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if k == "onnxruntime":
        from .onnx import OnnxRuntime
        return OnnxRuntime(path, device=device, **opts)
    if k == "torch":
        from .torch import TorchRuntime
        return TorchRuntime(path, device=device, **opts)
    if device == "cpu":
        raise RuntimeUnavailable("a TensorRT engine runs only on an NVIDIA GPU, not device='cpu'; "
                                 "use the fused .onnx with ONNX Runtime for CPU inference")
    from .tensorrt import TensorRTRuntime
    return TensorRTRuntime(path, device=0 if device == "auto" else device, **opts)


__all__ = ["FrameOutputs", "Runtime", "RuntimeUnavailable", "load_runtime", "runtime_kind", "KINDS"]
