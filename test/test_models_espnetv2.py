"""ESPNetv2: key-for-key match with the real EdgeNets Cityscapes checkpoints, accuracy on real frames,
and the numerical pieces checked against independent computations."""
from __future__ import annotations

import math
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pebal_ros.labels import NUM_CLASSES, VOID_LABEL, color_to_train_id
from pebal_ros.models import IMAGENET_MEAN, IMAGENET_STD, build_model, count_parameters, load_model
from pebal_ros.models.espnetv2 import ImagePyramid, eesp_dilations, exportable_adaptive_avg_pool2d

# Parameter counts of the EdgeNets Cityscapes models (model zoo README: 0.25 M and 0.79 M).
EXPECTED_PARAMS = {1.0: 234_010, 2.0: 789_242}
MIN_PIXEL_ACC = 0.90
CITY = "cityscapes"


def weights_path(shared: Path, s: float) -> Path:
    return shared / "weights" / f"espnetv2_s_{s}_city_1024x512.pth"


@pytest.mark.parametrize("s", [1.0, 2.0])
def test_state_dict_matches_edgenets_checkpoint_key_for_key(shared_data: Path, s: float) -> None:
    raw = torch.load(weights_path(shared_data, s), map_location="cpu", weights_only=True)
    model = build_model("espnetv2", s=s)
    own = model.state_dict()
    assert list(own) == list(raw), "key names and order must be EdgeNets'"
    for k, v in raw.items():
        assert own[k].shape == v.shape, k
    model.load_state_dict(raw, strict=True)
    assert count_parameters(model) == EXPECTED_PARAMS[s]


@pytest.mark.parametrize("s", [1.0, 2.0])
def test_load_model_infers_width_from_gpu_saved_checkpoint(shared_data: Path, s: float) -> None:
    # These files were saved from CUDA tensors (legacy format); they must load on a CPU-only machine.
    model = load_model(weights_path(shared_data, s))
    assert model.arch == "espnetv2"
    assert model.arch_kwargs == {"s": s, "num_classes": 20, "base_dec_planes": 16, "abstention": False}
    assert not model.has_abstention and not model.training
    raw = torch.load(weights_path(shared_data, s), map_location="cpu", weights_only=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, raw[k]), k


@pytest.mark.parametrize("s", [0.5, 1.0, 1.25, 1.5, 2.0])
def test_forward_returns_logits_at_input_resolution(s: float) -> None:
    torch.manual_seed(0)
    model = build_model("espnetv2", s=s).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
        odd = model(torch.randn(1, 3, 50, 70))  # not a multiple of 16: decoder resizes to the skips
    assert out.shape == (2, 20, 64, 96)
    assert odd.shape == (1, 20, 50, 70)
    assert torch.isfinite(out).all()


def test_eesp_branch_dilations_follow_receptive_field_limit() -> None:
    # kernel sizes 3,5,7,9 -> dilations 1..4; above the limit a branch falls back to 3x3 (d=1).
    assert eesp_dilations(4, 13) == [1, 2, 3, 4]
    assert eesp_dilations(4, 9) == [1, 2, 3, 4]
    assert eesp_dilations(4, 7) == [1, 1, 2, 3]
    assert eesp_dilations(4, 5) == [1, 1, 1, 2]


@pytest.mark.parametrize("in_hw,out_hw", [((32, 64), (5, 7)), ((17, 23), (5, 5)), ((12, 30), (6, 10)),
                                            ((64, 128), (7, 13)), ((48, 96), (32, 64))])
def test_exportable_adaptive_pool_matches_torch(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *in_hw, dtype=torch.float64)
    torch.testing.assert_close(exportable_adaptive_avg_pool2d(x, out_hw), F.adaptive_avg_pool2d(x, out_hw))
    # and against the bin rule written out by hand (start=floor(i*n/m), end=ceil((i+1)*n/m))
    (h, w), (oh, ow) = in_hw, out_hw
    ref = torch.empty(2, 3, oh, ow, dtype=torch.float64)
    for i in range(oh):
        for j in range(ow):
            hs, he = (i * h) // oh, math.ceil((i + 1) * h / oh)
            ws, we = (j * w) // ow, math.ceil((j + 1) * w / ow)
            ref[..., i, j] = x[..., hs:he, ws:we].mean(dim=(-1, -2))
    torch.testing.assert_close(exportable_adaptive_avg_pool2d(x, out_hw), ref)


