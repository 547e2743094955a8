"""Architecture registry: names -> model classes carrying the attributes the rest of the project uses.

Every built model has ``.arch`` (registry name), ``.arch_kwargs`` (the constructor arguments that
rebuild it, kept up to date by ``add_abstention``), ``.has_abstention`` (channel 19 is PEBAL's
abstention class), ``.final_block`` (the classification block fine-tuning trains) and
``.classifier`` (the last 1x1 conv of that block). After ``freeze_all_but_final`` the model's
``.train()`` keeps every frozen part, BatchNorm statistics included, in eval mode.
"""
from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from ..labels import NUM_OUTPUTS
from .espnetv2 import ENCODER_CHANNELS, ESPNetv2Segmentation
from .wrn38_deeplab import WRN38DeepLabV3Plus


class PebalModel(nn.Module):
    """Shared behaviour of the registered networks (the first base of each concrete class)."""

    arch: str = ""
    arch_kwargs: dict[str, Any]
    num_classes: int
    frozen_backbone: bool = False
    # The "meta" dict of the checkpoint the model was loaded from (load_model), if any.
    checkpoint_meta: dict[str, Any] | None = None

    @property
    def final_block(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} must define final_block (abstract in PebalModel)")

    @property
    def classifier(self) -> nn.Conv2d:
        raise NotImplementedError(f"{type(self).__name__} must define classifier (abstract in PebalModel)")

    @property
    def has_abstention(self) -> bool:
        raise NotImplementedError(f"{type(self).__name__} must define has_abstention (abstract in PebalModel)")

    def mark_abstention(self) -> None:
        """Record that channel 19 is now the abstention class (after ``add_abstention``)."""
        self.num_classes = NUM_OUTPUTS
        self.arch_kwargs["num_classes"] = NUM_OUTPUTS

    def train(self, mode: bool = True) -> "PebalModel":
        super().train(mode)
        if mode and self.frozen_backbone:
            # Frozen parts must not update BatchNorm running stats or apply dropout while the
            # final block trains: they stay exactly the pre-trained network.
            super().train(False)
            for block in self.__dict__.get("trainable_blocks") or [self.final_block]:
                block.train(True)
            self.training = True
        return self


def unwrap(model: nn.Module) -> PebalModel:
    """The registered network inside a (Distributed)DataParallel wrapper, or the model itself."""
    inner = getattr(model, "module", None)
    net = inner if isinstance(inner, nn.Module) else model
    if not isinstance(net, PebalModel):
        raise TypeError(f"{type(net).__name__} is not a pebal_ros model (build it with build_model/load_model)")
    return net


class WRN38Model(PebalModel, WRN38DeepLabV3Plus):
    """DeepLabV3+ WideResNet38 (official PEBAL). Final block: ``branch1.final`` (1.296 M params)."""

    arch = "wrn38_deeplabv3plus"

    def __init__(self, num_classes: int = NUM_OUTPUTS):
        super().__init__(num_classes=num_classes)
        self.arch_kwargs = {"num_classes": int(num_classes)}

    @property
    def final_block(self) -> nn.Module:
        return self.branch1.final

    @property
    def classifier(self) -> nn.Conv2d:
        return WRN38DeepLabV3Plus.classifier.fget(self)  # type: ignore[attr-defined]

    @property
    def has_abstention(self) -> bool:
        # PEBAL's 20-output head: 19 train ids + abstention; NVIDIA's 19-class model has none.
        return self.num_classes == NUM_OUTPUTS


class ESPNetv2Model(PebalModel, ESPNetv2Segmentation):
    """ESPNetv2 (EdgeNets). Final block: ``bu_dec_l4``, the decoder's last efficient pyramid pooling
    module, which ends in the 1x1 classifier conv ``bu_dec_l4.merge_layer.3``.

    ``abstention=False`` with 20 outputs is the EdgeNets Cityscapes layout (channel 19 = background);
    ``abstention=True`` means channel 19 is PEBAL's abstention class.
    """

    arch = "espnetv2"

    def __init__(self, s: float = 2.0, num_classes: int = NUM_OUTPUTS, base_dec_planes: int = 16,
                 abstention: bool = False):
        super().__init__(s=s, num_classes=num_classes, base_dec_planes=base_dec_planes)
        if abstention and num_classes != NUM_OUTPUTS:
            raise ValueError(f"abstention=True needs {NUM_OUTPUTS} outputs (19 train ids + abstention), "
                             f"got num_classes={num_classes}")
        self._abstention = bool(abstention)
        self.arch_kwargs = {"s": float(s), "num_classes": int(num_classes),
                            "base_dec_planes": int(base_dec_planes), "abstention": bool(abstention)}

    @property
    def final_block(self) -> nn.Module:
        return self.bu_dec_l4

    @property
    def classifier(self) -> nn.Conv2d:
        return ESPNetv2Segmentation.classifier.fget(self)  # type: ignore[attr-defined]

    @property
    def has_abstention(self) -> bool:
        return self._abstention

    def mark_abstention(self) -> None:
        super().mark_abstention()
        self._abstention = True
        self.arch_kwargs["abstention"] = True


ARCHITECTURES: dict[str, type[PebalModel]] = {
    WRN38Model.arch: WRN38Model,
    ESPNetv2Model.arch: ESPNetv2Model,
}
ESPNETV2_WIDTHS = tuple(sorted(ENCODER_CHANNELS))


def build_model(arch: str, **kwargs: Any) -> PebalModel:
    """Build a registered network with fresh (EdgeNets/NVIDIA-style) initialisation.

    ``build_model("wrn38_deeplabv3plus")`` (``num_classes`` 20 or 19) or
    ``build_model("espnetv2", s=2.0)`` (``s`` in 0.5/1.0/1.25/1.5/2.0, ``num_classes``,
    ``base_dec_planes``, ``abstention``). Build inside ``with torch.device("meta"):`` to get shapes
    without allocating memory.
    """
    cls = ARCHITECTURES.get(arch)
    if cls is None:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"{arch}: unknown argument(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    return cls(**kwargs)
