"""A small but real Runtime for the pipeline tests: a nearest-palette-colour "segmenter" in torch.

Logits are z_c(x) = offset - ||x - colour_c||^2 / (2 s^2) for the 19 Cityscapes palette colours
(plus an abstention channel), computed with torch from the uint8 image; the semantic map, the
PEBAL score (smoothed free energy, via ``pebal_ros.scoring``) and the mask come out exactly as a
fused export would produce them. Pixels far from every palette colour get a high energy: planted
"anomalies" of such a colour are found, palette-coloured scene parts are not. The tests compare
against an independent numpy computation of the same definition.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pebal_ros.labels import NUM_CLASSES, PALETTE
from pebal_ros.runtime.base import FrameOutputs, Runtime
from pebal_ros.scoring import anomaly_score, semantic_map

SIGMA = 30.0
OFFSET = 10.0
ANOMALY_RGB = (0, 255, 255)   # cyan: > 150 away from every Cityscapes colour


class PaletteRuntime:
    """Runtime protocol implementation; ``input_size`` None = any size, else frames must match."""

    name = "torch-palette"

    def __init__(self, input_size: tuple[int, int] | None = None, channel_order: str = "rgb"):
        self.input_size = input_size
        self.channel_order = channel_order
        colours = torch.tensor(PALETTE[:NUM_CLASSES], dtype=torch.float32)          # [19, 3] RGB
        self.colours = colours if channel_order == "rgb" else colours.flip(1)
        self.calls = 0

    def logits(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.array(image, copy=True)).float().permute(2, 0, 1)   # [3, H, W]
        d2 = ((x[None] - self.colours[:, :, None, None]) ** 2).sum(1)                # [19, H, W]
        z = OFFSET - d2 / (2 * SIGMA ** 2)
        abstain = torch.full_like(z[:1], OFFSET - 50.0)
        return torch.cat([z, abstain])[None]                                        # [1, 20, H, W]

    def infer(self, image: np.ndarray, threshold: float) -> FrameOutputs:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"bad image {image.dtype} {image.shape}")
        if self.input_size is not None and image.shape[:2] != tuple(self.input_size):
            raise ValueError(f"image {image.shape[:2]} but runtime needs {self.input_size}")
        self.calls += 1
        with torch.no_grad():
            z = self.logits(image)
            sem = semantic_map(z)[0].to(torch.uint8).numpy()
            score = anomaly_score(z)[0].numpy().astype(np.float32)
        return FrameOutputs(semantic=sem, score=score, mask=(score > threshold).astype(np.uint8))

    def describe(self) -> dict:
        return {"name": self.name, "input_size": self.input_size, "channel_order": self.channel_order}


def reference_semantic(image_rgb: np.ndarray) -> np.ndarray:
    """Independent numpy nearest-palette-colour labelling."""
    d2 = ((image_rgb[:, :, None, :].astype(np.float64) - PALETTE[None, None, :NUM_CLASSES].astype(np.float64)) ** 2).sum(-1)
    return d2.argmin(-1).astype(np.uint8)


def make_scene(h: int = 48, w: int = 96, blob: tuple[int, int, int, int] | None = (20, 30, 10, 16)) -> np.ndarray:
    """Road (bottom), building (top), sky band and a cyan anomaly blob (y, x, h, w)."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = PALETTE[0]                 # road
    img[: h // 3] = PALETTE[10]         # sky
    img[h // 3: h // 2] = PALETTE[2]    # building
    if blob is not None:
        y, x, bh, bw = blob
        img[y:y + bh, x:x + bw] = ANOMALY_RGB
    return img


def test_palette_runtime_is_a_runtime_and_matches_numpy_reference():
    rt = PaletteRuntime()
    assert isinstance(rt, Runtime)
    img = make_scene()
    out = rt.infer(img, threshold=0.0)
    np.testing.assert_array_equal(out.semantic, reference_semantic(img))
    # Away from edges the smoothed energy equals the raw free energy of a constant patch.
    d2 = ((np.array(ANOMALY_RGB, float) - PALETTE[:NUM_CLASSES].astype(float)) ** 2).sum(-1)
    z = OFFSET - d2 / (2 * SIGMA ** 2)
    e_blob = -np.log(np.exp(z).sum())
    assert out.score[25, 38] == pytest.approx(e_blob, rel=1e-4)
    assert out.score[45, 5] < -9.0           # road pixel: energy ~ -OFFSET
    assert out.mask[25, 38] == 1 and out.mask[45, 5] == 0
