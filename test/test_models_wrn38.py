"""WRN38 DeepLabV3+: the official PEBAL state_dict layout, and loading PEBAL / NVIDIA checkpoints.

The checkpoints are generated here in the official on-disk layouts (PEBAL ``{'model': sd}`` with
``branch1.*`` keys, a bare state_dict, NVIDIA ``{'state_dict': ...}`` with ``module.*`` keys, 19
classes and a loss-weight entry). Their tensors are filled with per-key constants instead of a
random init, which is cheap at 137 M parameters and makes any key mix-up visible.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from pebal_ros.models import (build_model, count_parameters, freeze_all_but_final, load_model,
                              save_checkpoint)

N_KEYS = 268
N_PARAMS = 137_104_192  # "137.1 M"
N_FINAL = 1_296_384  # branch1.final: 3x3 304->256, BN, 3x3 256->256, BN, 1x1 256->20


@pytest.fixture(scope="module")
def meta_model() -> torch.nn.Module:
    with torch.device("meta"):
        return build_model("wrn38_deeplabv3plus")


def test_state_dict_layout_matches_official_pebal(meta_model: torch.nn.Module) -> None:
    sd = meta_model.state_dict()
    assert len(sd) == N_KEYS
    assert all(k.startswith("branch1.") for k in sd)
    assert count_parameters(meta_model) == N_PARAMS
    assert sd["branch1.final.6.weight"].shape == (20, 256, 1, 1)
    assert "branch1.final.6.bias" not in sd
    # BatchNorm buffers are part of the layout: 15 basic blocks x 2 BN + 2 bottlenecks x 3 + ASPP 5
    # + final 2 = 43 BatchNorms x 5 entries, plus 53 conv weights = 268.
    n_bn = sum(k.endswith("running_mean") for k in sd)
    assert n_bn == sum(k.endswith("num_batches_tracked") for k in sd) == 43
    assert sum(v.dim() == 4 for v in sd.values()) == 53
    # spot checks of upstream names and shapes
    expect = {
        "branch1.mod1.conv1.weight": (64, 3, 3, 3),
        "branch1.mod2.block1.proj_conv.weight": (128, 64, 1, 1),
        "branch1.mod4.block1.convs.conv1.weight": (512, 256, 3, 3),
        "branch1.mod6.block1.convs.conv3.weight": (2048, 1024, 1, 1),
        "branch1.mod7.block1.convs.bn3.0.running_var": (2048,),
        "branch1.aspp.img_conv.0.weight": (256, 4096, 1, 1),
        "branch1.aspp.features.3.0.weight": (256, 4096, 3, 3),
        "branch1.bot_fine.weight": (48, 128, 1, 1),
        "branch1.bot_aspp.weight": (256, 1280, 1, 1),
        "branch1.final.0.weight": (256, 304, 3, 3),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert meta_model.final_block is meta_model.branch1.final
    assert sum(p.numel() for p in meta_model.final_block.parameters()) == N_FINAL
    assert meta_model.has_abstention and meta_model.arch == "wrn38_deeplabv3plus"


def test_aspp_dilations_are_output_stride_8(meta_model: torch.nn.Module) -> None:
    rates = [seq[0].dilation[0] for seq in meta_model.branch1.aspp.features[1:]]
    assert rates == [12, 24, 36]
    assert meta_model.branch1.mod5.block1.convs.conv1.dilation == (2, 2)
    assert meta_model.branch1.mod7.block1.convs.conv2.dilation == (4, 4)
    assert meta_model.branch1.mod4.block1.convs.conv1.stride == (2, 2)


def test_forward_small_input_and_freeze() -> None:
    torch.manual_seed(0)
    model = build_model("wrn38_deeplabv3plus").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 20, 64, 64) and torch.isfinite(out).all()

    freeze_all_but_final(model)
    assert count_parameters(model, trainable_only=True) == N_FINAL
    model.train()
    assert model.training and model.branch1.final.training
    assert not model.branch1.mod2.block1.bn1[0].training
    assert not model.branch1.mod7.block1.convs.dropout.training
    trunk_bn = model.branch1.aspp.features[0][1]
    before = trunk_bn.running_mean.clone()
    final_bn = model.branch1.final[1]
    final_before = final_bn.running_mean.clone()
    loss = model(torch.randn(2, 3, 32, 32)).square().mean()
    loss.backward()
    assert torch.equal(trunk_bn.running_mean, before), "frozen BatchNorm must not update its statistics"
    assert not torch.equal(final_bn.running_mean, final_before)
    assert model.branch1.mod1.conv1.weight.grad is None
    assert model.branch1.final[6].weight.grad is not None


def _filled_state_dict(num_classes: int) -> "OrderedDict[str, torch.Tensor]":
    with torch.device("meta"):
        skeleton = build_model("wrn38_deeplabv3plus", num_classes=num_classes).state_dict()
    out = OrderedDict()
    for i, (k, v) in enumerate(skeleton.items()):
        t = torch.empty(v.shape, dtype=v.dtype)
        t.fill_(i % 100 if v.dtype == torch.long else float(i) + 0.5)
        out[k] = t
    return out


def _assert_filled(model: torch.nn.Module, ref: "OrderedDict[str, torch.Tensor]", skip: str = "") -> None:
    own = model.state_dict()
    assert list(own) == list(ref)
    for k, v in ref.items():
        if k == skip:
            continue
        assert own[k].flatten()[0].item() == v.flatten()[0].item() and torch.equal(own[k], v), k


@pytest.mark.slow
def test_load_official_pebal_checkpoint_dict_and_bare(tmp_path: Path) -> None:
    sd = _filled_state_dict(20)
    path = tmp_path / "best_ad_ckpt.pth"
    torch.save({"model": sd}, path)
    model = load_model(path)
    assert model.arch == "wrn38_deeplabv3plus" and model.has_abstention and not model.training
    _assert_filled(model, sd)
    del model
    path.unlink()

    # bare state_dict, keys wrapped by DataParallel ("module.branch1.*")
    torch.save(OrderedDict(("module." + k, v) for k, v in sd.items()), path)
    model = load_model(path, arch="wrn38_deeplabv3plus")
    _assert_filled(model, sd)

    # and this project's own format round-trips
    out = save_checkpoint(model, tmp_path / "ours.pth", epoch=1)
    del model
    path.unlink()
    again = load_model(out)
    assert again.arch_kwargs == {"num_classes": 20} and again.checkpoint_meta["epoch"] == 1
    assert again.checkpoint_meta["model_info"]["arch"] == "wrn38_deeplabv3plus"   # every model says what it is
    _assert_filled(again, sd)


@pytest.mark.slow
def test_load_nvidia_19_class_checkpoint_adds_kaiming_abstention_row(tmp_path: Path) -> None:
    sd19 = _filled_state_dict(19)
    w19 = torch.randn(19, 256, 1, 1)
    sd19["branch1.final.6.weight"] = w19
    nvidia = OrderedDict(("module." + k[len("branch1."):], v) for k, v in sd19.items())
    nvidia["module.criterion.nll_loss.weight"] = torch.ones(19)  # present in NVIDIA's training checkpoints
    path = tmp_path / "cityscapes_best.pth"
    torch.save({"state_dict": nvidia, "epoch": 175, "mean_iu": 0.81}, path)

    torch.manual_seed(0)
    model = load_model(path)
    assert model.has_abstention and model.arch_kwargs == {"num_classes": 20}
    w = model.branch1.final[6].weight.detach()
    assert w.shape == (20, 256, 1, 1)
    assert torch.equal(w[:19], w19)
    row = w[19].flatten()
    # Kaiming normal, fan_in = 256: std sqrt(2/256) = 0.0884; 256 samples -> +-15 % is ~3.4 sigma
    assert abs(row.std().item() - (2 / 256) ** 0.5) < 0.15 * (2 / 256) ** 0.5
    assert abs(row.mean().item()) < 0.025
    sd20 = OrderedDict((k, v) for k, v in sd19.items())
    sd20["branch1.final.6.weight"] = w
    _assert_filled(model, sd20)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 20, 16, 16)
