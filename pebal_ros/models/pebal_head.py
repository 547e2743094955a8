"""PEBAL's head: the abstention output channel, and freezing everything but the final block.

``add_abstention`` gives a network its 20th output, channel 19 = abstention (the "gambler" class of
PEBAL's loss). For a 19-output network (NVIDIA's Cityscapes WRN38) it appends a row to the last
1x1 conv; the official fine-tuning does exactly this, filling the new row from
``kaiming_normal_(zeros(20, 256, 1, 1))`` (fan-in, gain sqrt 2). For ESPNetv2's 20-output Cityscapes
layout, channel 19 is EdgeNets' background/void class, which is not an inlier class in PEBAL, so that
row is re-initialised the same way and becomes the abstention channel: outputs stay 20, 0-18 inlier.

``freeze_all_but_final`` leaves gradients only on ``model.final_block`` (WRN38: ``branch1.final``,
ESPNetv2: ``bu_dec_l4``), or on the modules named by ``trainable`` globs (``train.trainable``), and
makes ``model.train()`` keep the frozen parts in eval mode.
"""
from __future__ import annotations

import fnmatch
from typing import Sequence

import torch
from torch import nn

from ..labels import ABSTAIN_CHANNEL, NUM_CLASSES, NUM_OUTPUTS
from .registry import PebalModel, unwrap


def _kaiming_row(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    fan_in = like[0].numel()
    std = (2.0 / fan_in) ** 0.5
    row = torch.empty(like.shape[1:], dtype=like.dtype, device=like.device)
    if generator is None:
        return row.normal_(0.0, std)
    return row.copy_(torch.randn(row.shape, generator=generator, dtype=like.dtype).to(like.device) * std)


def add_abstention(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Give the network PEBAL's abstention channel 19 (in place; returns the model).

    No-op when ``model.has_abstention`` is already true. A grown (19 -> 20) conv is a new module that
    keeps the old one's ``requires_grad``; ``generator`` makes the new row reproducible.
    """
    net = unwrap(model)
    if net.has_abstention:
        return model
    conv = net.classifier
    out = conv.out_channels
    if out == NUM_CLASSES:
        if conv.kernel_size != (1, 1) or conv.groups != 1:
            raise ValueError(f"{net.arch}: expected a 1x1 classifier conv, got {conv}")
        new = nn.Conv2d(conv.in_channels, NUM_OUTPUTS, 1, bias=conv.bias is not None,
                        device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            new.weight[:NUM_CLASSES].copy_(conv.weight)
            new.weight[ABSTAIN_CHANNEL].copy_(_kaiming_row(conv.weight, generator))
            if conv.bias is not None and new.bias is not None:
                new.bias[:NUM_CLASSES].copy_(conv.bias)
                new.bias[ABSTAIN_CHANNEL] = 0.0
                new.bias.requires_grad_(conv.bias.requires_grad)
        new.weight.requires_grad_(conv.weight.requires_grad)
        _replace_classifier(net, new)
    elif out == NUM_OUTPUTS:
        with torch.no_grad():
            conv.weight[ABSTAIN_CHANNEL].copy_(_kaiming_row(conv.weight, generator))
            if conv.bias is not None:
                conv.bias[ABSTAIN_CHANNEL] = 0.0
    else:
        raise ValueError(f"{net.arch}: cannot add the abstention channel to a network with {out} outputs; "
                         f"PEBAL needs the {NUM_CLASSES} Cityscapes train ids (+ optionally a background channel)")
    net.mark_abstention()
    return model


def _replace_classifier(net: PebalModel, new: nn.Conv2d) -> None:
    old = net.classifier
    name = next(n for n, m in net.named_modules() if m is old)
    parent_name, _, child = name.rpartition(".")
    parent = net.get_submodule(parent_name)
    if isinstance(parent, nn.Sequential):
        parent[int(child)] = new
    else:
        setattr(parent, child, new)


def select_modules(model: nn.Module, patterns: Sequence[str]) -> list[nn.Module]:
    """The modules of ``model`` whose names (as in ``named_modules``) match any of the glob
    ``patterns`` (e.g. ``"bu_dec_*"``, ``"branch1.final"``); each pattern must match something."""
    net = unwrap(model)
    named = [(n, m) for n, m in net.named_modules() if n]
    chosen: dict[int, nn.Module] = {}
    for pat in patterns:
        hits = [m for n, m in named if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            tops = ", ".join(n for n, _ in net.named_children())
            raise ValueError(f"trainable pattern {pat!r} matches no module of {net.arch}; top-level modules: {tops}")
        for m in hits:
            chosen.setdefault(id(m), m)
    return list(chosen.values())


def freeze_all_but_final(model: nn.Module, trainable: Sequence[str] = ()) -> nn.Module:
    """Only ``model.final_block`` keeps ``requires_grad``; ``model.train()`` then leaves every other
    module (BatchNorm, dropout) in eval mode. Returns the model.

    ``trainable`` (glob patterns over module names) replaces the final block by a larger set, e.g.
    ESPNetv2's whole decoder, whose final block alone is tiny (1.65 k parameters vs WRN38's 1.3 M)."""
    net = unwrap(model)
    blocks = select_modules(net, trainable) if trainable else [net.final_block]
    for p in net.parameters():
        p.requires_grad_(False)
    for block in blocks:
        for p in block.parameters():
            p.requires_grad_(True)
    # A plain list (not a ModuleList) so the blocks are not registered twice in the state dict.
    net.__dict__["trainable_blocks"] = blocks
    net.frozen_backbone = True
    net.train(net.training)
    return model


def unfreeze_all(model: nn.Module) -> nn.Module:
    net = unwrap(model)
    for p in net.parameters():
        p.requires_grad_(True)
    net.frozen_backbone = False
    net.train(net.training)
    return model


def train_mode_final_only(model: nn.Module) -> nn.Module:
    """Explicit form of what ``.train()`` does after ``freeze_all_but_final``: everything in eval mode
    except the final block (works on any registered model, frozen or not)."""
    net = unwrap(model)
    nn.Module.train(net, False)
    net.final_block.train(True)
    net.training = True
    model.training = True
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in unwrap(model).parameters() if p.requires_grad or not trainable_only)
