"""The calibration record beside a model: round trip, digest check, read-only folders."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pebal_ros.calibration import (Calibration, CalibrationError, file_sha256, find_calibration,
                                   read_calibration, sidecar_path, write_calibration)


def _model(tmp_path: Path, content: bytes = b"weights") -> Path:
    p = tmp_path / "m.onnx"
    p.write_bytes(content)
    return p


def test_round_trip_and_digest(tmp_path: Path) -> None:
    model = _model(tmp_path)
    assert file_sha256(model) == hashlib.sha256(b"weights").hexdigest()
    cal = Calibration(threshold=-5.25, target="pixel_fpr", target_value=0.001, model_sha256=file_sha256(model),
                      achieved={"pixel_fpr": 0.00098}, frames=12, input_size=(256, 512))
    path = write_calibration(model, cal)
    assert path == sidecar_path(model) == tmp_path / "m.onnx.calibration.yaml"
    got, where, reason = find_calibration(model)
    assert where == path and reason == "" and got is not None
    assert got.threshold == -5.25 and got.input_size == (256, 512) and got.date   # date filled in
    assert got.achieved == {"pixel_fpr": 0.00098}


def test_record_of_another_model_is_ignored_with_reason(tmp_path: Path) -> None:
    model = _model(tmp_path)
    write_calibration(model, Calibration(-5.0, "pixel_fpr", 0.001, model_sha256=file_sha256(model)))
    model.write_bytes(b"retrained weights")
    got, where, reason = find_calibration(model)
    assert got is None and where == sidecar_path(model) and "another model file" in reason


def test_no_record(tmp_path: Path) -> None:
    assert find_calibration(_model(tmp_path)) == (None, None, "")


def test_cache_copy_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEBAL_CACHE", str(tmp_path / "cache"))
    model = _model(tmp_path)
    digest = file_sha256(model)
    from pebal_ros.calibration import cache_path
    written = write_calibration(model, Calibration(-4.0, "tpr", 0.95, model_sha256=digest), path=cache_path(digest))
    assert written.parent == tmp_path / "cache" / "calibration"
    got, where, _ = find_calibration(model)
    assert got is not None and got.threshold == -4.0 and where == written


@pytest.mark.parametrize("text, match", [("threshold: [", "not valid YAML"), ("- 1\n", "mapping"),
                                         ("threshold: 1\ntarget: x\ntarget_value: 1\nmodel_sha256: a\n", "target"),
                                         ("threshold: 1\nbogus: 2\n", "unknown key")])
def test_bad_files_are_reported(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(CalibrationError, match=match):
        read_calibration(p)
