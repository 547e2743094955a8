"""AnomalyMix pasting, the training transforms and PebalTrainSet's determinism."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pebal_ros.config import AnomalyMixConfig, InferenceConfig, from_dict
from pebal_ros.data import PebalTrainSet, anomaly_mix, cut_object, paste_object
from pebal_ros.data.transforms import crop_offset, crop_pad, draw_scale, normalize, rescale, train_transform


def _outlier(h: int, w: int, seed: int, box: tuple[int, int, int, int] | None = None) -> dict:
    """Random-texture image with a disc-shaped object (254) inside ``box`` = (y0, y1, x0, x1)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    tgt = np.zeros((h, w), np.uint8)
    if box is not None:
        y0, y1, x0, x1 = box
        yy, xx = np.mgrid[y0:y1, x0:x1]
        cy, cx, r = (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2, min(y1 - y0, x1 - x0) / 2
        tgt[y0:y1, x0:x1][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 254
    return {"image": img, "target": tgt, "name": f"o{seed}"}


def _frame(h: int, w: int, seed: int) -> dict:
    rng = np.random.default_rng(100 + seed)
    tgt = rng.integers(0, 19, (h, w), dtype=np.uint8)
    tgt[:3] = 255
    return {"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "target": tgt, "name": f"f{seed}"}


def test_cut_object_bounding_box() -> None:
    o = _outlier(50, 60, 0, (10, 31, 20, 45))
    patch, mask = cut_object(o["image"], o["target"])
    ys, xs = np.nonzero(o["target"] == 254)
    assert mask.shape == (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    np.testing.assert_array_equal(patch, o["image"][ys.min():ys.max() + 1, xs.min():xs.max() + 1])
    assert mask.sum() == len(ys)
    assert cut_object(o["image"], np.zeros((50, 60), np.uint8)) is None


def test_paste_lands_inside_frame_and_labels_exactly_the_object() -> None:
    f = _frame(40, 70, 0)
    o = _outlier(60, 50, 1, (5, 25, 3, 20))
    patch, mask = cut_object(o["image"], o["target"])
    h, w = mask.shape
    positions = set()
    for s in range(40):
        img, tgt, (y, x) = paste_object(f["image"], f["target"], patch, mask, np.random.default_rng(s))
        assert 0 <= y <= 40 - h and 0 <= x <= 70 - w
        positions.add((y, x))
        expected_mask = np.zeros((40, 70), bool)
        expected_mask[y:y + h, x:x + w] = mask
        np.testing.assert_array_equal(tgt == 254, expected_mask)
        np.testing.assert_array_equal(tgt[~expected_mask], f["target"][~expected_mask])
        np.testing.assert_array_equal(img[~expected_mask], f["image"][~expected_mask])
        np.testing.assert_array_equal(img[expected_mask], patch[mask])
    assert len(positions) > 30                       # positions vary with the generator
    assert (f["target"] != 254).all()                # inputs untouched


def test_paste_object_larger_than_frame_is_cut_to_fit() -> None:
    f = _frame(20, 30, 1)
    patch = np.full((50, 40, 3), 7, np.uint8)
    mask = np.ones((50, 40), bool)
    img, tgt, (y, x) = paste_object(f["image"], f["target"], patch, mask, np.random.default_rng(0))
    assert (y, x) == (0, 0) and (tgt == 254).all() and (img == 7).all()


def test_paste_positions_cover_the_frame_uniformly() -> None:
    f = _frame(12, 12, 2)
    patch, mask = np.zeros((3, 3, 3), np.uint8), np.ones((3, 3), bool)
    rng = np.random.default_rng(0)
    ys = [paste_object(f["image"], f["target"], patch, mask, rng)[2][0] for _ in range(2000)]
    counts = np.bincount(ys, minlength=10)
    assert counts.size == 10 and counts.min() > 140      # 10 positions, ~200 each, last one included


def test_anomaly_mix_without_object_returns_frame_unchanged() -> None:
    f = _frame(20, 20, 0)
    o = _outlier(10, 10, 0, None)
    img, tgt, pos = anomaly_mix(f["image"], f["target"], o["image"], o["target"], np.random.default_rng(0))
    assert pos is None and img is f["image"] and tgt is f["target"]


def test_extras_change_the_result_only_when_enabled() -> None:
    f = _frame(80, 120, 0)
    o = _outlier(60, 60, 3, (10, 50, 8, 52))
    base = anomaly_mix(f["image"], f["target"], o["image"], o["target"], np.random.default_rng(5))
    # defaults == the plain cut + paste with the same generator stream
    patch, mask = cut_object(o["image"], o["target"])
    plain = paste_object(f["image"], f["target"], patch, mask, np.random.default_rng(5))
    np.testing.assert_array_equal(base[0], plain[0])
    np.testing.assert_array_equal(base[1], plain[1])
    assert base[2] == plain[2]
    n_obj = (o["target"] == 254).sum()
    for extra in ({"object_scale_range": (0.5, 0.6)}, {"object_rotation_deg": 45.0}, {"seam_blur_sigma": 2.0}):
        cfg = dataclasses.replace(AnomalyMixConfig(), **extra)
        img, tgt, _ = anomaly_mix(f["image"], f["target"], o["image"], o["target"], np.random.default_rng(5), cfg)
        assert not np.array_equal(img, base[0]), extra
        if "object_scale_range" in extra:
            assert 0.2 * n_obj < (tgt == 254).sum() < 0.4 * n_obj      # area ~ s^2 with s in [0.5, 0.6]
        elif "object_rotation_deg" in extra:
            assert abs(int((tgt == 254).sum()) - int(n_obj)) < 0.1 * n_obj  # a disc keeps its area
        else:
            # feathering changes pixels only inside the object, labels stay the hard mask
            np.testing.assert_array_equal(tgt, base[1])
            changed = np.any(img != base[0], axis=2)
            assert changed.any() and not changed[tgt != 254].any()


# --------------------------------------------------------------------------- transforms
def test_rescale_nearest_labels_and_official_sizes() -> None:
    img = np.random.default_rng(0).integers(0, 256, (101, 57, 3), dtype=np.uint8)
    lab = np.random.default_rng(1).choice(np.array([0, 5, 254, 255], np.uint8), (101, 57))
    for s in (0.5, 0.75, 1.75, 2.0):
        i2, l2 = rescale(img, lab, s)
        assert l2.shape == (int(101 * s), int(57 * s)) and i2.shape[:2] == l2.shape
        assert set(np.unique(l2)) <= {0, 5, 254, 255}        # no interpolated label values
    i2, l2 = rescale(img, lab, 2.0)
    np.testing.assert_array_equal(l2[::2, ::2], lab)       # exact x2 nearest = pixel repetition


def test_crop_pad_pads_evenly_with_void_and_zero() -> None:
    img = np.ones((4, 6, 3), np.float32)
    lab = np.full((4, 6), 3, np.uint8)
    i2, l2 = crop_pad(img, lab, (0, 0), (9, 10))
    assert i2.shape == (9, 10, 3) and l2.shape == (9, 10)
    # pad 5 rows: 2 top, 3 bottom; pad 4 cols: 2 left, 2 right (official pad_image_to_shape)
    assert (l2[2:6, 2:8] == 3).all() and (l2 == 255).sum() == 90 - 24
    assert (i2[2:6, 2:8] == 1).all() and (i2 == 0).sum() == 3 * (90 - 24)


def test_crop_offsets_reach_every_position() -> None:
    rng = np.random.default_rng(0)
    offs = {crop_offset((10, 7), (6, 7), rng) for _ in range(300)}
    assert offs == {(y, 0) for y in range(5)}
    assert crop_offset((5, 5), (9, 9), rng) == (0, 0)


def test_normalize_matches_independent_torch_computation() -> None:
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    inf = InferenceConfig()
    ref = (torch.from_numpy(img).double() / 255 - torch.tensor(inf.mean, dtype=torch.double)) / torch.tensor(inf.std, dtype=torch.double)
    np.testing.assert_allclose(normalize(img, inf.mean, inf.std), ref.numpy(), atol=1e-5)


def test_draw_scale_official_choices_and_uniform() -> None:
    rng = np.random.default_rng(0)
    choices = AnomalyMixConfig().scale_choices
    got = {draw_scale(rng, choices) for _ in range(300)}
    assert got == set(choices)
    u = [draw_scale(rng, None, (0.5, 2.0)) for _ in range(300)]
    assert min(u) >= 0.5 and max(u) <= 2.0 and len(set(u)) == 300


def test_train_transform_flip_probability() -> None:
    img = np.zeros((4, 6, 3), np.uint8)
    lab = np.zeros((4, 6), np.uint8)
    lab[:, 0] = 1
    rng = np.random.default_rng(0)
    flips = [train_transform(img, lab, rng, crop=(4, 6), mean=(0, 0, 0), std=(1, 1, 1), scale_choices=(1.0,))[1][0, -1] == 1
             for _ in range(1000)]
    assert 0.75 < np.mean(flips) < 0.85                       # official: flip when random() >= 0.2


# --------------------------------------------------------------------------- PebalTrainSet
def _sets(n_frames: int = 20, n_out: int = 6, size=(60, 80)) -> tuple[list, list]:
    frames = [_frame(*size, i) for i in range(n_frames)]
    outs = [_outlier(40, 40, i, (4, 20, 6, 24)) for i in range(n_out)]
    return frames, outs


def _all(ds: PebalTrainSet) -> list[dict]:
    return [ds[i] for i in range(len(ds))]


def test_trainset_layout_like_official() -> None:
    frames, outs = _sets()
    ds = PebalTrainSet(frames, outs, AnomalyMixConfig(crop_size=(64, 64)), seed=0)
    assert len(ds) == 20 + 2                                 # N frames + int(0.1 N) outliers
    assert len(set(ds.outlier_subset.tolist())) == 2
    for i in range(len(ds)):
        m = ds.mixed_frame(i)
        if i < 20:
            assert m["position"] is None and m["name"] == f"f{i}"
        else:
            assert m["position"] is not None and "+o" in m["name"]
            assert (m["target"] == 254).any()
    items = _all(ds)
    for it in items:
        assert it["image"].dtype == torch.float32 and it["image"].shape == (3, 64, 64)
        assert it["target"].dtype == torch.int64 and it["target"].shape == (64, 64)
        assert it["mixed"] == bool((it["target"] == 254).any())
        assert set(it["target"].unique().tolist()) <= set(range(19)) | {254, 255}
    assert not any(it["mixed"] for it in items[:20])
    off = PebalTrainSet(frames, outs, AnomalyMixConfig(enabled=False, crop_size=(64, 64)))
    assert len(off) == 20 and not any(it["mixed"] for it in _all(off))


def test_trainset_probability_mixes_ordinary_frames() -> None:
    frames, outs = _sets()
    ds = PebalTrainSet(frames, outs, AnomalyMixConfig(probability=1.0, crop_size=(60, 80), scale_choices=(1.0,)))
    assert all(ds.mixed_frame(i)["position"] is not None for i in range(len(ds)))
    assert all(it["mixed"] for it in _all(ds))   # crop = frame size at scale 1: the object always survives


def test_mixed_flag_follows_the_crop() -> None:
    """A pasted object can be cropped away: then the item is not mixed."""
    frames, outs = _sets(size=(120, 160))
    cfg = AnomalyMixConfig(crop_size=(30, 30), scale_choices=(1.0,))
    ds = PebalTrainSet(frames, outs, cfg, seed=3)
    lost = kept = 0
    for epoch in range(15):
        ds.set_epoch(epoch)
        for i in range(20, len(ds)):
            it = ds[i]
            assert it["mixed"] == bool((it["target"] == 254).any())
            lost += not it["mixed"]
            kept += it["mixed"]
    assert lost > 0 and kept > 0


def test_trainset_normalisation_and_target_are_exact_without_augmentation() -> None:
    frames, outs = _sets()
    cfg = AnomalyMixConfig(crop_size=(60, 80), scale_choices=(1.0,), flip=False, probability=1.0)
    ds = PebalTrainSet(frames, outs, cfg, seed=7)
    m = ds.mixed_frame(4)
    it = ds[4]
    inf = InferenceConfig()
    ref = (torch.from_numpy(m["image"]).permute(2, 0, 1).double() / 255
           - torch.tensor(inf.mean, dtype=torch.double)[:, None, None]) / torch.tensor(inf.std, dtype=torch.double)[:, None, None]
    torch.testing.assert_close(it["image"].double(), ref, atol=1e-5, rtol=0)
    assert torch.equal(it["target"], torch.from_numpy(m["target"]).long())


def test_trainset_is_deterministic_per_seed_epoch_index() -> None:
    frames, outs = _sets()
    cfg = AnomalyMixConfig(crop_size=(48, 48), probability=0.5)
    a = PebalTrainSet(frames, outs, cfg, seed=11)
    b = PebalTrainSet(frames, outs, cfg, seed=11)
    c = PebalTrainSet(frames, outs, cfg, seed=12)
    ia, ib, ic = _all(a), _all(b)[::-1][::-1], _all(c)
    # any order of access, fresh instance: identical
    for i in reversed(range(len(a))):
        x = b[i]
        assert torch.equal(ia[i]["image"], x["image"]) and torch.equal(ia[i]["target"], x["target"])
        assert ia[i]["name"] == ib[i]["name"]
    assert any(not torch.equal(p["image"], q["image"]) for p, q in zip(ia, ic))
    a.set_epoch(1)
    e1 = _all(a)
    assert any(not torch.equal(p["image"], q["image"]) for p, q in zip(ia, e1))
    a.set_epoch(0)
    assert all(torch.equal(p["image"], q["image"]) for p, q in zip(ia, _all(a)))


def test_trainset_works_in_dataloader_workers() -> None:
    frames, outs = _sets(10, 3)
    ds = PebalTrainSet(frames, outs, AnomalyMixConfig(crop_size=(32, 32)), seed=1)
    ref = torch.stack([ds[i]["image"] for i in range(len(ds))])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    got = torch.cat([b["image"] for b in loader])
    assert torch.equal(ref, got)


def test_config_yaml_lists_are_accepted() -> None:
    cfg = from_dict({"anomalymix": {"crop_size": [32, 48], "scale_choices": [1.0], "object_scale_range": [0.5, 1.0]}})
    frames, outs = _sets(10, 3)
    ds = PebalTrainSet(frames, outs, cfg.anomalymix)
    assert ds[len(ds) - 1]["image"].shape == (3, 32, 48)


def test_empty_inliers_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        PebalTrainSet([], [])
