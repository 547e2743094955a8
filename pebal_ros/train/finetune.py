"""PEBAL fine-tuning: train only the final block of an inlier segmentation network with AnomalyMix + the PEBAL loss.

The loop reads top to bottom: load the inlier model -> add the abstention channel -> freeze all
but the final block (frozen BatchNorm stays in eval mode) -> AnomalyMix training set (Cityscapes
frames + COCO outlier objects, seeded) -> Adam with a poly-0.9 schedule -> ``pebal_loss`` -> a
checkpoint every epoch (resumable: model, optimiser, scheduler, epoch, RNG state, log).

Defaults are the official code's (``config.TrainConfig``): Adam lr 1e-5, batch 8 per process,
40 epochs, poly 0.9, no weight decay, loss weights of ``config.LossConfig``. The paper states 20
epochs and batch 16 (the official run used 8 per GPU); set them with ``--epochs 20 --batch-size 16``
or ``--batch-size 8`` on two GPUs. For the paper's LostAndFound setting use
``--lr 1e-6 --set loss.ebm_weight=0.01``.

Several GPUs or CPU processes: ``torchrun --nproc_per_node N -m pebal_ros.cli finetune ...``
(DistributedDataParallel; NCCL on CUDA, gloo on CPU; each process takes ``--batch-size`` items, so
the global batch is N x batch; only rank 0 prints and writes files).

Outputs in ``--out``: ``model.pt`` (the fine-tuned network, what ``pebal evaluate``/``export`` take),
``last.pt`` and ``epoch_NNN.pt`` (training state for ``--resume``), ``config.yaml``,
``finetune_steps.csv``, ``finetune_epochs.csv``, ``finetune_log.json`` and ``loss_curve.png``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from pebal_ros.config import Config, resolve_config, save_config, to_dict

from . import distributed as D
from .checkpoint import copy_checkpoint, load_training_state, restore_training_state, save_training_state
from .common import (SHOWN_TERMS, EpochLoader, add_config_arguments, apply_threads, describe_params, format_terms,
                     optimise, rotate_checkpoints, seed_everything)
from .history import History
from .schedule import poly_scheduler



def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="inlier checkpoint to fine-tune (official PEBAL/NVIDIA WRN38, EdgeNets ESPNetv2, or a "
                        "`pebal train` output); not needed with --resume")
    p.add_argument("--arch", default=None, help="architecture, if the checkpoint does not say")
    p.add_argument("--cityscapes", type=Path, required=True, help="Cityscapes root (leftImg8bit/, gtFine/)")
    p.add_argument("--coco", type=Path, required=True,
                   help="COCO outlier root (train2017/, annotations/ood_seg_train2017/), see build-coco-ood")
    p.add_argument("--split", default="train", help="Cityscapes split to train on (default: train)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--resume", default=None, metavar="CKPT|auto",
                   help="continue from a training checkpoint (last.pt / epoch_NNN.pt); 'auto' = <out>/last.pt if present")
    add_config_arguments(p)
    p.add_argument("--epochs", type=int, default=None, help="total epochs (default 40, official; paper: 20)")
    p.add_argument("--batch-size", type=int, default=None, help="per process (default 8, official; paper: 16)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-5)")
    p.add_argument("--crop-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="training crop (default 900 900, official)")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="cap optimiser steps per epoch (smoke runs)")
    p.add_argument("--num-workers", type=int, default=None, help="data-loading worker processes per rank")
    p.add_argument("--seed", type=int, default=None,
                   help="random seed of sampling and AnomalyMix (default: train.seed, 0)")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (summary lines only)")


def config_from_args(args: argparse.Namespace) -> Config:
    flags: dict[str, Any] = {
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                  "steps_per_epoch": args.steps_per_epoch, "num_workers": args.num_workers,
                  "seed": args.seed, "device": args.device},
        "anomalymix": {"crop_size": list(args.crop_size) if args.crop_size else None},
    }
    if args.arch:
        flags["arch"] = args.arch
    return resolve_config(args, flags)


def build_dataset(cfg: Config, cityscapes: Path, coco: Path, split: str = "train"):
    from pebal_ros.data.anomalymix import PebalTrainSet
    from pebal_ros.data.cityscapes import CityscapesDataset
    from pebal_ros.data.coco_ood import CocoOutlierDataset
    return PebalTrainSet(CityscapesDataset(cityscapes, split=split), CocoOutlierDataset(coco), cfg.anomalymix,
                         seed=cfg.train.seed, mean=cfg.inference.mean, std=cfg.inference.std)


def finetune(cfg: Config, *, model_path: str | None, cityscapes: Path, coco: Path, out: Path,
             resume: str | None = None, split: str = "train", progress: bool = True) -> Path | None:
    """Run PEBAL fine-tuning; returns the path of the final ``model.pt`` (on rank 0; None elsewhere)."""
    from pebal_ros.losses import pebal_loss
    from pebal_ros.models import add_abstention, freeze_all_but_final, load_model, save_checkpoint

    tc = cfg.train
    info = D.setup(tc.device)
    log = (lambda msg: print(msg, flush=True)) if info.is_main else (lambda msg: None)
    try:
        out = Path(out)
        resume_path = _resume_path(resume, out)
        state = load_training_state(resume_path) if resume_path else None
        seed_everything(tc.seed)

        # 1. The network: the inlier model, with the abstention channel, only the final block trainable.
        if state is not None:
            model = load_model(resume_path, arch=cfg.arch)
            init_from = state["meta"].get("init_model", str(resume_path))
        else:
            if not model_path:
                raise SystemExit("--model is required (the inlier checkpoint to fine-tune) unless --resume is given")
            model = load_model(model_path, arch=cfg.arch)
            init_from = str(model_path)
        add_abstention(model)
        freeze_all_but_final(model, tc.trainable)
        model.to(info.device)
        log(f"model {model.arch}({model.arch_kwargs}) from {init_from}: {describe_params(model)}")

        # 2. Data: Cityscapes frames with COCO objects pasted in (AnomalyMix), flip/scale/crop.
        dataset = build_dataset(cfg, cityscapes, coco, split)
        loader = EpochLoader(dataset, tc.batch_size, info, tc.seed, tc.num_workers, tc.steps_per_epoch)
        log(f"data: {len(dataset)} items per epoch ({dataset.n_frames} frames + {len(dataset.outlier_subset)} "
            f"outlier pastes), {len(loader)} steps of {tc.batch_size} x {info.world_size} process(es), "
            f"crop {tuple(cfg.anomalymix.crop_size)}")

        # 3. Optimiser and schedule: Adam on the final block, poly decay over all steps of the run.
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)
        scheduler = poly_scheduler(optimizer, tc.epochs * len(loader), tc.poly_power)
        history = History(info={"world_size": info.world_size, "device": str(info.device)})
        start_epoch = 0
        if state is not None:
            saved_history, start_epoch = restore_training_state(state, optimizer, scheduler)
            history = History.from_state_dict(saved_history)
            log(f"resumed from {resume_path} at epoch {start_epoch + 1}/{tc.epochs}")
        ddp = DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None) \
            if info.distributed else model

        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out / "config.yaml")
        meta = {"kind": "pebal_finetune", "init_model": init_from, "config": to_dict(cfg),
                "inference": to_dict(cfg.inference)}

        # 4. The loop.
        step = start_epoch * len(loader)
        for epoch in range(start_epoch, tc.epochs):
            model.train()   # the final block trains; frozen parts stay in eval mode (freeze_all_but_final)
            sums: dict[str, float] = {}
            n_mixed = n_images = 0
            t0 = time.perf_counter()
            bar = tqdm(loader.epoch(epoch), total=len(loader), desc=f"epoch {epoch + 1}/{tc.epochs}",
                       disable=not (progress and info.is_main), file=sys.stderr, dynamic_ncols=True, leave=False)
            for batch in bar:
                images = batch["image"].to(info.device, non_blocking=True)
                target = batch["target"].to(info.device, non_blocking=True)
                logits = ddp(images)
                losses = pebal_loss(logits, target, cfg.loss)
                terms = optimise(losses, optimizer, scheduler, sums, epoch, step)
                n_mixed += int(losses["n_mixed_images"])
                n_images += images.shape[0]
                step += 1
                if info.is_main:
                    bar.set_postfix_str(format_terms(terms, SHOWN_TERMS) + f" lr={scheduler.get_last_lr()[0]:.2e}")
                    if step % max(1, tc.log_every) == 0 or step == 1:
                        history.log_step({"step": step, "epoch": epoch + 1, "lr": scheduler.get_last_lr()[0], **terms})
            bar.close()

            # Epoch summary: means over all steps of all ranks.
            n_steps = len(loader)
            summary = D.mean_over_ranks({k: v / n_steps for k, v in sums.items()}, info)
            counts = D.mean_over_ranks({"mixed": n_mixed, "images": n_images}, info)
            seconds = time.perf_counter() - t0
            history.log_epoch({"epoch": epoch + 1, "step": step, "lr": scheduler.get_last_lr()[0],
                               "seconds": seconds, "mixed_fraction": counts["mixed"] / max(1.0, counts["images"]),
                               **summary})
            log(f"epoch {epoch + 1}/{tc.epochs} | {format_terms(summary, SHOWN_TERMS)} | "
                f"mixed {counts['mixed'] / max(1.0, counts['images']):.0%} | lr {scheduler.get_last_lr()[0]:.2e} | "
                f"{seconds:.1f} s")

            # Checkpoint (rank 0 writes; the others wait so no rank races ahead of a crash-safe state).
            last_epoch = epoch + 1 == tc.epochs
            if info.is_main and ((epoch + 1) % max(1, tc.checkpoint_every) == 0 or last_epoch):
                ckpt = save_training_state(out / f"epoch_{epoch + 1:03d}.pt", model, optimizer, scheduler,
                                           epoch + 1, history.state_dict(), {**meta, "epoch": epoch + 1})
                copy_checkpoint(ckpt, out / "last.pt")
                rotate_checkpoints(out, tc.keep_checkpoints)
                history.write(out, "finetune")
            D.barrier(info)

        # 5. Final model, logs and the loss curve.
        divergence = D.replica_divergence(ddp, info)
        if info.distributed:
            log(f"replicas in sync: max |param - rank0 param| = {divergence:.3g}")
        if not info.is_main:
            return None
        history.info["replica_max_abs_diff"] = divergence
        final = save_checkpoint(model, out / "model.pt", **meta, epoch=tc.epochs,
                                final_epoch_summary=history.epochs[-1] if history.epochs else {})
        history.write(out, "finetune")
        history.plot(out / "loss_curve.png", keys=list(SHOWN_TERMS), title="PEBAL fine-tuning")
        log(f"wrote {final} (and logs, loss_curve.png) in {out}")
        return final
    finally:
        D.cleanup(info)


def _resume_path(resume: str | None, out: Path) -> Path | None:
    if not resume:
        return None
    if resume == "auto":
        last = out / "last.pt"
        return last if last.is_file() else None
    return Path(resume)


def main(args: argparse.Namespace) -> int:
    apply_threads(args.threads)
    cfg = config_from_args(args)
    finetune(cfg, model_path=args.model, cityscapes=args.cityscapes, coco=args.coco, out=args.out,
             resume=args.resume, split=args.split, progress=not args.no_progress)
    return 0
