"""The models contract: build/load/save, architecture inference, PEBAL head, freezing, error messages.
Uses small ESPNetv2 networks so it runs in seconds."""
from __future__ import annotations

import argparse
import warnings
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from pebal_ros.labels import ABSTAIN_CHANNEL
from pebal_ros.models import (CheckpointError, add_abstention, build_model, count_parameters,
                              freeze_all_but_final, infer_architecture, load_model, save_checkpoint,
                              train_mode_final_only)


@pytest.fixture()
def small() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("espnetv2", s=0.5).eval()


def test_build_model_rejects_unknown_arch_and_arguments() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'resnet'.*espnetv2.*wrn38_deeplabv3plus"):
        build_model("resnet")
    with pytest.raises(TypeError, match="unknown argument.*width"):
        build_model("espnetv2", width=2.0)
    with pytest.raises(ValueError, match="s=0.75 is not supported"):
        build_model("espnetv2", s=0.75)


@pytest.mark.parametrize("s", [0.5, 1.0, 1.25, 1.5, 2.0])
def test_infer_architecture_reads_width_from_shapes(s: float) -> None:
    with torch.device("meta"):
        sd = build_model("espnetv2", s=s, num_classes=19).state_dict()
    assert infer_architecture(sd) == ("espnetv2", {"s": s, "num_classes": 19, "base_dec_planes": 16})


def test_bare_and_wrapped_state_dicts_load_with_inferred_width(tmp_path: Path, small: torch.nn.Module) -> None:
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = small(x)
    torch.save(small.state_dict(), tmp_path / "bare.pth")
    torch.save({"model": OrderedDict(("module." + k, v) for k, v in small.state_dict().items())},
               tmp_path / "wrapped.pth")
    for name in ("bare.pth", "wrapped.pth"):
        model = load_model(tmp_path / name)
        assert model.arch_kwargs["s"] == 0.5 and not model.training
        with torch.no_grad():
            torch.testing.assert_close(model(x), ref, rtol=0, atol=0)


def test_save_checkpoint_format_and_round_trip(tmp_path: Path, small: torch.nn.Module) -> None:
    add_abstention(small)
    path = save_checkpoint(small, tmp_path / "sub" / "ckpt.pth", epoch=3, miou=0.5)
    raw = torch.load(path, weights_only=True)
    assert set(raw) >= {"arch", "arch_kwargs", "model", "meta"}
    info = raw["meta"].pop("model_info")   # what the network is (model_settings reads it)
    assert raw["arch"] == "espnetv2" and raw["meta"] == {"epoch": 3, "miou": 0.5}
    assert info["arch"] == "espnetv2" and info["kind"] in ("pebal", "segmentation")
    assert raw["arch_kwargs"] == {"s": 0.5, "num_classes": 20, "base_dec_planes": 16, "abstention": True}
    model = load_model(path)
    assert model.has_abstention and model.checkpoint_meta["epoch"] == 3
    for k, v in small.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    # a DataParallel-style wrapper is unwrapped when saving
    wrapper = torch.nn.Module()
    wrapper.module = small
    save_checkpoint(wrapper, tmp_path / "wrapped.pth")
    assert next(iter(torch.load(tmp_path / "wrapped.pth", weights_only=True)["model"])).startswith("base_net.")


def test_add_abstention_replaces_espnet_background_channel(small: torch.nn.Module) -> None:
    conv = small.classifier
    with torch.no_grad():
        conv.bias.fill_(0.3)
    before_w, before_b = conv.weight.detach().clone(), conv.bias.detach().clone()
    assert not small.has_abstention
    gen = torch.Generator().manual_seed(1)
    add_abstention(small, generator=gen)
    assert small.has_abstention and small.arch_kwargs["abstention"] and small.classifier is conv
    w, b = conv.weight.detach(), conv.bias.detach()
    assert torch.equal(w[:ABSTAIN_CHANNEL], before_w[:ABSTAIN_CHANNEL])
    assert torch.equal(b[:ABSTAIN_CHANNEL], before_b[:ABSTAIN_CHANNEL])
    assert b[ABSTAIN_CHANNEL] == 0 and not torch.equal(w[ABSTAIN_CHANNEL], before_w[ABSTAIN_CHANNEL])
    # Kaiming normal (fan_in): the row equals the generator's draws times sqrt(2 / fan_in)
    fan_in = w[0].numel()
    expected = torch.randn(w.shape[1:], generator=torch.Generator().manual_seed(1)) * (2.0 / fan_in) ** 0.5
    torch.testing.assert_close(w[ABSTAIN_CHANNEL], expected)
    same = w.clone()
    add_abstention(small)  # idempotent
    assert torch.equal(small.classifier.weight, same)
    with torch.no_grad():
        assert small(torch.randn(1, 3, 32, 32)).shape == (1, 20, 32, 32)


