"""Train an inlier segmentation network from scratch on a Cityscapes-layout dataset (cross-entropy, 19 classes).

This makes the small inlier model of the synthetic preset; with real data you would start from an
official checkpoint instead (NVIDIA/PEBAL WRN38, EdgeNets ESPNetv2) and go straight to
``pebal finetune``. Every network output pixel is trained with cross-entropy over the 19 Cityscapes
train ids (void 255 ignored); the 20th output channel of the EdgeNets layout (background) is left
untrained and is replaced by the abstention channel at fine-tuning.

Augmentation: random flip, scale and crop/pad (``data/transforms.py``), seeded per (seed, epoch,
item), so runs are reproducible and resumable. Adam with poly-0.9 decay (``config.PretrainConfig``).
Runs under ``torchrun`` like ``pebal finetune``.

Outputs in ``--out``: ``model.pt`` (the inlier network), ``last.pt``/``epoch_NNN.pt`` (resumable
training state), ``config.yaml``, ``train_*.csv``/``train_log.json`` and ``loss_curve.png``.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from pebal_ros.config import AnomalyMixConfig, Config, resolve_config, save_config, to_dict
from pebal_ros.labels import NUM_CLASSES, VOID_LABEL

from . import distributed as D
from .checkpoint import copy_checkpoint, load_training_state, restore_training_state, save_training_state
from .common import (EpochLoader, add_config_arguments, apply_threads, describe_params, format_terms,
                     rotate_checkpoints, seed_everything)
from .history import History
from .schedule import poly_scheduler


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cityscapes", type=Path, required=True, help="Cityscapes-layout root (leftImg8bit/, gtFine/)")
    p.add_argument("--split", default="train", help="split to train on (default: train)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--resume", default=None, metavar="CKPT|auto",
                   help="continue from a training checkpoint; 'auto' = <out>/last.pt if present")
    add_config_arguments(p)
    p.add_argument("--arch", default=None, help="architecture (default: pretrain.arch = espnetv2)")
    p.add_argument("--width", type=float, default=None, help="ESPNetv2 width multiplier s (0.5, 1.0, 1.25, 1.5, 2.0)")
    p.add_argument("--epochs", type=int, default=None, help="total epochs (default: pretrain.epochs, 100)")
    p.add_argument("--batch-size", type=int, default=None, help="per process")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    p.add_argument("--crop-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="training crop height and width (default: pretrain.crop_size, 512 1024)")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="cap optimiser steps per epoch")
    p.add_argument("--num-workers", type=int, default=None, help="data-loading worker processes per rank "
                   "(default: pretrain.num_workers, 2)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: pretrain.seed, 0)")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (summary lines only)")


def config_from_args(args: argparse.Namespace) -> Config:
    flags: dict[str, Any] = {"pretrain": {
        "arch": args.arch, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "crop_size": list(args.crop_size) if args.crop_size else None, "steps_per_epoch": args.steps_per_epoch,
        "num_workers": args.num_workers, "seed": args.seed, "device": args.device}}
    cfg = resolve_config(args, flags)
    if args.width is not None:
        cfg.pretrain.arch_kwargs = {**cfg.pretrain.arch_kwargs, "s": float(args.width)}
    return cfg


def build_dataset(cfg: Config, cityscapes: Path, split: str = "train"):
    """Cityscapes frames with flip/scale/crop and nothing pasted (PebalTrainSet without outliers)."""
    from pebal_ros.data.anomalymix import PebalTrainSet
    from pebal_ros.data.cityscapes import CityscapesDataset
    pc = cfg.pretrain
    aug = AnomalyMixConfig(enabled=False, outlier_fraction=0.0, crop_size=tuple(pc.crop_size),  # type: ignore[arg-type]
                           scale_choices=pc.scale_choices, flip=pc.flip_probability > 0,
                           flip_probability=pc.flip_probability)
    return PebalTrainSet(CityscapesDataset(cityscapes, split=split), None, aug, seed=pc.seed,
                         mean=cfg.inference.mean, std=cfg.inference.std)


def pretrain(cfg: Config, *, cityscapes: Path, out: Path, resume: str | None = None, split: str = "train",
             progress: bool = True) -> Path | None:
    """Train the inlier network; returns ``<out>/model.pt`` on rank 0 (None on other ranks)."""
    from pebal_ros.models import build_model, load_model, save_checkpoint

    pc = cfg.pretrain
    info = D.setup(pc.device)
    log = (lambda msg: print(msg, flush=True)) if info.is_main else (lambda msg: None)
    try:
        out = Path(out)
        resume_path = (out / "last.pt" if (out / "last.pt").is_file() else None) if resume == "auto" else \
            (Path(resume) if resume else None)
        state = load_training_state(resume_path) if resume_path else None
        seed_everything(pc.seed)
        model = load_model(resume_path) if state is not None else build_model(pc.arch, **pc.arch_kwargs)
        model.to(info.device)
        log(f"model {model.arch}({model.arch_kwargs}): {describe_params(model)}")

        dataset = build_dataset(cfg, cityscapes, split)
        loader = EpochLoader(dataset, pc.batch_size, info, pc.seed, pc.num_workers, pc.steps_per_epoch)
        log(f"data: {len(dataset)} frames, {len(loader)} steps of {pc.batch_size} x {info.world_size} "
            f"process(es), crop {tuple(pc.crop_size)}")

        optimizer = torch.optim.Adam(model.parameters(), lr=pc.lr, weight_decay=pc.weight_decay)
        scheduler = poly_scheduler(optimizer, pc.epochs * len(loader), pc.poly_power)
        history = History(info={"world_size": info.world_size, "device": str(info.device)})
        start_epoch = 0
        if state is not None:
            saved_history, start_epoch = restore_training_state(state, optimizer, scheduler)
            history = History.from_state_dict(saved_history)
            log(f"resumed from {resume_path} at epoch {start_epoch + 1}/{pc.epochs}")
        ddp = DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None) \
            if info.distributed else model
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out / "config.yaml")
        meta = {"kind": "pretrain", "config": to_dict(cfg), "inference": to_dict(cfg.inference)}

        step = start_epoch * len(loader)
        for epoch in range(start_epoch, pc.epochs):
            model.train()
            sums = {"ce": 0.0, "correct": 0.0, "labelled": 0.0}
            t0 = time.perf_counter()
            bar = tqdm(loader.epoch(epoch), total=len(loader), desc=f"epoch {epoch + 1}/{pc.epochs}",
                       disable=not (progress and info.is_main), file=sys.stderr, dynamic_ncols=True, leave=False)
            for batch in bar:
                images = batch["image"].to(info.device, non_blocking=True)
                target = batch["target"].to(info.device, non_blocking=True)
                logits = ddp(images)[:, :NUM_CLASSES]
                loss = F.cross_entropy(logits, target, ignore_index=VOID_LABEL)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()

                ce = float(loss.detach())
                if not math.isfinite(ce):
                    raise FloatingPointError(f"non-finite loss at epoch {epoch + 1}, step {step}")
                labelled = target != VOID_LABEL
                correct = float(((logits.detach().argmax(1) == target) & labelled).sum())
                sums["ce"] += ce
                sums["correct"] += correct
                sums["labelled"] += float(labelled.sum())
                step += 1
                if info.is_main:
                    bar.set_postfix_str(f"ce={ce:.4f} lr={scheduler.get_last_lr()[0]:.2e}")
                    if step % max(1, pc.log_every) == 0 or step == 1:
                        history.log_step({"step": step, "epoch": epoch + 1, "lr": scheduler.get_last_lr()[0],
                                          "ce": ce})
            bar.close()

            agg = D.mean_over_ranks(sums, info)
            summary = {"ce": agg["ce"] / len(loader), "pixel_acc": agg["correct"] / max(1.0, agg["labelled"])}
            seconds = time.perf_counter() - t0
            history.log_epoch({"epoch": epoch + 1, "step": step, "lr": scheduler.get_last_lr()[0],
                               "seconds": seconds, **summary})
            log(f"epoch {epoch + 1}/{pc.epochs} | {format_terms(summary, ('ce', 'pixel_acc'))} (train crops) | "
                f"lr {scheduler.get_last_lr()[0]:.2e} | {seconds:.1f} s")
            if info.is_main and ((epoch + 1) % max(1, pc.checkpoint_every) == 0 or epoch + 1 == pc.epochs):
                ckpt = save_training_state(out / f"epoch_{epoch + 1:03d}.pt", model, optimizer, scheduler,
                                           epoch + 1, history.state_dict(), {**meta, "epoch": epoch + 1})
                copy_checkpoint(ckpt, out / "last.pt")
                rotate_checkpoints(out, pc.keep_checkpoints)
                history.write(out, "train")
            D.barrier(info)

        divergence = D.replica_divergence(ddp, info)
        if not info.is_main:
            return None
        history.info["replica_max_abs_diff"] = divergence
        final = save_checkpoint(model, out / "model.pt", **meta, epoch=pc.epochs,
                                final_epoch_summary=history.epochs[-1] if history.epochs else {})
        history.write(out, "train")
        history.plot(out / "loss_curve.png", keys=["ce"], title="inlier training (cross-entropy)")
        log(f"wrote {final} (and logs, loss_curve.png) in {out}")
        return final
    finally:
        D.cleanup(info)


def main(args: argparse.Namespace) -> int:
    apply_threads(args.threads)
    cfg = config_from_args(args)
    pretrain(cfg, cityscapes=args.cityscapes, out=args.out, resume=args.resume, split=args.split,
             progress=not args.no_progress)
    return 0
