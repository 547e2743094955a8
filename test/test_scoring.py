"""scoring.py against independent numpy/scipy/OpenCV computations in float64."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.special import logsumexp, softmax

from pebal_ros.scoring import (SCORERS, GaussianBlur, anomaly_score, free_energy, gaussian_kernel1d,
                               get_scorer, semantic_map, upsample_logits)


def _kernel_np(size: int, sigma: float) -> np.ndarray:
    """torchvision's _get_gaussian_kernel1d formula, in float64."""
    x = np.linspace(-(size - 1) / 2, (size - 1) / 2, size)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur_np(img: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """Explicit 2-D convolution with the outer-product kernel over a reflect-padded image
    (numpy "reflect" = torch "reflect": the edge pixel is not repeated)."""
    k2 = np.outer(_kernel_np(size, sigma), _kernel_np(size, sigma))
    r = size // 2
    padded = np.pad(img, r, mode="reflect")
    out = np.zeros_like(img, dtype=np.float64)
    h, w = img.shape
    for dy in range(size):
        for dx in range(size):
            out += k2[dy, dx] * padded[dy:dy + h, dx:dx + w]
    return out


@pytest.mark.parametrize("size,sigma", [(7, 1.0), (5, 0.8), (3, 2.0), (9, 1.5)])
def test_kernel_matches_torchvision_formula(size, sigma):
    k = gaussian_kernel1d(size, sigma).double().numpy()
    np.testing.assert_allclose(k, _kernel_np(size, sigma), rtol=1e-6)
    assert k.sum() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("size,sigma", [(0, 1.0), (4, 1.0), (-3, 1.0), (7, 0.0), (7, -1.0)])
def test_kernel_bad_args(size, sigma):
    with pytest.raises(ValueError):
        gaussian_kernel1d(size, sigma)


@pytest.mark.parametrize("size,sigma", [(7, 1.0), (5, 0.7), (3, 1.3)])
def test_blur_vs_explicit_convolution(size, sigma):
    rng = np.random.default_rng(0)
    x = rng.normal(-10, 3, (2, 3, 13, 17))
    got = GaussianBlur(size, sigma)(torch.from_numpy(x).float()).double().numpy()
    want = np.stack([np.stack([_blur_np(x[b, c], size, sigma) for c in range(3)]) for b in range(2)])
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)    # float32 arithmetic on |x| ~ 20
    # [B, H, W] input: same per-image result, shape preserved
    got3 = GaussianBlur(size, sigma)(torch.from_numpy(x[:, 0]).float()).double().numpy()
    np.testing.assert_allclose(got3, want[:, 0], rtol=0, atol=2e-5)


def test_blur_7_1_equals_scipy_mirror():
    """torch reflect padding == scipy.ndimage mode='mirror'; 7 taps == sigma 1, truncate 3."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 9, 11))
    got = GaussianBlur(7, 1.0)(torch.from_numpy(x)).numpy()     # float64 input
    want = np.stack([gaussian_filter(x[i], sigma=1.0, mode="mirror", truncate=3.0) for i in range(3)])
    # the module's coefficients are float32 (as for torchvision on float32 input): ~1e-8 relative
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
    # and it is NOT scipy's default 'reflect' (which repeats the edge pixel)
    other = np.stack([gaussian_filter(x[i], sigma=1.0, mode="reflect", truncate=3.0) for i in range(3)])
    assert np.abs(got - other).max() > 1e-3


def test_blur_keeps_constant_and_follows_dtype():
    x = torch.full((1, 8, 8), -7.25, dtype=torch.float64)
    y = GaussianBlur()(x)
    assert y.dtype == torch.float64
    assert torch.allclose(y, x, atol=1e-6)


def _logits(seed=0, b=2, h=6, w=7, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 20, h, w, generator=g, dtype=torch.float64) * scale + 4


def test_free_energy_vs_logsumexp():
    z = _logits()
    z[0, :, 0, 0] = 1000.0                      # overflow-prone: logsumexp must stay finite
    z[0, 19] += 50                              # abstention channel must not matter
    zn = z.numpy()
    for t in (1.0, 0.5, 2.0):
        got = free_energy(z, temperature=t).numpy()
        want = -t * logsumexp(zn[:, :19] / t, axis=1)
        np.testing.assert_allclose(got, want, rtol=1e-12)
    assert np.isfinite(free_energy(z).numpy()).all()


def test_semantic_map_ignores_abstention_channel():
    z = _logits(1)
    z[:, 19] = 1e4
    got = semantic_map(z).numpy()
    assert np.array_equal(got, z[:, :19].numpy().argmax(axis=1))
    assert got.max() < 19


def test_baselines_vs_numpy():
    z = _logits(2)
    z[:, 19] += 100                              # the abstention channel never enters a baseline
    zn = z.numpy()[:, :19]
    p = softmax(zn, axis=1)
    want = {
        "msp": -p.max(axis=1),
        "maxlogit": -zn.max(axis=1),
        "entropy": -(p * np.log(p)).sum(axis=1) / math.log(19),
        "energy": -logsumexp(zn, axis=1),
    }
    for name, ref in want.items():
        np.testing.assert_allclose(get_scorer(name)(z).numpy(), ref, rtol=1e-10, atol=1e-12, err_msg=name)


def test_scores_higher_for_flat_logits():
    confident = torch.zeros(1, 20, 4, 4, dtype=torch.float64)
    confident[:, 3] = 20.0
    flat = torch.zeros(1, 20, 4, 4, dtype=torch.float64)
    for name in ("msp", "maxlogit", "entropy", "energy", "pebal"):
        f = get_scorer(name)
        assert (f(flat) > f(confident)).all(), name


def test_get_scorer_names_and_error():
    assert get_scorer("Max_Logit") is SCORERS["maxlogit"]
    assert get_scorer("MSP") is SCORERS["msp"]
    with pytest.raises(ValueError, match="unknown scorer"):
        get_scorer("odin")


def test_anomaly_score_vs_independent_pipeline():
    """Bilinear upsampling (cv2.resize, half-pixel centres = align_corners=False), inlier free energy
    (scipy logsumexp), 7x7 sigma-1 reflect blur (explicit convolution)."""
    z = _logits(3, b=1, h=8, w=12).float()
    size = (32, 48)
    got = anomaly_score(z, size=size).double().numpy()[0]
    zn = z[0].double().numpy().transpose(1, 2, 0)                           # H, W, C
    up = np.stack([cv2.resize(zn[..., c], (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
                   for c in range(20)])
    energy = -logsumexp(up[:19], axis=0)
    want = _blur_np(energy, 7, 1.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    # without the blur it is the raw energy; pebal scorer == anomaly_score at native size
    raw = anomaly_score(z, size=size, kernel_size=1).double().numpy()[0]
    np.testing.assert_allclose(raw, energy, rtol=0, atol=1e-4)
    assert torch.equal(get_scorer("pebal")(z), anomaly_score(z))


def test_upsample_logits_noop_and_shape():
    z = _logits(4).float()
    assert upsample_logits(z, (6, 7)) is z
    assert upsample_logits(z, (12, 21)).shape == (2, 20, 12, 21)
