"""The one interface every runtime (TensorRT, ONNX Runtime, PyTorch) implements.

A runtime takes a camera image (uint8 HxWx3 in the channel order it was built for) and a
threshold and returns the three per-pixel outputs. Everything numeric between those two points
(normalisation, network, upsampling, argmax, energy, smoothing, threshold) happens inside the
runtime: in the fused graph for ONNX/TensorRT, in the fused nn.Module for PyTorch.

Several frames at once (one per camera): a runtime whose network has a real batch dimension sets
``supports_batch = True`` and implements ``infer_batch(images, threshold)`` (frames of one size, one
network call). Today that is the PyTorch runtime only, and by default only on CUDA, where a batch
pays (see ``TorchRuntime``): the fused ONNX graph (and so the TensorRT engine built from it) takes
one HxWx3 frame, so ONNX Runtime and TensorRT run N frames as N calls.
Callers do not need to know which: :func:`infer_many` takes the batched call where there is one
and loops ``infer`` otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@dataclass
class FrameOutputs:
    semantic: np.ndarray   # uint8 [H, W], train ids 0-18
    score: np.ndarray      # float32 [H, W], higher = more anomalous
    mask: np.ndarray       # uint8 [H, W], 1 where score > threshold

    def copy(self) -> "FrameOutputs":
        return FrameOutputs(self.semantic.copy(), self.score.copy(), self.mask.copy())

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the three maps."""
        return int(self.mask.shape[0]), int(self.mask.shape[1])


@runtime_checkable
class Runtime(Protocol):
    name: str                                  # "tensorrt" | "onnxruntime" | "torch"
    input_size: tuple[int, int] | None         # (H, W) the artefact needs; None = any size
    channel_order: str                         # "rgb" | "bgr": what infer() expects

    def infer(self, image: np.ndarray, threshold: float) -> FrameOutputs: ...

    def describe(self) -> dict: ...


@runtime_checkable
class BatchRuntime(Runtime, Protocol):
    """A runtime with a real batch dimension (optional capability; see the module doc)."""
    supports_batch: bool

    def infer_batch(self, images: list[np.ndarray], threshold: float) -> list[FrameOutputs]: ...


def supports_batch(runtime: object) -> bool:
    """True where ``runtime`` runs several same-size frames in one network call."""
    return bool(getattr(runtime, "supports_batch", False)) and callable(getattr(runtime, "infer_batch", None))


def infer_many(runtime: Runtime, images: Sequence[np.ndarray], threshold: float,
               errors: str = "raise") -> list[FrameOutputs | ValueError]:
    """Frames of one size through ``runtime``: one ``infer_batch`` call where the runtime has a real
    batch dimension, else one ``infer`` per frame. Every frame gets arrays of its own, even from a
    runtime built with ``reuse_outputs=True`` (which hands back the same three arrays every call):
    all but the last frame's are copied before the next call overwrites them; the last frame's may
    be the runtime's reused arrays, exactly as after a single ``infer``.

    ``errors="return"``: a frame the runtime refuses (``ValueError``: wrong size, outside an
    exported range) gets that exception in its place and the others still run (a refused batched
    call is retried frame by frame to find which); other exceptions propagate either way.
    """
    if errors not in ("raise", "return"):
        raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
    images = list(images)
    if not images:
        return []
    if supports_batch(runtime) and len(images) > 1:
        try:
            outs = runtime.infer_batch(images, threshold)  # type: ignore[attr-defined]
        except ValueError:
            if errors == "raise":
                raise
        else:
            if len(outs) != len(images):
                raise RuntimeError(f"runtime {getattr(runtime, 'name', runtime)!r} returned {len(outs)} "
                                   f"results for a batch of {len(images)} frames")
            return list(outs)
    reused = bool(getattr(runtime, "reuse_outputs", False))
    results: list[FrameOutputs | ValueError] = []
    last = len(images) - 1
    for i, image in enumerate(images):
        try:
            out = runtime.infer(image, threshold)
        except ValueError as exc:
            if errors == "raise":
                raise
            results.append(exc)
            continue
        results.append(out.copy() if reused and i < last else out)
    return results
