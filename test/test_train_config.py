"""Config layering, presets, the poly schedule and the seeded epoch loader of pebal train/finetune."""
from __future__ import annotations

import argparse

import pytest
import torch

from pebal_ros.cli import build_parser
from pebal_ros.config import Config
from pebal_ros.config import list_presets, parse_override, resolve_config
from pebal_ros.train.common import EpochLoader
from pebal_ros.train.distributed import DistInfo
from pebal_ros.train.finetune import config_from_args
from pebal_ros.train.schedule import poly_factor, poly_scheduler


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"preset": None, "config": None, "overrides": [], **kw})


def test_presets_load_and_validate():
    assert {"synthetic", "official_wrn38", "official_wrn38_lostandfound", "espnetv2_cityscapes"} <= set(list_presets())
    for name in list_presets():
        cfg = resolve_config(_args(preset=name))
        assert isinstance(cfg, Config)
    laf = resolve_config(_args(preset="official_wrn38_lostandfound"))
    assert laf.train.lr == 1e-6 and laf.loss.ebm_weight == 0.01 and laf.train.epochs == 40


def test_layering_order(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("train: {lr: 0.5, epochs: 3}\nloss: {ebm_weight: 0.2}\n")
    cfg = resolve_config(_args(preset="synthetic", config=yaml_file, overrides=["train.epochs=7", "loss.m_in=-11"]),
                         {"train": {"epochs": 9, "lr": None}})
    assert cfg.train.lr == 0.5            # --config over the preset (synthetic says 5e-3)
    assert cfg.loss.ebm_weight == 0.2
    assert cfg.loss.m_in == -11.0         # --set
    assert cfg.train.epochs == 9          # explicit flag over --set; None flags are ignored
    assert cfg.anomalymix.crop_size == (128, 256)   # untouched preset values survive


def test_bad_config_values_are_clear_errors():
    with pytest.raises(SystemExit, match="unknown key"):
        resolve_config(_args(overrides=["train.epoch=3"]))
    with pytest.raises(SystemExit, match="SECTION.KEY=VALUE"):
        parse_override("no equals sign")
    with pytest.raises(SystemExit, match="unknown preset"):
        resolve_config(_args(preset="nope"))


def test_finetune_cli_defaults_are_the_official_ones():
    args = build_parser("finetune").parse_args(["finetune", "--cityscapes", "c", "--coco", "o", "--out", "x"])
    cfg = config_from_args(args)
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.epochs, cfg.train.poly_power) == (1e-5, 8, 40, 0.9)
    assert cfg.train.weight_decay == 0.0
    args = build_parser("finetune").parse_args(["finetune", "--cityscapes", "c", "--coco", "o", "--out", "x",
                                                "--epochs", "20", "--batch-size", "16", "--crop-size", "64", "96"])
    cfg = config_from_args(args)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.anomalymix.crop_size) == (20, 16, (64, 96))


def test_poly_schedule_matches_the_official_formula():
    total, base = 50, 1e-5
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=base)
    sched = poly_scheduler(opt, total, 0.9)
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [base * (1 - i / total) ** 0.9 for i in range(total)]
    assert seen == pytest.approx(expected, rel=1e-12)
    assert opt.param_groups[0]["lr"] == 0.0
    assert poly_factor(10, 10) == 0.0 and poly_factor(0, 10) == 1.0
    with pytest.raises(ValueError):
        poly_factor(0, 0)


class _Items(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n, self.epoch = n, -1

    def set_epoch(self, e: int) -> None:
        self.epoch = e

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"i": i, "epoch": self.epoch}


def test_epoch_loader_order_is_a_function_of_seed_and_epoch():
    info = DistInfo(0, 1, 0, torch.device("cpu"), None)
    a, b = EpochLoader(_Items(20), 4, info, seed=1), EpochLoader(_Items(20), 4, info, seed=1)
    order = lambda loader, e: [x for batch in loader.epoch(e) for x in batch["i"].tolist()]  # noqa: E731
    e1 = order(a, 1)
    assert order(a, 0) != e1                       # a new order every epoch ...
    assert order(b, 1) == e1                       # ... reproducible without running epoch 0 first
    assert sorted(e1) == list(range(20))
    assert next(iter(a.epoch(3)))["epoch"].tolist() == [3] * 4   # the dataset saw set_epoch
    capped = EpochLoader(_Items(20), 4, info, seed=1, steps_per_epoch=2)
    assert len(capped) == 2 and len(list(capped.epoch(0))) == 2
    with pytest.raises(SystemExit, match="fewer than one batch"):
        EpochLoader(_Items(3), 4, info, seed=0)
