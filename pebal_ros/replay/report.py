"""The replay report: summary.json, plots (matplotlib PNG), a contact sheet and report.html.

Everything here is a pure function of the replay's records, so the same replay gives the same
report byte for byte (apart from the wall-clock timing figures, which are kept out of the
``deterministic`` part of summary.json).
"""
from __future__ import annotations

import heapq
import html
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..output_folder import write_file
from ..pipeline.visualize import HEATMAP_SPAN, colorbar, score_heatmap

PERCENTILES = (50, 90, 95, 99)


@dataclass
class FrameRecord:
    """What happened to one input image message."""

    topic: str
    index: int                      # position of the message on its topic (0-based)
    bag_time_ns: int                # receive time in the bag (also the result messages' log time)
    stamp_ns: int | None = None     # header stamp, when the message could be decoded
    status: str = "processed"       # "processed" | "skipped"
    reason: str = ""                # why it was skipped
    anomaly_fraction: float = 0.0
    max_score: float = 0.0
    mean_score: float = 0.0
    regions: int = 0
    latency_ms: float = 0.0         # decode + pipeline + encode of the outputs (wall time)
    inference_ms: float = 0.0       # the runtime call alone, as the pipeline reports it


@dataclass
class TopicSummary:
    topic: str
    msgtype: str
    declared: int | None            # message count the bag's metadata declares
    read: int = 0
    processed: int = 0
    skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)


@dataclass(eq=False)
class Tile:
    """One frame on a contact sheet: its overlay and score map, and (once the frame's label is
    matched) its labelled anomaly. Kept at full size and shrunk only when the sheet is drawn: most
    frames that enter the top k are pushed out again, and a thumbnail per candidate cost more
    per frame than anything else replay adds to the node's own work. The score is coloured when
    the sheet is drawn, on the one scale of every heat map (pipeline.visualize.score_heatmap)."""
    title: str
    fraction: float                       # anomalous (flagged) fraction of the frame
    overlay: np.ndarray                   # RGB (read only: it may be a message's payload)
    score: np.ndarray                     # float32 (read only)
    truth: np.ndarray | None = None       # uint8 0/1 labelled anomaly (any size)
    objects: list[tuple[int, int]] = field(default_factory=list)   # labelled (pixels, flagged)

    @property
    def missed_pixels(self) -> int:
        return sum(a - f for a, f in self.objects)

    def caption(self) -> list[str]:
        lines = [f"{self.title}  {100 * self.fraction:.2f}% flagged"]
        if self.objects:
            area, hit = sum(a for a, _ in self.objects), sum(f for _, f in self.objects)
            lines.append(f"labelled anomaly: {hit} of {area} px flagged")
        elif self.truth is not None:
            lines.append("no labelled anomaly: all flagged are false")
        return lines

    def thumbnails(self, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(overlay RGB, score float32, truth 0/1 or None) at ``width`` pixels wide."""
        h, w = self.overlay.shape[:2]
        size = (width, max(1, round(h * width / w)))
        truth = None
        if self.truth is not None:
            # INTER_AREA then > 0: a labelled object a few pixels wide still shows on a thumbnail
            small = cv2.resize(self.truth.astype(np.float32), size, interpolation=cv2.INTER_AREA)
            truth = (small > 0).astype(np.uint8)
        return (cv2.resize(self.overlay, size, interpolation=cv2.INTER_AREA),
                cv2.resize(np.asarray(self.score, np.float32), size, interpolation=cv2.INTER_AREA), truth)


def make_tile(title: str, fraction: float, overlay_rgb: np.ndarray, score: np.ndarray) -> Tile:
    return Tile(title, fraction, overlay_rgb, score)


def attach_truth(tile: Tile, truth: np.ndarray, objects: list[tuple[int, int]]) -> None:
    """The frame's labelled anomaly (uint8 0/1, any size) and its objects, onto its tile."""
    tile.truth = truth
    tile.objects = list(objects)


class TopK:
    """The k items with the largest value (ties: the earliest first), kept as they come."""

    def __init__(self, k: int = 12) -> None:
        self.k = k
        self._heap: list[tuple[float, int, Any]] = []
        self._n = 0

    def wants(self, value: float) -> bool:
        return self.k > 0 and (len(self._heap) < self.k or value > self._heap[0][0])

    def add(self, value: float, item: Any) -> None:
        # -index breaks ties towards the earlier item: a deterministic sheet.
        entry = (value, -self._n, item)
        self._n += 1
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, entry)
        elif entry[:2] > self._heap[0][:2]:
            heapq.heapreplace(self._heap, entry)

    def items(self) -> list[tuple[float, Any]]:
        return [(v, it) for v, _, it in sorted(self._heap, key=lambda x: (-x[0], -x[1]))]


