"""The one interface every runtime (TensorRT, ONNX Runtime, PyTorch) implements.

A runtime takes a camera image (uint8 HxWx3 in the channel order it was built for) and a
threshold and returns the three per-pixel outputs. Everything numeric between those two points
(normalisation, network, upsampling, argmax, energy, smoothing, threshold) happens inside the
runtime: in the fused graph for ONNX/TensorRT, in the fused nn.Module for PyTorch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass
class FrameOutputs:
    semantic: np.ndarray   # uint8 [H, W], train ids 0-18
    score: np.ndarray      # float32 [H, W], higher = more anomalous
    mask: np.ndarray       # uint8 [H, W], 1 where score > threshold


@runtime_checkable
class Runtime(Protocol):
    name: str                                  # "tensorrt" | "onnxruntime" | "torch"
    input_size: tuple[int, int] | None         # (H, W) the artefact needs; None = any size
    channel_order: str                         # "rgb" | "bgr": what infer() expects

    def infer(self, image: np.ndarray, threshold: float) -> FrameOutputs: ...

    def describe(self) -> dict: ...
