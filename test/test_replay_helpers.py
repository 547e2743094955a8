"""Shared helpers for the replay/demo/infer tests (no tests here): a tiny fused ONNX model and
small synthetic frames, so every test runs the real ONNX Runtime path in well under a second."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

H, W = 64, 96


class TinyNet(nn.Module):
    """A fixed random 2-layer conv net with 20 outputs: deterministic, exportable, cheap."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 20, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(torch.relu(self.c1(x)))


def tiny_onnx(path: Path, size: tuple[int, int] = (H, W), threshold: float = -4.3) -> Path:
    """The tiny fused model as ONNX at ``path``; exported once per machine and copied after that
    (the export costs seconds; the graph is the same every time)."""
    import os
    import shutil
    import tempfile

    from pebal_ros.graph.fused import FusedPebal
    from pebal_ros.export.onnx import ExportSpec, export_fused

    cache = Path(tempfile.gettempdir()) / f"pebal_test_tiny_{size[0]}x{size[1]}_{threshold}_{torch.__version__}.onnx"
    if not cache.exists():
        tmp = cache.with_suffix(f".{os.getpid()}.onnx")
        export_fused(FusedPebal(TinyNet().eval()), tmp, size, ExportSpec(image_size=size, threshold=threshold))
        os.replace(tmp, cache)
    if not path.exists():
        shutil.copyfile(cache, path)
    return path


def frames(n: int, seed: int = 0, size: tuple[int, int] = (H, W)) -> list[tuple[np.ndarray, np.ndarray]]:
    """Smooth random 'street' frames with a bright square (label 1) on most of them."""
    rng = np.random.default_rng(seed)
    out = []
    h, w = size
    for i in range(n):
        img = np.clip(rng.normal(100, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        label = np.zeros((h, w), np.uint8)
        label[: h // 8] = 255                                  # void band (ignored by metrics)
        if i % 4:
            y, x = rng.integers(h // 4, h - 16), rng.integers(0, w - 16)
            img[y:y + 12, x:x + 12] = (250, 20, 230)
            label[y:y + 12, x:x + 12] = 1
        out.append((img, label))
    return out
