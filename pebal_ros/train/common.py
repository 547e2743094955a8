"""Plumbing shared by ``pebal train`` and ``pebal finetune``: loaders, seeding, threads, files.

Config layering (defaults < ``--preset`` < ``--config`` < ``--set`` < dedicated flags) lives in
``pebal_ros.config``; the merged result is saved beside the outputs as ``config.yaml``.
"""
from __future__ import annotations

import argparse
import math
import random
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pebal_ros.config import Config, to_dict
from pebal_ros.config import add_config_arguments as config_arguments

from .distributed import DistInfo



# Loss terms shown in the progress bar and summary (all of them go to the logs).
SHOWN_TERMS = ("total", "pal_inlier", "pal_mixed", "energy")
LOGGED_TERMS = ("total", "pal_inlier", "pal_mixed", "pal_mixed_in", "pal_mixed_out", "energy",
                "ebm_in", "ebm_out", "sparse", "smooth")


def optimise(losses: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, scheduler: Any,
             sums: dict[str, float], epoch: int, step: int) -> dict[str, float]:
    """One optimiser and schedule step on ``losses["total"]``; returns the logged terms, also added to
    ``sums``. A non-finite loss stops the run here, naming where, before it corrupts a checkpoint."""
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    optimizer.step()
    scheduler.step()
    terms = {k: float(losses[k].detach()) for k in LOGGED_TERMS}
    if not math.isfinite(terms["total"]):
        raise FloatingPointError(f"non-finite loss at epoch {epoch + 1}, step {step}: {terms}")
    for k, v in terms.items():
        sums[k] = sums.get(k, 0.0) + v
    return terms


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """The config layering flags plus ``--threads`` (every torch-running command wants both)."""
    config_arguments(p)
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
