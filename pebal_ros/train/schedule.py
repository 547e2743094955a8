"""Learning-rate schedules for training and fine-tuning.

PEBAL (official ``engine/lr_policy.py``) uses the "poly" policy lr = base * (1 - i / N) ** 0.9 over
N = epochs * iterations-per-epoch optimiser steps, without warm-up. It is written as a ``LambdaLR``
here so that its state goes into checkpoints with the optimiser and resumes exactly.

One detail differs from the official trainer: it sets the rate *after* step i to lr(i), so its
step i + 1 runs at lr(i); here step i runs at lr(i). Over hundreds of steps the two schedules differ
by one step's decay, which is below anything a benchmark can measure.
"""
from __future__ import annotations

import torch


def poly_factor(step: int, total_steps: int, power: float = 0.9, min_factor: float = 0.0) -> float:
    """Multiplier of the base rate at ``step`` (0-based) of ``total_steps``; never below ``min_factor``."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    remaining = max(0.0, 1.0 - step / total_steps)
    return max(min_factor, remaining ** power)


def poly_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, power: float = 0.9,
                   min_factor: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`poly_factor`; call ``.step()`` once per optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: poly_factor(step, total_steps, power, min_factor))
