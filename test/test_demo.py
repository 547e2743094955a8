"""`pebal demo` end to end (tiny model: seconds): the synthetic drive and the bundled real-road clip,
the cached ONNX export, and both parts with their bundled models (what a user runs first)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_replay_helpers import H, W, tiny_onnx

from pebal_ros.cli import main
from pebal_ros.replay.bag import count_messages


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("model") / "tiny.onnx")


def test_demo_small(model: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "demo"
    rc = main(["demo", "--out", str(root), "--part", "synthetic", "--frames", "6", "--size", f"{W}x{H}",
               "--format", "both", "--model", str(model), "--threshold", "-3.9", "--no-progress"])
    assert rc == 0
    out = root / "synthetic"
    printed = capsys.readouterr().out
    assert str(out / "result_bag") in printed and str(out / "report" / "report.html") in printed
    assert not (root / "road").exists()
    counts, issues = count_messages(out / "recording")
    assert counts == {"/camera/image_raw": 6, "/camera/image_raw/compressed": 6, "/camera/labels": 6}
    assert not issues
    summary = json.loads((out / "report" / "summary.json").read_text())["deterministic"]
    assert summary["frames"] == {"read": 12, "processed": 12, "skipped": 0}
    gt = summary["ground_truth"]
    assert gt["source"] == "topic /camera/labels" and gt["label_kind"] == ["semantic"]
    assert gt["frames_with_labels"] == 12 and 0 <= gt["miou"] <= 1
    # Two cameras: one detector namespace per camera topic, as the launch file does.
    assert {"/camera/pebal/status", "/camera/image_raw/pebal/status"} <= set(summary["output_topics"])
    assert (out / "report" / "contact_sheet.png").is_file()


def _bag_images(bag: Path, topic: str) -> tuple[list[np.ndarray], list[int]]:
    """The images on ``topic`` (copies) and their header stamps, read back with the replay's reader."""
    from pebal_ros.replay.bag import BagReader, make_typestore
    from pebal_ros.replay.groundtruth import label_from_message

    images, stamps = [], []
    with BagReader(bag) as reader:
        store = make_typestore(reader.topics.values())
        for raw in reader.messages([topic]):
            msg = store.deserialize_cdr(raw.data, raw.msgtype)
            if msg.encoding == "mono8":
                images.append(label_from_message(msg).copy())
            else:
                images.append(np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 3).copy())
            stamps.append(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
    return images, stamps


def test_demo_road_replays_the_bundled_clip(model: Path, tmp_path: Path, capsys) -> None:
    """The road part records the bundled frames with the bundled masks as its labels, at the drive's
    own times, and reports against them."""
    from pebal_ros.demo_road import open_road_clip

    root = tmp_path / "demo"
    rc = main(["demo", "--out", str(root), "--part", "road", "--road-frames", "3", "--format", "both",
               "--model", str(model), "--threshold", "-3.9", "--no-progress"])
    assert rc == 0
    out = root / "road"
    printed = capsys.readouterr().out
    assert f"road report: {out / 'report' / 'report.html'}" in printed and not (root / "synthetic").exists()
    clip = open_road_clip()
    masks = [cv2.imread(str(clip.folder / f["label"]), cv2.IMREAD_UNCHANGED) for f in clip.frames[:3]]
    images = [cv2.imread(str(clip.folder / f["frame"]))[..., ::-1] for f in clip.frames[:3]]
    labels, stamps = _bag_images(out / "recording", "/camera/labels")
    assert len(labels) == 3 and all(np.array_equal(a, b) for a, b in zip(labels, masks))
    assert np.diff(stamps).tolist() == [clip.period_ns] * 2 and clip.period_ns == 280_000_000  # every 7th at 25 fps
    raw, _ = _bag_images(out / "recording", "/camera/image_raw")
    assert all(np.array_equal(a, b) for a, b in zip(raw, images))
    det = json.loads((out / "report" / "summary.json").read_text())["deterministic"]
    assert det["frames"] == {"read": 6, "processed": 6, "skipped": 0}
    gt = det["ground_truth"]
    assert gt["source"] == "topic /camera/labels" and gt["label_kind"] == ["anomaly"]
    assert gt["frames_with_labels"] == 6 and set(gt["metrics"]) >= {"auroc", "ap", "fpr95"}
    # every pasted object of the three frames, once per camera topic (8-connected, as the replay counts)
    n_objects = sum(cv2.connectedComponents(m, connectivity=8)[0] - 1 for m in masks)
    assert n_objects >= 3 and gt["objects"]["labelled"] == 2 * n_objects
    assert (out / "report" / "contact_sheet.png").is_file()


def test_demo_road_refuses_a_damaged_clip(model: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import shutil

    import pebal_ros.demo_road as demo_road

    clip = tmp_path / "clip"
    shutil.copytree(demo_road.ROAD_CLIP, clip)
    frame = clip / "frames" / "001.jpg"
    frame.write_bytes(frame.read_bytes()[:-100])       # a truncated install
    monkeypatch.setattr(demo_road, "ROAD_CLIP", clip)
    monkeypatch.setenv("PEBAL_CACHE", str(tmp_path / "cache"))
    rc = main(["demo", "--out", str(tmp_path / "d"), "--model", str(model), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "001.jpg does not match its SHA-256" in err[0]
    # found before any model is loaded or anything is written
    assert not (tmp_path / "d").exists() and not (tmp_path / "cache").exists()


def test_demo_bad_arguments(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--out", str(tmp_path), "--size", "big"]) == 2
    assert main(["demo", "--out", str(tmp_path), "--frames", "0"]) == 2
    assert main(["demo", "--out", str(tmp_path), "--road-frames", "0"]) == 2
    assert main(["demo", "--out", str(tmp_path), "--model", str(tmp_path / "missing.pt")]) == 2
    assert "cannot load the model" in capsys.readouterr().err


@pytest.mark.slow
def test_cached_onnx_export(tmp_path: Path, monkeypatch) -> None:
    """A .pt checkpoint is exported once into the user cache ($PEBAL_CACHE), never beside the
    model (that may be a package's share/ tree), and reused."""
    from pebal_ros.models import add_abstention, build_model, save_checkpoint
    from pebal_ros.replay import model as m

    monkeypatch.setenv("PEBAL_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "ck" / "small.pt"
    ckpt.parent.mkdir()
    save_checkpoint(add_abstention(build_model("espnetv2", s=0.5)).eval(), ckpt)
    first = m.cached_onnx(ckpt, (64, 128), quiet=True)
    assert first.parent == tmp_path / "cache" / "onnx" and first.suffix == ".onnx"
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["small.pt"]
    stamp = first.stat().st_mtime_ns
    assert m.cached_onnx(ckpt, (64, 128), quiet=True) == first and first.stat().st_mtime_ns == stamp
    rt = m.open_runtime(ckpt, kind="onnxruntime", image_size=(64, 128), quiet=True)
    assert rt.name == "onnxruntime" and tuple(rt.input_size) == (64, 128)


@pytest.mark.slow
def test_demo_default_model(tmp_path: Path, capsys) -> None:
    """What a user runs first: both parts, each with its own bundled model through ONNX Runtime
    (fewer frames than the defaults)."""
    from pebal_ros.paths import bundled_model

    root = tmp_path / "demo"
    rc = main(["demo", "--out", str(root), "--frames", "20", "--road-frames", "4", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.count("AUROC") == 2
    for part, name in (("synthetic", "pebal_synthetic_espnetv2.pt"), ("road", "pebal_espnetv2_road.pt")):
        assert f"{part} report: {root / part / 'report' / 'report.html'}" in out
        det = json.loads((root / part / "report" / "summary.json").read_text())["deterministic"]
        assert det["runtime"]["name"] == "onnxruntime"
        assert Path(det["model_settings"]["values"]["model_file"]) == bundled_model(name)
        assert det["threshold_calibrated"] and det["ground_truth"]["metrics"]["auroc"] > 0.5
    road = json.loads((root / "road" / "report" / "summary.json").read_text())["deterministic"]
    assert road["runtime"]["input_size"] == [256, 512] and road["ground_truth"]["label_kind"] == ["anomaly"]
