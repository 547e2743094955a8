"""Synthetic data generator: determinism, label consistency, family split, on-disk layout."""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from pebal_ros.cli import build_parser
from pebal_ros.data import synthetic as syn
from pebal_ros.data import synthetic_scene
from pebal_ros.data.synthetic_outliers import TEST_FAMILIES, TRAIN_FAMILIES, render_outlier
from pebal_ros.data.synthetic_scene import (
    add_anomalies, anomaly_label, drive_sequence, render, render_anomaly_frame, render_scene, render_scene_ids,
    sample_scene)
from pebal_ros.labels import ID_TO_TRAIN_ID, LABELS

SIZE = (192, 96)
VALID_TRAIN_IDS = set(range(19)) | {255}
CITYSCAPES_IDS = {lab.id for lab in LABELS if lab.id >= 0}


def test_render_scene_is_deterministic_and_labelled():
    a_img, a_lab = render_scene(np.random.default_rng(7), SIZE)
    b_img, b_lab = render_scene(np.random.default_rng(7), SIZE)
    c_img, _ = render_scene(np.random.default_rng(8), SIZE)
    assert a_img.shape == (96, 192, 3) and a_img.dtype == np.uint8
    assert a_lab.shape == (96, 192) and a_lab.dtype == np.uint8
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)


def test_scene_labels_are_cityscapes_ids_and_cover_the_classes():
    seen_train = set()
    for seed in range(12):
        img, ids = render_scene_ids(np.random.default_rng(seed), SIZE)
        assert set(np.unique(ids).tolist()) <= CITYSCAPES_IDS, "only real Cityscapes label ids"
        train = ID_TO_TRAIN_ID[ids]
        assert set(np.unique(train).tolist()) <= VALID_TRAIN_IDS
        # road at the bottom centre, sky or something tall at the top: a street scene, not noise
        assert (train == 0).mean() > 0.1
        seen_train |= set(np.unique(train).tolist())
    # the classes a small network must learn all occur in a dozen frames
    for cls in (0, 1, 2, 5, 7, 8, 10, 11, 13):
        assert cls in seen_train, f"train id {cls} never rendered"


def test_families_are_disjoint_and_render():
    assert not set(TRAIN_FAMILIES) & set(TEST_FAMILIES)
    for fam in TRAIN_FAMILIES + TEST_FAMILIES:
        rgb, mask = render_outlier(np.random.default_rng(3), fam, (40, 30))
        rgb2, mask2 = render_outlier(np.random.default_rng(3), fam, (40, 30))
        assert rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8
        assert mask.shape == (30, 40) and mask.dtype == bool
        assert 0.1 < mask.mean() < 0.98, fam
        assert not rgb[~mask].any(), "pixels outside the object are black"
        np.testing.assert_array_equal(rgb, rgb2)
        np.testing.assert_array_equal(mask, mask2)
    with pytest.raises(ValueError, match="unknown outlier family"):
        render_outlier(np.random.default_rng(0), "unicorn", 32)
    with pytest.raises(ValueError, match="at least 2x2"):
        render_outlier(np.random.default_rng(0), "blob", (1, 5))


