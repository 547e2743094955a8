"""One resolution of model settings (pebal_ros.model_settings): layering, sources, honest warnings,
validation, safe loading, and the same settings through infer, replay and the node's function."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from test_replay_helpers import H, W, frames, tiny_onnx

from pebal_ros.calibration import Calibration, file_sha256, write_calibration
from pebal_ros.cli import main
from pebal_ros.config import Config, InferenceConfig, to_dict
from pebal_ros.graph.contract import FORMAT_TAG, ExportSpec
from pebal_ros.model_settings import (Layer, SettingsError, cli_layers, resolve_settings, settings_from_args,
                                      validate_inference)
from pebal_ros.models import build_model, save_checkpoint
from pebal_ros.node.params import defaults, resolve_node_settings
from pebal_ros.paths import SYNTHETIC_MODEL_NAME, bundled_model


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(preset=kw.get("preset"), config=kw.get("config"), overrides=kw.get("overrides", []))


def _checkpoint(path: Path, *, abstention: bool = True, threshold: float = -5.0, size=(H, W), **meta) -> Path:
    torch.manual_seed(0)
    net = build_model("espnetv2", s=0.5, abstention=abstention).eval()
    cfg = Config()
    cfg.inference.input_size, cfg.inference.threshold = tuple(size), threshold
    return save_checkpoint(net, path, kind="pebal_finetune" if abstention else "pretrain", config=to_dict(cfg), **meta)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ck") / "m.pt")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PEBAL_CACHE", str(tmp_path / "cache"))


# -- layering and sources -------------------------------------------------------------------------
def test_checkpoint_own_settings_then_user_layers(ckpt: Path) -> None:
    s = resolve_settings(ckpt)
    assert s.inference.input_size == (H, W) and s.source("input_size") == "checkpoint meta"
    assert s.threshold == -5.0 and s.source("threshold") == "checkpoint meta"
    assert s.info.kind == "pebal" and s.info.arch == "espnetv2" and s.runtime == "torch"
    # a stored training-config threshold is not a calibrated one: say so, naming pebal calibrate
    assert not s.threshold_calibrated and any("pebal calibrate" in w for w in s.warnings)
    # --preset changes only what it names (input size), nothing else; its threshold would not vouch
    s = settings_from_args(_args(preset="espnetv2_cityscapes"), ckpt)
    assert s.inference.input_size == (512, 1024) and s.source("input_size") == "preset espnetv2_cityscapes"
    assert s.threshold == -5.0 and s.source("threshold") == "checkpoint meta"
    # --set on top: explicit, no warning
    s = settings_from_args(_args(preset="espnetv2_cityscapes", overrides=["inference.threshold=-2.5"]), ckpt,
                           flags={"min_region_area": 7})
    assert (s.threshold, s.source("threshold"), s.threshold_calibrated) == (-2.5, "--set", True)
    assert s.inference.min_region_area == 7 and s.source("min_region_area") == "command-line flag"
    assert not any("calibrate" in w for w in s.warnings)
    assert s.inference.input_size == (512, 1024)


def test_bundled_model_set_applies_on_top_of_its_preset() -> None:
    # regression: --set inference.threshold=-3.73 replaced the preset and ran 512x1024
    synth = str(bundled_model(SYNTHETIC_MODEL_NAME))
    base = resolve_settings(synth)
    assert base.info.bundled_preset == "synthetic"
    assert base.inference.input_size == (128, 256) and base.threshold == pytest.approx(-3.73)
    assert base.source("input_size").startswith("preset synthetic") and base.threshold_calibrated
    assert not base.warnings and base.info.kind == "pebal"
    s = settings_from_args(_args(overrides=["inference.threshold=-3.73"]), synth)
    assert s.inference == base.inference and s.source("threshold") == "--set"
    # a user config setting one key leaves every other of the preset's values alone
    s = resolve_settings(synth, [Layer("config x.yaml", {"inference": {"smooth_sigma": 2.0}}, explicit=False)])
    assert s.inference.input_size == (128, 256) and s.inference.smooth_sigma == 2.0
    assert s.threshold == pytest.approx(-3.73) and s.threshold_calibrated


def _road_record():
    from pebal_ros.calibration import read_calibration, sidecar_path
    return read_calibration(sidecar_path(bundled_model("pebal_espnetv2_road.pt")))


def test_default_model_is_the_calibrated_real_road_model() -> None:
    """No --model: the real-road model, at its preset's size, with the threshold of the record shipped beside it."""
    s = resolve_settings(None)
    assert s.model == bundled_model() == bundled_model("pebal_espnetv2_road.pt")
    assert s.runtime == "onnxruntime" and s.bundled and s.info.kind == "pebal" and s.info.arch == "espnetv2"
    assert s.inference.input_size == (256, 512)
    rec = _road_record()
    assert rec.target == "pixel_fpr" and rec.target_value == pytest.approx(0.001)
    assert s.threshold == pytest.approx(rec.threshold) and s.threshold_calibrated
    assert s.source("threshold").startswith("calibration file") and not s.warnings
    # a user's --set still wins over the shipped record
    t = settings_from_args(_args(overrides=["inference.threshold=-5.0"]), None)
    assert t.threshold == -5.0 and t.source("threshold") == "--set"


def test_bundled_inlier_model_is_a_plain_segmentation_network() -> None:
    s = resolve_settings(bundled_model("inlier_synthetic_espnetv2.pt"))
    assert s.info.kind == "segmentation" and s.inference.input_size == (128, 256)
    assert any("Energy baseline" in w for w in s.warnings)
    assert any("not calibrated" in w for w in s.warnings)   # the preset's threshold is the PEBAL model's


def test_calibration_record_then_user_file(ckpt: Path, tmp_path: Path) -> None:
    model = tmp_path / "c.pt"
    model.write_bytes(ckpt.read_bytes())
    write_calibration(model, Calibration(threshold=-4.2, target="pixel_fpr", target_value=0.001,
                                         model_sha256=file_sha256(model), frames=10, input_size=(H, W)))
    s = resolve_settings(model)
    assert s.threshold == -4.2 and s.source("threshold").startswith("calibration file")
    assert s.threshold_calibrated and not s.warnings and s.info.calibrated_threshold == -4.2
    cfg = tmp_path / "user.yaml"
    cfg.write_text(yaml.safe_dump({"inference": {"threshold": -6.0}}))
    s = settings_from_args(_args(config=cfg), model)
    assert s.threshold == -6.0 and s.source("threshold") == f"config {cfg}" and not s.warnings
    # at another input size the calibration may not hold: say so
    s = settings_from_args(_args(overrides=["inference.input_size=[32, 64]"]), model)
    assert any("calibration" in w and "64x96" in w for w in s.warnings)
    # a record for another file is ignored, with the reason
    model.write_bytes(model.read_bytes() + b"\0")
    s = resolve_settings(model)
    assert s.threshold == -5.0 and any("another model file" in w for w in s.warnings)


def test_onnx_metadata_baked_fields(tmp_path: Path) -> None:
    onnx = tiny_onnx(tmp_path / "tiny.onnx")
    s = resolve_settings(onnx)
    assert s.inference.input_size == (H, W) and s.source("input_size") == "ONNX metadata"
    assert s.threshold == -4.3 and not s.threshold_calibrated and s.runtime == "onnxruntime"
    # a file layer naming another size is ignored with a warning; an explicit one is refused
    s = resolve_settings(onnx, [Layer("preset espnetv2_cityscapes", {"inference": {"input_size": [512, 1024]}},
                                      explicit=False)])
    assert s.inference.input_size == (H, W) and any("baked in" in w and "ignored" in w for w in s.warnings)
    with pytest.raises(SettingsError, match="baked in.*re-export"):
        settings_from_args(_args(overrides=["inference.input_size=[512, 1024]"]), onnx)
    # the same value is fine, and the threshold is free
    s = settings_from_args(_args(overrides=[f"inference.input_size=[{H}, {W}]", "inference.threshold=-1"]), onnx)
    assert s.threshold == -1.0 and s.inference.input_size == (H, W)


def test_export_spec_reads_old_files_and_carries_the_new_keys() -> None:
    old = {"pebal.format": FORMAT_TAG, "pebal.image_size": "64x96", "pebal.threshold": "-4.0"}
    spec = ExportSpec.from_metadata(old)
    assert spec.model_kind == "" and spec.threshold_calibrated is False and spec.image_size == (64, 96)
    spec.model_kind, spec.threshold_calibrated, spec.threshold_source = "pebal", True, "calibration file x"
    back = ExportSpec.from_metadata(spec.to_metadata())
    assert (back.model_kind, back.threshold_calibrated, back.threshold_source) == ("pebal", True, "calibration file x")


@pytest.mark.slow   # one ESPNetv2 export: ~50 s on two busy cores
def test_cached_export_carries_what_the_model_is(ckpt: Path) -> None:
    from pebal_ros.graph.contract import read_spec
    from pebal_ros.open_model import cached_onnx

    s = settings_from_args(_args(overrides=["inference.threshold=-2.0"]), ckpt, runtime="onnxruntime")
    spec = read_spec(cached_onnx(s, quiet=True))
    assert spec.model_kind == "pebal" and spec.arch == "espnetv2" and spec.image_size == (H, W)
    assert spec.threshold == -2.0 and spec.threshold_calibrated and spec.threshold_source == "--set"
    # and the graph's own resolution reads it back
    s2 = resolve_settings(cached_onnx(s, quiet=True))
    assert s2.info.kind == "pebal" and s2.threshold_calibrated and s2.threshold == -2.0


def test_plain_segmentation_checkpoint_says_so(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_model("espnetv2", s=0.5)          # EdgeNets layout: channel 19 = background
    torch.save(net.state_dict(), tmp_path / "edgenets.pth")   # a bare state_dict, as EdgeNets ships
    s = resolve_settings(tmp_path / "edgenets.pth")
    assert s.info.kind == "segmentation" and s.source("threshold") == "default" and s.threshold == -10.0
    assert sum("Energy baseline" in w for w in s.warnings) == 1
    assert sum("pebal calibrate" in w for w in s.warnings) == 1
    assert "plain segmentation network" in s.info.summary()


# -- validation -----------------------------------------------------------------------------------
@pytest.mark.parametrize("override,needle", [
    ("inference.input_size=big", "inference.input_size must be [HEIGHT, WIDTH]"),
    ("inference.input_size=[0, 64]", "between 32 and"),
    ("inference.channel_order=gbr", "'rgb' or 'bgr'"),
    ("inference.std=[0.2, 0, 0.2]", "std must be positive"),
    ("inference.smooth_kernel=4", "odd positive"),
    ("inference.threshold=.nan", "finite"),
    ("inference.thresold=-3", "unknown key"),
])
def test_bad_values_are_refused(ckpt: Path, override: str, needle: str) -> None:
    with pytest.raises(SettingsError, match="invalid model settings") as err:
        settings_from_args(_args(overrides=[override]), ckpt)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_validate_inference_accepts_defaults() -> None:
    assert validate_inference(InferenceConfig()) == []


def test_cli_bad_settings_one_line_exit_2_no_export(tmp_path: Path, capsys) -> None:
    img = tmp_path / "i.png"
    cv2.imwrite(str(img), frames(1)[0][0])
    rc = main(["infer", str(img), "--out", str(tmp_path / "o"), "--set", "inference.input_size=big"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "inference.input_size must be [HEIGHT, WIDTH]" in err[0]
    assert not (tmp_path / "cache").exists() and not (tmp_path / "o").exists()   # no export started
    rc = main(["infer", str(img), "--out", str(tmp_path / "o"), "--config", "/nope.yaml"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["pebal infer: --config /nope.yaml: no such file"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("inference: [unclosed\n")
    rc = main(["demo", "--out", str(tmp_path / "d"), "--config", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"pebal demo: --config {bad}: not valid YAML (line 2)"]
    assert not (tmp_path / "d").exists()
    assert main(["export", "--model", str(bundled_model()), "--output", str(tmp_path / "x.onnx"),
                 "--set", "inference.channel_order=gbr"]) == 2
    assert "'rgb' or 'bgr'" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()


# -- safe loading ----------------------------------------------------------------------------------
class _Payload:
    """Unpickling this runs code: it writes the marker file (what an attacker's .pt would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.fixture()
def crafted(tmp_path: Path, ckpt: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned.txt"
    state = torch.load(ckpt, weights_only=True)
    state["meta"]["evil"] = _Payload(marker)
    path = tmp_path / "crafted.pt"
    torch.save(state, path)
    assert not marker.exists()
    return path, marker


def test_crafted_pickle_never_runs(crafted, tmp_path: Path, capsys) -> None:
    from pebal_ros.models import CheckpointError, load_model, read_checkpoint
    from pebal_ros.runtime import load_runtime

    path, marker = crafted
    with pytest.raises(CheckpointError, match="--unsafe-load-pickle"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_model(path)
    with pytest.raises(ValueError, match="refusing to unpickle"):
        load_runtime(path, kind="torch", device="cpu")
    # the node's loading function, even with the runtime forced to torch
    values = defaults()
    values.update(model=str(path), runtime="torch", device="cpu")
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        resolve_node_settings(values)
    img = tmp_path / "i.png"
    cv2.imwrite(str(img), frames(1)[0][0])
    assert main(["infer", str(img), "--out", str(tmp_path / "o"), "--model", str(path)]) == 2
    err = capsys.readouterr().err
    assert "refusing to unpickle" in err and "--unsafe-load-pickle" in err
    assert not marker.exists()
    # the opt-in does run it: the test's payload is real
    read_checkpoint(path, allow_unsafe=True)
    assert marker.read_text() == "pwned"


# -- one truth across infer, replay and the node ------------------------------------------------------
@pytest.mark.parametrize("model_kind", ["bundled", "checkpoint"])
def test_same_settings_in_infer_replay_and_node(model_kind: str, ckpt: Path) -> None:
    from pebal_ros.infer import add_arguments as infer_args
    from pebal_ros.replay.cli import add_arguments as replay_args

    model = None if model_kind == "bundled" else str(ckpt)
    extra = [] if model is None else ["--model", model]
    pi, pr = argparse.ArgumentParser(), argparse.ArgumentParser()
    infer_args(pi)
    replay_args(pr)
    ai = pi.parse_args(["x.png", "--out", "o", *extra])
    ar = pr.parse_args(["bag", "--out", "o", *extra])
    si = settings_from_args(ai, ai.model, {"threshold": ai.threshold, "min_region_area": ai.min_region_area},
                            runtime=ai.runtime)
    sr = settings_from_args(ar, ar.model, {"threshold": ar.threshold, "min_region_area": ar.min_region_area},
                            runtime=ar.runtime)
    values = defaults()
    values.update(model=model or "", device="cpu")
    sn = resolve_node_settings(values)
    assert si.inference == sr.inference == sn.inference
    assert si.runtime == sr.runtime == sn.runtime
    assert si.source("threshold") == sr.source("threshold") == sn.source("threshold")
    assert si.threshold_calibrated == sn.threshold_calibrated
    if model is None:
        assert sn.inference.input_size == (256, 512) and sn.threshold == pytest.approx(_road_record().threshold)


def test_same_outputs_through_infer_and_the_node_runtime(ckpt: Path, tmp_path: Path) -> None:
    from pebal_ros.open_model import open_runtime

    img = frames(1)[0][0]
    cv2.imwrite(str(tmp_path / "f.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    values = defaults()
    values.update(model=str(ckpt), device="cpu")
    runtime = open_runtime(resolve_node_settings(values))
    thr = float(np.median(runtime.infer(img, 0.0).score))    # a threshold that splits this random net's mask
    values["threshold"] = thr
    settings = resolve_node_settings(values)
    out = runtime.infer(img, settings.threshold)
    assert main(["infer", str(tmp_path / "f.png"), "--out", str(tmp_path / "o"), "--model", str(ckpt),
                 "--mask", "--device", "cpu", "--threshold", repr(thr)]) == 0
    mask = cv2.imread(str(tmp_path / "o" / "f_mask.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(mask, out.mask * 255) and 0.3 < out.mask.mean() < 0.7
    sem = cv2.imread(str(tmp_path / "o" / "f_semantic.png"))
    from pebal_ros.pipeline.visualize import colorize
    assert np.array_equal(cv2.cvtColor(sem, cv2.COLOR_BGR2RGB), colorize(out.semantic))


def test_node_parameters_are_the_explicit_layer(ckpt: Path) -> None:
    values = defaults()
    values.update(model=str(ckpt), device="cpu", threshold=-1.25, input_size="32x64")
    s = resolve_node_settings(values)
    assert s.threshold == -1.25 and s.source("threshold") == "node parameter" and s.threshold_calibrated
    assert s.inference.input_size == (32, 64) and s.source("input_size") == "node parameter"
    kv = dict(s.as_key_values())
    assert kv["setting_threshold"] == "-1.25 (node parameter)" and kv["threshold_calibrated"] == "yes"
    assert kv["setting_input_size"] == "32x64 (node parameter)" and kv["model_kind"] == "pebal"
    values.update(threshold=math.nan, input_size="")
    s = resolve_node_settings(values, s.info)         # the parameter-change path: file not re-read
    assert s.threshold == -5.0 and s.source("threshold") == "checkpoint meta" and not s.threshold_calibrated
    assert dict(s.as_key_values())["threshold_calibrated"] == "no"


def test_cli_layers_report_preset_errors() -> None:
    with pytest.raises(SettingsError, match="unknown preset 'nope'"):
        cli_layers(_args(preset="nope"))


def test_engine_sidecar_carries_the_model(tmp_path: Path) -> None:
    import json

    from pebal_ros.model_settings import read_model_info

    spec = ExportSpec(image_size=(256, 512), channel_order="bgr", threshold=-4.5, arch="espnetv2",
                      model_kind="pebal", threshold_calibrated=True, threshold_source="calibration file c.yaml",
                      extra={"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]})
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not deserialised here")
    (tmp_path / "m.engine.json").write_text(json.dumps({"channel_order": "bgr", "threshold": -4.5,
                                                        "model": spec.to_metadata()}))
    s = resolve_settings(engine)
    assert s.runtime == "tensorrt" and s.info.kind == "pebal" and s.threshold_calibrated
    assert s.inference.input_size == (256, 512) and s.inference.channel_order == "bgr"
    assert s.inference.mean == (0.5, 0.5, 0.5) and s.source("mean") == "engine sidecar"
    with pytest.raises(SettingsError, match="baked in"):
        settings_from_args(_args(overrides=["inference.channel_order=rgb"]), engine)
    # a sidecar of an older version: channel order and threshold only, and an honest warning
    (tmp_path / "m.engine.json").write_text(json.dumps({"channel_order": "rgb", "threshold": -4.5}))
    info = read_model_info(engine)
    assert info.kind == "" and info.stored == {"channel_order": "rgb", "threshold": -4.5}
    assert any("not calibrated" in w for w in resolve_settings(engine).warnings)


def test_replay_cli_runs_what_the_node_runs(ckpt: Path, tmp_path: Path) -> None:
    import json

    from test_replay_run import _read

    from pebal_ros.replay.recording import write_recording
    from pebal_ros.open_model import open_runtime

    imgs = frames(3)
    write_recording(tmp_path / "bag", imgs)
    values = defaults()
    values.update(model=str(ckpt), device="cpu")
    runtime = open_runtime(resolve_node_settings(values))
    thr = float(np.median(runtime.infer(imgs[1][0], 0.0).score))
    values["threshold"] = thr
    node_settings = resolve_node_settings(values)
    assert main(["replay", str(tmp_path / "bag"), "--out", str(tmp_path / "r"), "--model", str(ckpt),
                 "--threshold", repr(thr), "--no-progress"]) == 0
    masks = _read(tmp_path / "r" / "result_bag")["/pebal/anomaly_mask"]
    for (img, _), (_, msg) in zip(imgs, masks):
        assert np.array_equal(msg.data.reshape(H, W), runtime.infer(img, node_settings.threshold).mask * 255)
    det = json.loads((tmp_path / "r" / "report" / "summary.json").read_text())["deterministic"]
    assert det["threshold"] == thr and det["threshold_source"] == "command-line flag"
    assert det["model_settings"]["values"]["setting_input_size"] == f"{H}x{W} (checkpoint meta)"
    assert "from command-line flag" in (tmp_path / "r" / "report" / "report.html").read_text()
