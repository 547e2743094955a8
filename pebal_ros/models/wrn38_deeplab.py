"""DeepLabV3+ with a WideResNet38 trunk, built exactly as the official PEBAL release builds it.

PEBAL (tianyu0207/PEBAL ``code/model``) takes the network from NVIDIA semantic-segmentation
(``DeepWV3Plus``, trunk ``WiderResNetA2`` from mapillary/inplace_abn, structure [3, 3, 6, 3, 1, 1],
dilated) and wraps it as ``Network.branch1``. This module rebuilds the same module tree so that
state_dict keys, order and shapes match the official checkpoints (268 entries under ``branch1.``,
BatchNorm buffers included, 137.1 M parameters):

* ``mod1`` 3x3 conv -> ``pool2`` -> ``mod2`` (3 blocks, 128) -> ``pool3`` -> ``mod3`` (3 blocks, 256)
  -> ``mod4`` (6 blocks, 512, first block stride 2) -> ``mod5`` (3 blocks, 1024, dilation 2) ->
  ``mod6`` (bottleneck 2048, dilation 4, dropout 0.3) -> ``mod7`` (bottleneck 4096, dilation 4,
  dropout 0.5). Output stride 8; ``mod2``'s output (stride 2) is the low-level feature.
* ASPP for output stride 8 (image pooling + 1x1 + 3x3 at dilations 12/24/36, 256 each) ->
  ``bot_aspp`` 1280->256, ``bot_fine`` 128->48, ``final``: 3x3 304->256, BN, ReLU, 3x3 256->256,
  BN, ReLU, 1x1 256->num_classes without bias. Channel 19 of the 20 outputs is the abstention class.

Bilinear resizing uses ``align_corners=True`` as upstream does. The trunk uses pre-activation
identity blocks whose shortcut is either the input or a 1x1 projection of the pre-activated input.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

STRUCTURE = (3, 3, 6, 3, 1, 1)
CHANNELS: tuple[tuple[int, ...], ...] = (
    (128, 128), (256, 256), (512, 512), (512, 1024), (512, 1024, 2048), (1024, 2048, 4096))
ASPP_RATES_OS8 = (12, 24, 36)


def _bn_relu(c: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True))


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class IdentityResidualBlock(nn.Module):
    """Pre-activation residual block (two 3x3 convs, or a 1x1-3x3-1x1 bottleneck for 3 channel values)."""

    def __init__(self, c_in: int, channels: Sequence[int], stride: int = 1, dilation: int = 1,
                 dropout: float | None = None):
        super().__init__()
        if len(channels) not in (2, 3):
            raise ValueError("channels must contain two or three values")
        self.bn1 = _bn_relu(c_in)
        if len(channels) == 2:
            layers = [
                ("conv1", nn.Conv2d(c_in, channels[0], 3, stride=stride, padding=dilation, dilation=dilation,
                                    bias=False)),
                ("bn2", _bn_relu(channels[0])),
                ("conv2", nn.Conv2d(channels[0], channels[1], 3, padding=dilation, dilation=dilation, bias=False)),
            ]
            drop_at = 2
        else:
            layers = [
                ("conv1", nn.Conv2d(c_in, channels[0], 1, stride=stride, bias=False)),
                ("bn2", _bn_relu(channels[0])),
                ("conv2", nn.Conv2d(channels[0], channels[1], 3, padding=dilation, dilation=dilation, bias=False)),
                ("bn3", _bn_relu(channels[1])),
                ("conv3", nn.Conv2d(channels[1], channels[2], 1, bias=False)),
            ]
            drop_at = 4
        if dropout is not None:
            # Upstream monkey-patches nn.Dropout to nn.Dropout2d before building these blocks.
            layers.insert(drop_at, ("dropout", nn.Dropout2d(p=dropout)))
        self.convs = nn.Sequential(OrderedDict(layers))
        self.proj_conv: nn.Conv2d | None = None
        if stride != 1 or c_in != channels[-1]:
            self.proj_conv = nn.Conv2d(c_in, channels[-1], 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.bn1(x)
        shortcut = self.proj_conv(pre) if self.proj_conv is not None else x
        return self.convs(pre) + shortcut


def _trunk_module(mod_id: int, c_in: int) -> tuple[nn.Sequential, int]:
    """mod{mod_id+2} of WiderResNetA2(dilation=True)."""
    blocks = []
    dilation = {3: 2, 4: 4, 5: 4}.get(mod_id, 1)
    dropout = {4: 0.3, 5: 0.5}.get(mod_id)
    for block_id in range(STRUCTURE[mod_id]):
        stride = 2 if block_id == 0 and mod_id == 2 else 1
        blocks.append((f"block{block_id + 1}",
                       IdentityResidualBlock(c_in, CHANNELS[mod_id], stride=stride, dilation=dilation,
                                             dropout=dropout)))
        c_in = CHANNELS[mod_id][-1]
    return nn.Sequential(OrderedDict(blocks)), c_in


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling, output = [image pooling, 1x1, 3x3 x3] concatenated (5 x 256)."""

    def __init__(self, c_in: int, c_red: int = 256, rates: Sequence[int] = ASPP_RATES_OS8):
        super().__init__()
        feats = [nn.Sequential(nn.Conv2d(c_in, c_red, 1, bias=False), nn.BatchNorm2d(c_red), nn.ReLU(inplace=True))]
        for r in rates:
            feats.append(nn.Sequential(nn.Conv2d(c_in, c_red, 3, dilation=r, padding=r, bias=False),
                                       nn.BatchNorm2d(c_red), nn.ReLU(inplace=True)))
        self.features = nn.ModuleList(feats)
        self.img_pooling = nn.AdaptiveAvgPool2d(1)
        self.img_conv = nn.Sequential(nn.Conv2d(c_in, c_red, 1, bias=False), nn.BatchNorm2d(c_red),
                                      nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = _resize(self.img_conv(self.img_pooling(x)), x.shape[2:])
        return torch.cat([img] + [f(x) for f in self.features], 1)


class DeepWV3Plus(nn.Module):
    """NVIDIA's WideResNet38 DeepLabV3+ (the official PEBAL ``branch1``)."""

    def __init__(self, num_classes: int = 20):
        super().__init__()
        self.mod1 = nn.Sequential(OrderedDict([("conv1", nn.Conv2d(3, 64, 3, padding=1, bias=False))]))
        c = 64
        self.mod2, c = _trunk_module(0, c)
        self.mod3, c = _trunk_module(1, c)
        self.mod4, c = _trunk_module(2, c)
        self.mod5, c = _trunk_module(3, c)
        self.mod6, c = _trunk_module(4, c)
        self.mod7, c = _trunk_module(5, c)
        self.pool2 = nn.MaxPool2d(3, stride=2, padding=1)
        self.pool3 = nn.MaxPool2d(3, stride=2, padding=1)
        self.aspp = ASPP(c, 256)
        self.bot_fine = nn.Conv2d(128, 48, 1, bias=False)
        self.bot_aspp = nn.Conv2d(1280, 256, 1, bias=False)
        self.final = nn.Sequential(
            nn.Conv2d(256 + 48, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, num_classes, 1, bias=False),
        )
        # Upstream initialises only the head this way; the trunk keeps PyTorch's defaults.
        for m in self.final.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        m2 = self.mod2(self.pool2(self.mod1(x)))
        y = self.mod7(self.mod6(self.mod5(self.mod4(self.mod3(self.pool3(m2))))))
        up = _resize(self.bot_aspp(self.aspp(y)), m2.shape[2:])
        dec = self.final(torch.cat([self.bot_fine(m2), up], 1))
        return _resize(dec, size)


class WRN38DeepLabV3Plus(nn.Module):
    """The official ``Network`` wrapper: everything lives under ``branch1`` (checkpoint key prefix).

    Args:
        num_classes: 20 for PEBAL (19 train ids + abstention), 19 for NVIDIA's Cityscapes model.
    """

    def __init__(self, num_classes: int = 20):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.branch1 = DeepWV3Plus(num_classes)
        self.num_classes = num_classes

    @property
    def classifier(self) -> nn.Conv2d:
        """The last 1x1 conv ``branch1.final.6``, whose rows are the output channels."""
        conv = self.branch1.final[6]
        assert isinstance(conv, nn.Conv2d)
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a [B, 3, H, W] image batch, got shape {tuple(x.shape)}")
        return self.branch1(x)
