"""Feature cache (frozen encoder precomputed) and PEBAL fine-tuning from it, on tiny generated data.

The central claims: training from the cache computes what a full forward pass would (exactly with a
float32 cache, to float16 rounding otherwise), the build and the training resume exactly, and the
cache refuses to be used with another model or geometry.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pebal_ros.config import Config
from pebal_ros.models import build_model, load_model, save_checkpoint
from pebal_ros.road.feature_cache import FeatureCache, build_cache
from pebal_ros.road.finetune import cached_forward, finetune_cached, to_input

SIZE = (64, 128)


def _camvid(root: Path, n: int = 5) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir(parents=True)
        for i in range(n):
            lab = np.full((72, 96), 1, np.uint8)          # Building (ambiguous: building / wall)
            lab[:20] = 0                                  # Sky
            lab[40:] = 3                                  # Road
            lab[40:, :15] = 4                             # Pavement
            lab[-3:] = 11                                 # unlabelled
            img = np.stack([lab * 20 + 30, lab * 7 + 60, 200 - lab * 15], -1).astype(np.uint8)
            img = np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / split / f"f{i:03d}.png"), img)
            cv2.imwrite(str(root / f"{split}annot" / f"f{i:03d}.png"), lab)


def _bank(root: Path) -> None:
    (root / "objects").mkdir(parents=True)
    entries = []
    for k, colour in enumerate([(0, 0, 255), (0, 255, 255)]):
        bgra = np.zeros((30, 20, 4), np.uint8)
        cv2.ellipse(bgra, (10, 15), (9, 14), 0, 0, 360, (*colour, 255), -1)
        cv2.imwrite(str(root / "objects" / f"o{k}.png"), bgra)
        entries.append({"id": f"o{k}", "file": f"objects/o{k}.png", "kind": "blob", "split": "train",
                        "source": f"o{k}.png"})
    (root / "manifest.json").write_text(json.dumps({"objects": entries}))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("road")
    _camvid(root / "camvid")
    _bank(root / "bank")
    torch.manual_seed(0)
    model = build_model("espnetv2", s=0.5)
    for m in model.modules():                       # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    save_checkpoint(model, root / "net.pt")
    return root


def _cfg(dtype: str = "float32", **train) -> Config:
    cfg = Config()
    cfg.arch = "espnetv2"
    cfg.road.input_size = SIZE
    cfg.road.mixes_per_frame = 2
    cfg.road.objects = "real"
    cfg.road.feature_dtype = dtype
    cfg.train.batch_size = 2
    cfg.train.epochs = 2
    cfg.train.lr = 1e-3
    cfg.train.trainable = ("bu_dec_*", "merge_enc_dec_*", "bu_br_*")
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def _build(setup, out: Path, cfg: Config) -> FeatureCache:
    build_cache(cfg, model_path=str(setup / "net.pt"), camvid_root=setup / "camvid", split="train", extra=None,
                bank=setup / "bank", out=out, device=torch.device("cpu"), progress=False, batch=3)
    return FeatureCache(out)


def test_cached_forward_equals_the_full_network(setup, tmp_path):
    cfg = _cfg("float32")
    cache = _build(setup, tmp_path / "c32", cfg)
    assert len(cache) == 10 and cache.arrays["l3"].dtype == np.float32
    model = load_model(setup / "net.pt").eval()
    batch = cache.batch([3, 0, 7])
    with torch.no_grad():
        full = model(to_input(batch["images"], cfg.inference.mean, cfg.inference.std, torch.device("cpu")))
        cached = cached_forward(model, batch, cfg, torch.device("cpu"))
    # float32 cache: the same computation (batched differently, so equal to float32 rounding)
    assert torch.allclose(full, cached, rtol=0, atol=1e-5 * full.abs().max().item())
    # float16 storage: only the rounding of levels 3-4 differs
    cache16 = _build(setup, tmp_path / "c16", _cfg("float16"))
    np.testing.assert_array_equal(cache16.batch([3])["images"], cache.batch([3])["images"])
    with torch.no_grad():
        half = cached_forward(model, cache16.batch([3, 0, 7]), cfg, torch.device("cpu"))
    diff = (half - full).abs().max().item()
    assert 0 < diff < 0.05 * full.abs().max().item()


def test_targets_objects_and_resolved_groups(setup, tmp_path):
    cfg = _cfg()
    cache = _build(setup, tmp_path / "c", cfg)
    items = json.loads((tmp_path / "c" / "items.json").read_text())
    assert [it["name"] for it in items[:5]] == [f"f{i:03d}#0" for i in range(5)]
    t = cache.batch(range(10))["targets"]
    values = set(np.unique(t).tolist())
    # road, sidewalk, sky; Building resolved to building or wall; void; objects where placed
    assert values <= {0, 1, 2, 3, 10, 254, 255} and {0, 10} <= values and values & {2, 3}
    for it, target in zip(items, t):
        assert it["anomaly_pixels"] == int((target == 254).sum())
        if it["anomaly_pixels"]:
            assert it["objects"]


def test_build_resumes_and_refuses_other_settings(setup, tmp_path):
    cfg = _cfg()
    full = _build(setup, tmp_path / "a", cfg).batch(range(10))
    # an interrupted build: the count says 3 items, the later ones were never written
    _build(setup, tmp_path / "b", cfg)
    meta = json.loads((tmp_path / "b" / "cache.json").read_text())
    meta["done"] = 3
    (tmp_path / "b" / "cache.json").write_text(json.dumps(meta))
    arr = np.load(tmp_path / "b" / "l4.npy", mmap_mode="r+")
    arr[3:] = 0
    arr.flush()
    with pytest.raises(ValueError, match="only 3 of 10 items built"):
        FeatureCache(tmp_path / "b")
    resumed = _build(setup, tmp_path / "b", cfg).batch(range(10))
    for k in full:
        np.testing.assert_array_equal(full[k], resumed[k])
    other = _cfg()
    other.road.max_objects = 1
    with pytest.raises(SystemExit, match="other settings"):
        _build(setup, tmp_path / "b", other)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_finetune_trains_only_the_head_deterministically(setup, tmp_path):
    cfg = _cfg("float16")
    _build(setup, tmp_path / "c", cfg)
    a = finetune_cached(cfg, model_path=str(setup / "net.pt"), cache=tmp_path / "c", out=tmp_path / "a",
                        checkpoint_steps=2, progress=False)
    wa, w0 = _weights(a), load_model(setup / "net.pt").state_dict()
    assert torch.equal(wa["base_net.level4.0.proj_1x1.conv.weight"], w0["base_net.level4.0.proj_1x1.conv.weight"])
    assert torch.equal(wa["base_net.level2_0.eesp.proj_1x1.bn.running_mean"],
                       w0["base_net.level2_0.eesp.proj_1x1.bn.running_mean"])    # frozen BN stays put
    key = "bu_dec_l1.projection_layer.cbr.0.weight"
    assert not torch.equal(wa[key], w0[key])
    log = json.loads((tmp_path / "a" / "finetune_log.json").read_text())
    assert len(log["epochs"]) == 2 and all(np.isfinite(e["total"]) for e in log["epochs"])
    assert (tmp_path / "a" / "model_epoch_001.pt").is_file() and (tmp_path / "a" / "model_epoch_002.pt").is_file()
    b = finetune_cached(cfg, model_path=str(setup / "net.pt"), cache=tmp_path / "c", out=tmp_path / "b",
                        checkpoint_steps=2, progress=False)
    wb = _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_finetune_resumes_mid_epoch_exactly(setup, tmp_path, monkeypatch):
    from pebal_ros import losses
    cfg = _cfg("float16")
    _build(setup, tmp_path / "c", cfg)
    ref = finetune_cached(cfg, model_path=str(setup / "net.pt"), cache=tmp_path / "c", out=tmp_path / "ref",
                          checkpoint_steps=2, progress=False)
    calls = {"n": 0}
    original = losses.pebal_loss

    def killed_at_step_8(logits, target, cfg_loss):
        calls["n"] += 1
        if calls["n"] == 8:                         # epoch 2, its third step (5 steps per epoch)
            raise KeyboardInterrupt
        return original(logits, target, cfg_loss)

    monkeypatch.setattr(losses, "pebal_loss", killed_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        finetune_cached(cfg, model_path=str(setup / "net.pt"), cache=tmp_path / "c", out=tmp_path / "k",
                        checkpoint_steps=2, progress=False)
    monkeypatch.undo()
    st = torch.load(tmp_path / "k" / "last.pt", weights_only=True)["train_state"]
    assert (st["next_epoch"], st["next_step"]) == (1, 2)
    out = finetune_cached(cfg, model_path=None, cache=tmp_path / "c", out=tmp_path / "k", resume="auto",
                          checkpoint_steps=2, progress=False)
    wr, wk = _weights(ref), _weights(out)
    assert all(torch.equal(wr[k], wk[k]) for k in wr)


def test_cache_refuses_another_model_or_size(setup, tmp_path):
    cfg = _cfg()
    _build(setup, tmp_path / "c", cfg)
    other = build_model("espnetv2", s=0.5)
    save_checkpoint(other, tmp_path / "other.pt")
    with pytest.raises(SystemExit, match="built with another model"):
        finetune_cached(cfg, model_path=str(tmp_path / "other.pt"), cache=tmp_path / "c", out=tmp_path / "o",
                        progress=False)
    cfg2 = _cfg()
    cfg2.road.input_size = (96, 128)
    with pytest.raises(SystemExit, match="road.input_size"):
        finetune_cached(cfg2, model_path=str(setup / "net.pt"), cache=tmp_path / "c", out=tmp_path / "o",
                        progress=False)
