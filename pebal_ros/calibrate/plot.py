"""The calibration plot: where the chosen threshold sits among the scores, and what it costs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..metrics import OODMetrics
from .stats import CalibrationStats


def _rebinned(acc: OODMetrics, column: int, edges: np.ndarray) -> np.ndarray:
    counts = acc.counts[:, column]
    nz = np.flatnonzero(counts)
    if nz.size == 0 or acc.lo is None or acc.width is None:
        return np.zeros(edges.size - 1)
    centres = acc.lo + (nz + 0.5) * acc.width
    hist, _ = np.histogram(centres, bins=edges, weights=counts[nz].astype(np.float64))
    return hist / (counts.sum() * np.diff(edges))      # density


def write_plot(stats: CalibrationStats, threshold: float, path: str | Path, title: str = "") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = stats.score_min, stats.score_max
    if stats.anomaly_pixels:
        lab = stats.labelled
        assert lab.lo is not None and lab.width is not None
        nz = np.flatnonzero(lab.counts.sum(1))
        lo = min(lo, lab.lo + nz[0] * lab.width)
        hi = max(hi, lab.lo + (nz[-1] + 1) * lab.width)
    pad = 0.02 * (hi - lo or 1.0)
    edges = np.linspace(lo - pad, hi + pad, 161)
    centres = 0.5 * (edges[1:] + edges[:-1])

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), constrained_layout=True)
    ax1.step(centres, _rebinned(stats.normal, 0, edges), where="mid", color="tab:blue",
             label=f"normal frames ({stats.frames})")
    if stats.anomaly_pixels:
        ax1.step(centres, _rebinned(stats.labelled, 0, edges), where="mid", color="tab:green", alpha=0.7,
                 label="inlier pixels of anomaly frames")
        ax1.step(centres, _rebinned(stats.labelled, 1, edges), where="mid", color="tab:red",
                 label="anomalous pixels")
    ax1.axvline(threshold, color="k", ls="--", label=f"threshold {threshold:.3f}")
    ax1.set_yscale("log")
    ax1.set_xlabel("anomaly score (smoothed free energy; > threshold = anomalous)")
    ax1.set_ylabel("pixel density")
    ax1.set_title("score distributions")
    ax1.legend(fontsize=8)

    ts = np.linspace(lo - pad, hi + pad, 400)
    fpr = stats.pixel_fpr(ts)
    far = stats.frame_alarm_rate(ts)
    floor = 0.5 / max(stats.normal_pixels, 1)
    ax2.plot(ts, np.maximum(fpr, floor), color="tab:blue", label="pixel FPR (normal frames)")
    ax2.plot(ts, np.maximum(far, floor), color="tab:orange", label="frame alarm rate (normal frames)")
    if stats.anomaly_pixels:
        ax2.plot(ts, np.maximum(stats.tpr(ts), floor), color="tab:red", label="TPR (anomalous pixels)")
    ax2.axvline(threshold, color="k", ls="--")
    ax2.set_yscale("log")
    ax2.set_ylim(floor, 1.5)
    ax2.set_xlabel("threshold")
    ax2.set_ylabel("rate")
    ax2.set_title("rates vs threshold")
    ax2.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
