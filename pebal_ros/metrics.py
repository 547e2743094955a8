"""Anomaly-segmentation and semantic-segmentation metrics, as the official PEBAL evaluation computes them.

Anomaly metrics (``ood_metrics``, ``OODMetrics``), pixels pooled over the whole dataset:

* labels: 0 inlier, 1 anomaly (the positive class), 255 void (ignored); any other value is an error.
  Scores: higher = more anomalous.
* AUROC: ``sklearn.metrics.roc_auc_score``; AP: ``sklearn.metrics.average_precision_score``
  (anomaly positive), exactly as ``get_measures`` in the official ``utils/pyt_utils.py``.
* FPR95: the Hendrycks rule of the official ``fpr_and_fdr_at_recall``: among the distinct score
  thresholds up to the first one reaching full recall, take the one whose recall is closest to 0.95
  (ties, including a plateau of equal recall, go to the LOWEST threshold, i.e. the most false
  positives, because the official code runs ``argmin`` over the reversed curve); FPR95 is the
  fraction of inlier pixels scoring at or above it. This is not "the FPR at the first threshold
  with recall >= 0.95": it may pick a recall just below 0.95. (The official code appends a point
  with recall 1 and 0 false positives; it can never be selected, since the real curve's first
  reversed point already has recall exactly 1 and ``argmin`` keeps the first of equal values.)

``ood_metrics`` is exact (it sorts all pixels). ``OODMetrics`` streams: it accumulates, per label,
exact counts of scores quantised to ``num_bins`` (default 2^20) bins of one fixed dyadic lattice: at
level ``k`` bin ``i`` is ``[i * 2^k, (i + 1) * 2^k)``, and the histogram keeps the window of
``num_bins`` consecutive bins starting at the lowest score, at the finest level whose window holds
every score seen so far. A score outside the window coarsens it (bins merge in pairs, exactly: the
lattice's bins nest) and/or moves it. So the level and the bins depend only on the lowest and the
highest score ever seen, never on the order of the frames: two histograms of different frames merge
exactly (:meth:`OODMetrics.merge`) into the histogram one pass over all their frames gives, which
is what lets bags be scored on different machines and pooled (``pebal replay --ray``,
``pebal calibrate --ray``). The bin width is within 2x of (score span / num_bins). The metrics are
computed from the bin counts (sklearn with ``sample_weight`` for AUROC/AP). Quantisation only turns
pixel pairs that share a bin into ties, so the AUROC differs from the exact one by at most half the
fraction of (anomaly, inlier) pairs sharing a bin; that bound is reported as
``auroc_bin_error_bound``. Memory is 2 x num_bins int64 (16 MiB by default) plus one frame's
temporaries, whatever the number of frames: the LostAndFound test set (1,203 frames of 2048x1024)
fits easily in 24 GiB (bench/bench_metrics.py measures it). :meth:`OODMetrics.state` is a compact
(sparse) copy to store or send, :meth:`OODMetrics.from_state` its inverse.

Semantic metrics (``SegMetrics``): a 19x19 confusion matrix accumulated with ``np.bincount`` over
pixels whose ground truth is 0..18 (255 and every other value are ignored, as the official
``hist_info`` does); IoU_c = TP / (TP + FP + FN); mIoU is the mean over classes with a non-empty
union (a class absent from both prediction and ground truth of the whole set is excluded -- the
official ``np.nanmean`` convention; a class present in the ground truth but never predicted counts
as 0); pixel accuracy = correct / labelled pixels.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from .labels import NUM_CLASSES, TRAIN_ID_NAMES, VOID_LABEL

__all__ = ["ood_metrics", "fpr_at_recall", "OODMetrics", "SegMetrics", "RECALL_LEVEL"]

RECALL_LEVEL = 0.95


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):          # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _valid_pixels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Flatten, check and drop void: (scores of labelled pixels, bool is_anomaly)."""
    s = _to_numpy(scores)
    lab = _to_numpy(labels)
    if s.shape != lab.shape:
        raise ValueError(f"scores {s.shape} and labels {lab.shape} must have the same shape")
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    s, lab = s.ravel(), lab.ravel()
    keep = lab != VOID_LABEL
    s, lab = s[keep], lab[keep]
    bad = (lab != 0) & (lab != 1)
    if bad.any():
        raise ValueError(f"labels must be 0 (inlier), 1 (anomaly) or {VOID_LABEL} (void); "
                         f"found {np.unique(lab[bad])[:10].tolist()}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values on labelled pixels")
    return s, lab.astype(bool)


