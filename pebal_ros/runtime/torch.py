"""PyTorch backend: a checkpoint (or a network) wrapped in the fused module, CUDA FP16 where available.

The same ``FusedPebal`` that is exported to ONNX runs here eagerly, so the three runtimes compute
the same thing by construction. On CUDA the network runs in FP16 by default while the
post-processing stays FP32 (``FusedPebal`` casts the logits), and the input frame goes through a
pinned host tensor and a preallocated device tensor (no per-frame allocation for the copy-in).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .base import FrameOutputs
from .common import RuntimeUnavailable, check_file, check_image


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeUnavailable("device='cuda' asked for but torch sees no CUDA device; use device='cpu'")
    return dev


class TorchRuntime:
    """``input_size``: "auto" = the config's ``inference.input_size`` for a checkpoint (what
    ``pebal export`` would bake in), any size for an ``nn.Module``; ``None`` = any size."""

    name = "torch"

    def __init__(self, model: str | Path | nn.Module, device: str = "auto", half: bool | None = None,
                 channel_order: str = "rgb", input_size: tuple[int, int] | None | str = "auto",
                 net_size: tuple[int, int] | None = None, fast: bool | None = None,
                 config=None, arch: str | None = None):
        from ..config import Config, InferenceConfig
        from ..export.fused import build_fused

        if isinstance(model, nn.Module):
            # a private copy: .to(device)/.half() below must not change the caller's module (two
            # runtimes over one network, FP32 and FP16, would otherwise share its weights)
            network, self.path = copy.deepcopy(model), None
        else:
            from ..models import load_model
            self.path = check_file(model, "PyTorch checkpoint", (".pt", ".pth"))
            try:
                network = load_model(str(self.path), arch=arch, map_location="cpu")
            except Exception as exc:
                raise ValueError(f"{self.path}: cannot load as a pebal checkpoint ({exc})") from exc
        inf = config.inference if isinstance(config, Config) else (config or InferenceConfig())
        self.device = _pick_device(device)
        self.half = (self.device.type == "cuda") if half is None else bool(half)
        if self.half and self.device.type != "cuda":
            raise ValueError("half=True needs CUDA (FP16 convolutions are not supported on CPU)")
        self.fused = build_fused(network.eval(), inf, channel_order, net_size, fast).to(self.device)
        if self.half:
            self.fused.net.half()
        if input_size == "auto":
            # a checkpoint runs at the config's network size, like the graph exported from it;
            # a bare module (tests, benchmarks) takes any size
            input_size = None if self.path is None else tuple(inf.input_size)
        self.input_size: tuple[int, int] | None = (
            (int(input_size[0]), int(input_size[1])) if input_size is not None else None)
        self.channel_order = channel_order
        self.default_threshold = inf.threshold
        self._thr = torch.zeros(1, dtype=torch.float32, device=self.device)
        self._host: torch.Tensor | None = None
        self._dev: torch.Tensor | None = None

    def _to_device(self, image: np.ndarray) -> torch.Tensor:
        src = torch.from_numpy(image)
        if self.device.type == "cpu":
            return src
        host, dev = self._host, self._dev
        if host is None or dev is None or dev.shape != src.shape:
            host = self._host = torch.empty(src.shape, dtype=torch.uint8, pin_memory=True)
            dev = self._dev = torch.empty(src.shape, dtype=torch.uint8, device=self.device)
        host.copy_(src)
        dev.copy_(host, non_blocking=True)
        return dev

    @torch.inference_mode()
    def infer(self, image: np.ndarray, threshold: float) -> FrameOutputs:
        image = check_image(image, self.input_size)
        self._thr.fill_(float(threshold))
        sem, score, mask = self.fused(self._to_device(image), self._thr)
        return FrameOutputs(sem.cpu().numpy(), score.float().cpu().numpy(), mask.cpu().numpy())

    def describe(self) -> dict:
        net = self.fused.net
        return {"runtime": self.name, "model": str(self.path) if self.path else type(net).__name__,
                "device": str(self.device), "precision": "fp16" if self.half else "fp32",
                "input_size": self.input_size, "channel_order": self.channel_order,
                "fast": self.fused.fast, "net_size": self.fused.pre.net_size,
                "default_threshold": self.default_threshold, "arch": getattr(net, "arch", "")}
