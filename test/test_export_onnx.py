"""Fused module + ONNX export: numerics against an independent computation, onnx.checker,
TensorRT-10 operator allow-list, and ONNX Runtime vs PyTorch parity (issue 3 thresholds)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pebal_ros import scoring
from pebal_ros.graph.fused import FusedPebal, build_fused, reference_outputs, stable_free_energy
from pebal_ros.export.onnx import (ExportSpec, check_onnx, export_fused, parity_check, parse_hw,
                                   read_spec)
from pebal_ros.runtime.onnx import OnnxRuntime

from _export_nets import TinySegNet, small_espnetv2

SCORE_TOL, SEM_AGREE, MASK_AGREE = 1e-3, 0.9999, 0.999


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _run_fused(fused: FusedPebal, image: np.ndarray, thr: float):
    with torch.inference_mode():
        sem, score, mask = fused(torch.from_numpy(image), torch.tensor([thr]))
    return sem.numpy(), score.numpy(), mask.numpy()


def test_stable_free_energy_matches_logsumexp_and_survives_fp16():
    z = torch.randn(2, 20, 8, 9) * 8
    ref = scoring.free_energy(z)
    torch.testing.assert_close(stable_free_energy(z), ref, atol=1e-5, rtol=1e-6)
    big = torch.full((1, 20, 2, 2), 30.0, dtype=torch.float16)  # exp(30) overflows FP16
    naive = -torch.log(torch.exp(big[:, :19]).sum(1))
    assert not torch.isfinite(naive).all()
    e = stable_free_energy(big)
    assert torch.isfinite(e).all()
    assert abs(float(e[0, 0, 0]) - (-(30 + np.log(19)))) < 0.05


@pytest.mark.parametrize("order", ["rgb", "bgr"])
def test_fused_module_matches_official_style_steps(order):
    net = TinySegNet().eval()
    image = _image(48, 80, seed=1)
    fused = build_fused(net, channel_order=order)
    sem, score, mask = _run_fused(fused, image, -30.0)
    rsem, rscore, _ = reference_outputs(net, image, -30.0, channel_order=order)
    assert sem.dtype == np.uint8 and score.dtype == np.float32 and mask.dtype == np.uint8
    assert np.abs(score - rscore).max() < 1e-4
    assert (sem == rsem).mean() >= SEM_AGREE
    thr = float(np.median(score))
    mask_med = _run_fused(fused, image, thr)[2]
    np.testing.assert_array_equal(mask_med, (score > thr).astype(np.uint8))
    assert 0.4 < mask_med.mean() < 0.6 and mask_med.mean() != mask.mean()  # threshold is an input


def test_fast_variant_scores_at_network_resolution():
    net = TinySegNet().eval()
    image = _image(64, 96, seed=2)
    fused = build_fused(net, net_size=(32, 48), fast=True)
    sem, score, _ = _run_fused(fused, image, 0.0)
    # independent: normalise, resize to 32x48, energy + blur there, upsample the score bilinearly
    x = torch.from_numpy(image).permute(2, 0, 1).float().div(255)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    x = F.interpolate(x[None], size=(32, 48), mode="bilinear", align_corners=False)
    with torch.no_grad():
        z = net(x)
    low = scoring.anomaly_score(z)
    ref = F.interpolate(low[:, None], size=(64, 96), mode="bilinear", align_corners=False)[0, 0].numpy()
    assert np.abs(score - ref).max() < 1e-4
    ref_sem = z[0, :19].argmax(0).numpy().repeat(2, 0).repeat(2, 1)  # nearest x2
    assert (sem == ref_sem).mean() >= SEM_AGREE


def test_static_export_checker_ops_metadata_and_parity(tmp_path):
    net = TinySegNet().eval()
    fused = build_fused(net, channel_order="bgr")
    path = tmp_path / "tiny.onnx"
    spec = ExportSpec(image_size=(64, 128), threshold=-7.5, arch="tiny")
    export_fused(fused, path, (64, 128), spec)
    info = check_onnx(path)
    assert info["opset"] == 18
    assert {"ArgMax", "Pad", "Resize", "ReduceMax"} <= set(info["ops"])
    back = read_spec(path)
    assert back.image_size == (64, 128) and back.channel_order == "bgr" and back.threshold == -7.5
    _assert_uint8_only_meets_float_casts(path)
    r = parity_check(path, fused, (64, 128))
    assert r["score_max_abs_diff"] <= SCORE_TOL
    assert r["semantic_agreement"] >= SEM_AGREE and r["mask_agreement"] >= MASK_AGREE
    # and against the independent step-by-step computation, through the runtime interface
    image = _image(64, 128, seed=3)
    out = OnnxRuntime(path, device="cpu").infer(image, -7.5)
    rsem, rscore, rmask = reference_outputs(net, image, -7.5, channel_order="bgr")
    assert np.abs(out.score - rscore).max() <= SCORE_TOL
    assert (out.semantic == rsem).mean() >= SEM_AGREE and (out.mask == rmask).mean() >= MASK_AGREE


def _assert_uint8_only_meets_float_casts(path):
    """TensorRT uses UINT8 only at network I/O and converts it only to/from FP32/FP16: the image
    must feed a Cast to float, and each uint8 output must be a Cast of a float tensor."""
    import onnx
    from onnx import TensorProto
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    cast_to = {n.output[0]: next(a.i for a in n.attribute if a.name == "to") for n in model.graph.node
               if n.op_type == "Cast"}
    consumers = [n for n in model.graph.node if "image" in n.input]
    assert [n.op_type for n in consumers] == ["Cast"] and cast_to[consumers[0].output[0]] == TensorProto.FLOAT
    for name in ("semantic", "mask"):
        producer = next(n for n in model.graph.node if name in n.output)
        assert producer.op_type == "Cast" and types[producer.input[0]] == TensorProto.FLOAT, name


def test_torchscript_exporter_opset17(tmp_path):
    fused = build_fused(TinySegNet().eval())
    path = tmp_path / "ts.onnx"
    export_fused(fused, path, (32, 64), exporter="torchscript")
    assert check_onnx(path)["opset"] == 17
    _assert_uint8_only_meets_float_casts(path)
    r = parity_check(path, fused, (32, 64))
    assert r["score_max_abs_diff"] <= SCORE_TOL and r["semantic_agreement"] >= SEM_AGREE


def test_dynamic_export_runs_several_sizes_and_records_profile(tmp_path):
    net = TinySegNet().eval()
    fused = build_fused(net)
    path = tmp_path / "dyn.onnx"
    spec = export_fused(fused, path, (64, 96), dynamic=True, min_hw=(32, 32), max_hw=(128, 160))
    assert spec.image_size is None and spec.min_hw == (32, 32) and spec.opt_hw == (64, 96)
    rt = OnnxRuntime(path, device="cpu")
    assert rt.input_size is None
    for hw in ((64, 96), (40, 120)):
        image = _image(*hw, seed=hw[0])
        out = rt.infer(image, 0.0)
        _, rscore, _ = reference_outputs(net, image, 0.0)
        assert out.score.shape == hw and np.abs(out.score - rscore).max() <= SCORE_TOL
    with pytest.raises(ValueError, match="above the exported range"):
        rt.infer(_image(200, 64), 0.0)


@pytest.mark.slow
def test_cli_export_espnetv2_parity(tmp_path, capsys):
    """`pebal export` on a real (small) ESPNetv2 checkpoint, then the issue's parity thresholds."""
    net = small_espnetv2()
    from pebal_ros.cli import main
    from pebal_ros.models import load_model, save_checkpoint
    ckpt, path = tmp_path / "esp.pt", tmp_path / "espnetv2.onnx"
    save_checkpoint(net, ckpt)
    assert main(["export", "--model", str(ckpt), "--output", str(path), "--size", "128x256"]) == 0
    out = capsys.readouterr().out
    assert "opset 18" in out and "onnx.checker OK" in out and "-> OK" in out
    assert check_onnx(path)["opset"] == 18 and read_spec(path).arch == "espnetv2"
    fused = build_fused(load_model(str(ckpt)).eval())
    for seed in (0, 1):
        r = parity_check(path, fused, (128, 256), seed=seed)
        assert r["score_max_abs_diff"] <= SCORE_TOL, r
        assert r["semantic_agreement"] >= SEM_AGREE, r
        assert r["mask_agreement"] >= MASK_AGREE, r


