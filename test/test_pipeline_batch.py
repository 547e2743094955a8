"""Multi-camera batching: ``FramePipeline.process_batch`` (one inference call per tick) gives every
frame what ``process`` gives it alone, with the PyTorch runtime (a real batch dimension) and ONNX
Runtime (sequential calls, outputs reused by the runtime); ``runtime.base.infer_many`` underneath."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from rosbags.typesys import Stores, get_typestore

from pebal_ros.export.onnx import export_fused
from pebal_ros.graph.fused import build_fused
from pebal_ros.pipeline import FrameError, FramePipeline, MessageFactory, PipelineConfig
from pebal_ros.runtime import load_runtime
from pebal_ros.runtime.base import infer_many, supports_batch
from pebal_ros.runtime.torch import TorchRuntime

from _export_nets import TinySegNet

H, W = 48, 64          # the network input size
THR = -3.0
ALL = ("semantic", "semantic_color", "anomaly_score", "anomaly_mask", "overlay", "status")


@pytest.fixture(scope="module")
def net():
    return TinySegNet(seed=5).eval()


@pytest.fixture(scope="module")
def factory():
    return MessageFactory.for_rosbags(get_typestore(Stores.ROS2_HUMBLE))


@pytest.fixture(scope="module")
def onnx_static(tmp_path_factory, net):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_fused(build_fused(net), path, (H, W))
    return path


@pytest.fixture(scope="module")
def onnx_dynamic(tmp_path_factory, net):
    path = tmp_path_factory.mktemp("onnx") / "tiny_dyn.onnx"
    export_fused(build_fused(net), path, (64, 96), dynamic=True, min_hw=(32, 32), max_hw=(128, 160))
    return path


class Spy:
    """Counts the runtime calls process_batch makes (wraps the real methods)."""

    def __init__(self, rt):
        self.rt, self.single, self.batches = rt, 0, []
        infer, batch = rt.infer, getattr(rt, "infer_batch", None)

        def one(image, threshold):
            self.single += 1
            return infer(image, threshold)
        rt.infer = one
        if batch is not None:
            def many(images, threshold):
                self.batches.append(len(images))
                return batch(images, threshold)
            rt.infer_batch = many


def _frames(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def _msgs(factory, frames, encodings=None):
    encodings = encodings or ["rgb8"] * len(frames)
    out = []
    for k, (rgb, enc) in enumerate(zip(frames, encodings)):
        arr = rgb[..., ::-1] if enc == "bgr8" else rgb
        out.append(factory.image(factory.header(k, 0, f"cam{k}"), np.ascontiguousarray(arr), enc))
    return out


def _pipe(rt, factory, **cfg):
    return FramePipeline(rt, PipelineConfig(threshold=THR, min_region_area=1, **cfg), factory)


def _assert_same(one, got, exact):
    assert got.camera_size == one.camera_size and got.header.frame_id == one.header.frame_id
    assert set(got.messages) == set(one.messages)
    np.testing.assert_array_equal(got.outputs.semantic, one.outputs.semantic)
    if exact:
        np.testing.assert_array_equal(got.outputs.score, one.outputs.score)
        np.testing.assert_array_equal(got.outputs.mask, one.outputs.mask)
        for name in ("semantic", "anomaly_score", "anomaly_mask", "overlay"):
            a, b = got.messages[name], one.messages[name]
            assert (a.height, a.width, a.encoding) == (b.height, b.width, b.encoding)
            assert bytes(a.data) == bytes(b.data), name
        assert got.status.regions == one.status.regions
        assert got.status.anomaly_fraction == one.status.anomaly_fraction
    else:
        # a batched convolution sums in another order: float32 rounding, decisions unchanged
        np.testing.assert_allclose(got.outputs.score, one.outputs.score, rtol=1e-6, atol=1e-5)
        near = np.abs(one.outputs.score - THR) < 1e-4
        np.testing.assert_array_equal(got.outputs.mask[~near], one.outputs.mask[~near])
        assert got.status.anomaly_fraction == pytest.approx(one.status.anomaly_fraction, abs=1e-3)
    assert got.status.max_score == pytest.approx(one.status.max_score, rel=1e-6, abs=1e-5)
    assert got.status.image_width == one.status.image_width


def test_runtimes_declare_their_batch_capability(net, onnx_static, factory):
    ort = load_runtime(onnx_static, device="cpu")
    assert not supports_batch(ort) and ort.describe()["supports_batch"] is False
    forced = TorchRuntime(net, device="cpu", batch=True)
    assert supports_batch(forced) and forced.describe()["supports_batch"] is True
    # on the CPU a batch does not pay (see TorchRuntime): by default process_batch makes N calls
    cpu = TorchRuntime(net, device="cpu", input_size=(H, W))
    assert not supports_batch(cpu) and cpu.describe()["supports_batch"] is False
    spy = Spy(cpu)
    got = _pipe(cpu, factory).process_batch(_msgs(factory, _frames([(H, W)] * 3)))
    # one call per frame: no frame shared a network call
    assert spy.batches == [] and spy.single == 3 and [r.timings["batch"] for r in got] == [1, 1, 1]


def test_torch_batch_is_one_call_and_equals_frame_by_frame(net, factory):
    """Fixed input size, three cameras of three sizes (two resized, one already at 48x64, one BGR):
    one network call, and each frame gets what process() gives it alone."""
    rt = TorchRuntime(net, device="cpu", input_size=(H, W), batch=True)
    frames = _frames([(96, 128), (H, W), (72, 80)])
    msgs = _msgs(factory, frames, ["rgb8", "bgr8", "rgb8"])
    pipe = _pipe(rt, factory)
    singles = [pipe.process(m, outputs=ALL) for m in msgs]
    spy = Spy(rt)
    got = pipe.process_batch(msgs, outputs=[ALL] * 3)
    assert spy.batches == [3] and spy.single == 0
    for one, res in zip(singles, got):
        _assert_same(one, res, exact=False)
        assert res.timings["batch"] == 3 and res.timings["inference"] > 0
    assert len({r.timings["inference"] for r in got}) == 1       # the shared call's time


def test_any_size_runtime_groups_frames_by_size(net, factory):
    rt = TorchRuntime(net, device="cpu", batch=True)          # a bare module: input_size None
    assert rt.input_size is None
    frames = _frames([(H, W), (40, 56), (H, W), (H, W)], seed=3)
    pipe = _pipe(rt, factory, outputs=("anomaly_score", "status"))
    singles = [pipe.process(m) for m in _msgs(factory, frames)]
    spy = Spy(rt)
    got = pipe.process_batch(_msgs(factory, frames))
    assert spy.batches == [3] and spy.single == 1                 # 48x64 x3 together, 40x56 alone
    assert [r.timings["batch"] for r in got] == [3, 1, 3, 3]
    for one, res in zip(singles, got):
        _assert_same(one, res, exact=False)


@pytest.mark.parametrize("reuse", [False, True])
def test_onnx_sequential_equals_process_exactly(onnx_static, factory, reuse):
    """ONNX Runtime has no batch dimension: N calls, bit-identical to N process() calls; with
    reuse_outputs (the runtime writes every frame into the same three arrays) each frame still
    keeps its own arrays."""
    rt = load_runtime(onnx_static, device="cpu", reuse_outputs=reuse)
    frames = _frames([(96, 128), (H, W), (60, 90), (H, W)], seed=1)
    # BGR frames are converted for the RGB graph into a decode buffer, which must not be shared
    msgs = _msgs(factory, frames, ["bgr8", "bgr8", "rgb8", "bgr8"])
    # network resolution: the results hold the runtime's arrays themselves, no camera-size copy
    for resolution in ("camera", "network"):
        pipe = _pipe(rt, factory, output_resolution=resolution)
        singles = [_owned(pipe.process(m, outputs=ALL)) for m in msgs]   # before the next call reuses them
        spy = Spy(rt)
        got = pipe.process_batch(msgs, outputs=[ALL] * 4)
        assert spy.single == 4 and spy.batches == []
        for one, res in zip(singles, got):
            _assert_same(one, res, exact=True)
        for a in range(4):
            for b in range(a + 1, 4):
                for name in ("semantic", "score", "mask"):
                    assert not np.shares_memory(getattr(got[a].outputs, name), getattr(got[b].outputs, name))


def _owned(res):
    res.outputs = res.outputs.copy()
    return res


def test_bad_frame_in_the_middle_costs_only_itself(onnx_static, net, factory):
    good = _frames([(H, W), (96, 128)], seed=2)
    msgs = _msgs(factory, good)
    broken = factory.image(factory.header(7, 0, "broken"), good[0], "rgb8")
    broken.data = broken.data[:-5]                                # truncated payload
    unknown = factory.image(factory.header(8, 0, "odd"), good[0], "rgb8")
    unknown.encoding = "yuv422_weird"
    runtimes = (load_runtime(onnx_static, device="cpu", reuse_outputs=True),
                TorchRuntime(net, device="cpu", input_size=(H, W), batch=True))
    for rt in runtimes:
        pipe = _pipe(rt, factory)
        singles = [_owned(pipe.process(m)) for m in msgs]
        got = pipe.process_batch([msgs[0], broken, unknown, msgs[1]])
        assert isinstance(got[1], FrameError) and isinstance(got[2], FrameError)
        _assert_same(singles[0], got[0], exact=rt.name == "onnxruntime")
        _assert_same(singles[1], got[3], exact=rt.name == "onnxruntime")


def test_frame_the_runtime_refuses_gets_its_error(onnx_dynamic, factory):
    """A dynamic-size graph refuses a frame below its exported minimum (32x32): that frame gets the
    ValueError process() would raise, the others (two sizes, two calls) their results."""
    rt = load_runtime(onnx_dynamic, device="cpu")
    assert rt.input_size is None
    frames = _frames([(H, W), (16, 24), (70, 100)], seed=4)
    msgs = _msgs(factory, frames)
    pipe = _pipe(rt, factory)
    with pytest.raises(ValueError, match="below the exported range"):
        pipe.process(msgs[1])
    got = pipe.process_batch(msgs, received_at=0.0)
    assert isinstance(got[1], ValueError) and "below the exported range" in str(got[1])
    for k in (0, 2):
        _assert_same(pipe.process(msgs[k]), got[k], exact=True)
        assert got[k].timings["end_to_end"] > got[k].timings["total"]   # from received_at=0.0


def test_process_batch_argument_checks(onnx_static, factory):
    pipe = _pipe(load_runtime(onnx_static, device="cpu"), factory)
    msgs = _msgs(factory, _frames([(H, W), (H, W)]))
    assert pipe.process_batch([]) == []
    with pytest.raises(ValueError, match="one entry"):
        pipe.process_batch(msgs, outputs=("overlay", "status"))    # names, not one entry per message
    with pytest.raises(ValueError, match="received_at"):
        pipe.process_batch(msgs, received_at=[0.0])
    with pytest.raises(ValueError, match="unknown output"):
        pipe.process_batch(msgs, outputs=[("status",), ("nope",)])
    got = pipe.process_batch(msgs, outputs=[("status",), None])
    assert set(got[0].messages) == {"status"} and set(got[1].messages) == set(pipe.cfg.outputs)


def test_infer_many_batch_fallback_and_copies(net, onnx_static):
    frames = _frames([(H, W), (H, W), (32, 32), (H, W)], seed=6)
    rt = TorchRuntime(net, device="cpu", input_size=(H, W), batch=True)
    with pytest.raises(ValueError, match="exported for"):
        infer_many(rt, frames, THR)
    spy = Spy(rt)
    outs = infer_many(rt, frames, THR, errors="return")
    # the batched call is refused as a whole, then each frame alone finds the one bad frame
    assert spy.batches == [4] and spy.single == 4
    assert isinstance(outs[2], ValueError)
    for k in (0, 1, 3):
        ref = TorchRuntime(net, device="cpu").infer(frames[k], THR)
        np.testing.assert_array_equal(outs[k].score, ref.score)
    reused = load_runtime(onnx_static, device="cpu", reuse_outputs=True)
    a, b = reused.infer(frames[0], THR), reused.infer(frames[1], THR)
    assert np.shares_memory(a.score, b.score)                     # what infer_many must undo
    outs = infer_many(reused, [frames[0], frames[1], frames[3]], THR)
    fresh = load_runtime(onnx_static, device="cpu")
    for k, out in zip((0, 1, 3), outs):
        np.testing.assert_array_equal(out.score, fresh.infer(frames[k], THR).score)
    with pytest.raises(ValueError, match="errors must be"):
        infer_many(reused, frames, THR, errors="ignore")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fast_path_batch_matches_and_repeats(net, factory):
    """The CUDA default (FP16, channels_last, CUDA graphs): process_batch agrees with process, and
    alternating single frames with batches of two sizes (separate graphs and pinned buffers per
    shape) gives the same results every time."""
    rt = TorchRuntime(net, device="cuda", input_size=(H, W))
    frames = _frames([(96, 128), (H, W), (72, 80), (H, W)], seed=8)
    msgs = _msgs(factory, frames, ["bgr8", "rgb8", "bgr8", "rgb8"])
    pipe = _pipe(rt, factory, outputs=("anomaly_score", "status"))
    assert supports_batch(rt)                   # the CUDA default
    spy = Spy(rt)
    first = None
    for _ in range(3):
        singles = [pipe.process(m) for m in msgs]
        four, two = pipe.process_batch(msgs), pipe.process_batch(msgs[:2])
        for one, got in zip(singles, four):
            assert (one.outputs.semantic == got.outputs.semantic).mean() >= 0.999
            assert (one.outputs.mask == got.outputs.mask).mean() >= 0.999
        for a, b in zip(four[:2], two):
            assert (a.outputs.semantic == b.outputs.semantic).mean() >= 0.999
        if first is None:
            first = [r.outputs.copy() for r in four]
        else:
            for a, b in zip(first, four):       # a mixed-up buffer would be off by whole units
                np.testing.assert_allclose(a.score, b.score, atol=1e-4)
    assert spy.batches == [4, 2] * 3


def test_emit_per_camera_status_first_and_a_failing_publisher_costs_only_its_camera(net, factory):
    """The node publishes each camera's outputs from its own ``emit``: the status first, only that
    camera's messages, and a camera whose publishing fails does not lose the others their results."""
    rt = TorchRuntime(net, device="cpu", input_size=(H, W), batch=True)
    pipe = FramePipeline(rt, PipelineConfig(threshold=THR), factory)
    msgs = _msgs(factory, _frames([(H, W), (2 * H, 2 * W), (H, W)], seed=3))
    seen: list[list[tuple[str, object]]] = [[], [], []]

    def failing(name, m):
        raise RuntimeError("publisher destroyed")

    emits = [lambda n, m: seen[0].append((n, m)), failing, lambda n, m: seen[2].append((n, m))]
    res = pipe.process_batch(msgs, outputs=[ALL, ALL, ["status", "anomaly_mask"]], emit=emits)
    assert isinstance(res[1], RuntimeError) and "publisher destroyed" in str(res[1])
    assert [n for n, _ in seen[0]][0] == "status" and sorted(n for n, _ in seen[0]) == sorted(ALL)
    assert [n for n, _ in seen[2]] == ["status", "anomaly_mask"]
    for k in (0, 2):
        assert all(res[k].messages[n] is m for n, m in seen[k])
        assert res[k].messages["status"].header.frame_id == f"cam{k}"
        assert res[k].timings["batch"] == 3.0          # the failing camera still shared the inference
    with pytest.raises(ValueError, match="emit has 1 entries for 3"):
        pipe.process_batch(msgs, emit=[None])