def test_add_abstention_grows_19_class_network() -> None:
    torch.manual_seed(0)
    model = build_model("espnetv2", s=0.5, num_classes=19).eval()
    old = model.classifier
    add_abstention(model)
    new = model.classifier
    assert new is not old and new.out_channels == 20 and model.has_abstention
    assert torch.equal(new.weight[:19], old.weight) and torch.equal(new.bias[:19], old.bias)
    assert model.arch_kwargs["num_classes"] == 20
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 20, 32, 32)
    with pytest.raises(ValueError, match="21 outputs"):
        add_abstention(build_model("espnetv2", s=0.5, num_classes=21))


def test_freeze_all_but_final_espnet(small: torch.nn.Module) -> None:
    add_abstention(small)
    freeze_all_but_final(small)
    trainable = {n for n, p in small.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("bu_dec_l4.") for n in trainable)
    assert count_parameters(small, trainable_only=True) == sum(p.numel() for p in small.bu_dec_l4.parameters())
    small.train()
    assert small.training and small.bu_dec_l4.training and not small.base_net.training
    frozen_bn = small.base_net.level4[6].br_after_cat.bn
    final_bn = small.bu_dec_l4.merge_layer[0].br[0]
    frozen_before, final_before = frozen_bn.running_mean.clone(), final_bn.running_mean.clone()
    small(torch.randn(2, 3, 64, 64)).logsumexp(1).mean().backward()
    assert torch.equal(frozen_bn.running_mean, frozen_before)
    assert not torch.equal(final_bn.running_mean, final_before)
    assert all(p.grad is None for n, p in small.named_parameters() if n not in trainable)
    assert all(p.grad is not None for n, p in small.named_parameters() if n in trainable)
    small.eval()
    assert not small.bu_dec_l4.training


def test_train_mode_final_only_without_freezing(small: torch.nn.Module) -> None:
    train_mode_final_only(small)
    assert small.training and small.final_block.training
    assert not small.base_net.training and not small.bu_dec_l1.training


# ---------------------------------------------------------------------------- error messages
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.pth"):
        load_model(tmp_path / "nope.pth")


def test_not_a_checkpoint(tmp_path: Path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("hello, not a checkpoint\n")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        load_model(text)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        load_model(empty)
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "nostate.pth")
    with pytest.raises(CheckpointError, match="not a checkpoint: expected a state_dict.*epoch"):
        load_model(tmp_path / "nostate.pth")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds a list"):
        load_model(tmp_path / "list.pth")


def test_unknown_architecture(tmp_path: Path) -> None:
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="cannot infer the architecture.*fc.weight"):
        load_model(tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="unknown architecture 'unet'"):
        load_model(tmp_path / "other.pth", arch="unet")
    torch.save({"arch": "unet", "arch_kwargs": {}, "model": {"fc.weight": torch.zeros(2)}, "meta": {}},
               tmp_path / "unet.pth")
    with pytest.raises(CheckpointError, match="saved for unknown architecture 'unet'"):
        load_model(tmp_path / "unet.pth")


def test_shape_mismatch_names_key_and_shapes(tmp_path: Path, small: torch.nn.Module) -> None:
    torch.save(small.state_dict(), tmp_path / "s05.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatch .*base_net\.level1\.conv\.weight: "
                                              r"checkpoint \[16, 3, 3, 3\] vs model \[32, 3, 3, 3\]"):
        load_model(tmp_path / "s05.pth", s=2.0)
    sd = small.state_dict()
    sd["bu_dec_l4.merge_layer.3.weight"] = torch.zeros(20, 7, 1, 1)
    del sd["bu_br_l4.1.weight"]
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "broken.pth")
    msg = str(err.value)
    assert "bu_dec_l4.merge_layer.3.weight: checkpoint [20, 7, 1, 1] vs model [20, 10, 1, 1]" in msg
    assert "missing key(s): bu_br_l4.1.weight" in msg
    with pytest.raises(CheckpointError, match="does not fit wrn38_deeplabv3plus"):
        load_model(tmp_path / "s05.pth", arch="wrn38_deeplabv3plus")


def test_stored_arch_conflict(tmp_path: Path, small: torch.nn.Module) -> None:
    path = save_checkpoint(small, tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match="holds a espnetv2 network, not wrn38_deeplabv3plus"):
        load_model(path, arch="wrn38_deeplabv3plus")


def test_pickled_extras_refused_unless_opted_in(tmp_path: Path, small: torch.nn.Module) -> None:
    # Upstream training checkpoints carry arbitrary pickled objects (argparse namespaces, ...):
    # loading them runs the unpickler, so only an explicit opt-in may do it.
    torch.save({"state_dict": small.state_dict(), "args": argparse.Namespace(lr=0.1)}, tmp_path / "t.pth")
    with pytest.raises(CheckpointError, match=r"argparse.Namespace.*--unsafe-load-pickle"):
        load_model(tmp_path / "t.pth")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(tmp_path / "t.pth", allow_unsafe=True)
    assert any("--unsafe-load-pickle" in str(w.message) for w in caught)
    assert model.arch_kwargs["s"] == 0.5


def test_save_checkpoint_rejects_unregistered_module(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="Linear is not a pebal_ros model"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x.pth")