def test_image_pyramid_matches_repooling_from_full_image() -> None:
    # EdgeNets re-pools the full image at each level until heights match; the cached chain must agree.
    x = torch.randn(1, 3, 72, 100)
    pyramid = ImagePyramid(x)
    for target in (18, 9, 5):
        y = x
        while True:
            y = F.avg_pool2d(y, kernel_size=3, padding=1, stride=2)
            if y.shape[2] == target:
                break
        torch.testing.assert_close(pyramid.at_height(target), y)


def _preprocess(path: Path, size: tuple[int, int] = (1024, 512)) -> torch.Tensor:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    # EdgeNets resizes with PIL bilinear (antialiased); for this exact 2x reduction INTER_AREA is
    # the closest OpenCV filter.
    rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def _labelled_frames(shared: Path) -> list[tuple[str, Path, np.ndarray]]:
    city = shared / CITY
    color = cv2.imread(str(city / "frankfurt_000001_058914_gtFine_color.png"), cv2.IMREAD_COLOR)
    lab1 = color_to_train_id(cv2.cvtColor(color, cv2.COLOR_BGR2RGB))
    lab2 = cv2.imread(str(city / "frankfurt_000000_000294_gtFine_labelTrainIds_256x128.png"), cv2.IMREAD_UNCHANGED)
    return [
        ("frankfurt_000001_058914", city / "frankfurt_000001_058914_leftImg8bit.png", lab1),
        ("frankfurt_000000_000294", city / "frankfurt_000000_000294_leftImg8bit.png", lab2),
    ]


def pixel_accuracy(logits: torch.Tensor, label: np.ndarray) -> float:
    """Accuracy over labelled pixels (train ids 0-18) of the argmax over the 19 inlier channels,
    logits resized (bilinear) to the label's resolution."""
    up = F.interpolate(logits[:, :NUM_CLASSES], size=label.shape, mode="bilinear", align_corners=False)
    pred = up[0].argmax(0).numpy()
    valid = label != VOID_LABEL
    assert valid.sum() > 1000
    return float((pred[valid] == label[valid]).mean())


@pytest.mark.slow
@pytest.mark.parametrize("s", [2.0, 1.0])
def test_real_weights_segment_real_cityscapes_frames(shared_data: Path, s: float) -> None:
    model = load_model(weights_path(shared_data, s))
    accs = {}
    t0 = time.perf_counter()
    for name, image, label in _labelled_frames(shared_data):
        with torch.no_grad():
            logits = model(_preprocess(image))
        assert logits.shape == (1, 20, 512, 1024)
        accs[name] = pixel_accuracy(logits, label)
    print(f"ESPNetv2 s={s}: pixel accuracy {accs} ({time.perf_counter() - t0:.1f} s)")
    for name, acc in accs.items():
        assert acc >= MIN_PIXEL_ACC, f"s={s} {name}: pixel accuracy {acc:.4f} < {MIN_PIXEL_ACC}"


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [False, True])
def test_exports_to_onnx_and_matches_onnxruntime(tmp_path: Path, dynamo: bool) -> None:
    # The pyramid pooling's non-divisible adaptive pools must take the exportable path.
    ort = pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript", reason="the dynamo ONNX exporter needs onnxscript")
    torch.manual_seed(0)
    model = build_model("espnetv2", s=0.5).eval()
    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        ref = model(x).numpy()
    path = tmp_path / "espnetv2.onnx"
    kwargs = {"dynamo": True, "opset_version": 18} if dynamo else {"dynamo": False, "opset_version": 17}
    torch.onnx.export(model, (x,), str(path), input_names=["image"], output_names=["logits"], **kwargs)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"image": x.numpy()})[0]
    assert out.shape == (1, 20, 96, 160)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
