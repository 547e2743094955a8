"""Small networks for the export/runtime tests (helper module, not a test file)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinySegNet(nn.Module):
    """Stride-4 conv net with bilinear upsampling back to the input size, 20 outputs; its logits
    span roughly -20..20 so that the energy/threshold paths see PEBAL-like magnitudes."""

    arch = "tiny"
    arch_kwargs: dict = {}

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = nn.Conv2d(3, 16, 3, 2, 1)
        self.b = nn.Conv2d(16, 20, 3, 2, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.b(F.relu(self.a(x)))
        return F.interpolate(z, size=x.shape[-2:], mode="bilinear", align_corners=False)


def small_espnetv2():
    """The project's ESPNetv2 (s=0.5, with abstention channel), or skip if models has not landed."""
    import pytest
    try:
        from pebal_ros.models import add_abstention, build_model
    except ImportError as exc:
        pytest.skip(f"pebal_ros.models not available yet ({exc})")
    torch.manual_seed(0)
    model = build_model("espnetv2", s=0.5)
    if not getattr(model, "has_abstention", False):
        model = add_abstention(model)
    return model.eval()


class SizeSpecialisingNet(TinySegNet):
    """Computes a size with Python ints (as ESPNetv2's pyramid does): not exportable with
    symbolic height/width."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[2]), int(x.shape[3])
        small = F.interpolate(x, size=(max(1, h // 3), max(1, w // 3)), mode="bilinear", align_corners=False)
        z = self.b(F.relu(self.a(small)))
        return F.interpolate(z, size=(h, w), mode="bilinear", align_corners=False)
