"""Training checkpoints: the model in the project's checkpoint layout plus everything needed to resume.

A training checkpoint is a model checkpoint ({"arch", "arch_kwargs", "model", "meta"}, loadable by
``pebal_ros.models.load_model`` like any other) with one more key, "train_state": optimiser,
scheduler, the next epoch to run, the RNG states of this process and the training history. Files are
written to a temporary name and renamed, so an interrupted save never leaves a truncated checkpoint.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def rng_state() -> dict[str, Any]:
    """RNG states of torch, numpy and ``random`` as tensors and plain Python values, so that the
    checkpoint still loads with ``torch.load(weights_only=True)``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def model_payload(model: nn.Module, **meta: Any) -> dict[str, Any]:
    """The model part of a checkpoint, in the layout ``load_model`` reads (tensors moved to CPU)."""
    return {
        "format": 1,
        "arch": getattr(model, "arch", None),
        "arch_kwargs": dict(getattr(model, "arch_kwargs", {}) or {}),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta,
    }


def atomic_save(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def save_training_state(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: Any, next_epoch: int, history: dict[str, Any],
                        meta: dict[str, Any]) -> Path:
    payload = model_payload(model, **meta)
    payload["train_state"] = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "next_epoch": int(next_epoch),
        "rng": rng_state(),
        "history": history,
    }
    return atomic_save(payload, path)


def restore_training_state(state: dict[str, Any], optimizer: torch.optim.Optimizer,
                           scheduler: Any) -> tuple[dict[str, Any], int]:
    """Put optimiser, schedule and RNG back where an interrupted run left them.

    Returns the run's log (a ``History`` state dict) and the epoch to continue with.
    """
    ts = state["train_state"]
    optimizer.load_state_dict(ts["optimizer"])
    if scheduler is not None and ts["scheduler"] is not None:
        scheduler.load_state_dict(ts["scheduler"])
    set_rng_state(ts["rng"])
    return ts["history"], int(ts["next_epoch"])


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint (CPU tensors); raises a clear error for a model-only file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint to resume from not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "train_state" not in ckpt:
        raise ValueError(f"{path} is a model checkpoint without training state (optimiser, epoch); "
                         "pass it as --model to start a new run, or resume from <out>/last.pt")
    return ckpt


def copy_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Copy a checkpoint file atomically (``last.pt`` is a copy of the newest epoch file)."""
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst
