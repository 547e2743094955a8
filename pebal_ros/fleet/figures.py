"""What the fleet report needs of one bag, computed where the bag was replayed: from the replay's
summary and its frames.csv, small enough to travel in the done marker.

Latency percentiles cannot be pooled from per-bag percentiles, so each bag also carries its frame
latencies as counts in fixed logarithmic bins (:data:`LATENCY_EDGES_MS`, 2.3 % wide): the fleet's
percentiles come from the summed counts, to within one bin.
"""
from __future__ import annotations

import csv
import heapq
from pathlib import Path
from typing import Any

import numpy as np

# 0.01 ms .. 1000 s, 100 bins per decade (each 2.33 % wide); a latency outside lands in an end bin.
LATENCY_EDGES_MS = np.logspace(-2, 6, 801)
WORST_FRAMES = 12


def latency_histogram(values_ms: np.ndarray) -> dict[str, int]:
    """Counts per bin of :data:`LATENCY_EDGES_MS`, the non-empty bins only (bin index -> count): a
    bag's latencies span a few dozen bins, and a fleet has tens of thousands of bags."""
    v = np.clip(np.asarray(values_ms, np.float64), LATENCY_EDGES_MS[0], LATENCY_EDGES_MS[-1])
    counts = np.histogram(v, LATENCY_EDGES_MS)[0]
    return {str(int(i)): int(counts[i]) for i in np.flatnonzero(counts)}


def dense_histogram(sparse: dict[str, int]) -> np.ndarray:
    out = np.zeros(len(LATENCY_EDGES_MS) - 1, np.int64)
    for i, c in (sparse or {}).items():
        out[int(i)] += int(c)
    return out


def histogram_percentiles(counts: Any, percentiles: tuple[int, ...] = (50, 90, 95, 99)) -> dict[str, float]:
    """Percentiles of pooled latency counts (dense, per bin): the geometric centre of the bin holding
    each rank."""
    c = np.asarray(counts, np.int64)
    total = int(c.sum())
    if total == 0:
        return {}
    cum = np.cumsum(c)
    centres = np.sqrt(LATENCY_EDGES_MS[:-1] * LATENCY_EDGES_MS[1:])
    out = {}
    for p in percentiles:
        rank = max(1, int(np.ceil(p / 100 * total)))
        out[f"p{p}"] = float(centres[int(np.searchsorted(cum, rank))])
    return out


def bag_figures(report_dir: Path, summary: dict[str, Any], top_k: int = WORST_FRAMES) -> dict[str, Any]:
    """Per-bag figures: frames, alarms (frames with a reported anomalous region), anomaly rate, the
    bag's worst frames, latency counts, recording span."""
    det, timing = summary["deterministic"], summary["timing"]
    lat: list[float] = []
    alarms = 0
    first = last = None
    worst: list[tuple[float, int, dict[str, Any]]] = []
    n = 0
    csv_path = report_dir / "frames.csv"
    if csv_path.is_file():
        with csv_path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                t = int(row["bag_time_ns"])
                first = t if first is None else min(first, t)
                last = t if last is None else max(last, t)
                if row["status"] != "processed":
                    continue
                frac = float(row["anomaly_fraction"])
                regions = int(row["regions"])
                alarms += regions > 0
                lat.append(float(row["latency_ms"]))
                item = (frac, -n, {"topic": row["topic"], "index": int(row["index"]), "bag_time_ns": t,
                                   "anomaly_fraction": frac, "max_score": float(row["max_score"]),
                                   "regions": regions})
                n += 1
                if len(worst) < top_k:
                    heapq.heappush(worst, item)
                elif item[:2] > worst[0][:2]:
                    heapq.heapreplace(worst, item)
    processed = det["frames"]["processed"]
    skip_reasons: dict[str, int] = {}
    for t in det["topics"]:
        for reason, k in t["skip_reasons"].items():
            skip_reasons[reason] = skip_reasons.get(reason, 0) + k
    gt = det.get("ground_truth")
    return {
        "status": det["status"], "status_text": det["status_text"],
        "frames": dict(det["frames"]), "declared_but_unread": int(sum(det["declared_but_unread"].values())),
        "issues": list(det["issues"]), "skip_reasons": skip_reasons,
        "topics": [t["topic"] for t in det["topics"]],
        "anomaly": dict(det["anomaly"]),
        "alarms": alarms, "alarm_rate": alarms / processed if processed else None,
        "threshold": det["threshold"],
        "duration_s": (last - first) / 1e9 if first is not None and last is not None else 0.0,
        "worst_frames": [w for _, _, w in sorted(worst, key=lambda x: (-x[0], -x[1]))],
        "latency_ms": timing["latency_ms"], "inference_ms": timing["inference_ms"],
        "latency_hist": latency_histogram(np.asarray(lat)) if lat else {},
        "wall_s": timing["wall_s"], "frames_per_s": timing["frames_per_s"],
        "ground_truth": None if gt is None else {k: gt.get(k) for k in (
            "frames_with_labels", "metrics", "miou", "anomaly_iou", "label_kind", "note") if k in gt},
    }