def test_anomaly_label_is_where_the_object_was_drawn():
    """Render the same scene with and without its planted objects: the labelled pixels are the
    pixels the objects changed, and the objects changed nothing far from them."""
    rng = np.random.default_rng(11)
    checked = 0
    for _ in range(6):
        scene = sample_scene(rng)
        scene.noise, scene.blur = 0.0, 0.0
        anomalies = add_anomalies(rng, scene, 2, (5.0, 25.0), size_range=(0.6, 1.2))
        clean = copy.deepcopy(scene)
        clean.objects = [o for o in scene.objects if o.kind != "anomaly"]
        img_a, ids_a = render(scene, SIZE, rng=np.random.default_rng(0))
        img_c, ids_c = render(clean, SIZE, rng=np.random.default_rng(0))
        lab = anomaly_label(ids_a)
        anom = lab == 1
        if anom.sum() < 10:
            continue
        checked += 1
        assert {a.p["family"] for a in anomalies} <= set(TEST_FAMILIES)
        changed = np.abs(img_a.astype(int) - img_c.astype(int)).max(-1) > 2
        assert changed[anom].mean() > 0.6
        # Every changed pixel and every labelled pixel lies in an anomaly's projected footprint
        # (its box on the road from position and size, grown a little for soft edge and shadow).
        view = synthetic_scene._view(scene, SIZE[0], SIZE[1], 0.0)
        boxes = np.zeros_like(anom)
        for a in anomalies:
            u, v = view.proj(a.x, 0.0, a.z)
            hpx = a.p["h"] * view.f / a.z
            wpx = hpx * a.p["aspect"]
            g = max(3.0, 0.25 * max(hpx, wpx))
            y0, y1 = int(v - hpx - g), int(np.ceil(v + g))
            x0, x1 = int(u - wpx / 2 - g), int(np.ceil(u + wpx / 2 + g))
            boxes[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = True
        assert not (changed & ~boxes).any()
        assert not (anom & ~boxes).any()
        # outside the objects the label is the clean scene's inlier/void label
        np.testing.assert_array_equal(lab[~anom], anomaly_label(ids_c)[~anom])
    assert checked >= 3


def test_render_anomaly_frame_labels():
    img, lab = render_anomaly_frame(np.random.default_rng(5), SIZE)
    assert img.shape == (96, 192, 3)
    assert set(np.unique(lab).tolist()) <= {0, 1, 255}
    assert (lab == 1).any()
    with pytest.raises(ValueError, match="unknown outlier family"):
        render_anomaly_frame(np.random.default_rng(5), SIZE, families=("dragon",))


def test_drive_sequence_is_coherent_and_anomalies_approach():
    frames = list(drive_sequence(3, 12, SIZE))
    again = list(drive_sequence(3, 12, SIZE))
    assert [f.frame_index for f in frames] == list(range(12))
    for a, b in zip(frames, again):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label, b.label)
    assert all(set(np.unique(f.label).tolist()) <= {0, 1, 255} for f in frames)
    counts = [int((f.label == 1).sum()) for f in frames]
    assert counts[0] > 0 and counts[-1] > counts[0], counts
    # consecutive frames resemble each other far more than frames of another street do
    step = np.mean([np.abs(frames[i].image.astype(int) - frames[i + 1].image).mean() for i in range(11)])
    other = next(drive_sequence(4, 1, SIZE)).image
    assert step < 0.5 * np.abs(frames[0].image.astype(int) - other).mean()


def _cli(argv: list[str]) -> int:
    args = build_parser("make-synthetic").parse_args(["make-synthetic", *argv])
    return args._main(args)


