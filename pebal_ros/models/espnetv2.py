"""ESPNetv2 semantic segmentation (Mehta et al., CVPR 2019), the real-time backbone for the vehicle.

The module tree reproduces sacmehta/EdgeNets (``model/segmentation/espnetv2.py`` on top of the
ImageNet ``EESPNet`` encoder without its level 5 and classifier) so that the published Cityscapes
checkpoints load key for key with ``strict=True``. Sub-module *names* therefore follow EdgeNets
(``base_net.level3.0.spp_dw.2.conv``, ``bu_dec_l1.merge_layer.2.cbr.0``, ...), including its two
naming families: encoder blocks use ``conv/bn/act`` attributes, decoder blocks use ``cbr``/``br``
sequentials.

Numerics also follow EdgeNets: bilinear resizing with ``align_corners=True`` everywhere, input
reinforcement from the image average-pooled (3x3, stride 2, pad 1) down to each level, and the
efficient pyramid pooling with scales (2.0, 1.5, 1.0, 0.5, 0.1) and a minimum pooled size of 5.

Cityscapes checkpoints have 20 outputs: train ids 0-18 plus a background/void channel 19. PEBAL's
head replaces that background channel by the abstention channel (see ``pebal_head.add_abstention``).
Expected input: RGB scaled to [0, 1] and normalised with the ImageNet mean/std (EdgeNets'
``test_segmentation.py``: ``to_tensor`` then ``normalize(MEAN, STD)``), trained at 1024x512.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Channels of the encoder levels 1-4 per width multiplier s (EdgeNets espnetv2_config.sc_ch_dict,
# levels 5/6 dropped because segmentation deletes them).
ENCODER_CHANNELS: dict[float, tuple[int, int, int, int]] = {
    0.5: (16, 32, 64, 128),
    1.0: (32, 64, 128, 256),
    1.25: (32, 80, 160, 320),
    1.5: (32, 96, 192, 384),
    2.0: (32, 128, 256, 512),
}
LEVEL3_REPEATS = 3
LEVEL4_REPEATS = 7
BRANCHES = 4
# Receptive-field limit of the EESP branches at each spatial level.
RECEPT_LIMIT = (13, 11, 9, 7, 5)
PYRAMID_SCALES = (2.0, 1.5, 1.0, 0.5, 0.1)
PYRAMID_MIN_SIZE = 5
REINF_CHANNELS = 3


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def adaptive_avg_pool2d(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.adaptive_avg_pool2d``, switched to an ONNX-exportable form while exporting."""
    if torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting():
        return exportable_adaptive_avg_pool2d(x, size)
    return F.adaptive_avg_pool2d(x, size)