def fpr_at_recall(pos_counts: np.ndarray, neg_counts: np.ndarray, recall_level: float = RECALL_LEVEL) -> float:
    """Hendrycks/official FPR at ``recall_level`` from per-threshold counts.

    ``pos_counts[i]`` / ``neg_counts[i]`` are the anomaly / inlier pixels whose score equals the
    i-th distinct threshold, thresholds sorted in DESCENDING order.
    """
    tps = np.cumsum(pos_counts, dtype=np.int64).astype(np.float64)
    fps = np.cumsum(neg_counts, dtype=np.int64).astype(np.float64)
    if tps.size == 0 or tps[-1] == 0 or fps[-1] == 0:
        raise ValueError("FPR95 needs both anomaly and inlier pixels")
    recall = tps / tps[-1]
    last = int(np.searchsorted(tps, tps[-1]))          # first threshold with full recall
    dist = np.abs(recall[: last + 1] - recall_level)
    # argmin over the reversed curve = the last (lowest-threshold) index among equal minima.
    cut = last - int(np.argmin(dist[::-1]))
    return float(fps[cut] / fps[-1])


def _fpr_exact(s: np.ndarray, y: np.ndarray, recall_level: float) -> float:
    order = np.argsort(s, kind="mergesort")[::-1]
    s_sorted, y_sorted = s[order], y[order]
    starts = np.r_[0, np.flatnonzero(np.diff(s_sorted)) + 1]
    pos = np.add.reduceat(y_sorted.astype(np.int64), starts)
    total = np.diff(np.r_[starts, s_sorted.size])
    return fpr_at_recall(pos, total - pos, recall_level)


def ood_metrics(scores: Any, labels: Any, recall_level: float = RECALL_LEVEL) -> dict[str, float]:
    """Exact pooled AUROC, AP and FPR95 over pixels labelled 0/1 (255 ignored).

    ``scores``/``labels``: arrays (or torch tensors) of one shape, or equally long sequences of
    per-frame arrays. Raises ``ValueError`` when either class is absent.
    """
    if isinstance(scores, (list, tuple)):
        if len(scores) != len(labels):
            raise ValueError(f"{len(scores)} score maps but {len(labels)} label maps")
        pairs = [_valid_pixels(s, lab) for s, lab in zip(scores, labels)]
        s = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0)
        y = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0, bool)
    else:
        s, y = _valid_pixels(scores, labels)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"OOD metrics need both classes; got {n_pos} anomaly and {n_neg} inlier pixels")
    return {"auroc": float(roc_auc_score(y, s)), "ap": float(average_precision_score(y, s)),
            "fpr95": _fpr_exact(s, y, recall_level), "n_anomaly": n_pos, "n_inlier": n_neg}


def _level(smin: float, smax: float, num_bins: int) -> int:
    """The finest lattice level whose window of ``num_bins`` bins, starting at the bin of ``smin``,
    holds ``smax``; never finer than 2^-60 of the largest magnitude (bin indices stay int64-exact).
    A function of (smin, smax) alone: the heart of order independence."""
    mag = max(abs(smin), abs(smax))
    k = (math.frexp(mag)[1] if mag > 0 else 0) - 60
    span = smax - smin
    if span > 0:
        k = max(k, math.floor(math.log2(span / num_bins)) - 1)
    while math.floor(math.ldexp(smax, -k)) - math.floor(math.ldexp(smin, -k)) >= num_bins:
        k += 1
    return k


