"""Engine cache keys and sidecars, trtexec command, calibration frames, and the clear errors where
there is no GPU/TensorRT (this machine has neither: nothing here mocks TensorRT)."""
from __future__ import annotations

import importlib.util
import json

import cv2
import numpy as np
import pytest

from pebal_ros.graph.engine_cache import (EngineCache, EngineKey, StaleEngineError, sha256_file,
                                           shapes_string, sidecar_path, verify_engine, write_sidecar)
from pebal_ros.graph.fused import build_fused
from pebal_ros.export.onnx import export_fused, read_spec
from pebal_ros.export.tensorrt import (calibration_frames, post_node_names, profile_shapes,
                                       trtexec_command)
from pebal_ros.runtime import RuntimeUnavailable, load_runtime

from _export_nets import TinySegNet

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("eng") / "tiny.onnx"
    export_fused(build_fused(TinySegNet().eval()), path, (32, 64))
    return path


def _key(**over):
    base = dict(onnx_sha256="a" * 64, tensorrt_version="10.3.0", gpu_name="Orin",
                compute_capability="8.7", precision="fp16", shapes=shapes_string((512, 1024)))
    base.update(over)
    return EngineKey(**base)


def test_sha256_is_the_file_digest(tmp_path):
    import hashlib
    p = tmp_path / "blob"
    data = np.random.default_rng(0).bytes(3 << 20)   # spans several read chunks
    p.write_bytes(data)
    assert sha256_file(p) == hashlib.sha256(data).hexdigest()


def test_key_digest_changes_with_every_field():
    k = _key()
    variants = [_key(onnx_sha256="b" * 64), _key(tensorrt_version="10.4.0"), _key(gpu_name="H100"),
                _key(compute_capability="9.0"), _key(precision="fp32"), _key(shapes=shapes_string((256, 512)))]
    digests = {k.digest()} | {v.digest() for v in variants}
    assert len(digests) == 7
    assert _key().digest() == k.digest()
    assert any("tensorrt_version" in d for d in k.differences(variants[1]))
    with pytest.raises(ValueError, match="precision"):
        _key(precision="bf8")


def test_shapes_string_static_and_dynamic():
    assert shapes_string((512, 1024)) == "image:512x1024x3"
    assert shapes_string(None, (256, 512), None, (1024, 2048)) == \
        "image:min=256x512x3,opt=1024x2048x3,max=1024x2048x3"
    with pytest.raises(ValueError):
        shapes_string(None)


def test_verify_refuses_foreign_and_stale_engines(tmp_path, onnx_file):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"serialized")
    with pytest.raises(StaleEngineError, match="refusing to load it blindly"):
        verify_engine(engine, "10.3.0", "Orin", "8.7")
    write_sidecar(engine, _key(onnx_sha256=sha256_file(onnx_file)), onnx_path=str(onnx_file))
    assert json.loads(sidecar_path(engine).read_text())["gpu_name"] == "Orin"
    verify_engine(engine, "10.3.0", "Orin", "8.7", onnx_file)          # matches: no error
    with pytest.raises(StaleEngineError, match=r"TensorRT 10\.3\.0, this is TensorRT 10\.5\.0.*pebal build-engine"):
        verify_engine(engine, "10.5.0", "Orin", "8.7")
    with pytest.raises(StaleEngineError, match=r"built for Orin \(sm 8\.7\).*H100"):
        verify_engine(engine, "10.3.0", "NVIDIA H100 80GB HBM3", "9.0")
    other = tmp_path / "other.onnx"
    other.write_bytes(onnx_file.read_bytes() + b"\0")
    with pytest.raises(StaleEngineError, match="different ONNX file"):
        verify_engine(engine, "10.3.0", "Orin", "8.7", other)
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(StaleEngineError, match="unreadable"):
        verify_engine(engine, "10.3.0", "Orin", "8.7")


def test_engine_cache_hits_only_exact_keys(tmp_path):
    cache = EngineCache(tmp_path)
    k = _key()
    assert cache.lookup(k) is None
    path = cache.path_for(k)
    path.write_bytes(b"e")
    assert cache.lookup(k) is None                   # no sidecar: not trusted
    write_sidecar(path, k)
    assert cache.lookup(k) == path
    assert cache.lookup(_key(tensorrt_version="10.4.0")) is None
    write_sidecar(path, _key(gpu_name="other"))      # tampered/mismatched sidecar
    assert cache.lookup(k) is None


