"""The PEBAL fine-tuning loss, as the official code computes it (tianyu0207/PEBAL).

``pebal_loss(logits, target)`` reproduces ``code/losses.py`` (``energy_loss`` and ``Gambler``)
combined as ``code/engine/trainer.py`` combines them, numerically; the published numbers come from
that code, not from the paper's equations. For logits ``z`` [B, C+1, H, W] (C = 19 inlier classes,
channel C = abstention) and targets ``t`` [B, H, W] (0..C-1 inlier, 254 anomaly, 255 void)::

    E      = -T * logsumexp(z[:, :C] / T)                       (T = 1; abstention channel excluded)
    a      = GaussianBlur(7, sigma=1, reflect)(logsumexp(z[:, :C]) ** 2)   per image, NOT detached
    p      = softmax(z) over all C+1 channels
    q_k    = p_k + p_C / a                                       (abstention-boosted probability)

    energy = 0.5 * (mean_in relu(E - m_in)^2 + mean_out relu(m_out - E)^2) + 5e-4 * ||E_out||_2
                 if the batch holds any anomaly pixel, else mean_in relu(E - m_in)^2
             + 3e-6 * (sum (E[i+1, j] - E[i, j])^2 + sum (E[i, j+1] - E[i, j])^2) / 2
    pal_inlier = -mean over non-void pixels of inlier images of log q_t
    pal_mixed  = -mean over non-void non-anomaly pixels of mixed images of log q_t
                 - 0.1 * mean over (anomaly pixel, k = 0..C-1) of log(clamp(q_k, min=1e-7))
    total  = pal_inlier + pal_mixed + 0.1 * energy

An image is "mixed" when any of its pixels is 254 (the official loader sets ``is_ood`` after the
crop); all means pool pixels over the images of their group (never per-image averages). The
energy term is computed once over the whole batch, inlier and mixed images together. "mean_in"
runs over every non-void non-anomaly pixel of the batch and "mean_out" over every anomaly pixel;
the smoothness sum runs over every pixel of the batch, void included, and its last row/column is
compared with itself (difference 0). ``log q`` is evaluated in log space
(``logaddexp(log p_k, log p_C - log a)``), identical in value to the official
``log(p_k + p_C / a)`` but free of underflow to ``log 0``.

Differences from the paper (eqs. 2-8), all following the official code:

=====================  ===========================================  =====================================
term                   paper                                        official (implemented here)
=====================  ===========================================  =====================================
PAL (eq. 3)            ``log(f_y + f_{Y+1} / a)`` on logits f,      on softmax probabilities p; summed
                       summed over pixels                           pixels replaced by pooled means
PAL, anomaly pixels    target y = Y+1 (the abstention class)        mean over the 19 inlier k of
                                                                    ``log(clamp(p_k + p_19/a, 1e-7))``,
                                                                    weight 0.1, on top of the inlier
                                                                    PAL of the same image
penalty a (eq. 5)      ``a = E^2`` per pixel                        ``GaussianBlur(7, 1)(E^2)``, not
                                                                    detached (gradients flow through a)
EBM (eqs. 6, 7)        sums over pixels, ``lambda`` per image set   means over pixels of the batch;
                                                                    0.5 * (in + out) when the batch has
                                                                    anomaly pixels, in alone otherwise
lambda (eq. 2)         0.1 (Fishyscapes), 0.01 (LostAndFound)       0.1, and it also scales the
                                                                    regularisers below
smoothness (eq. 8)     ``beta1 * sum |E_w - E_N(w)|``, beta1=5e-4   ``3e-6 * sum (dE)^2 / 2`` (squared,
                                                                    forward neighbours, whole batch)
sparsity (eq. 8)       ``beta2 * sum |E_w|`` over all pixels,       ``5e-4 * ||E_out||_2`` (L2 norm of
                       beta2 = 3e-6                                 the anomaly-pixel energies only)
=====================  ===========================================  =====================================

The paper's beta1/beta2 values are swapped relative to the code (3e-6 is the smoothness weight in
the code); with the 0.1 factor the effective weights are 3e-7 and 5e-5.

Deliberate deviations from the official code, only where it would produce NaN or crash:

* A group without pixels contributes 0 instead of ``mean([]) = NaN``: a batch with no inlier image
  (the official ``Gambler`` on an empty sub-batch), a mixed image whose non-anomaly pixels are all
  void, a batch whose only labelled pixels are anomalies (empty ``E_in``).
* A batch without any labelled (non-void) pixel returns ``total = 0`` (still attached to the graph,
  so ``backward()`` runs and DistributedDataParallel sees zero gradients); every term is 0.
* ``a`` is clamped at the smallest normal float so ``p_C / a`` cannot divide by zero (the blurred
  square of a logsumexp is 0 only if 49 neighbouring logsumexps are exactly 0).
* Target values other than 0..C-1, 254 and 255 raise ``ValueError`` (the official ``gather`` would
  index out of range).
* Half-precision logits are promoted to float32 for the loss (the official code trains in float32).
"""
from __future__ import annotations

