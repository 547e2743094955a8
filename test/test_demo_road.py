"""The demo's real-road clip: the builder (`pebal build-demo-road`) on a generated video and bank,
the verified reader, and the bundled asset itself (its masks, placements, size and licences)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from pebal_ros.demo_road import ROAD_CLIP, RoadClipError, open_road_clip, road_frames
from pebal_ros.road.demo_clip import build, crop_box, parse_polygon, redistributable

RED, BLUE, GREEN = (0, 0, 250), (200, 0, 0), (0, 220, 0)       # BGR
ROD = (40, 10)     # the test object: a green rod, 40 high, 10 wide


def _video(path: Path, n: int = 20) -> Path:
    """n frames of 320x240: the top 80 rows red (sky), the rest blue (road)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    assert writer.isOpened()
    for _ in range(n):
        f = np.zeros((240, 320, 3), np.uint8)
        f[:80] = RED
        f[80:] = BLUE
        writer.write(f)
    writer.release()
    return path


def _bank(root: Path) -> Path:
    """An object bank with one public-domain held-out rod, one held-out object whose licence does
    not allow bundling, and one training object."""
    (root / "objects").mkdir(parents=True)
    rod = np.zeros((*ROD, 4), np.uint8)
    rod[..., :3], rod[..., 3] = GREEN, 255
    cv2.imwrite(str(root / "objects" / "rod.png"), rod)
    cv2.imwrite(str(root / "objects" / "other.png"), rod)
    entries = [{"id": "rod", "file": "objects/rod.png", "kind": "rod", "split": "eval", "origin": "skimage",
                "source": "rod.png", "licence": "public domain (test)"},
               {"id": "boat", "file": "objects/other.png", "kind": "boat", "split": "eval", "origin": "u2net",
                "source": "boat.jpg", "licence": "Apache-2.0 (repository; the photos' own provenance is not stated)"},
               {"id": "cup", "file": "objects/other.png", "kind": "cup", "split": "train", "origin": "skimage",
                "source": "coffee.png", "licence": "CC0"}]
    (root / "manifest.json").write_text(json.dumps({"format": 1, "objects": entries}))
    return root


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("src")
    return _video(root / "drive.avi"), _bank(root / "bank")


