"""The ``runtime`` settings (precision, CUDA graph, torch.compile, threads): resolved with their
sources like every other setting, checked against the backend and device, and handed to the
runtime by open_model, from the CLIs (``--set runtime.x=y``, ``--precision``...) and the node
parameters alike. Everything here runs on the CPU; the CUDA paths themselves are checked by
test/test_runtime_torch_fast.py -m gpu (bench/gpu_check_fast.sh)."""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from test_model_settings import _checkpoint
from test_replay_helpers import H, W, frames, tiny_onnx

from pebal_ros.cli import main
from pebal_ros.config import RuntimeConfig, from_dict
from pebal_ros.model_settings import Layer, SettingsError, resolve_settings, settings_from_args
from pebal_ros.node.params import PARAMS, defaults, resolve_node_settings, settings_layers, validate
from pebal_ros.open_model import backend_options, open_runtime
from pebal_ros.runtime.common import RuntimeUnavailable


def _args(*overrides: str, config: Path | None = None, **flags) -> argparse.Namespace:
    return argparse.Namespace(preset=None, config=config, overrides=list(overrides), **flags)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ck") / "m.pt")


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory) -> dict[str, Path]:
    """The tiny fused graph as exported (FP32, static), and copies whose metadata say FP16 / dynamic
    size: the resolution reads only the metadata, so no second export is needed."""
    import onnx

    folder = tmp_path_factory.mktemp("onnx")
    files = {"fp32": tiny_onnx(folder / "fp32.onnx")}
    for name, key, value in (("fp16", "pebal.net_dtype", "float16"), ("dynamic", "pebal.image_size", "dynamic")):
        model = onnx.load(str(files["fp32"]))
        for prop in model.metadata_props:
            if prop.key == key:
                prop.value = value
        files[name] = folder / f"{name}.onnx"
        onnx.save(model, str(files[name]))
    return files


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PEBAL_CACHE", str(tmp_path / "cache"))


# -- resolution: values, sources, precedence -------------------------------------------------------
def test_defaults_are_auto_with_default_source(ckpt: Path) -> None:
    s = resolve_settings(ckpt)
    assert s.options == RuntimeConfig() and s.source("runtime.cuda_graph") == "default"
    assert s.summary().endswith("runtime torch on cpu")                # defaults add nothing to the line
    kv = dict(s.as_key_values())
    assert kv["setting_runtime_precision"] == "auto (default)" and kv["setting_runtime_threads"] == "0 (default)"