def test_make_synthetic_writes_the_documented_layout(tmp_path: Path):
    argv = ["--train", "3", "--val", "2", "--coco", "4", "--anomaly", "3", "--size", "128x64",
            "--coco-size", "64x48", "--seed", "5"]
    assert _cli(["--out", str(tmp_path / "a"), *argv]) == 0
    root = tmp_path / "a"
    cs = root / "cityscapes"
    for split, n in (("train", 3), ("val", 2)):
        imgs = sorted((cs / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
        assert len(imgs) == n
        for p in imgs:
            city = p.parent.name
            assert city in syn.CITIES[split]
            stem = p.name[: -len("_leftImg8bit.png")]
            c, seq, frame = stem.split("_")
            assert c == city and len(seq) == 6 and len(frame) == 6
            img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            assert img.shape == (64, 128, 3)
            gt = cs / "gtFine" / split / city
            train = cv2.imread(str(gt / f"{stem}_gtFine_labelTrainIds.png"), cv2.IMREAD_UNCHANGED)
            ids = cv2.imread(str(gt / f"{stem}_gtFine_labelIds.png"), cv2.IMREAD_UNCHANGED)
            assert train.shape == ids.shape == (64, 128) and train.dtype == np.uint8
            assert set(np.unique(train).tolist()) <= VALID_TRAIN_IDS
            np.testing.assert_array_equal(ID_TO_TRAIN_ID[ids], train)
    meta = json.loads((root / "synthetic_meta.json").read_text())
    jpgs = sorted((root / "coco_ood" / "train2017").glob("*.jpg"))
    assert [p.stem for p in jpgs] == [f"{i:012d}" for i in range(1, 5)]
    for p in jpgs:
        assert cv2.imread(str(p)).shape == (48, 64, 3)
        m = cv2.imread(str(root / "coco_ood" / "annotations" / "ood_seg_train2017" / f"{p.stem}.png"),
                       cv2.IMREAD_UNCHANGED)
        assert m.shape == (48, 64) and set(np.unique(m).tolist()) <= {0, 254} and (m == 254).any()
        assert set(meta["coco_ood"]["families"][p.stem]) <= set(TRAIN_FAMILIES)
    names = sorted(p.stem for p in (root / "anomaly_test" / "original").glob("*.png"))
    assert names == sorted(p.stem for p in (root / "anomaly_test" / "labels").glob("*.png"))
    assert len(names) == 3
    for n in names:
        lab = cv2.imread(str(root / "anomaly_test" / "labels" / f"{n}.png"), cv2.IMREAD_UNCHANGED)
        assert lab.shape == (64, 128) and set(np.unique(lab).tolist()) <= {0, 1, 255}
        assert (lab == 1).sum() == meta["anomaly_test"]["anomaly_pixels"][n] > 0
    assert meta["test_families"] == list(TEST_FAMILIES)
    # same seed, same bytes, also when written by worker processes
    assert _cli(["--out", str(tmp_path / "b"), "--workers", "2", *argv]) == 0
    for p in sorted(root.rglob("*.png")) + jpgs:
        q = tmp_path / "b" / p.relative_to(root)
        assert p.read_bytes() == q.read_bytes(), p


def test_make_synthetic_refuses_to_mix_with_an_earlier_run(tmp_path: Path, capsys):
    argv = ["--out", str(tmp_path), "--parts", "anomaly_test", "--size", "64x32"]
    assert _cli([*argv, "--anomaly", "3"]) == 0
    assert _cli([*argv, "--anomaly", "2"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert len(list((tmp_path / "anomaly_test" / "labels").glob("*.png"))) == 3
    assert _cli([*argv, "--anomaly", "2", "--overwrite"]) == 0
    assert len(list((tmp_path / "anomaly_test" / "labels").glob("*.png"))) == 2


def test_make_synthetic_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        build_parser("make-synthetic").parse_args(["make-synthetic", "--size", "512by256"])
    assert "width x height" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser("make-synthetic").parse_args(["make-synthetic", "--train", "-3"])
    with pytest.raises(ValueError, match="unknown part"):
        syn.generate(Path("/nonexistent"), parts=["imagenet"])


def test_speed_report():
    """Not a timed assertion (shared CI cores): prints the per-frame render time."""
    rng = np.random.default_rng(0)
    render_scene(rng, (512, 256))
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(5):
        render_scene(rng, (512, 256))
    print(f"\nrender_scene 512x256: {(time.perf_counter() - t0) / 5 * 1000:.1f} ms wall, "
          f"{(time.process_time() - c0) / 5 * 1000:.1f} ms CPU per frame")


def test_written_sets_load_with_the_project_readers(tmp_path: Path):
    """The layouts are the contract with pebal_ros.data's readers (data.md)."""
    data = pytest.importorskip("pebal_ros.data")
    syn.generate(tmp_path, size=(96, 48), n_train=2, n_val=1, n_coco=2, n_anomaly=2, coco_size=(48, 32), seed=1)
    train = data.CityscapesDataset(tmp_path / "cityscapes", "train")
    assert len(train) == 2 and train[0]["image"].shape == (48, 96, 3)
    assert set(np.unique(train[0]["target"]).tolist()) <= VALID_TRAIN_IDS
    assert len(data.CityscapesDataset(tmp_path / "cityscapes", "val")) == 1
    coco = data.CocoOutlierDataset(tmp_path / "coco_ood")
    assert len(coco) == 2 and set(np.unique(coco[0]["target"]).tolist()) <= {0, 254}
    bench = data.load_benchmark("fs_static", tmp_path / "anomaly_test")
    assert len(bench) == 2 and (bench[0]["label"] == 1).any()


def test_road_is_where_the_camera_model_puts_it():
    """With objects and facades removed, the road label is exactly the ground-plane strip
    |X| < road_half, derived here from the pinhole model independently of the renderer's code."""
    for seed in range(8):
        scene = sample_scene(np.random.default_rng(seed))
        scene.objects, scene.layers, scene.hood = [], [], None
        w, h = 160, 80
        _, ids = render(scene, (w, h), rng=np.random.default_rng(0))
        f, cx, yh = scene.f_ratio * w, w / 2 + scene.cx_off * w, scene.horizon * h
        v, u = np.mgrid[0:h, 0:w] + 0.5
        with np.errstate(divide="ignore", invalid="ignore"):
            z = f * scene.cam_h / (v - yh)
        ground = (v > yh) & (z < scene.z_far)
        lateral = (u - cx) * z / f - (scene.c0 + scene.k * z * z)  # distance from the road's centre line
        expected = ground & (np.abs(lateral) < scene.road_half)
        got = ids == 7
        # pixel centres exactly on the boundary may go either way: allow a 1-pixel seam
        seam = cv2.dilate(expected.astype(np.uint8), np.ones((3, 3), np.uint8)) != \
            cv2.erode(expected.astype(np.uint8), np.ones((3, 3), np.uint8))
        assert not ((got != expected) & ~seam).any(), seed
        assert expected.sum() > 0.15 * w * h