def exportable_adaptive_avg_pool2d(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Adaptive average pooling from ops every ONNX/TensorRT backend has.

    The ONNX exporter only lowers adaptive pooling whose input size is a multiple of the output
    size, and the pyramid's 1.5 and 0.1 scales (the latter clamped to 5) rarely are. A divisible
    case is a plain ``avg_pool2d``; otherwise adaptive pooling is linear and separable, so it equals
    ``P_h @ x @ P_w^T`` with PyTorch's bin rule (start = floor(i*in/out), end = ceil((i+1)*in/out)),
    which exports as two MatMuls with constant matrices.
    """
    in_h, in_w = int(x.shape[-2]), int(x.shape[-1])
    out_h, out_w = int(size[0]), int(size[1])
    if in_h % out_h == 0 and in_w % out_w == 0:
        kernel = (in_h // out_h, in_w // out_w)
        return F.avg_pool2d(x, kernel_size=kernel, stride=kernel)
    ph = _pool_matrix(in_h, out_h, x.dtype, x.device)
    pw = _pool_matrix(in_w, out_w, x.dtype, x.device)
    return torch.matmul(torch.matmul(ph, x), pw.t())


def _pool_matrix(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    idx = torch.arange(n_out, device=device)
    start = torch.div(idx * n_in, n_out, rounding_mode="floor")
    end = torch.div((idx + 1) * n_in + n_out - 1, n_out, rounding_mode="floor")
    cols = torch.arange(n_in, device=device)
    inside = (cols[None, :] >= start[:, None]) & (cols[None, :] < end[:, None])
    return inside.to(dtype) / (end - start).to(dtype)[:, None]


# ----------------------------------------------------------------------------------------------
# Encoder building blocks (EdgeNets nn_layers/espnet_utils.py naming: conv / bn / act)
# ----------------------------------------------------------------------------------------------
class CBR(nn.Module):
    """Conv (no bias) -> BatchNorm -> PReLU."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=(k - 1) // 2, bias=False, groups=groups)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.PReLU(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class CB(nn.Module):
    """Conv (no bias) -> BatchNorm."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=(k - 1) // 2, bias=False, groups=groups)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class BR(nn.Module):
    """BatchNorm -> PReLU."""

    def __init__(self, c: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.PReLU(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class DilatedDW(nn.Module):
    """Depth-wise dilated 3x3 conv (EdgeNets ``CDilated`` with groups = channels)."""

    def __init__(self, c: int, stride: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=stride, padding=dilation, dilation=dilation, groups=c, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def eesp_dilations(k: int, r_lim: int) -> list[int]:
    """Dilation of each EESP branch: kernel sizes 3, 5, 7, ... capped at the receptive-field limit
    (above it a branch falls back to 3x3), sorted ascending, as effective 3x3 dilation rates."""
    sizes = sorted(3 + 2 * i if 3 + 2 * i <= r_lim else 3 for i in range(k))
    return [(s - 1) // 2 for s in sizes]


class EESP(nn.Module):
    """Extremely Efficient Spatial Pyramid block: reduce -> split -> dilated depth-wise ->
    hierarchical feature fusion -> merge. ``strided=True`` is the down-sampling variant whose output
    goes un-activated into :class:`DownSampler`."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, k: int = BRANCHES, r_lim: int = 7,
                 strided: bool = False):
        super().__init__()
        n = c_out // k
        if n * k != c_out:
            raise ValueError(f"EESP output channels {c_out} must be divisible by the {k} branches")
        self.strided = strided
        self.proj_1x1 = CBR(c_in, n, 1, groups=k)
        self.spp_dw = nn.ModuleList(DilatedDW(n, stride, d) for d in eesp_dilations(k, r_lim))
        self.conv_1x1_exp = CB(c_out, c_out, 1, groups=k)
        self.br_after_cat = BR(c_out)
        # Present (and in the checkpoints) even for the strided variant, which never uses it.
        self.module_act = nn.PReLU(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.proj_1x1(x)
        branches = [self.spp_dw[0](reduced)]
        for conv in self.spp_dw[1:]:
            branches.append(conv(reduced) + branches[-1])
        expanded = self.conv_1x1_exp(self.br_after_cat(torch.cat(branches, 1)))
        if self.strided:
            return expanded
        if expanded.shape == x.shape:
            expanded = expanded + x
        return self.module_act(expanded)


class DownSampler(nn.Module):
    """Strided EESP: [avg-pool(x), strided EESP(x)] concatenated, plus the input image reinforcement."""

    def __init__(self, c_in: int, c_out: int, k: int = BRANCHES, r_lim: int = 9):
        super().__init__()
        self.eesp = EESP(c_in, c_out - c_in, stride=2, k=k, r_lim=r_lim, strided=True)
        self.avg = nn.AvgPool2d(kernel_size=3, padding=1, stride=2)
        self.inp_reinf = nn.Sequential(CBR(REINF_CHANNELS, REINF_CHANNELS, 3), CB(REINF_CHANNELS, c_out, 1))
        self.act = nn.PReLU(c_out)

    def forward(self, x: torch.Tensor, image_pyramid: "ImagePyramid") -> torch.Tensor:
        avg = self.avg(x)
        out = torch.cat([avg, self.eesp(x)], 1)
        out = out + self.inp_reinf(image_pyramid.at_height(avg.shape[2]))
        return self.act(out)


class ImagePyramid:
    """The input image repeatedly average-pooled (3x3, stride 2, pad 1).

    EdgeNets re-pools the full image at every down-sampler until its height matches; the first match
    in this shared chain is the same tensor, computed once per forward.
    """

    def __init__(self, image: torch.Tensor):
        self.levels = [image]

    def at_height(self, height: int) -> torch.Tensor:
        i = 1
        while True:
            if i == len(self.levels):
                prev = self.levels[-1]
                if prev.shape[2] <= 1 and height != 1:
                    raise ValueError(f"input too small: cannot pool the image down to height {height}")
                self.levels.append(F.avg_pool2d(prev, kernel_size=3, padding=1, stride=2))
            if self.levels[i].shape[2] == height:
                return self.levels[i]
            i += 1


class EESPNetEncoder(nn.Module):
    """EESPNet levels 1-4 (the ImageNet backbone without level 5 and classifier)."""

    def __init__(self, s: float):
        super().__init__()
        c = ENCODER_CHANNELS[s]
        self.config = c
        self.level1 = CBR(3, c[0], 3, stride=2)
        self.level2_0 = DownSampler(c[0], c[1], r_lim=RECEPT_LIMIT[0])
        self.level3_0 = DownSampler(c[1], c[2], r_lim=RECEPT_LIMIT[1])
        self.level3 = nn.ModuleList(EESP(c[2], c[2], r_lim=RECEPT_LIMIT[2]) for _ in range(LEVEL3_REPEATS))
        self.level4_0 = DownSampler(c[2], c[3], r_lim=RECEPT_LIMIT[2])
        self.level4 = nn.ModuleList(EESP(c[3], c[3], r_lim=RECEPT_LIMIT[3]) for _ in range(LEVEL4_REPEATS))

    def low_levels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Levels 1 and 2 alone (the first two outputs of ``forward``; cheap to recompute)."""
        l1 = self.level1(x)
        return l1, self.level2_0(l1, ImagePyramid(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        pyramid = ImagePyramid(x)
        l1 = self.level1(x)
        l2 = self.level2_0(l1, pyramid)
        l3 = self.level3_0(l2, pyramid)
        for block in self.level3:
            l3 = block(l3)
        l4 = self.level4_0(l3, pyramid)
        for block in self.level4:
            l4 = block(l4)
        return l1, l2, l3, l4


# ----------------------------------------------------------------------------------------------
# Decoder building blocks (EdgeNets nn_layers/cnn_utils.py naming: cbr / br sequentials)
# ----------------------------------------------------------------------------------------------
class SeqCBR(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int, groups: int = 1):
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(c_in, c_out, k, padding=(k - 1) // 2, bias=False, groups=groups),
            nn.BatchNorm2d(c_out),
            nn.PReLU(c_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbr(x)


class SeqBR(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.br = nn.Sequential(nn.BatchNorm2d(c), nn.PReLU(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.br(x)


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.reshape(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class EfficientPyrPool(nn.Module):
    """Efficient pyramid pooling: project, depth-wise 3x3 at five scales, shuffle, merge."""

    def __init__(self, c_in: int, c_proj: int, c_out: int, last_layer_br: bool = True,
                 scales: Sequence[float] = PYRAMID_SCALES):
        super().__init__()
        self.scales = tuple(sorted(scales, reverse=True))
        n = len(self.scales)
        # Registration order (stages first) matches EdgeNets, so state_dict key order matches too.
        self.stages = nn.ModuleList(
            nn.Conv2d(c_proj, c_proj, 3, padding=1, bias=False, groups=c_proj) for _ in self.scales)
        self.projection_layer = SeqCBR(c_in, c_proj, 1)
        self.merge_layer = nn.Sequential(
            SeqBR(c_proj * n),
            ChannelShuffle(n),
            SeqCBR(c_proj * n, c_proj, 3, groups=c_proj),
            nn.Conv2d(c_proj, c_out, 1, bias=not last_layer_br),
        )
        self.last_layer_br = last_layer_br
        if last_layer_br:
            self.br = SeqBR(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.projection_layer(x)
        h, w = x.shape[2:]
        outs = []
        for scale, stage in zip(self.scales, self.stages):
            size = (max(math.ceil(h * scale), PYRAMID_MIN_SIZE), max(math.ceil(w * scale), PYRAMID_MIN_SIZE))
            if scale < 1.0:
                y = _resize(stage(adaptive_avg_pool2d(x, size)), (h, w))
            elif scale > 1.0:
                y = adaptive_avg_pool2d(stage(_resize(x, size)), (h, w))
            else:
                y = stage(x)
            outs.append(y)
        out = self.merge_layer(torch.cat(outs, 1))
        return self.br(out) if self.last_layer_br else out


class EfficientPWConv(nn.Module):
    """Grouped 3x3 CBR gated by a global-context sigmoid (squeeze-style) weight."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.wt_layer = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.Sigmoid(),
        )
        self.expansion_layer = SeqCBR(c_in, c_out, 3, groups=math.gcd(c_in, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expansion_layer(x) * self.wt_layer(x)


def _br_seq(c: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(c), nn.PReLU(c))


class ESPNetv2Segmentation(nn.Module):
    """ESPNetv2 encoder + EdgeNets bottom-up decoder; forward returns logits at input resolution.

    Args:
        s: width multiplier, one of ``ENCODER_CHANNELS`` (0.5, 1.0, 1.25, 1.5, 2.0).
        num_classes: output channels (20 for the EdgeNets Cityscapes checkpoints).
        base_dec_planes: decoder width unit (16 for Cityscapes/VOC, 32 for COCO in EdgeNets).
    """

    def __init__(self, s: float = 2.0, num_classes: int = 20, base_dec_planes: int = 16):
        super().__init__()
        s = float(s)
        if s not in ENCODER_CHANNELS:
            raise ValueError(f"ESPNetv2 width s={s} is not supported; choose one of {sorted(ENCODER_CHANNELS)}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.base_net = EESPNetEncoder(s)
        c = self.base_net.config
        dec = (4 * base_dec_planes, 3 * base_dec_planes, 2 * base_dec_planes, num_classes)
        proj = min(num_classes // 2, base_dec_planes)

        self.bu_dec_l1 = EfficientPyrPool(c[3], proj, dec[0])
        self.bu_dec_l2 = EfficientPyrPool(dec[0], proj, dec[1])
        self.bu_dec_l3 = EfficientPyrPool(dec[1], proj, dec[2])
        self.bu_dec_l4 = EfficientPyrPool(dec[2], proj, dec[3], last_layer_br=False)
        self.merge_enc_dec_l2 = EfficientPWConv(c[2], dec[0])
        self.merge_enc_dec_l3 = EfficientPWConv(c[1], dec[1])
        self.merge_enc_dec_l4 = EfficientPWConv(c[0], dec[2])
        self.bu_br_l2 = _br_seq(dec[0])
        self.bu_br_l3 = _br_seq(dec[1])
        self.bu_br_l4 = _br_seq(dec[2])
        self.num_classes = num_classes
        self._init_params()

    def _init_params(self) -> None:
        # EdgeNets' init: Kaiming-normal (fan_out) convs, unit BatchNorm.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def classifier(self) -> nn.Conv2d:
        """The last 1x1 conv (``bu_dec_l4.merge_layer.3``), whose rows are the output channels."""
        conv = self.bu_dec_l4.merge_layer[3]
        assert isinstance(conv, nn.Conv2d)
        return conv

    @staticmethod
    def _up_to(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # EdgeNets upsamples by scale_factor=2, which only lines up with the skip connection when
        # H and W are multiples of 16; resizing to the skip's size is identical then (align_corners)
        # and also accepts every other input size.
        return _resize(x, skip.shape[2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a [B, 3, H, W] image batch, got shape {tuple(x.shape)}")
        return self.decode(self.base_net(x), x.shape[2:])

    def decode(self, features: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """The decoder on the encoder's four levels (``base_net(x)``), logits resized to ``size``.

        ``forward(x) == decode(base_net(x), x.shape[2:])``; split so that fine-tuning with a frozen
        encoder can feed cached encoder outputs (``pebal_ros.train.feature_cache``)."""
        l1, l2, l3, l4 = features
        out = self.bu_dec_l1(l4)
        out = self.bu_dec_l2(self.bu_br_l2(self._up_to(out, l3) + self.merge_enc_dec_l2(l3)))
        out = self.bu_dec_l3(self.bu_br_l3(self._up_to(out, l2) + self.merge_enc_dec_l3(l2)))
        out = self.bu_dec_l4(self.bu_br_l4(self._up_to(out, l1) + self.merge_enc_dec_l4(l1)))
        return _resize(out, size)
