"""The fused per-frame module: camera bytes in, semantic map / anomaly score / anomaly mask out.

``FusedPebal`` wraps a segmentation network (any ``nn.Module`` mapping a normalised RGB batch
[1, 3, h, w] to logits [1, 20, h, w]) with everything numeric a frame needs, so that the exported
ONNX graph (and the TensorRT engine built from it) leaves nothing but byte copies to Python:

    image uint8 [H, W, 3] (RGB or BGR, fixed at construction)
      -> float, channel swap, ImageNet normalisation (one multiply-add), optional resize to the
         network size
      -> network -> logits [1, 20, h, w]
      -> full variant: upsample logits to [H, W], then energy + blur at [H, W]
         fast variant: energy + blur at [h, w], then upsample the score (and nearest-upsample the
         semantic map) to [H, W]
      -> semantic = argmax over the 19 inlier channels (uint8)
         score    = GaussianBlur7x7,σ=1,reflect( -logsumexp(z[:19]) )  (float32)
         mask     = score > threshold (uint8 0/1; the threshold is an input, not a constant)

Export notes (why the code looks the way it does):
- The free energy is written as ``-(m + log Σ exp(z - m))`` with ``m = max z`` instead of
  ``torch.logsumexp``: the TorchScript exporter emits ``ReduceLogSumExp``, which TensorRT's ONNX
  parser lowers to a plain ``log(sum(exp(z)))``; PEBAL logits reach 15-25, and ``exp(20)``
  overflows FP16 (max 65504). The max-subtracted form cannot overflow in any precision.
- Post-processing runs in float32 (``logits.float()``) so an FP16 network still yields an FP32
  score; its ONNX nodes are named ``post/...`` so the TensorRT builder can pin them to FP32.
- UINT8 tensors touch only float casts: the input is cast before anything else, and the uint8
  outputs go ``int64 -> float -> uint8`` / ``bool -> float -> uint8``, because TensorRT converts
  UINT8 only to and from FP32/FP16 and uses it only at network inputs/outputs.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..labels import NUM_CLASSES
from ..scoring import GaussianBlur

CHANNEL_ORDERS = ("rgb", "bgr")


def stable_free_energy(logits: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """-logsumexp over the inlier channels, max-subtracted (overflow-free in FP16) [B, h, w]."""
    z = logits[:, :num_classes]
    m = z.amax(dim=1, keepdim=True)
    return -(m.squeeze(1) + torch.log(torch.exp(z - m).sum(dim=1)))


class Preprocess(nn.Module):
    """uint8 [H, W, 3] (or a batch [N, H, W, 3]) -> normalised float [1 or N, 3, h, w] in the
    network's dtype."""

    scale: torch.Tensor
    bias: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float], channel_order: str = "rgb",
                 net_size: tuple[int, int] | None = None):
        super().__init__()
        if channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}, got {channel_order!r}")
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"mean/std must be 3 values with std > 0, got mean={mean}, std={std}")
        self.channel_order = channel_order
        self.net_size = tuple(net_size) if net_size is not None else None
        # (x/255 - mean)/std == x * scale + bias: one fused multiply-add per pixel.
        scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=torch.float32)
        bias = torch.tensor([-m / s for m, s in zip(mean, std)], dtype=torch.float32)
        self.register_buffer("scale", scale.view(3, 1, 1), persistent=False)
        self.register_buffer("bias", bias.view(3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        # cast first: TensorRT accepts a UINT8 network input only when a cast to float consumes it
        x = image.to(torch.float32)
        if x.dim() == 3:          # one frame (the exported graph's input); a batch is [N, H, W, 3]
            x = x.unsqueeze(0)
        x = x.permute(0, 3, 1, 2)
        if self.channel_order == "bgr":
            x = x.flip(1)
        x = x * self.scale + self.bias
        if self.net_size is not None:
            x = F.interpolate(x, size=self.net_size, mode="bilinear", align_corners=False)
        return x.to(dtype)


class Postprocess(nn.Module):
    """logits [N, C>=19, h, w] -> (semantic uint8, score float32, mask uint8), each [N, H, W]
    (``batched=False``: [H, W] of the first frame, the exported graph's outputs)."""

    def __init__(self, kernel_size: int = 7, sigma: float = 1.0, fast: bool = False,
                 num_classes: int = NUM_CLASSES):
        super().__init__()
        self.fast = fast
        self.num_classes = num_classes
        self.kernel_size = kernel_size
        self.blur = GaussianBlur(kernel_size, sigma) if kernel_size > 1 else None

    def _score(self, z: torch.Tensor) -> torch.Tensor:
        energy = stable_free_energy(z, self.num_classes)
        return self.blur(energy) if self.blur is not None else energy

    def forward(self, logits: torch.Tensor, out_hw: tuple, threshold: torch.Tensor, batched: bool = False):
        z = logits[:, : self.num_classes].float()
        if self.fast:
            score = self._score(z)
            sem = z.argmax(dim=1, keepdim=True).to(torch.float32)
            if tuple(z.shape[-2:]) != tuple(out_hw):
                score = F.interpolate(score.unsqueeze(1), size=out_hw, mode="bilinear",
                                      align_corners=False).squeeze(1)
                sem = F.interpolate(sem, size=out_hw, mode="nearest")
            sem = sem[:, 0]
        else:
            if tuple(z.shape[-2:]) != tuple(out_hw):
                z = F.interpolate(z, size=out_hw, mode="bilinear", align_corners=False)
            score = self._score(z)
            sem = z.argmax(dim=1).to(torch.float32)
        if not batched:
            sem, score = sem[0], score[0]
        mask = (score > threshold).to(torch.float32).to(torch.uint8)
        return sem.to(torch.uint8), score, mask


class FusedPebal(nn.Module):
    """Pre-processing + network + PEBAL post-processing as one module (see the module doc).

    forward(image uint8 [H, W, 3], threshold float32 [1]) -> (semantic, score, mask), each [H, W];
    a batch of frames of one size, [N, H, W, 3], gives [N, H, W] each (several cameras, one call).
    ``net_size`` = the (h, w) the network runs at; ``None`` runs it at the image size.
    """

    def __init__(self, network: nn.Module, mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225), channel_order: str = "rgb",
                 net_size: tuple[int, int] | None = None, kernel_size: int = 7, sigma: float = 1.0,
                 fast: bool = False):
        super().__init__()
        self.pre = Preprocess(mean, std, channel_order, net_size)
        self.net = network
        self.post = Postprocess(kernel_size, sigma, fast)
        self.channel_order = channel_order
        self.fast = fast

    @property
    def net_dtype(self) -> torch.dtype:
        p = next(self.net.parameters(), None)
        return p.dtype if p is not None else torch.float32

    def forward(self, image: torch.Tensor, threshold: torch.Tensor):
        out_hw = image.shape[-3:-1]
        logits = self.net(self.pre(image, self.net_dtype))
        return self.post(logits, out_hw, threshold, batched=image.dim() == 4)


class NetworkOnly(nn.Module):
    """The conventional export: normalised float [1, 3, h, w] -> logits [1, 20, h, w].

    Exists for the benchmark that prices the fused post-processing against it.
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.net = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_fused(network: nn.Module, inference_cfg=None, channel_order: str = "rgb",
                net_size: tuple[int, int] | None = None, fast: bool | None = None) -> FusedPebal:
    """FusedPebal from a network and an ``InferenceConfig`` (mean/std/blur/fast variant)."""
    from ..config import InferenceConfig
    cfg = inference_cfg or InferenceConfig()
    return FusedPebal(network, cfg.mean, cfg.std, channel_order, net_size,
                      cfg.smooth_kernel, cfg.smooth_sigma,
                      cfg.score_at_network_resolution if fast is None else fast).eval()


def reference_outputs(network: nn.Module, image, threshold: float, mean=(0.485, 0.456, 0.406),
                      std=(0.229, 0.224, 0.225), channel_order: str = "rgb"):
    """The official-style computation, step by step (independent of FusedPebal): eager network
    forward on a normalised tensor, then ``scoring.anomaly_score`` and ``semantic_map``. Used by
    tests as the oracle and by the benchmark as the baseline."""
    import numpy as np
    from .. import scoring
    img = np.asarray(image)
    if channel_order == "bgr":
        img = img[..., ::-1]
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div(255.0)
    x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    with torch.inference_mode():
        logits = network(x.unsqueeze(0)).float()
        size = tuple(img.shape[:2])
        score = scoring.anomaly_score(logits, size=size)[0]
        sem = scoring.semantic_map(scoring.upsample_logits(logits, size))[0]
    score_np = score.numpy().astype(np.float32)
    return sem.numpy().astype(np.uint8), score_np, (score_np > threshold).astype(np.uint8)