def test_layers_and_sources(ckpt: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "rt.yaml"
    # bare YAML on/off are booleans: a switch takes them as on/off
    cfg.write_text("runtime:\n  cuda_graph: off\n  threads: 3\n  precision: fp16\n")
    s = settings_from_args(_args(config=cfg), ckpt, device="cuda")
    assert (s.options.cuda_graph, s.options.threads, s.options.precision) == ("off", 3, "fp16")
    assert s.source("runtime.threads") == f"config {cfg}" and s.source("runtime.compile") == "default"
    # --set over the file, then the dedicated flags over --set; each names its origin
    s = settings_from_args(_args("runtime.precision=fp32", "runtime.compile=true", "runtime.cuda_graph=on",
                                 config=cfg, precision="fp16", cuda_graph=None, compile=None, threads=None),
                           ckpt, device="cuda")
    assert s.options.precision == "fp16" and s.source("runtime.precision") == "command-line flag"
    assert s.options.compile and s.source("runtime.compile") == "--set"
    assert s.options.cuda_graph == "on" and s.source("runtime.cuda_graph") == "--set"
    assert s.options.threads == 3 and s.source("runtime.threads") == f"config {cfg}"
    assert "[precision fp16 (command-line flag), cuda_graph on (--set), compile True (--set)" in s.summary()
    assert dict(s.as_key_values())["setting_runtime_compile"] == "True (--set)"


def test_switch_spellings() -> None:
    assert from_dict({"runtime": {"cuda_graph": True}}).runtime.cuda_graph == "on"
    assert from_dict({"runtime": {"cuda_graph": False}}).runtime.cuda_graph == "off"
    assert from_dict({"runtime": {"cuda_graph": "auto"}}).runtime.cuda_graph == "auto"
    with pytest.raises(ValueError, match="expected true/false"):
        from_dict({"runtime": {"compile": "maybe"}})


@pytest.mark.parametrize("override,needle", [
    ("runtime.precision=half", "runtime.precision must be one of auto, fp32, fp16, got 'half'"),
    ("runtime.cuda_graph=maybe", "runtime.cuda_graph must be one of auto, on, off, got 'maybe'"),
    ("runtime.threads=-2", "runtime.threads must be 0"),
    ("runtime.threads=two", "runtime.threads: expected an integer"),
    ("runtime.compiled=true", "unknown key(s) ['compiled']"),
    ("runtime=torch", "choose the backend with --runtime"),
])
def test_bad_values_one_line(ckpt: Path, override: str, needle: str) -> None:
    with pytest.raises(SettingsError) as err:
        settings_from_args(_args(override), ckpt)
    assert needle in str(err.value) and "\n" not in str(err.value)


# -- combinations that cannot work ------------------------------------------------------------------
def test_gpu_options_on_the_cpu_are_refused(ckpt: Path) -> None:
    with pytest.raises(SettingsError, match=r"runtime.cuda_graph=on \(--set\) needs a CUDA device, but the "
                                            r"device is cpu"):
        settings_from_args(_args("runtime.cuda_graph=on"), ckpt, device="cpu")
    with pytest.raises(SettingsError, match=r"runtime.precision=fp16 \(command-line flag\) needs a CUDA device"):
        settings_from_args(_args(precision="fp16"), ckpt, runtime="onnxruntime", device="cpu")
    # off / fp32 are always possible, and auto adapts
    s = settings_from_args(_args("runtime.cuda_graph=off", "runtime.precision=fp32"), ckpt, device="cpu")
    assert (s.options.cuda_graph, s.options.precision) == ("off", "fp32")


def test_options_of_another_backend(ckpt: Path, onnx_files) -> None:
    with pytest.raises(SettingsError, match="torch.compile, an option of the torch runtime; the onnxruntime"):
        settings_from_args(_args("runtime.compile=true"), None)       # the bundled model: ONNX Runtime
    with pytest.raises(SettingsError, match="static-size export; dynamic.onnx has dynamic"):
        settings_from_args(_args("runtime.cuda_graph=on"), onnx_files["dynamic"], device="cuda")
    # threads mean nothing to PyTorch: said, not silently dropped
    s = settings_from_args(_args("runtime.threads=2"), ckpt, device="cpu")
    assert any("runtime.threads=2 (--set) sets ONNX Runtime's thread pool; the torch runtime" in w
               for w in s.warnings)


def test_precision_of_an_onnx_file_is_baked(onnx_files) -> None:
    with pytest.raises(SettingsError) as err:
        settings_from_args(_args("runtime.precision=fp16"), onnx_files["fp32"], device="cuda")
    msg = str(err.value)
    assert "fp32.onnx has its network in FP32, baked in" in msg and "pebal export --half" in msg
    with pytest.raises(SettingsError, match="FP16, baked in .*without --half"):
        settings_from_args(_args(precision="fp32"), onnx_files["fp16"], device="cuda")
    # asking for what the file is, or auto, is fine (also on the CPU: the file decides there)
    assert settings_from_args(_args(precision="fp16"), onnx_files["fp16"], device="cpu").options.precision == "fp16"
    assert settings_from_args(_args(precision="fp32"), onnx_files["fp32"], device="cpu").options.precision == "fp32"


def test_engine_precision_comes_from_its_sidecar(onnx_files, tmp_path: Path) -> None:
    import json

    engine = tmp_path / "m.fp16.engine"
    engine.write_bytes(b"not run here")
    engine.with_name(engine.name + ".json").write_text(json.dumps({"precision": "fp16", "channel_order": "rgb"}))
    assert resolve_settings(engine, device="cuda").info.precision == "fp16"
    with pytest.raises(SettingsError, match=r"m.fp16.engine has its network in FP16.*rebuild it "
                                            r"\(pebal build-engine --precision fp32\)"):
        resolve_settings(engine, [Layer("--set", {"runtime": {"precision": "fp32"}})], device="cuda")
    with pytest.raises(SettingsError, match="TensorRT runtime runs its engine as built"):
        resolve_settings(engine, [Layer("--set", {"runtime": {"cuda_graph": "on"}})], device="cuda")


# -- the options reach the runtime ---------------------------------------------------------------------
def test_backend_options(ckpt: Path) -> None:
    s = settings_from_args(_args(precision="fp16", cuda_graph="off", compile=True, threads=None), ckpt,
                           device="auto")
    device, opts, needs = backend_options(s)
    assert device == "cuda" and "runtime.precision=fp16 (command-line flag)" in needs   # FP16 = the GPU
    assert (opts["half"], opts["cuda_graph"], opts["compile"]) == (True, False, True)
    device, opts, needs = backend_options(resolve_settings(ckpt, device="auto"))
    assert device == "auto" and not needs and (opts["half"], opts["cuda_graph"], opts["compile"]) == (None, None, False)
    # ONNX Runtime: the setting's threads win over the caller's default; CUDA graph only when on
    s = settings_from_args(_args("runtime.cuda_graph=on"), ckpt, runtime="onnxruntime", device="cuda")
    assert backend_options(s, threads=5)[1] == {"cuda_graph": True, "threads": 5}
    s = settings_from_args(_args("runtime.threads=2"), ckpt, runtime="onnxruntime", device="cpu")
    assert backend_options(s, threads=5)[1] == {"cuda_graph": False, "threads": 2}


def test_describe_shows_what_runs(ckpt: Path, onnx_files) -> None:
    rt = open_runtime(settings_from_args(_args("runtime.threads=2"), onnx_files["fp32"], device="cpu"))
    d = rt.describe()
    assert (d["threads"], d["precision"], d["cuda_graph"]) == (2, "fp32", False)
    assert rt.session.get_session_options().intra_op_num_threads == 2
    rt = open_runtime(settings_from_args(_args(compile=True), ckpt, device="cpu"))
    d = rt.describe()
    assert (d["runtime"], d["compiled"], d["precision"], d["cuda_graph"], d["device"]) == (
        "torch", True, "fp32", False, "cpu")


def test_onnxruntime_spinning_bounded_by_default(onnx_files) -> None:
    """Idle intra-op workers spin SPIN_US microseconds before sleeping, not ONNX Runtime's much
    longer default (which holds a core the rest of the process and the machine need); 0 turns
    spinning off, None keeps ONNX Runtime's default; what the network computes does not change."""
    from pebal_ros.runtime.onnx import SPIN_US, OnnxRuntime

    def entry(rt, key):
        try:
            return rt.session.get_session_options().get_session_config_entry(key)
        except Exception:  # noqa: BLE001 - ONNX Runtime raises a plain error for an unset key
            return None

    image = frames(1)[0][0]
    outs = {}
    for spin in (None, 0, SPIN_US, 7):
        rt = OnnxRuntime(onnx_files["fp32"], device="cpu", spin_us=spin)
        assert entry(rt, "session.intra_op.spin_duration_us") == (str(spin) if spin else None)
        assert entry(rt, "session.intra_op.allow_spinning") == ("0" if spin == 0 else None)
        assert rt.describe()["spin_us"] == ("default" if spin is None else spin)
        outs[spin] = rt.infer(image, -1.0).copy()
    assert SPIN_US == 50 and OnnxRuntime(onnx_files["fp32"], device="cpu").spin_us == SPIN_US
    for out in outs.values():
        np.testing.assert_array_equal(out.score, outs[None].score)
        np.testing.assert_array_equal(out.semantic, outs[None].semantic)
    for bad in (-1, 1.5, True, "50"):
        with pytest.raises(ValueError, match="spin_us must be None or an integer"):
            OnnxRuntime(onnx_files["fp32"], device="cpu", spin_us=bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_gpu_option_with_device_auto_without_cuda(ckpt: Path) -> None:
    s = settings_from_args(_args("runtime.cuda_graph=on"), ckpt, device="auto")
    with pytest.raises(RuntimeUnavailable, match=r"runtime.cuda_graph=on \(--set\) needs CUDA, which is not "
                                                 r"available here .*leave it at auto"):
        open_runtime(s)


def test_fp16_checkpoint_on_onnxruntime_asks_for_a_half_export(ckpt: Path, monkeypatch) -> None:
    import pebal_ros.export.onnx as exporter
    from pebal_ros.open_model import cached_onnx, export_key

    calls: list[bool] = []
    monkeypatch.setattr(exporter, "export_checkpoint", lambda *a, half=False, **k: calls.append(half))
    fp32 = resolve_settings(ckpt, runtime="onnxruntime", device="cuda")
    fp16 = settings_from_args(_args(precision="fp16"), ckpt, runtime="onnxruntime", device="cuda")
    for s in (fp32, fp16):
        with pytest.raises(FileNotFoundError):       # the stand-in exporter writes nothing
            cached_onnx(s, quiet=True)
    assert calls == [False, True]
    # an FP16 export is its own cache entry, never confused with the FP32 one
    assert export_key(fp32, (H, W)) != export_key(fp16, (H, W))


@pytest.mark.slow
def test_fp16_checkpoint_on_onnxruntime_is_a_half_export(ckpt: Path) -> None:
    from pebal_ros.graph.contract import read_spec
    from pebal_ros.open_model import cached_onnx

    fp16 = cached_onnx(settings_from_args(_args(precision="fp16"), ckpt, runtime="onnxruntime", device="cuda"),
                       quiet=True)
    assert read_spec(fp16).net_dtype == "float16"


# -- command lines ----------------------------------------------------------------------------------
def test_cli_set_and_flags_reach_load_runtime(onnx_files, tmp_path: Path, monkeypatch, capsys) -> None:
    import pebal_ros.open_model as om

    seen: list[dict] = []
    real = om.load_runtime

    def spy(path, kind=None, device="auto", **opts):
        seen.append(dict(opts, device=device))
        return real(path, kind=kind, device=device, **opts)

    monkeypatch.setattr(om, "load_runtime", spy)
    img = tmp_path / "f.png"
    cv2.imwrite(str(img), frames(1)[0][0])
    assert main(["infer", str(img), "--out", str(tmp_path / "o"), "--model", str(onnx_files["fp32"]),
                 "--set", "runtime.threads=3"]) == 0
    assert seen[-1] == {"threads": 3, "cuda_graph": False, "device": "cpu"}
    assert "[threads 3 (--set)]" in capsys.readouterr().out
    assert main(["infer", str(img), "--out", str(tmp_path / "o"), "--model", str(onnx_files["fp32"]),
                 "--set", "runtime.threads=3", "--threads", "1"]) == 0
    assert seen[-1]["threads"] == 1                                  # the flag over --set


def test_cli_impossible_combination_one_line_exit_2(onnx_files, ckpt: Path, tmp_path: Path, capsys) -> None:
    img = tmp_path / "f.png"
    cv2.imwrite(str(img), frames(1)[0][0])
    rc = main(["infer", str(img), "--out", str(tmp_path / "o"), "--model", str(onnx_files["fp32"]),
               "--precision", "fp16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "baked in" in err[0] and not (tmp_path / "o").exists()
    rc = main(["infer", str(img), "--out", str(tmp_path / "o"), "--cuda-graph", "on"])   # bundled, device cpu
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "needs a CUDA device" in err[0]
    assert not (tmp_path / "cache").exists()                          # refused before any export


def test_replay_and_calibrate_take_the_same_flags(ckpt: Path) -> None:
    from pebal_ros.calibrate.cli import add_arguments as calibrate_args
    from pebal_ros.replay.cli import add_arguments as replay_args

    for add, positional in ((replay_args, ["bag", "--out", "o"]), (calibrate_args, ["frames"])):
        p = argparse.ArgumentParser()
        add(p)
        a = p.parse_args([*positional, "--model", str(ckpt), "--threads", "4", "--no-compile",
                          "--set", "runtime.precision=fp32", "--cuda-graph", "off"])
        s = settings_from_args(a, a.model, runtime=a.runtime, device=a.device)
        assert (s.options.threads, s.options.compile, s.options.precision, s.options.cuda_graph) == (4, False,
                                                                                                     "fp32", "off")
        assert s.source("runtime.threads") == "command-line flag" and s.source("runtime.precision") == "--set"


def test_replay_threads_setting_over_its_default(onnx_files, tmp_path: Path, monkeypatch) -> None:
    """replay's own default (cores / jobs) applies only while runtime.threads is 0; the report says
    where the value came from."""
    import json
    import os

    import pebal_ros.open_model as om
    from pebal_ros.replay.recording import write_recording

    seen: list[dict] = []
    real = om.load_runtime

    def spy(path, kind=None, device="auto", **opts):
        seen.append(opts)
        return real(path, kind=kind, device=device, **opts)

    monkeypatch.setattr(om, "load_runtime", spy)
    write_recording(tmp_path / "bag", frames(1))
    base = ["replay", str(tmp_path / "bag"), "--model", str(onnx_files["fp32"]), "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert seen[-1]["threads"] == max(1, os.cpu_count() or 1)
    assert main([*base, "--out", str(tmp_path / "b"), "--set", "runtime.threads=1"]) == 0
    assert seen[-1]["threads"] == 1
    det = json.loads((tmp_path / "b" / "report" / "summary.json").read_text())["deterministic"]
    assert det["model_settings"]["values"]["setting_runtime_threads"] == "1 (--set)"


# -- node parameters ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,value,reason", [
    ("precision", "half", "must be one of"),
    ("cuda_graph", True, "must be a string"),      # an unquoted on/off from the command line
    ("cuda_graph", "yes", "must be one of"),
    ("compile", "true", "must be a bool"),
    ("threads", -1, r"in \[0, 1024\]"),
])
def test_node_parameters_validate(name: str, value, reason: str) -> None:
    import re
    msg = validate(name, value)
    assert msg is not None and name in msg and re.search(reason, msg), msg


def test_node_parameters_are_the_runtime_layer(ckpt: Path) -> None:
    for name in ("precision", "cuda_graph", "compile", "threads", "batch"):
        assert validate(name, PARAMS[name].default) is None and len(PARAMS[name].description) > 20
    values = defaults()
    values.update(model=str(ckpt), device="cpu", threads=2, precision="fp32", cuda_graph="off")
    assert settings_layers(values)[0].values["runtime"] == {"precision": "fp32", "cuda_graph": "off",
                                                            "compile": False, "threads": 2, "batch": "auto"}
    s = resolve_node_settings(values)
    assert s.options.threads == 2 and s.source("runtime.threads") == "node parameter"
    assert dict(s.as_key_values())["setting_runtime_precision"] == "fp32 (node parameter)"
    # what the node would load runs on the torch runtime with those options
    rt = open_runtime(s)
    assert (rt.describe()["precision"], rt.describe()["cuda_graph"]) == ("fp32", False)
    # an impossible combination: the node refuses the parameter change with this reason
    values.update(cuda_graph="on")
    with pytest.raises(SettingsError, match=r"runtime.cuda_graph=on \(node parameter\) needs a CUDA device"):
        resolve_node_settings(values)
    values.update(model="", cuda_graph="auto", compile=True)
    with pytest.raises(SettingsError, match="torch.compile"):
        resolve_node_settings(values)                # the bundled model runs on ONNX Runtime
    values.update(compile=False, batch="on")
    with pytest.raises(SettingsError, match="one frame per call"):
        resolve_node_settings(values)                # the fused graph has no batch dimension


def test_batch_switch_reaches_the_torch_runtime(ckpt: Path) -> None:
    """runtime.batch chooses whether several cameras share one network call (off by default on the CPU)."""
    from pebal_ros.runtime.base import supports_batch

    values = defaults()
    values.update(model=str(ckpt), device="cpu")
    assert not supports_batch(open_runtime(resolve_node_settings(values)))
    values.update(batch="on")
    s = resolve_node_settings(values)
    assert s.source("runtime.batch") == "node parameter" and supports_batch(open_runtime(s))
    with pytest.raises(SettingsError, match="runtime.batch must be one of"):
        resolve_node_settings({**values, "batch": "sometimes"})


def test_node_yaml_quotes_the_switch() -> None:
    """A bare on/off in the params file would be a bool, which rclpy refuses for a string parameter."""
    text = (Path(__file__).resolve().parents[1] / "config" / "detector.yaml").read_text()
    data = yaml.safe_load(text)["/**"]["ros__parameters"]
    assert data["cuda_graph"] == "auto" and 'cuda_graph: "auto"' in text


def test_outputs_identical_with_explicit_fp32_on_cpu(ckpt: Path) -> None:
    """fp32/off on the CPU are what auto runs there: same outputs, bit for bit."""
    img = frames(1)[0][0]
    a = open_runtime(resolve_settings(ckpt, device="cpu")).infer(img, -5.0)
    b = open_runtime(settings_from_args(_args(precision="fp32", cuda_graph="off"), ckpt, device="cpu")).infer(img, -5.0)
    assert np.array_equal(a.score, b.score) and np.array_equal(a.semantic, b.semantic)


# -- on a GPU (bench/gpu_check_fast.sh runs these) -------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_settings_choose_the_cuda_path(ckpt: Path, onnx_files) -> None:
    """auto on CUDA = FP16 in a CUDA graph; fp32/off = eager FP32. Their numeric agreement is
    test_runtime_torch_fast's subject; here a loose check that both ran the same model."""
    fast = open_runtime(resolve_settings(ckpt, device="auto"))
    eager = open_runtime(settings_from_args(_args(precision="fp32", cuda_graph="off"), ckpt, device="cuda"))
    assert (fast.describe()["precision"], fast.describe()["cuda_graph"]) == ("fp16", True)
    assert (eager.describe()["precision"], eager.describe()["cuda_graph"]) == ("fp32", False)
    for img, _ in frames(3):
        a, b = eager.infer(img, -5.0), fast.infer(img, -5.0)
        assert (a.semantic == b.semantic).mean() >= 0.99 and (a.mask == b.mask).mean() >= 0.99
    import onnxruntime as ort
    if "CUDAExecutionProvider" in ort.get_available_providers():
        rt = open_runtime(settings_from_args(_args(cuda_graph="on"), onnx_files["fp32"], device="auto"))
        assert rt.describe()["cuda_graph"] and "CUDAExecutionProvider" in rt.describe()["providers"]
        img = frames(1)[0][0]
        cpu = open_runtime(resolve_settings(onnx_files["fp32"], device="cpu")).infer(img, -4.3)
        assert np.abs(rt.infer(img, -4.3).score - cpu.score).max() <= 1e-3