def test_build_demo_road(sources: tuple[Path, Path], tmp_path: Path) -> None:
    video, bank = sources
    road = "0.05,1.0;0.4,0.6;0.6,0.6;0.95,1.0"
    m = build(video, bank, tmp_path / "a", n_frames=4, size=(128, 64), seed=3, min_objects=2, max_objects=2,
              road=road, horizon=0.5, p_lying=0.0, height_range=(0.3, 0.8))
    # frames at equal steps from the first, stamped at the drive's own times
    assert [f["clip_frame"] for f in m["frames"]] == [0, 6, 12, 18]
    assert m["period_ns"] == 600_000_000
    # 4:3 -> 2:1 drops the top 80 rows (sky); the polygon and the horizon move with the crop
    assert m["crop"] == {"x": 0, "y": 80, "w": 320, "h": 160}
    assert m["horizon_row"] == pytest.approx((0.5 * 240 - 80) * 64 / 160)
    assert list(m["objects"]) == ["rod"]          # the Apache-2.0 one is not bundled by default
    horizon = m["horizon_row"]
    poly = np.array(m["road_polygon"], np.float32)
    for f in m["frames"]:
        img = cv2.imread(str(tmp_path / "a" / f["frame"]))
        label = cv2.imread(str(tmp_path / "a" / f["label"]), cv2.IMREAD_UNCHANGED)
        assert img.shape == (64, 128, 3) and label.shape == (64, 128) and set(np.unique(label)) <= {0, 1}
        assert int(label.sum()) == f["anomaly_pixels"] > 0
        # no sky kept; the label is exactly where the green object shows (JPEG tolerance, edges aside)
        inner = cv2.erode(label, np.ones((3, 3), np.uint8))
        outer = cv2.dilate(label, np.ones((3, 3), np.uint8)) == 0
        assert (img[outer][:, 2] < 100).all() and (img[outer][:, 0] > 150).mean() > 0.99
        assert (img[inner == 1][:, 1] > 150).all()
        box = np.zeros_like(label)
        for o in f["objects"]:
            (y, x), (w, h) = o["top_left"], o["size"]
            assert o["pose"] == "upright" and h > w
            # standing on the road region, sized by perspective from the horizon (road_mix's rule)
            assert cv2.pointPolygonTest(poly, (float(x + w // 2), float(y + h - 1)), False) >= 0
            assert 0.3 * (y + h - 1 - horizon) - 1 <= h <= 0.8 * (y + h - 1 - horizon) + 1
            box[max(0, y):y + h, max(0, x):x + w] = 1
        assert not (label & (1 - box)).any()          # every labelled pixel belongs to a placed object
    # the same command gives the same bytes; lying objects are wider than high
    build(video, bank, tmp_path / "b", n_frames=4, size=(128, 64), seed=3, min_objects=2, max_objects=2,
          road=road, horizon=0.5, p_lying=0.0, height_range=(0.3, 0.8))
    for name in ("manifest.json", "frames/002.jpg", "labels/003.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    lying = build(video, bank, tmp_path / "c", n_frames=4, size=(128, 64), seed=3, min_objects=2, max_objects=2,
                  road=road, horizon=0.5, p_lying=1.0, height_range=(0.3, 0.8))
    placed = [o for f in lying["frames"] for o in f["objects"]]
    assert placed and all(o["pose"] == "lying" and o["size"][0] > o["size"][1] for o in placed)
    # what was written is what the demo reads back
    clip = open_road_clip(tmp_path / "a")
    for (rgb, label), f in zip(road_frames(clip), m["frames"]):
        np.testing.assert_array_equal(label, cv2.imread(str(tmp_path / "a" / f["label"]), cv2.IMREAD_UNCHANGED))
        np.testing.assert_array_equal(rgb[..., ::-1], cv2.imread(str(tmp_path / "a" / f["frame"])))
    text = (tmp_path / "a" / "SOURCES.md").read_text()
    assert "MIT License" in text and "Udacity" in text and "public domain (test)" in text and "Apache" not in text


def test_build_refuses_objects_it_may_not_bundle(sources: tuple[Path, Path], tmp_path: Path) -> None:
    video, bank = sources
    with pytest.raises(SystemExit, match="boat may not be bundled"):
        build(video, bank, tmp_path / "x", n_frames=2, object_ids=["boat"])
    with pytest.raises(SystemExit, match="cup not in the held-out"):
        build(video, bank, tmp_path / "x", n_frames=2, object_ids=["cup"])
    with pytest.raises(SystemExit, match="fewer than --frames 50"):
        build(video, bank, tmp_path / "x", n_frames=50)
    assert redistributable("CC0 (photo by X)") and redistributable("Public Domain")
    assert not redistributable("MIT (the photos' provenance is not stated)")


def test_build_cli_errors(sources: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    from pebal_ros.cli import main

    video, bank = sources
    base = ["build-demo-road", "--clip", str(video), "--objects", str(bank), "--out", str(tmp_path / "o")]
    for extra, words in ((["--height", "0.5"], "--height '0.5' is not LO,HI"), (["--road", "0,1;1,1"], "at least 3"),
                         (["--frames", "1"], "at least 2"), (["--lying", "2"], "--lying in [0, 1]")):
        with pytest.raises(SystemExit, match=words.replace("[", r"\[").replace("]", r"\]")):
            main(base + extra)
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError):
        parse_polygon("a,b;c,d;e,f")
    assert crop_box((960, 540), (512, 256)) == (0, 60, 960, 480)      # rows dropped at the top
    assert crop_box((400, 400), (512, 256))[2:] == (400, 200)
    assert crop_box((100, 300), (100, 100)) == (0, 200, 100, 100)
    assert crop_box((300, 100), (100, 100)) == (100, 0, 100, 100)    # too wide: columns from both sides


def _copy_clip(tmp_path: Path) -> Path:
    dst = tmp_path / "clip"
    shutil.copytree(ROAD_CLIP, dst)
    return dst


def test_reader_refuses_a_damaged_clip(tmp_path: Path) -> None:
    clip = _copy_clip(tmp_path)
    manifest = json.loads((clip / "manifest.json").read_text())
    label = clip / manifest["frames"][1]["label"]
    img = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    img[0, 0] = 2
    cv2.imwrite(str(label), img)
    frames = road_frames(open_road_clip(clip))
    next(frames)                                    # the first frame is intact
    with pytest.raises(RoadClipError, match="does not match its SHA-256"):
        next(frames)
    # a label that matches its (rewritten) hash still has to be 0/1
    manifest["frames"][1]["sha256"][1] = hashlib.sha256(label.read_bytes()).hexdigest()
    (clip / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RoadClipError, match="0/1 mono8 label"):
        list(road_frames(open_road_clip(clip)))
    manifest["frames"][0]["frame"] = "../../etc/passwd"
    (clip / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RoadClipError, match="outside the clip folder"):
        list(road_frames(open_road_clip(clip)))
    (clip / "manifest.json").write_text(json.dumps(dict(manifest, format=2)))
    with pytest.raises(RoadClipError, match="not a road-clip manifest"):
        open_road_clip(clip)
    (clip / "manifest.json").unlink()
    with pytest.raises(RoadClipError, match="not found"):
        open_road_clip(clip)


def test_bundled_clip() -> None:
    """The asset as shipped: every file verified, the masks are the manifest's objects, small,
    licensed for redistribution, of held-out kinds only."""
    clip = open_road_clip()
    assert len(clip.frames) >= 24 and clip.size == (512, 256)
    total = sum(p.stat().st_size for p in ROAD_CLIP.rglob("*") if p.is_file())
    assert total <= 1_500_000
    n_objects = 0
    for (rgb, label), f in zip(road_frames(clip), clip.frames):
        assert rgb.shape == (256, 512, 3) and int(label.sum()) == f["anomaly_pixels"]
        box = np.zeros_like(label)
        for o in f["objects"]:
            (y, x), (w, h) = o["top_left"], o["size"]
            box[max(0, y):y + h, max(0, x):x + w] = 1
        assert not (label & (1 - box)).any()
        n_objects += len(f["objects"])
    assert n_objects >= len(clip.frames)
    kinds = {o["kind"] for f in clip.frames for o in f["objects"]}
    assert kinds <= {"aircraft", "boat", "rifle", "rocket"}           # the bank's held-out kinds
    assert all(redistributable(o["licence"]) for o in clip.manifest["objects"].values())
    text = (ROAD_CLIP / "SOURCES.md").read_text()
    assert clip.manifest["clip"]["licence"] == "MIT" and "Copyright (c) 2016-2018 Udacity, Inc." in text
    assert "Permission is hereby granted" in text
    assert all(o["licence"] in text for o in clip.manifest["objects"].values())
