"""Plumbing shared by ``pebal train`` and ``pebal finetune``: config layering, loaders, seeding, files.

Config layering, lowest to highest priority: the dataclass defaults, ``--preset NAME``
(``pebal_ros/configs/NAME.yaml``), ``--config FILE.yaml``, ``--set section.key=value`` (YAML values,
repeatable), then the dedicated flags (``--epochs``, ``--lr``, ...). The merged result is validated
by ``config.from_dict`` (unknown keys are errors) and saved beside the outputs as ``config.yaml``.
"""
from __future__ import annotations

import argparse
import random
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pebal_ros.config import Config, from_dict, to_dict

from .distributed import DistInfo

PRESET_DIR = Path(__file__).resolve().parents[1] / "configs"


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"unknown preset {name!r}; available: {', '.join(list_presets()) or 'none'}")
    return path


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None,
                   help=f"named config shipped with the package ({', '.join(list_presets()) or 'none'})")
    p.add_argument("--config", type=Path, default=None, help="YAML config file (applied after --preset)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set loss.ebm_weight=0.01 (repeatable)")
    add_threads_argument(p)


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per process (torch.set_num_threads); 1 is much faster on a machine "
                        "whose cores are busy with other work (default: torch's choice / OMP_NUM_THREADS)")


def apply_threads(n: int | None) -> None:
    if n is not None:
        if n < 1:
            raise SystemExit(f"--threads must be >= 1, got {n}")
        torch.set_num_threads(n)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any], where: str = "") -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "arch_kwargs":
            _deep_merge(base[key], value, f"{where}{key}.")
        else:
            base[key] = value
    return base


def _read_yaml(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a mapping of config sections, got {type(data).__name__}")
    return data


def parse_override(text: str) -> dict[str, Any]:
    """``a.b.c=value`` -> {"a": {"b": {"c": value}}} with the value parsed as YAML."""
    m = re.fullmatch(r"([A-Za-z_][\w.]*)=(.*)", text.strip(), flags=re.S)
    if not m:
        raise SystemExit(f"--set expects SECTION.KEY=VALUE, got {text!r}")
    keys, value = m.group(1).split("."), yaml.safe_load(m.group(2))
    out: dict[str, Any] = {}
    node = out
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return out


def resolve_config(args: argparse.Namespace, flags: dict[str, Any] | None = None) -> Config:
    """Defaults < preset < --config < --set < ``flags`` (a nested dict of values given on the command line)."""
    data = to_dict(Config())
    if getattr(args, "preset", None):
        _deep_merge(data, _read_yaml(preset_path(args.preset)))
    if getattr(args, "config", None):
        _deep_merge(data, _read_yaml(Path(args.config)))
    for text in getattr(args, "overrides", []) or []:
        _deep_merge(data, parse_override(text))
    if flags:
        _deep_merge(data, {sec: {k: v for k, v in vals.items() if v is not None} if isinstance(vals, dict) else vals
                           for sec, vals in flags.items() if vals is not None})
    try:
        return from_dict(data)
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"invalid configuration: {exc}") from None


def config_dict(cfg: Config) -> dict[str, Any]:
    return to_dict(cfg)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


class EpochLoader:
    """A DataLoader whose order and augmentation are a pure function of (seed, epoch).

    Single process: a RandomSampler driven by a generator re-seeded every epoch. Several
    processes: a DistributedSampler (each rank its own shard, ``set_epoch``) — ranks never see the
    same item in an epoch. The dataset's own ``set_epoch`` (PebalTrainSet) re-seeds its per-item
    augmentation, so a resumed run sees exactly the items an uninterrupted run would have seen.
    """

    def __init__(self, dataset: Dataset, batch_size: int, info: DistInfo, seed: int, num_workers: int = 0,
                 steps_per_epoch: int = 0) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.generator = torch.Generator()
        if info.distributed:
            self.sampler: Any = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank,
                                                   shuffle=True, seed=self.seed, drop_last=True)
            self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, drop_last=True,
                                     num_workers=num_workers, pin_memory=info.device.type == "cuda",
                                     generator=self.generator)
        else:
            self.sampler = None
            self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                     num_workers=num_workers, pin_memory=info.device.type == "cuda",
                                     generator=self.generator)
        full = len(self.loader)
        if full == 0:
            per_rank = len(dataset) // max(1, info.world_size)  # type: ignore[arg-type]
            raise SystemExit(f"the training set has {len(dataset)} items ({per_rank} per process), fewer "  # type: ignore[arg-type]
                             f"than one batch of {batch_size}: lower --batch-size or add data")
        self.steps = min(full, steps_per_epoch) if steps_per_epoch > 0 else full

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int) -> Iterable[dict[str, Any]]:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)  # type: ignore[attr-defined]
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        self.generator.manual_seed(self.seed * 100_003 + epoch)
        for i, batch in enumerate(self.loader):
            if i >= self.steps:
                break
            yield batch


def rotate_checkpoints(out_dir: Path, keep: int, pattern: str = "epoch_*.pt") -> None:
    """Delete all but the newest ``keep`` epoch checkpoints (``keep`` <= 0 keeps all)."""
    if keep <= 0:
        return
    files = sorted(out_dir.glob(pattern))
    for old in files[:-keep]:
        old.unlink(missing_ok=True)


def describe_params(model: torch.nn.Module) -> str:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{total / 1e6:.3f} M parameters, {trainable / 1e6:.3f} M trainable"


def format_terms(terms: dict[str, float], keys: Iterable[str]) -> str:
    return " ".join(f"{k}={terms[k]:.4g}" for k in keys if k in terms)
