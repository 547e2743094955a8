"""Obstacle-box check: the arithmetic, the fixture, and the shipped road model's published figures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pebal_ros.road.boxes import load_boxes, score_frame

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "test" / "fixtures" / "anomaly_boxes.json"
MODEL = REPO / "models" / "pebal_espnetv2_road.pt"
FIGURES = REPO / "models" / "road_boxes.json"


def test_score_frame_against_a_direct_count():
    rng = np.random.default_rng(0)
    score = rng.normal(size=(40, 60)).astype(np.float32)
    mask = (score > 0.8).astype(np.uint8)
    obstacles = [{"id": "a", "kind": "k", "box": [5, 5, 25, 15]}, {"id": "b", "kind": "k", "box": [20, 10, 30, 30]}]
    r = score_frame(score, mask, obstacles, hit_fraction=0.2)
    inside = np.zeros((40, 60), bool)
    for o, got in zip(obstacles, r["obstacles"]):
        x0, y0, x1, y1 = o["box"]
        n = sum(int(mask[y, x]) for y in range(y0, y1) for x in range(x0, x1))
        assert got["flagged"] == pytest.approx(n / ((x1 - x0) * (y1 - y0)))
        assert got["hit"] == (got["flagged"] >= 0.2)
        inside[y0:y1, x0:x1] = True
    other = [(y, x) for y in range(40) for x in range(60) if not inside[y, x]]
    assert r["other_pixels"] == len(other)
    assert r["other_flagged"] == pytest.approx(sum(int(mask[p]) for p in other) / len(other))
    assert r["box_auroc"] == pytest.approx(roc_auc_score(inside.ravel(), score.ravel()))


def test_fixture_is_valid_and_complete():
    boxes = load_boxes(FIXTURE)
    assert len(boxes["frames"]) == 5
    obstacles = [o for f in boxes["frames"].values() for o in f["obstacles"]]
    assert len(obstacles) == 12 and len({o["id"] for o in obstacles}) == 12
    kinds = [o["kind"] for o in obstacles]
    assert kinds.count("crate") == 9 and "cow" in kinds


def test_bad_boxes_are_refused(tmp_path):
    bad = {"frames": {"a.png": {"size": [100, 50], "obstacles": [{"id": "x", "kind": "k", "box": [10, 10, 120, 20]}]}}}
    (tmp_path / "b.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="outside the"):
        load_boxes(tmp_path / "b.json")
    (tmp_path / "c.json").write_text(json.dumps({"frames": {}}))
    with pytest.raises(ValueError, match="expected"):
        load_boxes(tmp_path / "c.json")


def test_shipped_road_model_reproduces_its_published_box_figures(shared_data):
    """Recomputes models/road_boxes.json (the figures in docs/models.md) from the fixture, the real
    frames and the shipped model with its calibrated threshold, through the ONNX runtime as
    `pebal infer` runs it."""
    if not MODEL.is_file() or not FIGURES.is_file():
        pytest.skip(f"{MODEL.name} / {FIGURES.name} not in models/ yet")
    from pebal_ros.model_settings import resolve_settings
    from pebal_ros.open_model import open_runtime
    from pebal_ros.road.boxes import check

    settings = resolve_settings(str(MODEL), [], runtime=None, device="cpu")
    published = json.loads(FIGURES.read_text())
    assert settings.threshold == pytest.approx(published["threshold"], abs=1e-4)
    result = check(open_runtime(settings), settings.threshold, shared_data / "anomaly", load_boxes(FIXTURE))
    assert result["hits"] == published["hits"]
    assert result["other_flagged"] == pytest.approx(published["other_flagged"], abs=2e-4)
    for name, frame in published["frames"].items():
        for got, want in zip(result["frames"][name]["obstacles"], frame["obstacles"]):
            assert got["id"] == want["id"] and got["flagged"] == pytest.approx(want["flagged"], abs=0.02)
