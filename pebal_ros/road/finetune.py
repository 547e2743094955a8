"""PEBAL fine-tuning of ESPNetv2 from a feature cache (frozen encoder precomputed): real roads on a CPU.

The same recipe as ``pebal finetune`` -- abstention channel, frozen encoder (BatchNorm in eval
mode), the project's ``pebal_loss`` on AnomalyMix'd frames, Adam with poly decay -- but the frames
come from a cache built by ``pebal build-road-cache``: each step reads the cached encoder levels 3
and 4 of a batch, recomputes levels 1 and 2 from the cached image (two cheap frozen layers), and
runs only the trainable head forward and backward. With a frozen encoder that is the same
computation as a full forward pass on those frames (up to float16 storage of levels 3-4).

Trains ``train.trainable`` (default: the final block ``bu_dec_l4``, as the official code); the
road preset trains the whole decoder. The batch order of epoch e is a permutation seeded by
(train.seed, e), and ``last.pt`` is written every ``--checkpoint-steps`` steps with the position
in the epoch, so ``--resume auto`` continues exactly where a killed run stopped. Uses CUDA when
present (``--device``). With ``--val DIR`` (a mixed set from ``pebal build-mixed-set``) every
epoch is evaluated (AUROC/AP/FPR95 of the PEBAL score; with ``--val-camvid ROOT`` also the mIoU on
CamVid val) and saved as ``model_epoch_NNN.pt``, so the epoch can be chosen on validation data.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pebal_ros.config import Config, resolve_config, save_config, to_dict

from pebal_ros.train.checkpoint import atomic_save, load_training_state, model_payload, rng_state
from pebal_ros.train.common import (SHOWN_TERMS, add_config_arguments, apply_threads, describe_params, format_terms,
                                    optimise, seed_everything)
from pebal_ros.train.history import History
from pebal_ros.train.schedule import poly_scheduler

from .feature_cache import FeatureCache, file_sha256



def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
    return torch.randperm(n, generator=g).numpy()


def to_input(images: np.ndarray, mean, std, device: torch.device) -> torch.Tensor:
    """uint8 [B, H, W, 3] RGB -> normalised float [B, 3, H, W] on ``device``, computed as
    ``data.transforms.normalize`` does (x * 1/(255 std) - mean/std in float32), so the recomputed
    levels 1-2 see the very input the cache's levels 3-4 were computed from."""
    scale = torch.from_numpy(1.0 / (255.0 * np.asarray(std, dtype=np.float32))).to(device).view(1, 3, 1, 1)
    shift = torch.from_numpy(np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)).to(device)
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float()
    return (x * scale - shift.view(1, 3, 1, 1)).contiguous()


def cached_forward(model: torch.nn.Module, batch: dict[str, np.ndarray], cfg: Config,
                   device: torch.device) -> torch.Tensor:
    """Logits [B, 20, H, W] of ``model`` on a cache batch (levels 1-2 recomputed, 3-4 cached)."""
    x = to_input(batch["images"], cfg.inference.mean, cfg.inference.std, device)
    with torch.no_grad():
        l1, l2 = model.base_net.low_levels(x)
    l3 = torch.from_numpy(np.ascontiguousarray(batch["l3"])).to(device).float()
    l4 = torch.from_numpy(np.ascontiguousarray(batch["l4"])).to(device).float()
    return model.decode((l1, l2, l3, l4), x.shape[2:])


def evaluate_val(model: torch.nn.Module, val: Path, cfg: Config, device: torch.device,
                 camvid: Path | None = None) -> dict[str, float]:
    """AUROC/AP/FPR95 of the PEBAL score on the mixed val set; with ``camvid``, also the 11-class
    mIoU on CamVid val (what fine-tuning costs the semantics)."""
    from pebal_ros.evaluate import DatasetSpec, evaluate_model
    model.eval()
    specs = [DatasetSpec("val", "fs_static", val)]
    if camvid is not None:
        specs.append(DatasetSpec("camvid_val", "camvid", camvid, "val"))
    res = evaluate_model(model, "val", "", specs, input_size=tuple(cfg.road.input_size), mean=cfg.inference.mean,
                         std=cfg.inference.std, scorers=["pebal"], resolutions=["input"], device=device,
                         progress=False)
    m = res.ood["val"]["pebal"]
    out = {"val_auroc": m["auroc"], "val_ap": m["ap"], "val_fpr95": m["fpr95"]}
    if camvid is not None:
        out["val_miou"] = res.seg["camvid_val"]["miou"]
    return out


