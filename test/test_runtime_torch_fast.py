"""The PyTorch runtime's fast path: channels_last, torch.compile, CUDA graphs, FP16.

On the CPU, channels_last and compile must give the eager outputs (layout and fusion change the
order of floating-point sums, so the score equal to 1e-6 relative, the argmax and mask essentially
identical).
The CUDA-graph and FP16 paths run where a GPU exists (the ``gpu`` tests; bench/gpu_check_fast.sh on a
lent GPU) and are compared with the eager FP32 path there: FP32 graph ≤ 1e-6 relative score, FP16 ≥ 99.9 %
semantic and mask agreement."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pebal_ros.graph.fused import reference_outputs
from pebal_ros.runtime.torch import TorchRuntime

from _export_nets import TinySegNet

H, W = 48, 64


@pytest.fixture(scope="module")
def net():
    return TinySegNet(seed=5).eval()


def _images(n=3, h=H, w=W):
    rng = np.random.default_rng(11)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def _agree(a, b, rtol):
    """Score equal to float32 rounding (relative: energies reach |30|), decisions essentially identical."""
    assert (np.abs(a.score - b.score) <= rtol * np.abs(a.score) + rtol).all()
    assert (a.semantic == b.semantic).mean() >= 0.999 and (a.mask == b.mask).mean() >= 0.999


def test_defaults_on_cpu_are_the_plain_eager_path(net):
    d = TorchRuntime(net, device="cpu").describe()
    assert (d["channels_last"], d["cuda_graph"], d["compiled"], d["precision"]) == (False, False, False, "fp32")
    with pytest.raises(ValueError, match="cuda_graph=True needs CUDA"):
        TorchRuntime(net, device="cpu", cuda_graph=True)


def test_channels_last_matches_eager_and_reference(net):
    eager = TorchRuntime(net, device="cpu")
    nhwc = TorchRuntime(net, device="cpu", channels_last=True)
    assert nhwc.describe()["channels_last"] and nhwc.describe()["arch"] == eager.describe()["arch"]
    for image in _images():
        a, b = eager.infer(image, -3.0), nhwc.infer(image, -3.0)
        _agree(a, b, 1e-6)
        rsem, rscore, _ = reference_outputs(net, image, -3.0)
        assert np.abs(b.score - rscore).max() <= 1e-4 and (b.semantic == rsem).mean() >= 0.999


def test_results_of_successive_frames_do_not_alias(net):
    """A caller (the node's publisher, replay's writer) may still hold frame n while n+1 runs."""
    img1, img2 = _images(2)
    rt = TorchRuntime(net, device="cpu", channels_last=True)
    a = rt.infer(img1, 0.0)
    keep = a.score.copy()
    b = rt.infer(img2, 0.0)
    assert not np.shares_memory(a.score, b.score) and np.array_equal(a.score, keep)


@pytest.mark.slow
def test_compiled_matches_eager(net):
    pytest.importorskip("torch._inductor")
    eager = TorchRuntime(net, device="cpu")
    try:
        comp = TorchRuntime(net, device="cpu", compile=True)
        comp.infer(_images(1)[0], 0.0)
    except Exception as exc:    # no C++ toolchain for inductor here: say so rather than fail
        if "compiler" in str(exc).lower() or "cpp" in str(exc).lower():
            pytest.skip(f"torch.compile cannot build on this machine: {exc}")
        raise
    assert comp.describe()["compiled"]
    for image in _images():
        _agree(eager.infer(image, -3.0), comp.infer(image, -3.0), 1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_fp32_and_fp16_match_eager(net):
    torch.backends.cudnn.allow_tf32 = False           # compare true FP32 (TF32 moves argmax decisions)
    torch.backends.cuda.matmul.allow_tf32 = False
    eager = TorchRuntime(net, device="cuda", half=False, channels_last=False, cuda_graph=False)
    graph32 = TorchRuntime(net, device="cuda", half=False)
    graph16 = TorchRuntime(net, device="cuda")
    assert graph16.describe()["cuda_graph"] and graph16.describe()["channels_last"]
    for size in ((H, W), (64, 96), (H, W)):            # a new size re-captures; the old graph is reused
        for image in _images(3, *size):
            ref = eager.infer(image, -3.0)
            _agree(ref, graph32.infer(image, -3.0), 1e-6)
            f16 = graph16.infer(image, -3.0)
            assert (f16.semantic == ref.semantic).mean() >= 0.999 and (f16.mask == ref.mask).mean() >= 0.999
    assert len(graph32._graphs) == 2
    images = _images(4)
    for one, got in zip([eager.infer(im, -3.0) for im in images], graph16.infer_batch(images, -3.0)):
        assert (one.semantic == got.semantic).mean() >= 0.999 and (one.mask == got.mask).mean() >= 0.999


def test_batch_equals_frame_by_frame(net):
    """infer_batch (one call for several cameras) gives each camera exactly its own result."""
    rt = TorchRuntime(net, device="cpu")
    images = _images(3)
    batch = rt.infer_batch(images, -3.0)
    assert len(batch) == 3
    for image, got in zip(images, batch):
        one = rt.infer(image, -3.0)
        _agree(one, got, 1e-6)
        assert got.semantic.shape == (H, W) and got.score.dtype == np.float32
    with pytest.raises(ValueError, match="one size"):
        rt.infer_batch([images[0], _images(1, 32, 32)[0]], 0.0)
    assert rt.infer_batch([], 0.0) == []
