"""`pebal demo` end to end (tiny model: seconds), the cached ONNX export, and the bundled default
model when it is present (slow: exports and replays 100 frames like a user's first run)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_replay_helpers import H, W, tiny_onnx

from pebal_ros.cli import main
from pebal_ros.replay.bag import count_messages


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("model") / "tiny.onnx")


def test_demo_small(model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--frames", "6", "--size", f"{W}x{H}", "--format", "both",
               "--model", str(model), "--threshold", "-3.9", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert str(out / "result_bag") in printed and str(out / "report" / "report.html") in printed
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


def test_demo_bad_arguments(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--out", str(tmp_path), "--size", "big"]) == 2
    assert main(["demo", "--out", str(tmp_path), "--frames", "0"]) == 2
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


def test_demo_default_model(tmp_path: Path, capsys) -> None:
    """What a user runs first: the bundled model through ONNX Runtime, no arguments but --out."""
    rc = main(["demo", "--out", str(tmp_path / "demo"), "--frames", "20", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "AUROC" in out