def test_trtexec_command_static_and_dynamic(onnx_file):
    spec = read_spec(onnx_file)
    shapes = profile_shapes(spec)
    names = post_node_names(onnx_file)
    assert len(names) >= 8 and all(n.startswith("post/") for n in names)
    cmd = trtexec_command(onnx_file, "m.engine", "fp16", 2048, "timing.cache", shapes, fp32_layers=names)
    assert f"--onnx={onnx_file}" in cmd and "--fp16" in cmd and "--memPoolSize=workspace:2048" in cmd
    assert "--timingCacheFile=timing.cache" in cmd and "minShapes" not in cmd
    assert "--precisionConstraints=prefer" in cmd and f"{names[0]}:fp32" in cmd
    dyn = profile_shapes(type(spec)(image_size=None, min_hw=(256, 512), max_hw=(1024, 2048)), opt_hw=(512, 1024))
    cmd = trtexec_command("m.onnx", "m.engine", "fp32", 1024, None, dyn)
    assert "--minShapes=image:256x512x3" in cmd and "--optShapes=image:512x1024x3" in cmd
    assert "--maxShapes=image:1024x2048x3" in cmd and "--fp16" not in cmd
    with pytest.raises(ValueError, match="min <= opt <= max"):
        profile_shapes(type(spec)(image_size=None, min_hw=(256, 512), max_hw=(512, 512)), opt_hw=(1024, 1024))


def test_calibration_frames_resize_and_channel_order(tmp_path):
    img = np.zeros((20, 30, 3), np.uint8)
    img[..., 2] = 200                     # red in BGR storage
    cv2.imwrite(str(tmp_path / "a.png"), img)
    cv2.imwrite(str(tmp_path / "b.png"), img)
    rgb = list(calibration_frames(tmp_path, (10, 16), "rgb"))
    assert len(rgb) == 2 and rgb[0].shape == (10, 16, 3) and rgb[0][0, 0, 0] == 200
    bgr = list(calibration_frames(tmp_path, (10, 16), "bgr", limit=1))
    assert len(bgr) == 1 and bgr[0][0, 0, 2] == 200
    with pytest.raises(ValueError, match="no images"):
        list(calibration_frames(tmp_path / "empty_missing", (10, 16), "rgb"))


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here: the unavailable-path test does not apply")
def test_tensorrt_runtime_unavailable_names_the_onnx_alternative(tmp_path, onnx_file):
    import pebal_ros.runtime.tensorrt  # noqa: F401  importing must work without GPU/TensorRT
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    with pytest.raises(RuntimeUnavailable, match=r"\.onnx with ONNX Runtime"):
        load_runtime(engine)
    with pytest.raises(RuntimeUnavailable, match="ONNX Runtime for CPU"):
        load_runtime(engine, device="cpu")


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_build_engine_cli_without_gpu_prints_trtexec_and_fails_clearly(onnx_file, capsys):
    from pebal_ros.cli import main
    rc = main(["build-engine", "--onnx", str(onnx_file)])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "trtexec --onnx=" in out and "--fp16" in out
    assert "ONNX Runtime" in err
    assert main(["build-engine", "--onnx", str(onnx_file), "--print-trtexec", "--precision", "fp32"]) == 0
    assert "--fp16" not in capsys.readouterr().out


def test_build_mode_weak_strong_and_tensorrt11_errors():
    from pebal_ros.export.onnx import ExportSpec
    from pebal_ros.export.tensorrt import build_mode
    fp32, half = ExportSpec(image_size=(8, 8)), ExportSpec(image_size=(8, 8), net_dtype="float16")
    assert build_mode(fp32, "fp16", has_weak_fp16=True) == "weak"          # TensorRT 10
    assert build_mode(fp32, "int8", has_weak_fp16=True) == "weak"
    assert build_mode(half, "fp16", has_weak_fp16=True) == "strong"
    assert build_mode(half, "fp16", has_weak_fp16=False) == "strong"       # TensorRT 11
    assert build_mode(fp32, "fp32", has_weak_fp16=False) == "strong"
    with pytest.raises(ValueError, match="pebal export --half"):
        build_mode(fp32, "fp16", has_weak_fp16=False, trt_version="11.4.0")
    with pytest.raises(ValueError, match="INT8"):
        build_mode(fp32, "int8", has_weak_fp16=False, trt_version="11.4.0")
    with pytest.raises(ValueError, match="--precision fp16"):
        build_mode(half, "fp32", has_weak_fp16=True)
    shapes = ((8, 8, 3),) * 3
    cmd = trtexec_command("h.onnx", "h.engine", "fp16", 512, None, shapes, fp32_layers=["post/x"],
                          strongly_typed=True)
    assert "--stronglyTyped" in cmd and "--fp16" not in cmd and "layerPrecisions" not in cmd