def test_check_onnx_refuses_operators_tensorrt_cannot_parse(tmp_path):
    import onnx
    from onnx import TensorProto, helper
    node = helper.make_node("Unique", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ValueError, match="Unique"):
        check_onnx(path)


def test_parse_hw():
    assert parse_hw("512x1024") == (512, 1024)
    for bad in ("512", "0x4", "ax3"):
        with pytest.raises(ValueError):
            parse_hw(bad)


def test_dynamic_export_refuses_size_specialised_networks(tmp_path):
    from _export_nets import SizeSpecialisingNet
    path = tmp_path / "spec.onnx"
    with pytest.raises(ValueError, match="specialised the image height/width"):
        export_fused(build_fused(SizeSpecialisingNet().eval()), path, (60, 90), dynamic=True,
                     min_hw=(30, 30), max_hw=(120, 180))
    assert not path.exists()


def test_half_export_is_strongly_typed_fp16_with_fp32_scoring(tmp_path):
    import onnx
    net = TinySegNet().eval()
    fused = build_fused(net)
    path = tmp_path / "half.onnx"
    spec = export_fused(fused, path, (32, 64), half=True)
    assert spec.net_dtype == "float16" and read_spec(path).net_dtype == "float16"
    assert next(fused.net.parameters()).dtype == torch.float32      # caller's module untouched
    model = onnx.load(str(path))
    conv_w = {i.name: i.data_type for i in model.graph.initializer if ".net." in "." + i.name}
    assert conv_w and set(conv_w.values()) == {onnx.TensorProto.FLOAT16}
    outs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert outs == {"semantic": onnx.TensorProto.UINT8, "score": onnx.TensorProto.FLOAT,
                    "mask": onnx.TensorProto.UINT8}
    check_onnx(path)
    image = _image(32, 64, seed=9)
    out = OnnxRuntime(path, device="cpu").infer(image, 0.0)
    _, s32, _ = _run_fused(fused, image, 0.0)
    rel = np.abs(out.score - s32).max() / np.abs(s32).max()
    assert out.score.dtype == np.float32 and 0 < rel < 2e-3   # FP16 network: close, not identical


def test_export_prints_no_torchvision_notices(tmp_path, capfd):
    """torch's exporter logs four "torchvision is not installed" warnings per export; they are
    filtered on their own logger during the export only, and other messages of it still pass."""
    import importlib.util
    import logging

    from pebal_ros.export.onnx import _REGISTRY_LOGGER, _without_torchvision_notices

    export_fused(build_fused(TinySegNet().eval()), tmp_path / "t.onnx", (32, 64),
                 ExportSpec(image_size=(32, 64), arch="tiny"))
    assert "torchvision is not installed" not in capfd.readouterr().err
    # The filter itself, whether or not torchvision is installed here.
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(_REGISTRY_LOGGER)
    logger.addHandler(handler)
    try:
        with _without_torchvision_notices():
            logger.warning("torchvision is not installed. Skipping %s", "torchvision::nms")
            logger.warning("some other registry problem")
        logger.warning("torchvision is not installed. Skipping %s", "after the export")
    finally:
        logger.removeHandler(handler)
    assert seen == ["some other registry problem", "torchvision is not installed. Skipping after the export"]
    if importlib.util.find_spec("torchvision") is None:
        import torch.onnx._internal.exporter._registration as registration   # the source is still there
        assert registration.logger.name == _REGISTRY_LOGGER
