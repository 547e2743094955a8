"""load_runtime + the ONNX Runtime and PyTorch backends behind the one Runtime interface; bad
inputs and bad files get clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pebal_ros.graph.fused import build_fused, reference_outputs
from pebal_ros.export.onnx import export_fused, export_network_only
from pebal_ros.runtime import Runtime, load_runtime, runtime_kind
from pebal_ros.runtime.torch import TorchRuntime

from _export_nets import TinySegNet

H, W = 48, 64


@pytest.fixture(scope="module")
def net():
    return TinySegNet(seed=3).eval()


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory, net):
    path = tmp_path_factory.mktemp("rt") / "tiny.onnx"
    export_fused(build_fused(net), path, (H, W))
    return path


def _image(seed=0, h=H, w=W):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_kind_from_suffix_and_explicit():
    assert runtime_kind("a/b.engine") == "tensorrt" and runtime_kind("x.PLAN") == "tensorrt"
    assert runtime_kind("m.onnx") == "onnxruntime" and runtime_kind("m.pth") == "torch"
    assert runtime_kind("m.bin", kind="ort") == "onnxruntime"
    with pytest.raises(ValueError, match=r"\.engine.*\.onnx.*\.pt"):
        runtime_kind("model.tflite")
    with pytest.raises(ValueError, match="unknown runtime kind"):
        runtime_kind("m.onnx", kind="openvino")


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_runtime(tmp_path / "nope.onnx")


def test_onnx_runtime_interface_and_values(onnx_path, net):
    rt = load_runtime(onnx_path, device="cpu")
    assert isinstance(rt, Runtime)
    assert rt.name == "onnxruntime" and rt.input_size == (H, W) and rt.channel_order == "rgb"
    image = _image(1)
    out = rt.infer(image, -20.0)
    assert out.semantic.shape == out.score.shape == out.mask.shape == (H, W)
    assert out.semantic.dtype == np.uint8 and out.score.dtype == np.float32 and out.mask.dtype == np.uint8
    rsem, rscore, rmask = reference_outputs(net, image, -20.0)
    assert np.abs(out.score - rscore).max() <= 1e-3
    assert (out.semantic == rsem).mean() >= 0.9999 and (out.mask == rmask).mean() >= 0.999
    assert set(np.unique(out.mask)) <= {0, 1} and out.semantic.max() < 19
    d = rt.describe()
    assert d["runtime"] == "onnxruntime" and d["providers"] == ["CPUExecutionProvider"]


def test_onnx_outputs_fresh_by_default_reused_on_request(onnx_path):
    rt = load_runtime(onnx_path, device="cpu")
    a, b = rt.infer(_image(1), 0.0), rt.infer(_image(2), 0.0)
    assert not np.shares_memory(a.score, b.score) and not np.array_equal(a.score, b.score)
    rt2 = load_runtime(onnx_path, device="cpu", reuse_outputs=True)
    c, d = rt2.infer(_image(1), 0.0), rt2.infer(_image(2), 0.0)
    assert c.score is d.score  # zero per-frame allocations: the caller copies what it keeps
    np.testing.assert_array_equal(d.score, b.score)


def test_non_contiguous_input_accepted(onnx_path):
    rt = load_runtime(onnx_path, device="cpu")
    big = _image(4, H, 2 * W)
    view = big[:, ::2]
    np.testing.assert_array_equal(rt.infer(view, 0.0).score, rt.infer(np.ascontiguousarray(view), 0.0).score)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((H, W, 3), np.float32), "uint8"),
    (np.zeros((H, W), np.uint8), "HxWx3"),
    (np.zeros((H, W, 4), np.uint8), "HxWx3"),
    (np.zeros((H + 1, W, 3), np.uint8), "exported for"),
    ([[1, 2, 3]], "numpy array"),
])
def test_bad_images_raise_value_error(onnx_path, net, bad, match):
    for rt in (load_runtime(onnx_path, device="cpu"), TorchRuntime(net, device="cpu", input_size=(H, W))):
        with pytest.raises(ValueError, match=match):
            rt.infer(bad, 0.0)


def test_bad_onnx_files(tmp_path, net):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all")
    with pytest.raises(ValueError, match="junk.onnx"):
        load_runtime(junk)
    netonly = tmp_path / "netonly.onnx"
    export_network_only(net, netonly, (32, 32))
    with pytest.raises(ValueError, match="network-only"):
        load_runtime(netonly)
    import onnx
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(g), str(foreign))
    with pytest.raises(ValueError, match="not a pebal export"):
        load_runtime(foreign)


def test_torch_runtime_matches_onnx_runtime(onnx_path, net):
    trt_like = load_runtime(onnx_path, device="cpu")
    rt = TorchRuntime(net, device="cpu")
    assert rt.fused.net is not net        # private copy: FP16/device moves never touch the caller's net
    assert isinstance(rt, Runtime) and rt.input_size is None and rt.describe()["precision"] == "fp32"
    image = _image(5)
    a, b = rt.infer(image, -10.0), trt_like.infer(image, -10.0)
    assert np.abs(a.score - b.score).max() <= 1e-3
    assert (a.semantic == b.semantic).mean() >= 0.9999 and (a.mask == b.mask).mean() >= 0.999
    assert rt.infer(_image(6, 32, 40), 0.0).score.shape == (32, 40)  # any size
    with pytest.raises(ValueError, match="half=True needs CUDA"):
        TorchRuntime(net, device="cpu", half=True)


def test_torch_runtime_from_checkpoint(tmp_path):
    models = pytest.importorskip("pebal_ros.models")
    if not hasattr(models, "save_checkpoint"):
        pytest.skip("pebal_ros.models.save_checkpoint not available yet")
    torch.manual_seed(0)
    net = models.build_model("espnetv2", s=0.5)
    if not getattr(net, "has_abstention", False):
        net = models.add_abstention(net)
    ckpt = tmp_path / "m.pt"
    models.save_checkpoint(net.eval(), ckpt)
    assert load_runtime(ckpt, device="cpu").input_size == (512, 1024)   # the config's network size
    rt = load_runtime(ckpt, device="cpu", input_size=None)
    assert rt.name == "torch" and rt.input_size is None
    image = _image(7, 64, 128)
    out = rt.infer(image, -5.0)
    _, rscore, _ = reference_outputs(net.eval(), image, -5.0)
    assert np.abs(out.score - rscore).max() <= 1e-4
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.pt"):
        load_runtime(bad)


def test_cuda_requests_without_cuda_are_clear(onnx_path, net):
    import onnxruntime as ort
    from pebal_ros.runtime import RuntimeUnavailable
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(RuntimeUnavailable, match="no CUDA execution provider"):
            load_runtime(onnx_path, device="cuda")
    assert load_runtime(onnx_path, device="auto").describe()["providers"][-1] == "CPUExecutionProvider"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeUnavailable, match="device='cpu'"):
            TorchRuntime(net, device="cuda")
    with pytest.raises(ValueError, match="device must be"):
        load_runtime(onnx_path, device="tpu")


def test_onnx_cuda_graph_needs_cuda(onnx_path):
    import onnxruntime as ort
    from pebal_ros.runtime import RuntimeUnavailable
    with pytest.raises(ValueError, match="cuda_graph=True needs device='cuda'"):
        load_runtime(onnx_path, device="cpu", cuda_graph=True)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(RuntimeUnavailable, match="onnxruntime-gpu"):
            load_runtime(onnx_path, device="cuda", cuda_graph=True)


@pytest.mark.gpu
def test_onnx_cuda_graph_matches_cpu(onnx_path):
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu and a CUDA GPU")
    cpu = load_runtime(onnx_path, device="cpu")
    gpu = load_runtime(onnx_path, device="cuda", cuda_graph=True)
    for seed in range(4):                 # the first run captures, the rest replay
        image = _image(seed)
        a, b = cpu.infer(image, -5.0), gpu.infer(image, -5.0)
        assert np.abs(a.score - b.score).max() <= 1e-3
        assert (a.semantic == b.semantic).mean() >= 0.999 and (a.mask == b.mask).mean() >= 0.999
