"""Object bank (real cut-outs: build + read) and the road-aware AnomalyMix placement."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from pebal_ros.config import RoadConfig
from pebal_ros.data.object_bank import (ALPHA_MASK, SOURCES, ObjectBank, OutlierSource, ProceduralObjects, Source,
                                        build, tight_rgba)
from pebal_ros.data.road_mix import RoadMixSettings, anomaly_labels, estimate_horizon, paste, place_object

REPO = Path(__file__).resolve().parents[1]
SRC = Path(os.environ.get("PEBAL_OBJECT_SOURCES", REPO.parent / "data" / "src"))


def _sources(root: Path) -> list[Source]:
    """One source per cut method, drawn with OpenCV: RGBA, image + mask, GrabCut, components."""
    (root / "a").mkdir(parents=True)
    rgba = np.zeros((60, 80, 4), np.uint8)
    cv2.circle(rgba, (40, 30), 20, (0, 0, 255, 255), -1)
    cv2.imwrite(str(root / "a" / "disc.out.png"), rgba)
    img = np.full((50, 70, 3), 40, np.uint8)
    cv2.rectangle(img, (10, 5), (39, 44), (0, 200, 0), -1)
    mask = np.zeros((25, 35), np.uint8)          # masks at half size are resized to the image
    cv2.rectangle(mask, (5, 2), (19, 22), 255, -1)
    cv2.imwrite(str(root / "a" / "box.png"), img)
    cv2.imwrite(str(root / "a" / "box_mask.png"), mask)
    bg = np.full((120, 160, 3), (200, 190, 180), np.uint8)
    bg += np.random.default_rng(0).integers(0, 6, bg.shape, dtype=np.uint8)
    cv2.ellipse(bg, (80, 60), (30, 40), 0, 0, 360, (20, 30, 160), -1)
    cv2.imwrite(str(root / "a" / "ellipse.png"), bg)
    grey = np.full((100, 160), 90, np.uint8)
    for x in (30, 80, 130):
        cv2.circle(grey, (x, 50), 18, 220, -1)
    cv2.imwrite(str(root / "a" / "coins.png"), grey)
    return [Source("disc", "ball", "train", "o", "disc.out.png", "alpha"),
            Source("box", "box", "train", "o", "box.png", "mask", "box_mask.png"),
            Source("ellipse", "egg", "eval", "o", "ellipse.png", "grabcut", rect=(40, 10, 80, 100)),
            Source("coin", "coin", "train", "o", "coins.png", "components")]


def test_build_and_read_every_cut_method(tmp_path, monkeypatch):
    import pebal_ros.data.object_bank as ob
    monkeypatch.setitem(ob.LICENCES, "o", "test licence")
    monkeypatch.setattr(ob, "COIN_AREA", (500, 2000))
    manifest = build({"o": tmp_path / "a"}, tmp_path / "bank", _sources(tmp_path))
    ids = [e["id"] for e in manifest["objects"]]
    assert ids == ["disc", "box", "ellipse", "coin_00", "coin_01", "coin_02"]
    assert manifest["kinds"] == {"train": ["ball", "box", "coin"], "eval": ["egg"]}
    sizes = {e["id"]: e["size"] for e in manifest["objects"]}
    assert sizes["disc"] == [41, 41] and sizes["box"] == [30, 42]          # tight crops (mask upscaled x2)
    assert abs(sizes["ellipse"][0] - 61) <= 3 and abs(sizes["ellipse"][1] - 81) <= 3
    train = ObjectBank(tmp_path / "bank", "train")
    assert len(train) == 5 and train.kinds == ["ball", "box", "coin"]
    item = train[0]
    assert item["image"][20, 20].tolist() == [255, 0, 0]                   # RGB out
    np.testing.assert_array_equal(item["target"] == 254, item["alpha"] >= ALPHA_MASK)
    assert set(np.unique(item["target"]).tolist()) == {0, 254}
    ev = ObjectBank(tmp_path / "bank", "eval")
    assert [e["id"] for e in ev.entries] == ["ellipse"]
    assert (tmp_path / "bank" / "SOURCES.md").read_text().count("test licence") == 6


def test_kinds_must_not_overlap(tmp_path, monkeypatch):
    import pebal_ros.data.object_bank as ob
    monkeypatch.setitem(ob.LICENCES, "o", "x")
    src = _sources(tmp_path)
    src[2] = Source("ellipse", "ball", "eval", "o", "ellipse.png", "grabcut", rect=(40, 10, 80, 100))
    with pytest.raises(ValueError, match=r"kinds \['ball'\] are in both splits"):
        build({"o": tmp_path / "a"}, tmp_path / "bank", src[:3])


def test_bank_refuses_bad_manifests(tmp_path):
    with pytest.raises(FileNotFoundError, match="pebal build-objects"):
        ObjectBank(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"objects": [
        {"id": "x", "file": "../outside.png", "split": "train", "kind": "k"}]}))
    (tmp_path.parent / "outside.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="outside the bank"):
        ObjectBank(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid manifest"):
        ObjectBank(tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        ObjectBank(tmp_path, "test")


def test_shipped_source_table_keeps_kinds_apart():
    train = {s.kind for s in SOURCES if s.split == "train"}
    ev = {s.kind for s in SOURCES if s.split == "eval"}
    assert train and ev and not train & ev
    assert len({s.id for s in SOURCES}) == len(SOURCES)


def test_real_sources_if_present(tmp_path):
    # models/fetch_road_sources.sh copies rembg's examples/ to SRC/rembg; a plain clone keeps examples/
    rembg = SRC / "rembg" / "examples" if (SRC / "rembg" / "examples").is_dir() else SRC / "rembg"
    roots = {"rembg": rembg, "u2net": SRC / "u2net", "skimage": SRC / "skimage"}
    if not all(r.is_dir() for r in roots.values()) or not any(rembg.glob("*.out.png")):
        pytest.skip(f"object sources not found under {SRC} (set PEBAL_OBJECT_SOURCES); they are fetched "
                    "from public repositories by models/fetch_road_sources.sh, never committed")
    m = build(roots, tmp_path / "bank")
    assert m["kinds"]["eval"] == ["aircraft", "boat", "rifle", "rocket"]
    assert sum(e["id"].startswith("coin_") for e in m["objects"]) >= 20
    for e in m["objects"]:
        assert min(e["size"]) >= 8


def test_tight_rgba_zeroes_colour_outside_the_object():
    bgr = np.full((10, 10, 3), 77, np.uint8)
    alpha = np.zeros((10, 10), np.uint8)
    alpha[2:6, 3:8] = 255
    alpha[1, 3] = 60            # soft edge: kept in alpha, outside the mask's box rows
    out = tight_rgba(bgr, alpha)
    assert out.shape == (4, 5, 4) and (out[..., 3] == 255).all()
    assert tight_rgba(bgr, np.zeros((10, 10), np.uint8)) is None


def test_procedural_objects_are_seeded_and_masked():
    objs = ProceduralObjects(20, seed=3, size=64)
    a, b = objs[7], ProceduralObjects(20, seed=3, size=64)[7]
    np.testing.assert_array_equal(a["image"], b["image"])
    assert max(a["alpha"].shape) == 64 and a["kind"].startswith("procedural:")
    np.testing.assert_array_equal(a["target"] == 254, a["alpha"] >= ALPHA_MASK)
    assert not np.array_equal(objs[7]["image"], ProceduralObjects(20, seed=4, size=64)[7]["image"])


def test_outlier_source_weights_sources_not_cuts(tmp_path, monkeypatch):
    import pebal_ros.data.object_bank as ob
    monkeypatch.setitem(ob.LICENCES, "o", "x")
    monkeypatch.setattr(ob, "COIN_AREA", (500, 2000))
    build({"o": tmp_path / "a"}, tmp_path / "bank", _sources(tmp_path))
    src = OutlierSource("real", tmp_path / "bank", RoadConfig())
    rng = np.random.default_rng(0)
    names = [src.draw(rng)["name"] for _ in range(3000)]
    coins = sum(n.startswith("coin") for n in names) / len(names)
    assert abs(coins - 1 / 3) < 0.04          # 3 coins from one source weigh like one object
    with pytest.raises(SystemExit, match="real, procedural or both"):
        OutlierSource("coco", None, RoadConfig())


# --- road mix ---------------------------------------------------------------------------------

def _street(h=120, w=160) -> np.ndarray:
    t = np.full((h, w), 2, np.uint8)             # building
    t[: h // 4] = 10                             # sky
    t[h // 2:] = 0                               # road from the middle down
    t[h // 2:, :20] = 1                          # sidewalk
    return t


def test_horizon_from_the_road():
    t = _street()
    assert 0.4 * 120 <= estimate_horizon(t) <= 60
    assert estimate_horizon(np.full((100, 50), 10, np.uint8)) == pytest.approx(45)


def test_paste_blends_with_alpha_and_labels_the_mask():
    image = np.full((20, 30, 3), 100, np.uint8)
    target = np.zeros((20, 30), np.uint8)
    rgb = np.full((4, 6, 3), 200, np.uint8)
    alpha = np.array([[0, 64, 128, 255, 255, 0]] * 4, np.uint8)
    paste(image, target, rgb, alpha, (18, 27), gain=0.5)      # clipped: 2 rows x 3 columns inside
    expected = np.rint(alpha[:2, :3, None] / 255 * 100 + (1 - alpha[:2, :3, None] / 255) * 100)
    np.testing.assert_array_equal(image[18:, 27:], expected.astype(np.uint8).repeat(3, 2)[..., :3])
    assert target[18:, 27:].tolist() == [[0, 0, 254]] * 2
    assert (target[:18] == 0).all() and (target[:, :27] == 0).all()


def test_ground_placement_stands_on_the_road_at_perspective_height():
    t = _street()
    horizon = estimate_horizon(t)
    obj = {"image": np.full((50, 20, 3), 255, np.uint8), "alpha": np.full((50, 20), 255, np.uint8), "name": "o"}
    s = RoadMixSettings(p_ground=1.0, height_range=(0.5, 0.5), flip_probability=0.0, min_height=0.0)
    for seed in range(20):
        image = np.zeros((120, 160, 3), np.uint8)
        target = t.copy()
        done = place_object(image, target, obj, np.random.default_rng(seed), s)
        if done is None:
            continue
        ys, xs = np.nonzero(target == 254)
        bottom = ys.max()
        assert t[bottom, int(np.median(xs))] in (0, 1)                   # stands on road / sidewalk
        assert ys.max() - ys.min() + 1 == pytest.approx(0.5 * (bottom - horizon), abs=1.5)
        assert done["ground"]


def test_free_placement_and_minimum_size():
    t = np.full((100, 100), 10, np.uint8)          # no ground at all: always free placement
    obj = {"image": np.full((10, 10, 3), 255, np.uint8), "alpha": np.full((10, 10), 255, np.uint8)}
    s = RoadMixSettings(p_ground=1.0, free_height_range=(0.2, 0.2), min_height=0.0)
    done = place_object(np.zeros((100, 100, 3), np.uint8), t.copy(), obj, np.random.default_rng(0), s)
    assert done is not None and not done["ground"] and done["size"] == [20, 20]
    tiny = RoadMixSettings(free_height_range=(0.01, 0.01), min_height=0.03)
    assert place_object(np.zeros((100, 100, 3), np.uint8), t.copy(), obj, np.random.default_rng(0), tiny) is None


def test_anomaly_labels():
    t = np.array([[0, 254, 255, 13]], np.uint8)
    assert anomaly_labels(t).tolist() == [[0, 1, 255, 0]]
