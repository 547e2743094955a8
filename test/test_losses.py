"""pebal_loss against independent computations.

1. ``_reference``: a slow float64 numpy transcription of the loss as issue 2 / the official code
   specify it: explicit loops over images and pixels, its own blur (scipy.ndimage.gaussian_filter,
   mode="mirror", which is torch's "reflect"), softmax and logsumexp from scipy.
2. ``_official_port``: the official ``energy_loss`` + ``Gambler`` + trainer combination re-typed
   operation by operation in torch (linear-space probabilities, boolean sub-batches, a 2-D 7x7
   kernel instead of torchvision), to pin down the grouping semantics on realistic sizes.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from scipy.special import logsumexp, softmax

from pebal_ros.config import LossConfig
from pebal_ros.losses import TERMS, pebal_loss

B, C, H, W = 3, 20, 8, 10
NC = 19


@pytest.fixture
def exact_blur(monkeypatch):
    """float64 tests compare to 1e-12; the shipped kernel (like torchvision's for float32 input) has
    float32 coefficients, 1.4e-8 off the exact Gaussian, so those tests use exact ones."""
    import pebal_ros.losses as losses
    from pebal_ros.scoring import GaussianBlur

    def exact(kernel_size, sigma, device):
        blur = GaussianBlur(kernel_size, sigma)
        r = torch.linspace(-(kernel_size // 2), kernel_size // 2, kernel_size, dtype=torch.float64)
        k = torch.exp(-0.5 * (r / sigma) ** 2)
        k = k / k.sum()
        blur.kx, blur.ky = k.view(1, 1, 1, -1), k.view(1, 1, -1, 1)
        return blur
    monkeypatch.setattr(losses, "_penalty_blur", exact)


# --------------------------------------------------------------------------------------------
# independent references

def _reference(z: np.ndarray, t: np.ndarray, cfg: LossConfig = LossConfig()) -> dict[str, float]:
    z = z.astype(np.float64)
    b, c, h, w = z.shape
    nc = cfg.num_classes
    T = cfg.temperature
    energy = np.zeros((b, h, w))
    lse = np.zeros((b, h, w))
    prob = np.zeros_like(z)
    for i in range(b):
        for y in range(h):
            for x in range(w):
                energy[i, y, x] = -T * logsumexp(z[i, :nc, y, x] / T)
                lse[i, y, x] = logsumexp(z[i, :nc, y, x])
                prob[i, :, y, x] = softmax(z[i, :, y, x])
    # gaussian_filter with sigma 1 and truncate 3 is the 7-tap kernel; "mirror" = torch "reflect".
    assert cfg.penalty_kernel == 7
    a = np.stack([gaussian_filter(lse[i] ** 2, sigma=cfg.penalty_sigma, mode="mirror", truncate=3.0)
                  for i in range(b)])

    e_in, e_out = [], []
    for i in range(b):
        for y in range(h):
            for x in range(w):
                if t[i, y, x] == 254:
                    e_out.append(energy[i, y, x])
                elif t[i, y, x] != 255:
                    e_in.append(energy[i, y, x])
    ebm_in = np.mean([max(0.0, e - cfg.m_in) ** 2 for e in e_in]) if e_in else 0.0
    ebm_out = np.mean([max(0.0, cfg.m_out - e) ** 2 for e in e_out]) if e_out else 0.0
    smooth_sum = 0.0
    for i in range(b):
        for y in range(h):
            for x in range(w):
                below = energy[i, min(y + 1, h - 1), x]   # last row compared with itself
                right = energy[i, y, min(x + 1, w - 1)]
                smooth_sum += (below - energy[i, y, x]) ** 2 + (right - energy[i, y, x]) ** 2
    smooth = cfg.smooth_weight * smooth_sum / 2
    if e_out:
        sparse = cfg.sparse_weight * math.sqrt(sum(e * e for e in e_out))
        energy_loss = 0.5 * (ebm_in + ebm_out) + sparse + smooth
    else:
        sparse = 0.0
        energy_loss = ebm_in + smooth

    mixed = [bool((t[i] == 254).any()) for i in range(b)]
    in_terms, mixed_in_terms, out_terms = [], [], []
    clamped = 0
    for i in range(b):
        for y in range(h):
            for x in range(w):
                lab = int(t[i, y, x])
                boost = prob[i, nc, y, x] / a[i, y, x]
                if lab == 255:
                    continue
                if lab == 254:
                    for k in range(nc):
                        q = prob[i, k, y, x] + boost
                        clamped += q < cfg.outlier_log_clamp
                        out_terms.append(math.log(max(q, cfg.outlier_log_clamp)))
                    continue
                val = math.log(prob[i, lab, y, x] + boost)
                (mixed_in_terms if mixed[i] else in_terms).append(val)
    pal_inlier = -np.mean(in_terms) if in_terms else 0.0
    pal_mixed_in = -np.mean(mixed_in_terms) if mixed_in_terms else 0.0
    pal_mixed_out = -cfg.outlier_pal_weight * np.mean(out_terms) if out_terms else 0.0
    pal_mixed = pal_mixed_in + pal_mixed_out
    return {"total": pal_inlier + pal_mixed + cfg.ebm_weight * energy_loss,
            "pal_inlier": pal_inlier, "pal_mixed": pal_mixed, "pal_mixed_in": pal_mixed_in,
            "pal_mixed_out": pal_mixed_out, "energy": energy_loss, "ebm_in": ebm_in,
            "ebm_out": ebm_out, "sparse": sparse, "smooth": smooth, "_clamped": clamped}


def _blur2d(x: torch.Tensor) -> torch.Tensor:
    """torchvision.transforms.GaussianBlur(7, 1): one 2-D conv with the outer-product kernel."""
    r = torch.linspace(-3, 3, 7, dtype=x.dtype)
    k1 = torch.exp(-0.5 * r ** 2)
    k1 = k1 / k1.sum()
    k2 = torch.outer(k1, k1)[None, None]
    y = F.pad(x[:, None], (3, 3, 3, 3), mode="reflect")
    return F.conv2d(y, k2)[:, 0]


def _official_port(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """trainer.py: loss1(in imgs, wrong_sample=False) [+ loss1(mixed imgs, True)] + 0.1 * energy_loss."""
    target = target.long().clone()
    energy = -torch.logsumexp(logits[:, :19], dim=1)
    ec_out = energy[target == 254]
    ec_in = energy[(target != 254) & (target != 255)]
    if ec_out.numel() == 0:
        e_loss = F.relu(ec_in + 12).pow(2).mean()
    else:
        e_loss = 0.5 * (F.relu(ec_in + 12).pow(2).mean() + F.relu(-6 - ec_out).pow(2).mean())
        e_loss = e_loss + 5e-4 * torch.norm(ec_out, dim=0).mean()
    a2 = torch.zeros_like(energy)
    a2[:, :-1] = energy[:, 1:]
    a2[:, -1] = energy[:, -1]
    b2 = torch.zeros_like(energy)
    b2[:, :, :-1] = energy[:, :, 1:]
    b2[:, :, -1] = energy[:, :, -1]
    e_loss = e_loss + 3e-6 * ((a2 - energy).pow(2).sum() + (b2 - energy).pow(2).sum()) / 2

    def gambler(pred, tgt, wrong_sample):
        p = torch.softmax(pred, dim=1)
        true_pred, reservation = p[:, :-1], p[:, -1]
        reward = _blur2d(torch.logsumexp(pred[:, :-1], dim=1).pow(2))
        reservation = reservation / reward
        if wrong_sample:
            mask = tgt == 254
            boosted = (true_pred + reservation.unsqueeze(1))[mask.unsqueeze(1).repeat(1, 19, 1, 1)]
            out = 0.1 * torch.clamp(boosted, min=1e-7).log()
            void = tgt == 255
            tgt = tgt.clone()
            tgt[void] = 0
            tgt[mask] = 0
            gin = torch.gather(true_pred, index=tgt.unsqueeze(1), dim=1).squeeze(1) + reservation
            gin = gin[(~mask) & (~void)].log()
            return -(gin.mean() + out.mean())
        mask = tgt == 255
        tgt = tgt.clone()
        tgt[mask] = 0
        g = torch.gather(true_pred, index=tgt.unsqueeze(1), dim=1).squeeze(1) + reservation
        return -g[~mask].log().mean()

    is_ood = (target == 254).flatten(1).any(1)
    loss = gambler(logits[~is_ood], target[~is_ood], False)
    if is_ood.any():
        loss = loss + gambler(logits[is_ood], target[is_ood], True)
    return loss + 0.1 * e_loss


# --------------------------------------------------------------------------------------------
# inputs

def _logits(seed: int, b: int = B, h: int = H, w: int = W) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Per-pixel offsets spread the free energy over roughly [-14, -4], so both margins are active
    # on some pixels and inactive on others.
    offset = torch.rand(b, 1, h, w, generator=g) * 8 + 3
    return torch.randn(b, C, h, w, generator=g) * 1.5 + offset


def _targets(seed: int, mixed: tuple[bool, ...], void_frac: float = 0.15) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1000)
    b = len(mixed)
    t = torch.randint(0, NC, (b, H, W), generator=g)
    t[torch.rand(b, H, W, generator=g) < void_frac] = 255
    for i, m in enumerate(mixed):
        if m:
            t[i, 2:5, 3 + i:7 + i] = 254
    return t


def _saturate_some_anomaly_pixels(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Make a few anomaly pixels so confident in class 0 that p_k + p_19/a < 1e-7 for k > 0."""
    z = z.clone()
    idx = (t == 254).nonzero()[:3]
    for i, y, x in idx.tolist():
        z[i, :, y, x] = -30.0
        z[i, 0, y, x] = 30.0
    return z


def _assert_terms(out: dict, ref: dict, rtol: float, atol: float = 1e-12) -> None:
    for name in TERMS:
        got = float(out[name].detach())
        assert math.isclose(got, ref[name], rel_tol=rtol, abs_tol=atol), (name, got, ref[name])


# --------------------------------------------------------------------------------------------
# tests

@pytest.mark.parametrize("mixed", [(False, True, False), (False, False, False), (True, True, True)],
                         ids=["both", "inlier_only", "mixed_only"])
@pytest.mark.parametrize("dtype,rtol", [
    (torch.float64, 1e-12), (torch.float32, 1e-5), (torch.float64, 1e-7),
], ids=["f64_exact_kernel", "f32", "f64"])
def test_terms_match_reference(mixed, dtype, rtol, request):
    if rtol == 1e-12:
        request.getfixturevalue("exact_blur")
    z = _logits(0)
    t = _targets(0, mixed)
    if any(mixed):
        z = _saturate_some_anomaly_pixels(z, t)
    z = z.to(dtype)
    ref = _reference(z.double().numpy(), t.numpy())
    if any(mixed):
        assert ref["_clamped"] > 0, "the 1e-7 clamp should be exercised"
        assert ref["ebm_out"] > 0 and ref["sparse"] > 0
    assert ref["ebm_in"] > 0 and ref["smooth"] > 0
    out = pebal_loss(z, t)
    _assert_terms(out, ref, rtol, atol=1e-7 if dtype == torch.float32 else 1e-13)
    assert int(out["n_mixed_images"]) == sum(mixed)
    assert int(out["n_inlier_images"]) == len(mixed) - sum(mixed)


def test_energy_loss_without_anomaly_has_no_half_factor():
    z = _logits(1).double()
    t = _targets(1, (False, False, False))
    out = pebal_loss(z, t)
    e = -torch.logsumexp(z[:, :19], 1)
    valid = t != 255
    ebm_in = (F.relu(e[valid] + 12) ** 2).mean()
    assert torch.allclose(out["ebm_in"], ebm_in)
    assert torch.allclose(out["energy"], ebm_in + out["smooth"])
    assert float(out["sparse"]) == 0.0 and float(out["ebm_out"]) == 0.0


def test_matches_official_port_on_crop_sized_batch(exact_blur):
    g = torch.Generator().manual_seed(5)
    z = torch.randn(4, C, 48, 64, generator=g, dtype=torch.float64) * 2 + 6
    t = torch.randint(0, NC, (4, 48, 64), generator=g)
    t[:, :5] = 255
    t[1, 10:30, 20:40] = 254
    t[3, 0:8, 0:12] = 254   # touches the border and a void band
    got = pebal_loss(z, t)["total"]
    want = _official_port(z, t)
    assert torch.allclose(got, want, rtol=1e-13, atol=0), (float(got), float(want))


def test_void_pixels_do_not_contribute_to_labelled_terms(exact_blur):
    z = _logits(2).double()
    t = _targets(2, (False, True, False), void_frac=0.0)
    t_void = t.clone()
    t_void[:, :, :3][t_void[:, :, :3] != 254] = 255
    z2 = z.clone()
    z2[:, :, :, :3] += torch.randn_like(z2[:, :, :, :3]) * 5   # changes only void pixels
    a, b = pebal_loss(z, t_void), pebal_loss(z2, t_void)
    # The penalty blur reaches 3 pixels, so the PAL terms of columns 3-5 legitimately see the
    # change through a; the margin terms must not.
    assert torch.allclose(a["ebm_in"], b["ebm_in"]) and torch.allclose(a["ebm_out"], b["ebm_out"])
    assert not torch.allclose(a["smooth"], b["smooth"])   # smoothness covers every pixel, void too
    ref = _reference(z2.numpy(), t_void.numpy())
    _assert_terms(b, ref, 1e-12)


def test_mixed_image_with_only_anomaly_and_void(exact_blur):
    z = _logits(3).double()
    t = torch.full((B, H, W), 255, dtype=torch.long)
    t[0] = _targets(3, (False,))[0]
    t[1, 2:6, 2:6] = 254                      # no inlier pixel on the mixed image
    out = pebal_loss(z, t)
    ref = _reference(z.numpy(), t.numpy())
    assert float(out["pal_mixed_in"]) == 0.0
    _assert_terms(out, ref, 1e-12)


def test_only_anomaly_pixels_no_nan(exact_blur):
    z = _logits(4).double().requires_grad_(True)
    t = torch.full((B, H, W), 255, dtype=torch.long)
    t[:, 3:6, 3:6] = 254
    out = pebal_loss(z, t)
    ref = _reference(z.detach().numpy(), t.numpy())
    _assert_terms(out, ref, 1e-12)
    assert float(out["ebm_in"].detach()) == 0.0 and float(out["pal_inlier"].detach()) == 0.0
    out["total"].backward()
    assert torch.isfinite(z.grad).all()


def test_all_void_batch_is_zero_with_gradient():
    z = _logits(5).requires_grad_(True)
    t = torch.full((B, H, W), 255, dtype=torch.uint8)
    out = pebal_loss(z, t)
    for name in TERMS:
        assert float(out[name].detach()) == 0.0, name
    out["total"].backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and float(z.grad.abs().sum()) == 0.0


def test_gradients_flow_and_are_finite_including_extreme_logits():
    z = _logits(6) * 1.0
    t = _targets(6, (False, True, True))
    z = _saturate_some_anomaly_pixels(z, t)
    z[0, :, 0, 0] = 80.0           # huge logits: softmax saturates, log space must stay finite
    z[2, :19, 4, 4] = -60.0        # tiny inlier probabilities everywhere but the abstention
    z.requires_grad_(True)
    out = pebal_loss(z, t)
    assert all(torch.isfinite(out[k]) for k in TERMS)
    out["total"].backward()
    assert torch.isfinite(z.grad).all()
    assert float(z.grad.abs().sum()) > 0
    # Every channel, the abstention one included, receives gradient.
    assert (z.grad.abs().sum(dim=(0, 2, 3)) > 0).all()


def test_gradcheck_float64_penalty_not_detached():
    """Analytic vs finite-difference gradients; a detached penalty a would fail this."""
    g = torch.Generator().manual_seed(7)
    z = (torch.randn(2, C, 5, 6, generator=g, dtype=torch.float64) * 1.5 + 6).requires_grad_(True)
    t = torch.randint(0, NC, (2, 5, 6), generator=g)
    t[1, 1:3, 2:4] = 254
    t[0, 0, :2] = 255
    assert torch.autograd.gradcheck(lambda x: pebal_loss(x, t)["total"], (z,), eps=1e-6, atol=1e-7,
                                      fast_mode=True)


def test_uint8_targets_and_channel_dim_accepted():
    z = _logits(8).double()
    t = _targets(8, (False, True, False))
    a = pebal_loss(z, t)["total"]
    b = pebal_loss(z, t.to(torch.uint8)[:, None])["total"]
    assert torch.equal(a, b)


def test_config_and_overrides_change_the_result(exact_blur):
    z = _logits(9).double()
    t = _targets(9, (False, True, False))
    base = pebal_loss(z, t)
    lf = pebal_loss(z, t, ebm_weight=0.01)
    assert torch.allclose(lf["total"], base["total"] - 0.09 * base["energy"])
    cfg = LossConfig(m_in=-8.0, m_out=-2.0, smooth_weight=1e-3, sparse_weight=0.0,
                     outlier_pal_weight=0.5, penalty_sigma=2.0)
    # penalty_sigma=2 with a 7-tap kernel is not scipy's truncate=3 kernel: check the rest by
    # reference with sigma 1, and that sigma changes the PAL terms.
    out = pebal_loss(z, t, cfg, penalty_sigma=1.0)
    ref = _reference(z.numpy(), t.numpy(), LossConfig(m_in=-8.0, m_out=-2.0, smooth_weight=1e-3,
                                                      sparse_weight=0.0, outlier_pal_weight=0.5))
    _assert_terms(out, ref, 1e-12)
    assert float(out["ebm_in"]) != float(base["ebm_in"])
    assert float(out["sparse"]) == 0.0
    s2 = pebal_loss(z, t, cfg)
    assert float(s2["pal_inlier"]) != float(out["pal_inlier"])
    no_blur = pebal_loss(z, t, penalty_kernel=1)   # the paper's unsmoothed a = E^2
    e2 = torch.logsumexp(z[:, :19], 1) ** 2
    p = torch.softmax(z, 1)
    valid = (t != 255) & ~(t == 254).flatten(1).any(1)[:, None, None]
    q = p.gather(1, t.clamp(max=18)[:, None])[:, 0] + p[:, 19] / e2
    assert torch.allclose(no_blur["pal_inlier"], -q[valid].log().mean())


def test_temperature_scales_energy_only(exact_blur):
    z = _logits(10).double()
    t = _targets(10, (False, True, False))
    out = pebal_loss(z, t, temperature=2.0)
    ref = _reference(z.numpy(), t.numpy(), LossConfig(temperature=2.0))
    _assert_terms(out, ref, 1e-12)


@pytest.mark.parametrize("bad,match", [
    (lambda z, t: (z[:, :19], t), "channels"),
    (lambda z, t: (z, t[:, :4]), "does not match"),
    (lambda z, t: (z, t.float()), "integer"),
    (lambda z, t: (z, torch.where(t == 3, torch.full_like(t, 100), t)), "values"),
    (lambda z, t: (z[:, :, :3, :3], t[:, :3, :3]), "too small"),
])
def test_bad_input_clear_errors(bad, match):
    z = _logits(11)
    t = _targets(11, (False, True, False))
    z, t = bad(z, t)
    with pytest.raises(ValueError, match=match):
        pebal_loss(z, t)


def test_unknown_override_rejected():
    with pytest.raises(TypeError, match="unknown override"):
        pebal_loss(_logits(12), _targets(12, (False, False, False)), ebm_wieght=0.2)


def test_half_precision_logits_promoted():
    z = _logits(13)
    t = _targets(13, (False, True, False))
    a = pebal_loss(z.bfloat16(), t)
    b = pebal_loss(z.bfloat16().float(), t)
    assert a["total"].dtype == torch.float32
    assert torch.equal(a["total"], b["total"])
