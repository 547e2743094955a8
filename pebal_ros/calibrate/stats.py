"""What calibration accumulates over frames, and the thresholds it picks from that.

Three figures can be asked of a threshold ``t`` (a pixel is anomalous when ``score > t``, as in
the fused graph and the node):

* pixel false-positive rate: the fraction of pixels of the normal frames above ``t``. Streamed into
  the metrics' bounded-memory score histogram (:class:`pebal_ros.metrics.OODMetrics`, 2^20 bins), so
  any number of frames costs the same memory; the rate at ``t`` is exact up to one bin width. The
  histogram's bins depend on the lowest and highest score only, not on the order of the frames, so
  accumulators of different bags merge exactly (:meth:`CalibrationStats.merge`).
* frame alarm rate: the fraction of normal frames that hold a connected anomalous region of at least
  ``min_area`` pixels (the regions :func:`pebal_ros.pipeline.regions.find_regions` gives the node's
  status). Lowering ``t`` only grows the mask, and a region only grows or merges, so each frame alarms
  exactly for ``t`` below one value, its *alarm level*: the lowest score at which no region of
  ``min_area`` remains (the highest threshold at which the frame still alarms is just under it). One
  float per frame gives the alarm rate at every threshold afterwards.
* TPR (recall) on labelled anomalous pixels, with AP/AUROC/FPR95 from the same histogram.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ..metrics import OODMetrics

TARGETS = ("pixel_fpr", "frame_alarm_rate", "tpr")


class CalibrationTargetError(ValueError):
    """The target cannot be met or measured with the data given (the message says what is missing)."""


def _has_region(mask: np.ndarray, min_area: int, connectivity: int) -> bool:
    """Whether ``mask`` holds a component of >= ``min_area`` pixels: the components
    :func:`find_regions` reports (same labelling), without its per-region score statistics, which
    this search, run ~20 times per frame, does not need."""
    # Areas are the only statistic needed: one bincount over the labels (~20 calls per frame, about
    # 10 ms each at 512x1024 on one CPU core, so ~0.2 s per frame for the exact alarm level).
    n, labels = cv2.connectedComponents(mask, connectivity=connectivity, ltype=cv2.CV_32S)
    if n <= 1:
        return False
    return bool((np.bincount(labels.ravel(), minlength=n)[1:] >= min_area).any())


def alarm_level(score: np.ndarray, min_area: int, connectivity: int = 8) -> float:
    """The frame alarms (some region of ``score > t`` has >= ``min_area`` pixels) exactly when
    ``t < alarm_level``. -inf when even the whole frame is smaller than ``min_area``.

    Binary search over the frame's sorted distinct scores: about log2(pixels) connected-component
    passes, exact (no quantisation).
    """
    score = np.asarray(score, dtype=np.float32)
    if score.ndim != 2:
        raise ValueError(f"expected a 2-D score map, got shape {score.shape}")
    min_area = max(1, int(min_area))
    if score.size < min_area:
        return -math.inf
    values = np.unique(score)
    # Invariant: alarm at any t below values[lo + 1] (lo = -1: every pixel is above t, the whole
    # frame is one region of size >= min_area); no alarm at t = values[hi]. Start hi at the
    # min_area-th largest score: above it fewer than min_area pixels remain, so no region can alarm.
    kth = np.partition(score.ravel(), score.size - min_area)[score.size - min_area]
    lo, hi = -1, int(np.searchsorted(values, kth))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _has_region((score > values[mid]).view(np.uint8), min_area, connectivity):
            lo = mid
        else:
            hi = mid
    return float(values[hi])


def _tail_fraction(acc: OODMetrics, column: int, thresholds: np.ndarray) -> np.ndarray:
    """Fraction of the histogram's pixels of ``column`` (0 inlier, 1 anomaly) scoring above each
    threshold: the bins starting at or above it (exact up to one bin width)."""
    counts = acc.counts[:, column]
    total = counts.sum()
    if total == 0 or acc.lo is None or acc.width is None:
        return np.full(np.shape(thresholds), np.nan)
    tail = np.r_[np.cumsum(counts[::-1])[::-1], 0]            # tail[j] = pixels in bins >= j
    j = np.ceil((np.asarray(thresholds, np.float64) - acc.lo) / acc.width)
    j = np.clip(np.nan_to_num(j, nan=0, posinf=acc.num_bins, neginf=0), 0, acc.num_bins).astype(np.int64)
    return tail[j] / total


def _edges(acc: OODMetrics) -> np.ndarray:
    assert acc.lo is not None and acc.width is not None, "edges of an empty histogram"
    return acc.lo + acc.width * np.arange(acc.num_bins + 1, dtype=np.float64)


@dataclass
class Choice:
    threshold: float
    target: str
    target_value: float


class CalibrationStats:
    """Streaming accumulator: normal frames (pixel histogram + alarm levels), labelled anomaly frames
    (pixel histogram by label). Memory: two histograms of 2^20 bins plus one float per normal frame."""

    def __init__(self, num_bins: int = 1 << 20) -> None:
        self.normal = OODMetrics(num_bins)
        self.labelled = OODMetrics(num_bins)
        self.levels: list[float] = []
        self.score_min = math.inf
        self.score_max = -math.inf

    # -- accumulate -------------------------------------------------------------------------
    def add_normal(self, score: np.ndarray, min_area: int) -> float:
        """One normal frame's score map (the network's resolution); returns its alarm level."""
        score = np.asarray(score, np.float32)
        if not np.isfinite(score).all():
            raise ValueError("score map holds NaN or infinite values")
        self.normal.update(score, np.zeros(score.shape, np.uint8))
        self.score_min = min(self.score_min, float(score.min()))
        self.score_max = max(self.score_max, float(score.max()))
        level = alarm_level(score, min_area)
        self.levels.append(level)
        return level

    def add_labelled(self, score: np.ndarray, label: np.ndarray) -> None:
        """One labelled frame: ``label`` 0 inlier / 1 anomaly / 255 void, same shape as ``score``."""
        self.labelled.update(np.asarray(score, np.float32), label)

    # -- several processes or machines ---------------------------------------------------------
    def merge(self, other: "CalibrationStats") -> "CalibrationStats":
        """Add another accumulator's frames: the result is what one pass over both sets of frames
        gives (the histograms merge exactly; alarm levels and extremes do not depend on order), so
        bags scored in parallel (``pebal calibrate --ray``) give the single-process threshold."""
        self.normal.merge(other.normal)
        self.labelled.merge(other.labelled)
        self.levels.extend(other.levels)
        self.score_min = min(self.score_min, other.score_min)
        self.score_max = max(self.score_max, other.score_max)
        return self

    def state(self) -> dict:
        """A compact copy (non-empty bins only) to send between processes; :meth:`from_state`."""
        return {"normal": self.normal.state(), "labelled": self.labelled.state(),
                "levels": np.asarray(self.levels, np.float64), "score_min": self.score_min,
                "score_max": self.score_max}

    @classmethod
    def from_state(cls, state: dict) -> "CalibrationStats":
        out = cls(int(state["normal"]["num_bins"]))
        out.normal = OODMetrics.from_state(state["normal"])
        out.labelled = OODMetrics.from_state(state["labelled"])
        out.levels = [float(v) for v in state["levels"]]
        out.score_min, out.score_max = float(state["score_min"]), float(state["score_max"])
        return out

    @property
    def frames(self) -> int:
        return len(self.levels)

    @property
    def normal_pixels(self) -> int:
        return int(self.normal.counts[:, 0].sum())

    @property
    def anomaly_pixels(self) -> int:
        return int(self.labelled.counts[:, 1].sum())

    # -- figures at thresholds ---------------------------------------------------------------
    def pixel_fpr(self, thresholds) -> np.ndarray:
        return _tail_fraction(self.normal, 0, np.atleast_1d(thresholds))

    def frame_alarm_rate(self, thresholds) -> np.ndarray:
        lv = np.sort(np.asarray(self.levels, np.float64))
        t = np.atleast_1d(np.asarray(thresholds, np.float64))
        if lv.size == 0:
            return np.full(t.shape, np.nan)
        # levels > t  <=>  the frame alarms at t
        return (lv.size - np.searchsorted(lv, t, side="right")) / lv.size

    def tpr(self, thresholds) -> np.ndarray:
        return _tail_fraction(self.labelled, 1, np.atleast_1d(thresholds))

    def labelled_metrics(self) -> dict[str, float]:
        """AUROC/AP/FPR95 over the labelled frames; {} when they lack either class."""
        try:
            m = self.labelled.compute()
        except ValueError:
            return {}
        return {k: float(m[k]) for k in ("auroc", "ap", "fpr95")}

    def figures(self, threshold: float) -> dict[str, float]:
        out = {"pixel_fpr": float(self.pixel_fpr(threshold)[0]),
               "frame_alarm_rate": float(self.frame_alarm_rate(threshold)[0])}
        if self.anomaly_pixels:
            out["tpr"] = float(self.tpr(threshold)[0])
        return out

    # -- choosing ----------------------------------------------------------------------------
    def choose(self, target: str, value: float) -> Choice:
        """The threshold meeting ``target``: the lowest with pixel FPR / frame alarm rate <= value
        (as many detections as the false alarms allow), or the highest with TPR >= value."""
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        if not 0.0 < value < 1.0:
            raise CalibrationTargetError(f"{target} must be between 0 and 1 (exclusive), got {value:g}")
        if target == "pixel_fpr":
            n = self.normal_pixels
            if n == 0:
                raise CalibrationTargetError("no normal frames were scored: nothing to calibrate on")
            if n * value < 1.0:
                raise CalibrationTargetError(
                    f"a pixel FPR of {value:g} cannot be measured on {n} normal pixels (one false pixel is "
                    f"already {1 / n:.3g}); give more normal frames (>= {math.ceil(1 / value):d} pixels)")
            counts = self.normal.counts[:, 0]
            tail = np.r_[np.cumsum(counts[::-1])[::-1], 0]
            j = int(np.argmax(tail <= value * n))          # first edge whose tail fits: lowest threshold
            return Choice(float(_edges(self.normal)[j]), target, value)
        if target == "frame_alarm_rate":
            lv = np.sort(np.asarray(self.levels, np.float64))[::-1]
            if lv.size == 0:
                raise CalibrationTargetError("no normal frames were scored: nothing to calibrate on")
            allowed = int(math.floor(value * lv.size + 1e-9))
            if lv.size * value < 1.0:
                raise CalibrationTargetError(
                    f"a frame alarm rate of {value:g} cannot be measured on {lv.size} normal frame(s) (one "
                    f"alarm is already {1 / lv.size:.3g}); give at least {math.ceil(1 / value):d} frames, "
                    "or use --pixel-fpr")
            t = lv[allowed]                                 # levels above it: at most `allowed` frames
            if not math.isfinite(t):
                raise CalibrationTargetError(f"the frames are smaller than min_region_area: no frame can alarm")
            return Choice(float(t), target, value)
        # tpr
        n = self.anomaly_pixels
        if n == 0:
            raise CalibrationTargetError("--tpr needs labelled anomaly frames with anomalous pixels "
                                         "(--anomalies / --anomaly-images + --anomaly-labels); none were read")
        counts = self.labelled.counts[:, 1]
        tail = np.r_[np.cumsum(counts[::-1])[::-1], 0]
        j = int(np.flatnonzero(tail >= value * n)[-1])      # highest edge still reaching the TPR
        return Choice(float(_edges(self.labelled)[j]), target, value)

    def candidates(self, chosen: float, n_each_side: int = 3) -> list[float]:
        """Thresholds around ``chosen`` for the table: where the normal pixel FPR is 1/10, 1/3, 3x and
        10x ... the chosen one's, so the trade-off is visible whatever the score scale."""
        p0 = float(self.pixel_fpr(chosen)[0])
        n = max(self.normal_pixels, 1)
        p0 = max(p0, 1.0 / n)
        factors = [10.0 ** (k / 2) for k in range(-n_each_side, n_each_side + 1) if k]
        out = {chosen}
        counts = self.normal.counts[:, 0]
        tail = np.r_[np.cumsum(counts[::-1])[::-1], 0]
        edges = _edges(self.normal)
        for f in factors:
            p = p0 * f
            if p >= 1.0 or p * n < 1.0:
                continue
            j = int(np.argmax(tail <= p * n))
            out.add(float(edges[j]))
        return sorted(out)