def latency_stats(values_ms: Sequence[float]) -> dict[str, float]:
    if not len(values_ms):
        return {}
    v = np.asarray(values_ms, dtype=np.float64)
    out = {f"p{p}": float(np.percentile(v, p)) for p in PERCENTILES}
    out.update(mean=float(v.mean()), max=float(v.max()), min=float(v.min()))
    return out


# -- plots ---------------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Up to this many frames a topic's points get markers: a topic with one frame (or a few frames far
# apart) is otherwise an invisible zero-length line.
MARKERS_UP_TO = 200


def anomaly_over_time_figure(records: Sequence[FrameRecord]) -> Any:
    """The anomalous-pixel fraction of every processed frame over bag time, one line per topic;
    skipped frames as red crosses on the time axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=100)
    topics = sorted({r.topic for r in records})
    t0 = min((r.bag_time_ns for r in records), default=0)
    for topic in topics:
        rs = [r for r in records if r.topic == topic and r.status == "processed"]
        t = [(r.bag_time_ns - t0) / 1e9 for r in rs]
        few = len(rs) <= MARKERS_UP_TO
        ax.plot(t, [100 * r.anomaly_fraction for r in rs], lw=1.2, marker="o" if few else None,
                ms=4 if len(rs) > 1 else 6, label=topic + (" (1 frame)" if len(rs) == 1 else ""))
        skipped = [(r.bag_time_ns - t0) / 1e9 for r in records if r.topic == topic and r.status != "processed"]
        if skipped:
            ax.plot(skipped, [0] * len(skipped), "x", color="red", label=f"{topic} (skipped)")
    ax.set_xlabel("time since first frame [s]")
    ax.set_ylabel("anomalous pixels [%]")
    ax.grid(alpha=0.3)
    if topics:
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def save_figure(fig: Any, path: Path) -> None:
    """A figure as PNG at ``path``; a failed write is an OSError naming ``path``."""
    import io

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", metadata={"Software": None})
    finally:
        _pyplot().close(fig)
    write_file(path, buf.getvalue())


def plot_anomaly_over_time(records: Sequence[FrameRecord], path: Path) -> None:
    save_figure(anomaly_over_time_figure(records), path)


def plot_curves(scores: np.ndarray, labels: np.ndarray, metrics: dict[str, float], outdir: Path) -> None:
    """ROC and precision-recall curves from a pixel sample (metrics themselves use every pixel)."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    plt = _pyplot()
    fpr, tpr, _ = roc_curve(labels, scores)
    prec, rec, _ = precision_recall_curve(labels, scores)
    for name, (x, y, xl, yl, title) in {
        "roc.png": (fpr, tpr, "false positive rate", "true positive rate",
                    f"ROC  AUROC={100 * metrics['auroc']:.2f}%  FPR95={100 * metrics['fpr95']:.2f}%"),
        "pr.png": (rec, prec, "recall", "precision", f"Precision-recall  AP={100 * metrics['ap']:.2f}%"),
    }.items():
        fig, ax = plt.subplots(figsize=(4.5, 4), dpi=100)
        ax.plot(x, y, lw=1.5)
        if name == "roc.png":
            ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=0.8)
            ax.axhline(0.95, ls=":", color="red", lw=0.8)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(title, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        save_figure(fig, outdir / name)


def _fit_caption(text: str, width: int, scale: float = 0.45, smallest: float = 0.32) -> tuple[str, float]:
    """``text`` and a font scale that fit ``width`` pixels: smaller type first, then the start of the
    text (the topic prefix) cut, so long topic names never run into the next thumbnail's caption."""
    def size(t: str, s: float) -> int:
        return cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, s, 1)[0][0]
    while scale - 0.03 >= smallest - 1e-9 and size(text, scale) > width:
        scale = round(scale - 0.03, 2)
    while len(text) > 4 and size(text, scale) > width:
        text = ".." + text[3:]
    return text, scale