import dataclasses
import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from .config import LossConfig
from .labels import ANOMALY_LABEL, VOID_LABEL
from .scoring import GaussianBlur

__all__ = ["pebal_loss", "energy_terms", "TERMS"]

TERMS = ("total", "pal_inlier", "pal_mixed", "pal_mixed_in", "pal_mixed_out", "energy",
         "ebm_in", "ebm_out", "sparse", "smooth")


@lru_cache(maxsize=16)
def _penalty_blur(kernel_size: int, sigma: float, device: torch.device) -> GaussianBlur:
    return GaussianBlur(kernel_size, sigma).to(device)


def _resolve_cfg(cfg: LossConfig | None, overrides: dict) -> LossConfig:
    cfg = cfg if cfg is not None else LossConfig()
    if overrides:
        known = {f.name for f in dataclasses.fields(LossConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"pebal_loss: unknown override(s) {unknown}; known: {sorted(known)}")
        cfg = dataclasses.replace(cfg, **overrides)
    return cfg


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask``; 0 (attached to the graph) where the mask is empty."""
    n = mask.sum()
    total = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()
    return total / n.clamp(min=1).to(values.dtype)


def _check_inputs(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    if logits.dim() != 4:
        raise ValueError(f"logits must be [B, C, H, W], got shape {tuple(logits.shape)}")
    b, c, h, w = logits.shape
    if c != num_classes + 1:
        raise ValueError(f"logits have {c} channels; PEBAL needs {num_classes} inlier + 1 abstention "
                         f"= {num_classes + 1}")
    if target.dim() == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if tuple(target.shape) != (b, h, w):
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits {(b, h, w)} "
                         "(upsample logits to the label size first)")
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"target must be an integer tensor, got {target.dtype}")
    target = target.to(device=logits.device, dtype=torch.long)
    bad = (target >= num_classes) & (target != ANOMALY_LABEL) & (target != VOID_LABEL) | (target < 0)
    if bool(bad.any()):
        values = torch.unique(target[bad])[:10].tolist()
        raise ValueError(f"target holds values {values}; allowed: 0..{num_classes - 1}, "
                         f"{ANOMALY_LABEL} (anomaly), {VOID_LABEL} (void)")
    return target


def energy_terms(energy: torch.Tensor, target: torch.Tensor, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """The official ``energy_loss`` on a precomputed energy map [B, H, W]; see the module docstring."""
    is_out = target == ANOMALY_LABEL
    is_in = (target != ANOMALY_LABEL) & (target != VOID_LABEL)
    ebm_in = _masked_mean(F.relu(energy - cfg.m_in) ** 2, is_in)
    ebm_out = _masked_mean(F.relu(cfg.m_out - energy) ** 2, is_out)
    has_out = bool(is_out.any())
    if has_out:
        e_out = torch.where(is_out, energy, torch.zeros((), dtype=energy.dtype, device=energy.device))
        # sqrt has an infinite derivative at 0; the sum of squares is > 0 here unless every anomaly
        # energy is exactly 0, which the clamp guards.
        sparse = cfg.sparse_weight * (e_out ** 2).sum().clamp(min=torch.finfo(energy.dtype).tiny).sqrt()
        margin = 0.5 * (ebm_in + ebm_out)
    else:
        sparse = energy.new_zeros(())
        margin = ebm_in
    # Forward differences; the official code compares the last row/column with itself (0).
    dv = energy[:, 1:, :] - energy[:, :-1, :]
    dh = energy[:, :, 1:] - energy[:, :, :-1]
    smooth = cfg.smooth_weight * ((dv ** 2).sum() + (dh ** 2).sum()) / 2
    return {"energy": margin + sparse + smooth, "ebm_in": ebm_in, "ebm_out": ebm_out,
            "sparse": sparse, "smooth": smooth}


def pebal_loss(logits: torch.Tensor, target: torch.Tensor, cfg: LossConfig | None = None,
               **overrides) -> dict[str, torch.Tensor]:
    """PEBAL loss of ``logits`` [B, C+1, H, W] against ``target`` [B, H, W] (official behaviour).

    ``cfg`` defaults to ``LossConfig()``; keyword ``overrides`` replace single fields of it
    (e.g. ``ebm_weight=0.01``). Returns scalar tensors: ``total`` (differentiable), the PAL terms
    ``pal_inlier``, ``pal_mixed`` (= ``pal_mixed_in + pal_mixed_out``, the latter already weighted
    by ``outlier_pal_weight``) and the energy terms ``energy`` (unweighted; ``total`` adds
    ``ebm_weight * energy``), ``ebm_in``, ``ebm_out``, ``sparse``, ``smooth`` (the last two
    weighted), and the counts ``n_inlier_images`` / ``n_mixed_images``.
    """
    cfg = _resolve_cfg(cfg, overrides)
    nc = cfg.num_classes
    target = _check_inputs(logits, target, nc)
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    b, _, h, w = z.shape
    zero = z.sum() * 0.0  # a zero that keeps every term attached to the graph

    is_void = target == VOID_LABEL
    is_anom = target == ANOMALY_LABEL
    mixed_img = is_anom.flatten(1).any(dim=1)                       # [B]
    counts = {"n_inlier_images": (~mixed_img).sum(), "n_mixed_images": mixed_img.sum()}
    if bool(is_void.all()):
        return {name: zero.clone() for name in TERMS} | counts

    t = cfg.temperature
    lse = torch.logsumexp(z[:, :nc] / t, dim=1) if t != 1.0 else torch.logsumexp(z[:, :nc], dim=1)
    energy = -t * lse
    eterms = energy_terms(energy, target, cfg)

    # Penalty from the (temperature-1) inlier logsumexp, as the official Gambler computes it.
    lse1 = lse if t == 1.0 else torch.logsumexp(z[:, :nc], dim=1)
    penalty = lse1 ** 2
    if cfg.penalty_kernel > 1:
        pad = cfg.penalty_kernel // 2
        if h <= pad or w <= pad:
            raise ValueError(f"images of {h}x{w} are too small for the {cfg.penalty_kernel}x"
                             f"{cfg.penalty_kernel} reflect-padded penalty blur (need > {pad} pixels)")
        penalty = _penalty_blur(cfg.penalty_kernel, float(cfg.penalty_sigma), z.device)(penalty)
    log_a = penalty.clamp(min=torch.finfo(penalty.dtype).tiny).log()

    logp = torch.log_softmax(z, dim=1)
    log_boost = logp[:, nc] - log_a                                   # log(p_C / a), [B, H, W]
    safe_t = torch.where(is_void | is_anom, torch.zeros_like(target), target)
    logp_t = logp[:, :nc].gather(1, safe_t.unsqueeze(1)).squeeze(1)
    log_q_t = torch.logaddexp(logp_t, log_boost)                     # log(p_t + p_C / a)

    labelled = ~is_void & ~is_anom
    pal_inlier = -_masked_mean(log_q_t, labelled & ~mixed_img[:, None, None])
    pal_mixed_in = -_masked_mean(log_q_t, labelled & mixed_img[:, None, None])

    if bool(is_anom.any()):
        # Only the anomaly pixels: [N, C+1] rows, then all (pixel, k) pairs of the inlier k.
        logp_out = logp.permute(0, 2, 3, 1)[is_anom]
        log_q_out = torch.logaddexp(logp_out[:, :nc], log_boost[is_anom].unsqueeze(1))
        log_q_out = log_q_out.clamp(min=math.log(cfg.outlier_log_clamp))    # log(clamp(q, 1e-7))
        pal_mixed_out = -cfg.outlier_pal_weight * log_q_out.mean()
    else:
        pal_mixed_out = zero.clone()

    pal_mixed = pal_mixed_in + pal_mixed_out
    total = pal_inlier + pal_mixed + cfg.ebm_weight * eterms["energy"]
    return {"total": total, "pal_inlier": pal_inlier, "pal_mixed": pal_mixed,
            "pal_mixed_in": pal_mixed_in, "pal_mixed_out": pal_mixed_out, **eterms, **counts}
