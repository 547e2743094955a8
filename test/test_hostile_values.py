"""Values that validate but break every frame, records with the wrong types, YAML alias bombs and
graphs ONNX Runtime cannot load (issue 17): each is refused or ignored in one line, where it enters.

Thresholds: the runtimes compare float32 scores, where 1e39 is infinity; one range
(``pebal_ros.config.THRESHOLD_LIMIT``) holds for flags, ``--set``, YAML, node parameters,
calibration records, ONNX metadata and engine sidecars.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import pytest
import yaml
from _hostile import ALIAS_BOMB, alias_bomb, external_data_onnx, set_onnx_metadata, unknown_op_onnx
from test_replay_helpers import frames, tiny_onnx

from pebal_ros.calibration import find_calibration, sidecar_path
from pebal_ros.cli import main
from pebal_ros.config import THRESHOLD_LIMIT, threshold_problem
from pebal_ros.model_info import ModelFileError, read_model_info
from pebal_ros.node.params import defaults, pipeline_config, validate
from pebal_ros.pipeline.frame import PipelineConfig
from pebal_ros.replay.recording import write_recording
from pebal_ros.runtime.onnx import OnnxRuntime
from pebal_ros.safe_yaml import MAX_NODES, YAMLLimitError, load_file, load_text


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEBAL_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "i.png"
    cv2.imwrite(str(path), frames(1)[0][0])
    return path


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return tiny_onnx(tmp_path / "tiny.onnx")


def _one_line(err: str, command: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith(f"pebal {command}: "), err
    return lines[-1]


# -- one threshold range -----------------------------------------------------------------------
def test_threshold_range_is_representable_in_float32() -> None:
    import numpy as np
    assert float(np.float32(THRESHOLD_LIMIT)) == THRESHOLD_LIMIT and float(np.float32(-THRESHOLD_LIMIT)) == -THRESHOLD_LIMIT
    for ok in (-THRESHOLD_LIMIT, -3.73, 0, 12, np.float32(-4.5), THRESHOLD_LIMIT):
        assert threshold_problem(ok) is None, ok
    for bad in (1e39, -1e308, 1.0e+308, math.inf, math.nan, THRESHOLD_LIMIT * 1.0001, True, "-3", None, [1]):
        assert "must be" in threshold_problem(bad), bad


@pytest.mark.parametrize("args", [["--threshold", "1e39"], ["--set", "inference.threshold=1.0e+308"],
                                  ["--threshold=-inf"]])
def test_infer_refuses_an_unrepresentable_threshold_before_loading(args: list[str], image: Path, model: Path,
                                                                    tmp_path: Path, capsys) -> None:
    assert main(["infer", str(image), "--out", str(tmp_path / "o"), "--model", str(model), *args]) == 2
    line = _one_line(capsys.readouterr().err, "infer")
    assert "inference.threshold" in line and "between -1e+06 and 1e+06" in line
    assert not (tmp_path / "o").exists()


def test_replay_refuses_an_unrepresentable_threshold_before_replaying(model: Path, tmp_path: Path, capsys) -> None:
    write_recording(tmp_path / "bag", [(img, None) for img, _ in frames(3)], label_topic=None)
    out = tmp_path / "out"
    assert main(["replay", str(tmp_path / "bag"), "--out", str(out), "--model", str(model), "--threshold", "1e39",
                 "--no-progress"]) == 2
    line = _one_line(capsys.readouterr().err, "replay")
    assert "(command-line flag)" in line and "between -1e+06 and 1e+06" in line
    assert not out.exists()                 # no empty report that looks like a result


def test_config_file_threshold_out_of_range_names_its_source(image: Path, model: Path, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("inference:\n  threshold: 1.0e+39\n")
    assert main(["infer", str(image), "--out", str(tmp_path / "o"), "--model", str(model), "--config", str(cfg)]) == 2
    assert f"(config {cfg})" in _one_line(capsys.readouterr().err, "infer")


def test_onnx_metadata_threshold_out_of_range_is_refused(model: Path, image: Path, tmp_path: Path, capsys) -> None:
    set_onnx_metadata(model, threshold="1e+39")
    with pytest.raises(ModelFileError, match="its ONNX metadata has a threshold that must be a finite number"):
        read_model_info(model)
    assert main(["infer", str(image), "--out", str(tmp_path / "o"), "--model", str(model)]) == 2
    assert "ONNX metadata" in _one_line(capsys.readouterr().err, "infer")


@pytest.mark.parametrize("sidecar", [{"channel_order": "rgb", "threshold": 1e39},
                                     {"channel_order": "rgb", "threshold": "nan"}, [1, 2]])
def test_engine_sidecar_threshold_out_of_range_is_refused(sidecar, tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine")
    sidecar_path_ = engine.with_name(engine.name + ".json")
    sidecar_path_.write_text(json.dumps(sidecar))
    with pytest.raises(ModelFileError, match="threshold that must be|not a JSON object"):
        read_model_info(engine)


def test_pipeline_config_refuses_what_float32_cannot_hold() -> None:
    with pytest.raises(ValueError, match="between -1e"):
        PipelineConfig(threshold=1e39).validate()
    assert PipelineConfig(threshold=-THRESHOLD_LIMIT).validate().threshold == -THRESHOLD_LIMIT


# -- node parameters -------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [1.0e308, -1e39, math.inf, 2e6])
def test_node_threshold_parameter_out_of_range_is_refused(value: float) -> None:
    reason = validate("threshold", value)
    assert reason is not None and "between -1e+06 and 1e+06" in reason and "NaN for the model's own" in reason


@pytest.mark.parametrize("text", ["NaN", "nan", " NaN "])
def test_node_threshold_nan_as_text_is_the_models_own(text: str) -> None:
    """`ros2 param set /node threshold NaN` sends the text "NaN" (YAML 1.1 has no such float)."""
    assert validate("threshold", text) is None
    values = {**defaults(), "threshold": float(text)}
    assert pipeline_config(values, model_threshold=-3.5).threshold == -3.5


def test_node_threshold_numbers_as_text() -> None:
    assert validate("threshold", "-2.5") is None
    assert "must be a double" in validate("threshold", "high")
    assert "between" in validate("threshold", "1e39")


# -- calibration records with the wrong types ------------------------------------------------------
GOOD = {"threshold": -3.0, "target": "pixel_fpr", "target_value": 0.001, "model_sha256": "0" * 64}


@pytest.mark.parametrize("bad, needle", [
    ({"input_size": 5}, "input_size must be [HEIGHT, WIDTH]"),
    ({"date": 5}, "date must be text"),
    ({"model_sha256": 5}, "model_sha256 must be a SHA-256"),
    ({"model_sha256": "00"}, "model_sha256 must be a SHA-256"),
    ({"achieved": [1, 2]}, "achieved must map names to numbers"),
    ({"frames": -1}, "frames must be a whole number"),
    ({"frames": "many"}, "frames must be a whole number"),
    ({"threshold": 1.0e308}, "threshold must be a finite number between"),
    ({"threshold": [1]}, "threshold must be a number"),
    ({"target_value": float("inf")}, "target_value must be a rate"),
    ({"min_region_area": 0.5}, "min_region_area must be a whole number"),
    ({"format": 99}, "format must be 1"),
    ({"tool": {"a": 1}}, "tool must be text"),
])
@pytest.mark.parametrize("for_this_model", [True, False])
def test_mistyped_calibration_record_is_ignored_in_one_line(bad: dict, needle: str, for_this_model: bool,
                                                            model: Path) -> None:
    from pebal_ros.calibration import file_sha256
    record = {**GOOD, "model_sha256": file_sha256(model) if for_this_model else "f" * 64, **bad}
    sidecar_path(model).write_text(yaml.safe_dump(record))
    cal, where, reason = find_calibration(model)
    assert cal is None and where == sidecar_path(model)
    assert needle in reason and "ignored" in reason and "\n" not in reason and len(reason) < 400


def test_mistyped_record_beside_a_model_does_not_stop_infer(model: Path, image: Path, tmp_path: Path, capsys) -> None:
    sidecar_path(model).write_text("threshold: -3\ntarget: pixel_fpr\ntarget_value: 0.001\nmodel_sha256: 00\n"
                                   "input_size: 5\n")
    assert main(["infer", str(image), "--out", str(tmp_path / "o"), "--model", str(model)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "not a valid calibration record" in err


def test_hand_written_record_with_an_unquoted_date_still_reads(model: Path) -> None:
    from pebal_ros.calibration import file_sha256
    sidecar_path(model).write_text(f"threshold: -5e-1\ntarget: tpr\ntarget_value: 0.95\n"
                                   f"model_sha256: {file_sha256(model)}\ndate: 2024-05-01\n")
    cal, _, reason = find_calibration(model)
    assert reason == "" and cal is not None and cal.threshold == -0.5 and cal.date == "2024-05-01"


# -- YAML alias bombs ------------------------------------------------------------------------------
def test_alias_bomb_is_refused_legitimate_aliases_load(tmp_path: Path) -> None:
    assert len(ALIAS_BOMB) < 600
    with pytest.raises(YAMLLimitError, match=f"more than {MAX_NODES} nodes once its aliases are expanded"):
        load_text(ALIAS_BOMB)
    merge = "a0: &a0 {k: 1}\n" + "".join(f"a{i}: &a{i}\n  <<: [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n"
                                         for i in range(1, 9))
    with pytest.raises(YAMLLimitError):
        load_text(merge)                                     # merge keys expand the same way
    with pytest.raises(YAMLLimitError, match="recursive alias"):
        load_text("a: &x [1, *x]")
    big = tmp_path / "big.yaml"
    big.write_text("k: " + "x" * 2_000_000)
    with pytest.raises(YAMLLimitError, match="larger than"):
        load_file(big)
    ok = "base: &b {mean: [0.5, 0.5, 0.5]}\ninference:\n  <<: *b\n  threshold: -3\nother: *b\n"
    assert load_text(ok) == yaml.safe_load(ok)
    assert isinstance(load_text(ok), dict) and load_text("") is None


def test_alias_bomb_in_a_config_is_one_line(image: Path, model: Path, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(f"inference:\n  threshold: {alias_bomb(7)}\n")
    assert main(["infer", str(image), "--out", str(tmp_path / "o"), "--model", str(model), "--config", str(cfg)]) == 2
    line = _one_line(capsys.readouterr().err, "infer")
    assert "aliases are expanded" in line and len(line) < 400


def test_alias_bomb_beside_a_model_is_ignored_in_one_line(model: Path) -> None:
    sidecar_path(model).write_text(f"threshold: -3\ntarget: {alias_bomb(7)}\ntarget_value: 0.001\n"
                                   f"model_sha256: '{'0' * 64}'\n")
    cal, _, reason = find_calibration(model)
    assert cal is None and "aliases are expanded" in reason and len(reason) < 400


# -- graphs ONNX Runtime cannot load ---------------------------------------------------------------
@pytest.mark.parametrize("make, needle", [(unknown_op_onnx, "NoSuchOp"),
                                          (external_data_onnx, "escapes model directory")])
def test_onnx_runtime_load_errors_are_one_line(make, needle: str, image: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    path = make(folder / "bad.onnx")
    with pytest.raises(ValueError, match="ONNX Runtime cannot load it") as err:
        OnnxRuntime(path, device="cpu")
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert main(["infer", str(image), "--out", str(tmp_path / "o"), "--model", str(path)]) == 2
    line = _one_line(capsys.readouterr().err, "infer")
    assert "ONNX Runtime cannot load it" in line and needle in line