TRUTH_COLOR = (255, 230, 0)     # labelled anomaly outline: yellow, with a dark edge on any background


def _draw_truth(img: np.ndarray, truth: np.ndarray | None) -> None:
    if truth is None or not truth.any():
        return
    contours, _ = cv2.findContours(truth, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(img, contours, -1, (0, 0, 0), 3, cv2.LINE_8)
    cv2.drawContours(img, contours, -1, TRUTH_COLOR, 1, cv2.LINE_8)


def contact_sheet(tiles: Sequence[Tile], path: Path, threshold: float, span: float = HEATMAP_SPAN,
                  cols: int = 3, width: int = 320) -> bool:
    """Tiles in a grid: each frame's overlay (flagged pixels green) above its anomaly score heat map
    (one scale around the threshold; flagged regions outlined in black), the labelled anomaly
    outlined in yellow on both where there is ground truth; captions say what was flagged and
    found; a colour bar and a legend at the bottom."""
    if not tiles:
        return False
    font = cv2.FONT_HERSHEY_SIMPLEX
    thumbs = [t.thumbnails(width) for t in tiles]
    th, tw = max(o.shape[0] for o, _, _ in thumbs), width
    lines = max(len(t.caption()) for t in tiles)
    cap, gap = 6 + 16 * lines, 6
    cell_h = cap + 2 * th + gap
    rows = (len(tiles) + cols - 1) // cols
    sheet_w = cols * tw + (cols - 1) * gap
    has_truth = any(t.truth is not None for t in tiles)
    legend = ["top: the frame with semantic colours, flagged pixels green",
              "bottom: anomaly score (black line: the threshold, around flagged pixels)"]
    if has_truth:
        legend.append("yellow outline: labelled anomaly (ground truth)")
    bar = colorbar(min(sheet_w, 640), threshold, span)
    foot = bar.shape[0] + 18 * len(legend) + 8
    sheet = np.full((rows * cell_h + foot, sheet_w, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        y, x = r * cell_h, c * (tw + gap)
        for k, line in enumerate(t.caption()):
            text, scale = _fit_caption(line, tw - 8)
            cv2.putText(sheet, text, (x + 4, y + 16 + 16 * k), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
        over, score, truth = thumbs[i]
        h, w = over.shape[:2]
        heat = score_heatmap(score, threshold, span)
        _draw_truth(over, truth)
        _draw_truth(heat, truth)
        sheet[y + cap: y + cap + h, x: x + w] = over
        sheet[y + cap + th: y + cap + th + h, x: x + w] = heat
    y = rows * cell_h
    sheet[y: y + bar.shape[0], : bar.shape[1]] = bar
    for k, text in enumerate(legend):
        cv2.putText(sheet, text, (6, y + bar.shape[0] + 14 + 18 * k), font, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(None, "could not be encoded as PNG", str(path))
    write_file(path, png.tobytes())
    return True


def ground_truth_words(gt: dict[str, Any]) -> list[str]:
    """What the accuracy figures mean, in sentences: how much of the labelled anomalies and of the
    rest the mask flagged, and each large labelled anomaly it missed, by frame."""
    out: list[str] = []
    share = gt.get("flagged_share") or {}
    if share.get("anomaly_pixels") is not None and share.get("inlier_pixels") is not None:
        out.append(f"The mask flagged {100 * share['anomaly_pixels']:.1f} % of the labelled anomalous "
                   f"pixels and {100 * share['inlier_pixels']:.1f} % of the other labelled pixels "
                   "(false alarms).")
    obj = gt.get("objects") or {}
    if obj.get("labelled"):
        pct = round(100 * obj["detected_share"])
        out.append(f"Labelled anomalies: {obj['labelled']} (one per object and frame); detected "
                   f"(at least {pct} % of its pixels flagged): {obj['detected']}; partly: "
                   f"{obj['partly']}; missed (no pixel flagged): {obj['missed']}.")
        if obj["labelled"] and obj["detected"] == 0:
            # "found none" only when nothing of any of them was flagged: partly found ones are found
            out.append("The detector found none of the labelled anomalies." if obj["partly"] == 0 else
                       f"No labelled anomaly had {pct} % of its pixels flagged; {obj['partly']} of "
                       f"{obj['labelled']} were found in part.")
        for m in obj.get("largest_misses") or []:
            out.append(f"missed: the labelled anomaly in frame {m['frame']} "
                       f"(0 of {m['pixels']} pixels flagged)")
    return out


# -- summary + page ------------------------------------------------------------------------------
def write_summary(outdir: Path, summary: dict[str, Any]) -> Path:
    return write_file(outdir / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")


def _table(rows: Sequence[Sequence[Any]], head: Sequence[str]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.2f} %" if pct else (f"{x:.2f}" if isinstance(x, float) else str(x))


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.3em .7em;
text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}img{max-width:100%;
border:1px solid #ddd}.bad{color:#b00}.ok{color:#070}code{background:#f3f3f3;padding:0 .3em}
.row{display:flex;gap:1em;flex-wrap:wrap}"""


def write_html(outdir: Path, summary: dict[str, Any]) -> Path:
    d = summary["deterministic"]
    t = summary["timing"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>PEBAL replay: "
             f"{html.escape(d['bag'])}</title><style>{CSS}</style></head><body>",
             f"<h1>PEBAL replay report</h1><p>Bag <code>{html.escape(d['bag'])}</code> &rarr; result bag "
             f"<code>{html.escape(d.get('result_bag') or '-')}</code>; runtime "
             f"<code>{html.escape(str(d['runtime'].get('name', '?')))}</code>, threshold "
             f"{d['threshold']}" + (f" (from {html.escape(str(d['threshold_source']))})"
                                    if d.get("threshold_source") else "") + ".</p>"]
    ms = d.get("model_settings") or {}
    if ms.get("model"):
        parts.append(f"<p>Model: {html.escape(ms['model'])}</p>")
    for w in ms.get("warnings") or []:
        # not calibrated / plain segmentation network: the mask's meaning depends on it
        parts.append(f"<p class='bad'><b>Warning:</b> {html.escape(w)}</p>")
    ok = d["status"] == "ok"
    parts.append(f"<p class='{'ok' if ok else 'bad'}'><b>{html.escape(d['status_text'])}</b></p>")

    parts.append("<h2>Frames</h2>")
    rows = [[s["topic"], s["msgtype"].rsplit("/", 1)[-1], _fmt(s["declared"]), s["read"],
             s["processed"], s["skipped"],
             "; ".join(f"{k} ({v})" for k, v in s["skip_reasons"].items()) or "-"]
            for s in d["topics"]]
    parts.append(_table(rows, ["topic", "type", "declared", "read", "processed", "skipped",
                               "skip reasons"]))
    if d["other_topics"]:
        parts.append("<p>Other topics (not images, counted, not processed): " + ", ".join(
            f"<code>{html.escape(k)}</code> {v}" for k, v in d["other_topics"].items()) + "</p>")
    if d.get("declared_but_unread"):
        parts.append("<p class='bad'>Declared in the bag's metadata but not readable: " + ", ".join(
            f"<code>{html.escape(k)}</code> {v}" for k, v in d["declared_but_unread"].items()) + "</p>")
    if d.get("label_topic"):
        gt = d.get("ground_truth") or {}
        read = (gt.get("label_messages") or {}).get("read", 0)
        parts.append(f"<p>Label topic <code>{html.escape(d['label_topic'])}</code>: {read} messages "
                     "read as ground truth.</p>")
    if d["issues"]:
        parts.append("<h3 class='bad'>Read problems</h3><ul>" + "".join(
            f"<li>{html.escape(i)}</li>" for i in d["issues"]) + "</ul>")

    parts.append("<h2>Latency and throughput</h2>")
    lat = t["latency_ms"]
    inf = t["inference_ms"]
    parts.append(_table([["end-to-end per frame"] + [_fmt(lat.get(f"p{p}")) for p in PERCENTILES]
                         + [_fmt(lat.get("mean"))],
                         ["inference only"] + [_fmt(inf.get(f"p{p}")) for p in PERCENTILES]
                         + [_fmt(inf.get("mean"))]],
                        ["[ms]"] + [f"p{p}" for p in PERCENTILES] + ["mean"]))
    if t.get("stages_ms_per_frame"):
        parts.append("<p>Where the time goes (mean ms per frame):</p>" + _table(
            [[k.replace("_", " "), _fmt(v)] for k, v in t["stages_ms_per_frame"].items()], ["stage", "ms"]))
    parts.append(f"<p>Throughput {t['frames_per_s']:.2f} frames/s over {t['wall_s']:.2f} s wall time "
                 f"(reading, inference, encoding and writing included).</p>")

    parts.append("<h2>Anomalies over time</h2><img src='anomaly_over_time.png' alt='anomaly fraction'>")
    a = d["anomaly"]
    parts.append(f"<p>Frames with any anomalous pixel: {a['frames_with_anomaly']} of "
                 f"{a['frames']}; mean anomalous fraction {_fmt(a['mean_fraction'], True)}, "
                 f"max {_fmt(a['max_fraction'], True)}.</p>")
    if d.get("contact_sheet"):
        parts.append("<h2>Frames with the largest anomalies</h2>"
                     "<img src='contact_sheet.png' alt='contact sheet'>")

    gt = d.get("ground_truth")
    if gt:
        parts.append(f"<h2>Accuracy against ground truth</h2><p>Labels: {html.escape(gt['source'])}; "
                     f"{gt['frames_with_labels']} frames matched, {gt['frames_without_labels']} without "
                     "a label.</p>")
        m = gt.get("metrics") or {}
        rows = [[k, _fmt(m.get(k), True)] for k in ("auroc", "ap", "fpr95") if k in m]
        rows += [[k, _fmt(gt[k], True)] for k in ("miou", "anomaly_iou") if gt.get(k) is not None]
        parts.append(_table(rows, ["metric", "value"]))
        if gt.get("iou"):
            parts.append(_table([[k, _fmt(v, True)] for k, v in gt["iou"].items()], ["class", "IoU"]))
        words = ground_truth_words(gt)
        if words:
            missed = [w for w in words if w.startswith("missed:")]
            parts.append("".join(f"<p>{html.escape(w)}</p>" for w in words if not w.startswith("missed:")))
            if missed:
                parts.append("<ul class='bad'>" + "".join(f"<li>{html.escape(w)}</li>" for w in missed)
                             + "</ul>")
        if d.get("misses_sheet"):
            parts.append("<h3>Frames with the most labelled anomalous pixels not flagged</h3>"
                         "<img src='misses.png' alt='largest misses'>")
        if (outdir / "roc.png").exists():
            parts.append("<div class='row'><img src='roc.png' alt='ROC'><img src='pr.png' alt='PR'></div>")
    parts.append("<p>Raw figures: <a href='summary.json'>summary.json</a>.</p></body></html>")
    return write_file(outdir / "report.html", "\n".join(parts))


def records_to_rows(records: Sequence[FrameRecord]) -> list[dict[str, Any]]:
    return [asdict(r) for r in records]