class OODMetrics:
    """Streaming pooled AUROC/AP/FPR95 with bounded memory (see the module docstring).

    ``update(score, label)`` takes one frame (HxW) or a batch ([B,H,W]) of float scores and 0/1/255
    labels; ``compute()`` returns the metrics so far; ``merge(other)`` adds another histogram's
    counts (exactly what updating with its frames would have done). ``score_range`` optionally seeds
    the range (scores outside it still widen it).
    """

    def __init__(self, num_bins: int = 1 << 20, score_range: tuple[float, float] | None = None,
                 recall_level: float = RECALL_LEVEL):
        if num_bins < 2 or num_bins & (num_bins - 1):
            raise ValueError(f"num_bins must be a power of two >= 2, got {num_bins}")
        self.num_bins = num_bins
        self.recall_level = recall_level
        self.counts = np.zeros((num_bins, 2), dtype=np.int64)   # [:, 0] inlier, [:, 1] anomaly
        self.smin, self.smax = math.inf, -math.inf              # extremes seen (or seeded)
        self.level: int | None = None                           # bin width 2^level
        self.base = 0                                           # lattice index of counts[0]
        self.doublings = 0                                      # times the bins were coarsened
        self._initial_range = score_range
        if score_range is not None:
            lo, hi = map(float, score_range)
            if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
                raise ValueError(f"score_range must be finite with hi > lo, got {score_range}")
            self._cover(lo, hi)

    @property
    def lo(self) -> float | None:
        return None if self.level is None else math.ldexp(float(self.base), self.level)

    @property
    def width(self) -> float | None:
        return None if self.level is None else math.ldexp(1.0, self.level)

    @property
    def hi(self) -> float:
        assert self.level is not None
        return math.ldexp(float(self.base + self.num_bins), self.level)

    def reset(self) -> None:
        self.__init__(self.num_bins, self._initial_range, self.recall_level)  # type: ignore[misc]

    def _cover(self, smin: float, smax: float) -> None:
        """Make the window hold [smin, smax] too: coarsen and/or move it (counts never lost)."""
        new_min, new_max = min(self.smin, smin), max(self.smax, smax)
        if new_min == self.smin and new_max == self.smax and self.level is not None:
            return
        level = _level(new_min, new_max, self.num_bins)
        base = math.floor(math.ldexp(new_min, -level))
        if self.level is not None and (level, base) != (self.level, self.base):
            old = np.flatnonzero(self.counts.any(axis=1))
            # Old bin i is lattice bin (base + i) at its level; its parent at the coarser level is
            # that index shifted right (floor division by a power of two, negatives included).
            idx = ((old + self.base) >> (level - self.level)) - base
            moved = np.zeros_like(self.counts)
            np.add.at(moved, idx, self.counts[old])
            self.counts = moved
            self.doublings += level - self.level
        self.smin, self.smax, self.level, self.base = new_min, new_max, level, base

    def update(self, score: Any, label: Any) -> None:
        s, y = _valid_pixels(score, label)
        if s.size == 0:
            return
        self._cover(float(s.min()), float(s.max()))
        assert self.level is not None
        idx = np.floor(np.ldexp(s.astype(np.float64), -self.level)).astype(np.int64)
        idx -= self.base
        np.clip(idx, 0, self.num_bins - 1, out=idx)
        # One bincount for both labels: index 2*bin + is_anomaly.
        self.counts += np.bincount(idx * 2 + y, minlength=2 * self.num_bins).reshape(-1, 2)

    def update_many(self, pairs: Iterable[tuple[Any, Any]]) -> None:
        for score, label in pairs:
            self.update(score, label)

    def merge(self, other: "OODMetrics") -> "OODMetrics":
        """Add ``other``'s counts: the result equals one histogram updated with both sets of frames."""
        if other.num_bins != self.num_bins:
            raise ValueError(f"cannot merge histograms of {other.num_bins} and {self.num_bins} bins")
        if other.level is None:
            return self
        self._cover(other.smin, other.smax)
        assert self.level is not None
        nz = np.flatnonzero(other.counts.any(axis=1))
        idx = ((nz + other.base) >> (self.level - other.level)) - self.base
        np.add.at(self.counts, idx, other.counts[nz])
        return self

    def state(self) -> dict[str, Any]:
        """A compact copy (the non-empty bins only) for storing or sending; see :meth:`from_state`."""
        nz = np.flatnonzero(self.counts.any(axis=1))
        return {"num_bins": self.num_bins, "recall_level": self.recall_level, "smin": self.smin,
                "smax": self.smax, "level": self.level, "base": self.base, "doublings": self.doublings,
                "bins": nz.astype(np.int64), "counts": self.counts[nz].copy()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "OODMetrics":
        m = cls(int(state["num_bins"]), recall_level=float(state["recall_level"]))
        if state["level"] is not None:
            m.smin, m.smax = float(state["smin"]), float(state["smax"])
            m.level, m.base, m.doublings = int(state["level"]), int(state["base"]), int(state["doublings"])
            m.counts[np.asarray(state["bins"], np.int64)] = np.asarray(state["counts"], np.int64)
        return m

    def compute(self) -> dict[str, float]:
        neg, pos = self.counts[:, 0], self.counts[:, 1]
        n_pos, n_neg = int(pos.sum()), int(neg.sum())
        if n_pos == 0 or n_neg == 0:
            raise ValueError(f"OOD metrics need both classes; got {n_pos} anomaly and {n_neg} inlier pixels")
        lo, width = self.lo, self.width
        assert lo is not None and width is not None
        nz_neg, nz_pos = np.flatnonzero(neg), np.flatnonzero(pos)
        centres = lo + (np.r_[nz_neg, nz_pos] + 0.5) * width
        y = np.r_[np.zeros(nz_neg.size, np.int8), np.ones(nz_pos.size, np.int8)]
        w = np.r_[neg[nz_neg], pos[nz_pos]].astype(np.float64)
        used = np.flatnonzero(neg + pos)[::-1]                 # descending thresholds
        return {
            "auroc": float(roc_auc_score(y, centres, sample_weight=w)),
            "ap": float(average_precision_score(y, centres, sample_weight=w)),
            "fpr95": fpr_at_recall(pos[used], neg[used], self.recall_level),
            "n_anomaly": n_pos, "n_inlier": n_neg,
            "auroc_bin_error_bound": float(0.5 * np.dot(pos.astype(np.float64), neg) / (n_pos * n_neg)),
            "bin_width": float(width),
        }


class SegMetrics:
    """Streaming confusion matrix; ``compute()`` -> miou, per-class iou (by name), pixel_acc."""

    def __init__(self, num_classes: int = NUM_CLASSES, class_names: tuple[str, ...] | None = None):
        self.num_classes = num_classes
        if class_names is None:
            class_names = TRAIN_ID_NAMES if num_classes == NUM_CLASSES else tuple(map(str, range(num_classes)))
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.class_names = tuple(class_names)
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)   # [gt, pred]

    def reset(self) -> None:
        self.confusion[:] = 0

    def update(self, pred: Any, target: Any) -> None:
        p = _to_numpy(pred)
        t = _to_numpy(target)
        if p.shape != t.shape:
            raise ValueError(f"prediction {p.shape} and target {t.shape} must have the same shape")
        if not (np.issubdtype(p.dtype, np.integer) and np.issubdtype(t.dtype, np.integer)):
            raise ValueError(f"prediction and target must be integer class maps, got {p.dtype}, {t.dtype}")
        n = self.num_classes
        t = t.ravel()
        keep = (t >= 0) & (t < n)
        tk = t[keep].astype(np.int64)
        pk = p.ravel()[keep].astype(np.int64)
        if pk.size and (pk.min() < 0 or pk.max() >= n):
            raise ValueError(f"predictions must be class ids 0..{n - 1} on labelled pixels; "
                             f"found {np.unique(pk[(pk < 0) | (pk >= n)])[:10].tolist()}")
        self.confusion += np.bincount(tk * n + pk, minlength=n * n).reshape(n, n)

    def compute(self) -> dict[str, Any]:
        cm = self.confusion.astype(np.float64)
        tp = np.diag(cm)
        union = cm.sum(0) + cm.sum(1) - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
        labelled = cm.sum()
        return {
            "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "iou": {name: float(v) for name, v in zip(self.class_names, iou)},
            "pixel_acc": float(tp.sum() / labelled) if labelled else float("nan"),
            "n_labelled": int(labelled),
        }
