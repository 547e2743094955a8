"""Per-pixel anomaly scores from segmentation logits.

PEBAL's score is the inlier free energy E(x) = -logsumexp(z[:19]) (paper eq. 4, temperature 1),
smoothed by a 7x7 Gaussian (sigma 1, reflect padding) as the official code does with
torchvision's ``GaussianBlur(7, sigma=1)``. Higher means more anomalous. The abstention channel
(19) never enters the score: it exists to shape the inlier logits during fine-tuning.

The baselines of the paper's tables (MSP, Max Logit, Entropy, un-smoothed Energy) are here too so
that ``pebal evaluate`` scores every method from one forward pass.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from .labels import NUM_CLASSES


def gaussian_kernel1d(kernel_size: int = 7, sigma: float = 1.0) -> torch.Tensor:
    """The 1-D kernel torchvision's GaussianBlur builds (normalised, centred, odd size)."""
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel_size)
    pdf = torch.exp(-0.5 * (x / sigma) ** 2)
    return pdf / pdf.sum()


class GaussianBlur(torch.nn.Module):
    """Separable Gaussian blur with reflect padding on [B, H, W] or [B, C, H, W] tensors.

    Written with two depth-wise convolutions (rather than one 7x7) so that it exports to a small
    ONNX graph TensorRT fuses well; the weights are buffers so they follow ``.to(device/dtype)``.
    """

    def __init__(self, kernel_size: int = 7, sigma: float = 1.0):
        super().__init__()
        k = gaussian_kernel1d(kernel_size, sigma)
        self.pad = kernel_size // 2
        self.register_buffer("kx", k.view(1, 1, 1, kernel_size), persistent=False)
        self.register_buffer("ky", k.view(1, 1, kernel_size, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeeze = x.dim() == 3
        if squeeze:
            x = x.unsqueeze(1)
        b, c, h, w = x.shape
        y = x.reshape(b * c, 1, h, w)
        y = F.pad(y, (self.pad, self.pad, self.pad, self.pad), mode="reflect")
        y = F.conv2d(F.conv2d(y, self.kx.to(y.dtype)), self.ky.to(y.dtype))
        y = y.reshape(b, c, h, w)
        return y.squeeze(1) if squeeze else y


def free_energy(logits: torch.Tensor, num_classes: int = NUM_CLASSES, temperature: float = 1.0) -> torch.Tensor:
    """Inlier free energy E = -T * logsumexp(z[:, :num_classes] / T), shape [B, H, W]."""
    return -temperature * torch.logsumexp(logits[:, :num_classes] / temperature, dim=1)


def semantic_map(logits: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Argmax over the inlier classes only (the abstention channel is never a semantic class)."""
    return logits[:, :num_classes].argmax(dim=1)


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


_BLUR_CACHE: dict[tuple[int, float, torch.device, torch.dtype], GaussianBlur] = {}


def _blur(kernel_size: int, sigma: float, like: torch.Tensor) -> GaussianBlur:
    key = (kernel_size, sigma, like.device, like.dtype)
    if key not in _BLUR_CACHE:
        _BLUR_CACHE[key] = GaussianBlur(kernel_size, sigma).to(like.device)
    return _BLUR_CACHE[key]


def anomaly_score(
    logits: torch.Tensor,
    size: tuple[int, int] | None = None,
    kernel_size: int = 7,
    sigma: float = 1.0,
    num_classes: int = NUM_CLASSES,
) -> torch.Tensor:
    """PEBAL anomaly score [B, H, W]: smoothed inlier free energy of (upsampled) logits."""
    if size is not None:
        logits = upsample_logits(logits, size)
    energy = free_energy(logits, num_classes)
    if kernel_size <= 1:
        return energy
    return _blur(kernel_size, sigma, energy)(energy)


# --- baselines (paper tables 2 and 5); all "higher = more anomalous" -----------------------------

def msp_score(logits: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    return -torch.softmax(logits[:, :num_classes], dim=1).amax(dim=1)


def max_logit_score(logits: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    return -logits[:, :num_classes].amax(dim=1)


def entropy_score(logits: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    logp = torch.log_softmax(logits[:, :num_classes], dim=1)
    return -(logp.exp() * logp).sum(dim=1) / math.log(num_classes)


def energy_score(logits: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    return free_energy(logits, num_classes)


def pebal_score(logits: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    return anomaly_score(logits, num_classes=num_classes)


SCORERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "pebal": pebal_score,
    "msp": msp_score,
    "maxlogit": max_logit_score,
    "entropy": entropy_score,
    "energy": energy_score,
}


def get_scorer(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return SCORERS[name.lower().replace("_", "").replace(" ", "")]
    except KeyError:
        raise ValueError(f"unknown scorer {name!r}; choose from {sorted(SCORERS)}") from None