def finetune_cached(cfg: Config, *, model_path: str | None, cache: Path, out: Path, resume: str | None = None,
                    val: Path | None = None, val_camvid: Path | None = None, checkpoint_steps: int = 50,
                    progress: bool = True) -> Path:
    from pebal_ros.losses import pebal_loss
    from pebal_ros.models import add_abstention, freeze_all_but_final, load_model, save_checkpoint
    from pebal_ros.train.distributed import resolve_device

    tc = cfg.train
    device = resolve_device(tc.device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    resume_path = (out / "last.pt" if (out / "last.pt").is_file() else None) if resume == "auto" else \
        (Path(resume) if resume else None)
    state = load_training_state(resume_path) if resume_path else None
    seed_everything(tc.seed)
    data = FeatureCache(cache)
    if state is None and not model_path:
        raise SystemExit("--model is required (the network whose encoder built the cache) unless --resume is given")
    init_from = state["meta"]["init_model"] if state else str(model_path)
    if data.meta["settings"]["model_sha256"] != file_sha256(init_from):
        raise SystemExit(f"the cache {cache} was built with another model ({data.meta['settings']['model']}); "
                         f"its encoder outputs do not belong to {init_from}")
    if tuple(data.meta["settings"]["road"]["input_size"]) != tuple(cfg.road.input_size):
        raise SystemExit(f"the cache holds {data.meta['settings']['road']['input_size']} frames but "
                         f"road.input_size is {list(cfg.road.input_size)}")
    model = load_model(str(resume_path) if state else str(model_path))
    add_abstention(model, generator=torch.Generator().manual_seed(tc.seed))
    freeze_all_but_final(model, tc.trainable)
    model.to(device)
    print(f"model {model.arch}({model.arch_kwargs}) from {init_from}: {describe_params(model)}; "
          f"trainable {list(tc.trainable) or ['final block']}; device {device}", file=sys.stderr)

    n_steps = len(data) // tc.batch_size
    if n_steps == 0:
        raise SystemExit(f"the cache has {len(data)} items, fewer than one batch of {tc.batch_size}")
    if tc.steps_per_epoch > 0:
        n_steps = min(n_steps, tc.steps_per_epoch)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = poly_scheduler(optimizer, tc.epochs * n_steps, tc.poly_power)
    history = History(info={"device": str(device), "cache": str(cache), "cache_items": len(data)})
    epoch, pos = 0, 0
    if state is not None:
        ts = state["train_state"]
        optimizer.load_state_dict(ts["optimizer"])
        scheduler.load_state_dict(ts["scheduler"])
        history = History.from_state_dict(ts["history"])
        epoch, pos = int(ts["next_epoch"]), int(ts.get("next_step", 0))
        print(f"resumed from {resume_path} at epoch {epoch + 1}, step {pos + 1}/{n_steps}", file=sys.stderr)
    save_config(cfg, out / "config.yaml")
    meta = {"kind": "pebal_finetune", "init_model": init_from, "config": to_dict(cfg),
            "inference": to_dict(cfg.inference), "cache": str(cache), "cache_settings": data.meta["settings"]}

    def save_state(next_epoch: int, next_step: int, sums: dict[str, float]) -> None:
        payload = model_payload(model, **meta, epoch=next_epoch)
        payload["train_state"] = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                  "next_epoch": next_epoch, "next_step": next_step, "rng": rng_state(),
                                  "history": history.state_dict(), "epoch_sums": dict(sums)}
        atomic_save(payload, out / "last.pt")

    def train_mode() -> None:
        model.train()   # trainable blocks train; frozen parts stay in eval mode
        if tc.bn_eval:
            for m in model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()

    while epoch < tc.epochs:
        train_mode()
        order = epoch_order(len(data), tc.seed, epoch)
        sums: dict[str, float] = dict(state["train_state"].get("epoch_sums", {})) if (state and pos) else {}
        t0 = time.perf_counter()
        bar = tqdm(range(pos, n_steps), total=n_steps, initial=pos, desc=f"epoch {epoch + 1}/{tc.epochs}",
                   disable=not progress, file=sys.stderr, dynamic_ncols=True)
        for step in bar:
            idx = order[step * tc.batch_size:(step + 1) * tc.batch_size]
            batch = data.batch(idx)
            logits = cached_forward(model, batch, cfg, device)
            target = torch.from_numpy(batch["targets"].astype(np.int64)).to(device)
            terms = optimise(pebal_loss(logits, target, cfg.loss), optimizer, scheduler, sums, epoch, step)
            global_step = epoch * n_steps + step + 1
            bar.set_postfix_str(format_terms(terms, SHOWN_TERMS) + f" lr={scheduler.get_last_lr()[0]:.2e}")
            if global_step % max(1, tc.log_every) == 0:
                history.log_step({"step": global_step, "epoch": epoch + 1, "lr": scheduler.get_last_lr()[0], **terms})
            if checkpoint_steps and (step + 1) % checkpoint_steps == 0 and step + 1 < n_steps:
                save_state(epoch, step + 1, sums)
        bar.close()
        record: dict[str, Any] = {"epoch": epoch + 1, "step": (epoch + 1) * n_steps, "lr": scheduler.get_last_lr()[0],
                                  "seconds": time.perf_counter() - t0, **{k: v / n_steps for k, v in sums.items()}}
        if val is not None:
            record.update(evaluate_val(model, val, cfg, device, val_camvid))
            train_mode()
        history.log_epoch(record)
        print(f"epoch {epoch + 1}/{tc.epochs} | {format_terms(record, SHOWN_TERMS)}"
              + (f" | val AUROC {record['val_auroc']:.4f} AP {record['val_ap']:.4f} FPR95 {record['val_fpr95']:.4f}"
                 if val is not None else "")
              + (f" mIoU {record['val_miou']:.4f}" if "val_miou" in record else "") + f" | {record['seconds']:.0f} s",
              file=sys.stderr)
        save_checkpoint(model, out / f"model_epoch_{epoch + 1:03d}.pt", **meta, epoch=epoch + 1, epoch_summary=record)
        epoch, pos, state = epoch + 1, 0, None
        save_state(epoch, 0, {})
        history.write(out, "finetune")

    final = save_checkpoint(model, out / "model.pt", **meta, epoch=tc.epochs,
                            final_epoch_summary=history.epochs[-1] if history.epochs else {})
    history.write(out, "finetune")
    history.plot(out / "loss_curve.png", keys=list(SHOWN_TERMS), title="PEBAL fine-tuning (cached encoder)")
    print(f"wrote {final} (and logs) in {out}", file=sys.stderr)
    return final


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="the network whose encoder built the cache (EdgeNets ESPNetv2)")
    p.add_argument("--cache", type=Path, required=True, help="feature cache (pebal build-road-cache)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--resume", default=None, metavar="CKPT|auto", help="continue from last.pt ('auto': <out>/last.pt if present)")
    p.add_argument("--val", type=Path, default=None,
                   help="mixed validation set (pebal build-mixed-set, fs_static layout) evaluated after every epoch")
    p.add_argument("--val-camvid", type=Path, default=None,
                   help="CamVid root: with --val, also the 11-class mIoU on its val split after every epoch")
    p.add_argument("--checkpoint-steps", type=int, default=50, help="write last.pt every N steps (0: per epoch only)")
    p.add_argument("--epochs", type=int, default=None, help="total epochs")
    p.add_argument("--batch-size", type=int, default=None, help="items per step")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=None, help="training seed (default: train.seed of the preset)")
    p.add_argument("--device", default=None, help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(p)


def main(args: argparse.Namespace) -> int:
    apply_threads(args.threads)
    flags = {"train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                       "device": args.device}}
    cfg = resolve_config(args, flags)
    finetune_cached(cfg, model_path=args.model, cache=args.cache, out=args.out, resume=args.resume, val=args.val,
                    val_camvid=args.val_camvid, checkpoint_steps=args.checkpoint_steps, progress=not args.no_progress)
    return 0
