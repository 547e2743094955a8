"""pebal finetune / pebal train on tiny generated datasets in the real on-disk layouts.

The trees are written here with OpenCV (not with make-synthetic) so that the loop's tests depend
only on the readers' documented layouts: Cityscapes ``leftImg8bit``/``gtFine`` and the Meta-OoD
COCO outlier layout.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pebal_ros.config import Config
from pebal_ros.models import build_model, freeze_all_but_final, load_model, save_checkpoint
from pebal_ros.train.finetune import finetune
from pebal_ros.train.pretrain import pretrain

H, W = 48, 96


def _scene(rng: np.random.Generator, h: int = H, w: int = W) -> tuple[np.ndarray, np.ndarray]:
    """A crude street frame: sky (10) / building (2) / road (0) bands with a car (13) box; RGB + train ids."""
    target = np.zeros((h, w), np.uint8)
    horizon = int(rng.integers(h // 3, h // 2))
    target[: horizon // 2] = 10
    target[horizon // 2: horizon] = 2
    y, x = int(rng.integers(horizon, h - 8)), int(rng.integers(0, w - 16))
    target[y:y + 8, x:x + 16] = 13
    target[-2:] = 255                                          # void rows (ego vehicle)
    colours = {0: (80, 80, 80), 2: (150, 100, 80), 10: (120, 170, 230), 13: (30, 30, 140), 255: (0, 0, 0)}
    image = np.zeros((h, w, 3), np.uint8)
    for k, c in colours.items():
        image[target == k] = c
    image = np.clip(image.astype(int) + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
    return image, target


def write_cityscapes(root: Path, split: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        city = "aachen" if i % 2 == 0 else "bremen"
        stem = f"{city}_{i:06d}_000019"
        image, target = _scene(rng)
        img_dir, gt_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(img_dir / f"{stem}_leftImg8bit.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(gt_dir / f"{stem}_gtFine_labelTrainIds.png"), target)


def write_coco(root: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    (root / "train2017").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "ood_seg_train2017").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        mask = np.zeros((40, 40), np.uint8)
        cv2.circle(mask, (20, 20), int(rng.integers(6, 14)), 254, -1)
        cv2.imwrite(str(root / "train2017" / f"{i:012d}.jpg"), image)
        cv2.imwrite(str(root / "annotations" / "ood_seg_train2017" / f"{i:012d}.png"), mask)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a 2-core machine shared with other jobs, two threads spin-wait each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    write_cityscapes(root / "cityscapes", "train", 12, seed=1)
    write_cityscapes(root / "cityscapes", "val", 3, seed=2)
    write_coco(root / "coco", 6, seed=3)
    torch.manual_seed(0)
    model = build_model("espnetv2", s=0.5)
    inlier = save_checkpoint(model, root / "inlier.pt", note="random init, test only")
    return {"root": root, "cityscapes": root / "cityscapes", "coco": root / "coco", "inlier": inlier}


def tiny_config(epochs: int = 2, steps: int = 2) -> Config:
    cfg = Config()
    cfg.train.epochs = epochs
    cfg.train.batch_size = 2
    cfg.train.lr = 1e-3
    cfg.train.steps_per_epoch = steps
    cfg.train.num_workers = 0
    cfg.train.log_every = 1
    cfg.train.device = "cpu"
    cfg.anomalymix.crop_size = (32, 64)
    cfg.anomalymix.probability = 0.5      # so that the 2-step runs see anomaly pixels
    return cfg


def _final_keys(model: torch.nn.Module) -> set[str]:
    names = {id(m): n for n, m in model.named_modules()}
    prefix = names[id(model.final_block)] + "."
    return {k for k in model.state_dict() if k.startswith(prefix)}


def test_finetune_trains_only_the_final_block(tiny_data, tmp_path):
    out = tmp_path / "ft"
    final = finetune(tiny_config(), model_path=str(tiny_data["inlier"]), cityscapes=tiny_data["cityscapes"],
                     coco=tiny_data["coco"], out=out, progress=False)
    assert final == out / "model.pt"
    before = load_model(tiny_data["inlier"])
    after = load_model(final)
    assert after.has_abstention and not before.has_abstention
    final_keys = _final_keys(after)
    assert final_keys, "the model names no final block"
    sb, sa = before.state_dict(), after.state_dict()
    frozen_changed = [k for k in sa if k not in final_keys and not torch.equal(sa[k], sb[k])]
    assert frozen_changed == [], f"frozen tensors changed (BatchNorm stats included): {frozen_changed[:5]}"
    weights = [k for k in final_keys if k.endswith("weight") and "running" not in k]
    assert any(not torch.equal(sa[k], sb[k]) for k in weights), "the final block did not train"
    # Logs: per-step and per-epoch CSV, JSON with finite losses, the loss curve.
    log = json.loads((out / "finetune_log.json").read_text())
    assert len(log["epochs"]) == 2 and len(log["steps"]) == 4
    assert all(math.isfinite(r["total"]) for r in log["steps"])
    assert sum(r["mixed_fraction"] for r in log["epochs"]) > 0, "no AnomalyMix item reached the loss"
    for name in ("finetune_steps.csv", "finetune_epochs.csv", "loss_curve.png", "config.yaml", "last.pt"):
        assert (out / name).is_file(), name
    # The poly schedule ran to zero over the 4 steps of the run.
    assert log["epochs"][-1]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_finetune_trainable_patterns_train_exactly_those_modules(tiny_data, tmp_path):
    cfg = tiny_config(epochs=1, steps=2)
    cfg.train.trainable = ("bu_dec_l3", "bu_dec_l4", "bu_br_*")
    final = finetune(cfg, model_path=str(tiny_data["inlier"]), cityscapes=tiny_data["cityscapes"],
                     coco=tiny_data["coco"], out=tmp_path / "ft", progress=False)
    sb, sa = load_model(tiny_data["inlier"]).state_dict(), load_model(final).state_dict()
    chosen = ("bu_dec_l3.", "bu_dec_l4.", "bu_br_l2.", "bu_br_l3.", "bu_br_l4.")
    changed = {k for k in sa if not torch.equal(sa[k], sb[k])}
    assert not {k for k in changed if not k.startswith(chosen)}, "a module outside the patterns changed"
    for block in ("bu_dec_l3.", "bu_br_l3."):
        assert any(k.startswith(block) and k.endswith("weight") for k in changed), f"{block} did not train"
    # The chosen blocks' own BatchNorm trains (running stats move); the frozen ones' stay put.
    assert any(k.startswith("bu_dec_l3.") and k.endswith("running_mean") for k in changed)
    with pytest.raises(ValueError, match="matches no module"):
        freeze_all_but_final(build_model("espnetv2", s=0.5), ["decoder_*"])


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_data, tmp_path):
    cfg = tiny_config(epochs=2, steps=2)
    full = finetune(cfg, model_path=str(tiny_data["inlier"]), cityscapes=tiny_data["cityscapes"],
                    coco=tiny_data["coco"], out=tmp_path / "full", progress=False)
    # Resume a fresh run from the epoch-1 state of the first one.
    resumed = finetune(cfg, model_path=None, cityscapes=tiny_data["cityscapes"], coco=tiny_data["coco"],
                       out=tmp_path / "resumed", resume=str(tmp_path / "full" / "epoch_001.pt"), progress=False)
    a, b = load_model(full).state_dict(), load_model(resumed).state_dict()
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert diff == [], f"resumed run differs in {diff[:5]}"
    # ... and it really resumed (one epoch run, history carried over), not retrained from scratch.
    log = json.loads((tmp_path / "resumed" / "finetune_log.json").read_text())
    assert [r["epoch"] for r in log["epochs"]] == [1.0, 2.0]
    first = json.loads((tmp_path / "full" / "finetune_log.json").read_text())
    assert log["epochs"][0] == first["epochs"][0]


def test_resume_rejects_a_model_only_checkpoint(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="without training state"):
        finetune(tiny_config(), model_path=None, cityscapes=tiny_data["cityscapes"], coco=tiny_data["coco"],
                 out=tmp_path / "x", resume=str(tiny_data["inlier"]), progress=False)


def test_pretrain_from_scratch(tiny_data, tmp_path):
    cfg = Config()
    pc = cfg.pretrain
    pc.arch_kwargs = {"s": 0.5}
    pc.epochs, pc.batch_size, pc.steps_per_epoch, pc.num_workers, pc.device = 2, 2, 2, 0, "cpu"
    pc.crop_size = (32, 64)
    torch.manual_seed(0)
    init = build_model("espnetv2", s=0.5).state_dict()
    final = pretrain(cfg, cityscapes=tiny_data["cityscapes"], out=tmp_path / "pt", progress=False)
    model = load_model(final)
    assert model.arch == "espnetv2" and model.arch_kwargs["s"] == 0.5 and not model.has_abstention
    state = model.state_dict()
    convs = [k for k in state if k.endswith("weight") and state[k].dim() == 4]
    changed = sum(not torch.equal(state[k], init[k]) for k in convs)
    assert changed == len(convs), "pretraining must train the whole network"
    log = json.loads((tmp_path / "pt" / "train_log.json").read_text())
    assert len(log["epochs"]) == 2 and all(math.isfinite(r["ce"]) for r in log["epochs"])
    assert 0.0 <= log["epochs"][-1]["pixel_acc"] <= 1.0


@pytest.mark.slow
def test_two_process_gloo_run_keeps_replicas_identical(tiny_data, tmp_path):
    """A real torchrun launch: 2 CPU processes, gloo, DistributedSampler, DDP gradient averaging."""
    out = tmp_path / "ddp"
    # --standalone: torchrun picks a free port itself (no race with other tests for a fixed port).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pebal_ros.cli", "finetune", "--model", str(tiny_data["inlier"]),
           "--cityscapes", str(tiny_data["cityscapes"]), "--coco", str(tiny_data["coco"]), "--out", str(out),
           "--epochs", "1", "--batch-size", "2", "--steps-per-epoch", "2", "--crop-size", "32", "64",
           "--num-workers", "0", "--device", "cpu", "--lr", "1e-3", "--no-progress",
           "--set", "anomalymix.probability=0.5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Only rank 0 prints the summary lines.
    assert proc.stdout.count("epoch 1/1 |") == 1, proc.stdout
    assert "2 process(es)" in proc.stdout
    log = json.loads((out / "finetune_log.json").read_text())
    assert log["info"]["world_size"] == 2
    assert log["info"]["replica_max_abs_diff"] == 0.0
    assert all(math.isfinite(r["total"]) for r in log["steps"])
    before, after = load_model(tiny_data["inlier"]).state_dict(), load_model(out / "model.pt").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("bu_dec_l4") and
               k.endswith("weight"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_finetune_on_cuda_trains_only_the_final_block(tiny_data, tmp_path):
    cfg = tiny_config()
    cfg.train.device = "cuda"
    final = finetune(cfg, model_path=str(tiny_data["inlier"]), cityscapes=tiny_data["cityscapes"],
                     coco=tiny_data["coco"], out=tmp_path / "cuda", progress=False)
    before, after = load_model(tiny_data["inlier"]), load_model(final)
    final_keys = _final_keys(after)
    sb, sa = before.state_dict(), after.state_dict()
    assert [k for k in sa if k not in final_keys and not torch.equal(sa[k], sb[k])] == []
    assert any(not torch.equal(sa[k], sb[k]) for k in final_keys if k.endswith("weight"))
    log = json.loads((tmp_path / "cuda" / "finetune_log.json").read_text())
    assert log["info"]["device"].startswith("cuda") and all(math.isfinite(r["total"]) for r in log["steps"])
