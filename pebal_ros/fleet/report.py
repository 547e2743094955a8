"""The fleet report: every bag of a run in one page, ``OUT/index.html``, with
``OUT/fleet_summary.json`` (every figure), ``OUT/bags.csv`` (one row per bag) and plots.

Fleet-wide figures are pooled from the bags' counts, never averaged over bags: frame-weighted
anomaly and alarm rates, latency percentiles from the bags' summed latency counts, and the ground
truth metrics from the bags' merged pixel histograms and confusion matrices (what one replay over
all labelled frames would report). Every file is written under a temporary name and renamed, and
the page says when the run is incomplete: which bags are missing and why.
"""
from __future__ import annotations

import csv
import html
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .figures import WORST_FRAMES, dense_histogram, histogram_percentiles

SUMMARY = "fleet_summary.json"


def _write(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if isinstance(data, str):
        tmp.write_text(data, encoding="utf-8")
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


def _outcome(e: dict[str, Any]) -> str:
    """ok / partial / failed for a bag with a result; refused / not replayed for one without."""
    r = e.get("record")
    if e["state"] in ("replayed", "complete") and r is not None:
        if r.get("error"):
            return "failed"
        return (r.get("figures") or {}).get("status", "failed")
    return "refused" if e["state"] == "refused" else "not replayed"


def _rel(out: Path, e: dict[str, Any]) -> str:
    return Path(os.path.relpath(e["out"], out)).as_posix()


def bag_rows(out: Path, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for e in entries:
        r = e.get("record") or {}
        f = r.get("figures") or {}
        fr = f.get("frames") or {}
        a = f.get("anomaly") or {}
        lat = f.get("latency_ms") or {}
        gt = (f.get("ground_truth") or {}).get("metrics") or {}
        has_report = bool(r) and not r.get("error")
        rows.append({
            "bag": e["bag"], "output": _rel(out, e), "outcome": _outcome(e),
            "report": f"{_rel(out, e)}/report/report.html" if has_report else "",
            "frames_read": fr.get("read"), "frames_processed": fr.get("processed"), "frames_skipped": fr.get("skipped"),
            "declared_but_unread": f.get("declared_but_unread"),
            "frames_with_anomaly": a.get("frames_with_anomaly"), "mean_anomaly_fraction": a.get("mean_fraction"),
            "alarms": f.get("alarms"), "alarm_rate": f.get("alarm_rate"),
            "latency_p50_ms": lat.get("p50"), "latency_p95_ms": lat.get("p95"),
            "frames_per_s": f.get("frames_per_s"), "duration_s": f.get("duration_s"),
            "auroc": gt.get("auroc"), "ap": gt.get("ap"),
            "worker": (r.get("worker") or {}).get("host", ""), "attempts": e.get("attempts", r.get("attempt")),
            "this_run": e["state"] == "replayed",
            "reason": _reason(e, f),
        })
    return rows


def _reason(e: dict[str, Any], f: dict[str, Any]) -> str:
    r = e.get("record") or {}
    if r.get("error"):
        return r["error"]
    if e.get("reason"):
        return e["reason"]
    parts = []
    if f.get("skip_reasons"):
        parts.append("skipped: " + "; ".join(f"{k} ({v})" for k, v in f["skip_reasons"].items()))
    if f.get("issues"):
        parts.append("read problems: " + "; ".join(f["issues"]))
    if e.get("lost"):
        parts.append("retried after: " + "; ".join(e["lost"]))
    return " | ".join(parts)


def pooled_ground_truth(out: Path, entries: list[dict[str, Any]]) -> Any:
    """One Accuracy holding every labelled frame of the fleet (merged per-bag accumulators)."""
    from ..replay.groundtruth import Accuracy
    from .worker import load_state

    pooled = None
    for e in entries:
        r = e.get("record") or {}
        name = r.get("ground_truth_state")
        if not name:
            continue
        acc = Accuracy.from_state(load_state(Path(e["out"]) / name))
        pooled = acc if pooled is None else pooled.merge(acc)
    return pooled


def fleet_figures(rows: list[dict[str, Any]], entries: list[dict[str, Any]]) -> dict[str, Any]:
    figs = [((e.get("record") or {}).get("figures") or {}) for e in entries]
    figs = [f for f in figs if f]
    processed = sum(f["frames"]["processed"] for f in figs)
    hist = sum((dense_histogram(f.get("latency_hist") or {}) for f in figs), dense_histogram({}))
    weighted = [(f["anomaly"]["mean_fraction"], f["frames"]["processed"]) for f in figs
                if f["anomaly"].get("mean_fraction") is not None]
    lat_mean = [(f["latency_ms"].get("mean"), f["frames"]["processed"]) for f in figs if f["latency_ms"]]
    outcomes: dict[str, int] = {}
    for r in rows:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    return {
        "bags": len(rows), "outcomes": outcomes,
        "frames_read": sum(f["frames"]["read"] for f in figs), "frames_processed": processed,
        "frames_skipped": sum(f["frames"]["skipped"] for f in figs),
        "declared_but_unread": sum(f.get("declared_but_unread", 0) for f in figs),
        "recording_hours": sum(f.get("duration_s", 0.0) for f in figs) / 3600,
        "frames_with_anomaly": sum(f["anomaly"]["frames_with_anomaly"] for f in figs),
        "anomaly_frame_rate": (sum(f["anomaly"]["frames_with_anomaly"] for f in figs) / processed) if processed else None,
        "mean_anomaly_fraction": (sum(m * n for m, n in weighted) / sum(n for _, n in weighted)) if weighted else None,
        "alarms": sum(f.get("alarms", 0) for f in figs),
        "alarm_rate": (sum(f.get("alarms", 0) for f in figs) / processed) if processed else None,
        "latency_ms": dict(histogram_percentiles(hist),
                           **({"mean": sum(m * n for m, n in lat_mean) / sum(n for _, n in lat_mean)} if lat_mean else {})),
        "replay_wall_s": sum(f.get("wall_s", 0.0) for f in figs),
    }


def worst_frames(entries: list[dict[str, Any]], out: Path, k: int = WORST_FRAMES) -> list[dict[str, Any]]:
    items = []
    for e in entries:
        f = (e.get("record") or {}).get("figures") or {}
        for w in f.get("worst_frames") or []:
            items.append(dict(w, bag=e["bag"], report=f"{_rel(out, e)}/report/report.html"))
    items.sort(key=lambda w: (-w["anomaly_fraction"], w["bag"], w["topic"], w["index"]))
    return items[:k]


def _plots(out: Path, rows: list[dict[str, Any]], pooled: Any) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    done = [r for r in rows if r["frames_processed"]]
    if done:
        fig, ax = plt.subplots(figsize=(9, max(2.5, 0.28 * len(done) + 1.2)) if len(done) <= 60 else (9, 3.5), dpi=100)
        if len(done) <= 60:
            y = np.arange(len(done))
            ax.barh(y - 0.2, [100 * (r["alarm_rate"] or 0) for r in done], 0.4, label="frames with an alarm (region)")
            ax.barh(y + 0.2, [100 * (r["frames_with_anomaly"] or 0) / r["frames_processed"] for r in done], 0.4,
                    label="frames with anomalous pixels")
            ax.set_yticks(y, [r["output"] for r in done], fontsize=7)
            ax.invert_yaxis()
            ax.set_xlabel("% of the bag's processed frames")
        else:
            ax.hist([100 * (r["alarm_rate"] or 0) for r in done], bins=40)
            ax.set_xlabel("alarm rate of a bag [% of its frames]")
            ax.set_ylabel("bags")
        ax.grid(alpha=0.3, axis="x")
        ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
        plt.close(fig)
        _write(out / "fleet_alarms.png", buf.getvalue())
        written.append("fleet_alarms.png")
    if pooled is not None:
        m = pooled.ood
        neg, pos = m.counts[:, 0], m.counts[:, 1]
        if neg.sum() and pos.sum():
            from sklearn.metrics import precision_recall_curve, roc_curve

            nz = np.flatnonzero(neg + pos)
            centres = m.lo + (nz + 0.5) * m.width
            s = np.r_[centres, centres]
            y = np.r_[np.zeros(nz.size, np.int8), np.ones(nz.size, np.int8)]
            w = np.r_[neg[nz], pos[nz]].astype(np.float64)
            keep = w > 0
            fpr, tpr, _ = roc_curve(y[keep], s[keep], sample_weight=w[keep])
            prec, rec, _ = precision_recall_curve(y[keep], s[keep], sample_weight=w[keep])
            for name, (xs, ys, xl, yl) in {"fleet_roc.png": (fpr, tpr, "false positive rate", "true positive rate"),
                                           "fleet_pr.png": (rec, prec, "recall", "precision")}.items():
                fig, ax = plt.subplots(figsize=(4.5, 4), dpi=100)
                ax.plot(xs, ys, lw=1.5)
                ax.set_xlabel(xl)
                ax.set_ylabel(yl)
                ax.set_title("all labelled frames of the fleet", fontsize=9)
                ax.set_xlim(0, 1)
                ax.set_ylim(0, 1.02)
                ax.grid(alpha=0.3)
                fig.tight_layout()
                buf = io.BytesIO()
                fig.savefig(buf, format="png", metadata={"Software": None})
                plt.close(fig)
                _write(out / name, buf.getvalue())
                written.append(name)
    return written


def _f(x: Any, pct: bool = False, digits: int = 2) -> str:
    if x is None or x == "":
        return "-"
    if pct:
        return f"{100 * x:.{digits}f} %"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1300px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.92em}td,th{border:1px solid #ccc;
padding:.25em .55em;text-align:right;vertical-align:top}th{background:#f3f3f3}td.l{text-align:left}
img{max-width:100%;border:1px solid #ddd}.bad{color:#b00}.ok{color:#070}.warn{color:#a60}
code{background:#f3f3f3;padding:0 .3em}.row{display:flex;gap:1em;flex-wrap:wrap}
td.reason{text-align:left;max-width:30em;font-size:.9em;color:#555}"""
CLASS = {"ok": "ok", "partial": "warn", "failed": "bad", "refused": "bad", "not replayed": "bad"}


def _page(status: dict[str, Any], fleet: dict[str, Any], rows: list[dict[str, Any]], worst: list[dict[str, Any]],
          gt: dict[str, Any] | None, plots: list[str], info: dict[str, Any]) -> str:
    e = html.escape
    p = [f"<!doctype html><html><head><meta charset='utf-8'><title>PEBAL fleet replay</title>"
         f"<style>{CSS}</style></head><body><h1>PEBAL fleet replay: {fleet['bags']} bag(s)</h1>"]
    ok = status["status"] == "complete"
    p.append(f"<p class='{'ok' if ok else 'bad'}'><b>{e(status['text'])}</b></p>")
    if status["missing"]:
        p.append("<h3 class='bad'>Bags without a result</h3><ul>" + "".join(
            f"<li><code>{e(m['bag'])}</code>: {e(m['reason'])}</li>" for m in status["missing"]) + "</ul>")
    if info.get("problems"):
        p.append("<h3 class='bad'>Refused while looking for bags</h3><ul>" + "".join(
            f"<li>{e(x)}</li>" for x in info["problems"]) + "</ul>")
    cl = info.get("cluster") or {}
    if cl:
        p.append(f"<p>Ray cluster <code>{e(str(cl.get('address')))}</code>: {cl.get('nodes')} node(s); "
                 f"{cl.get('workers')} worker(s), {cl.get('cpus_per_worker'):g} CPU and "
                 f"{cl.get('gpus_per_worker'):g} GPU each. Run time {info.get('wall_s', 0):.1f} s; "
                 f"{info.get('resumed', 0)} bag(s) were already complete (--resume).</p>")
    lat = fleet["latency_ms"]
    p.append("<h2>Fleet</h2>" + _html_table([
        ["bags", " / ".join(f"{v} {k}" for k, v in sorted(fleet["outcomes"].items()))],
        ["recording", f"{fleet['recording_hours']:.3f} h"],
        ["frames read / processed / skipped", f"{fleet['frames_read']} / {fleet['frames_processed']} / "
                                              f"{fleet['frames_skipped']}"],
        ["declared but unreadable messages", fleet["declared_but_unread"]],
        ["frames with anomalous pixels", f"{fleet['frames_with_anomaly']} ({_f(fleet['anomaly_frame_rate'], True)})"],
        ["mean anomalous fraction (all frames)", _f(fleet["mean_anomaly_fraction"], True, 3)],
        ["alarms (frames with a reported region)", f"{fleet['alarms']} ({_f(fleet['alarm_rate'], True)})"],
        ["latency per frame p50 / p95 / p99 / mean [ms]",
         " / ".join(_f(lat.get(k)) for k in ("p50", "p95", "p99", "mean"))],
        ["replay time, all bags summed", f"{fleet['replay_wall_s']:.1f} s"],
    ], ["figure", "value"], raw=False))
    if gt:
        m = gt.get("metrics") or {}
        p.append("<h2>Accuracy against ground truth, all labelled frames pooled</h2>"
                 f"<p>{gt['frames_with_labels']} labelled frames in {gt['bags']} bag(s); metrics from the merged "
                 "pixel histograms and confusion matrices (not an average of per-bag values).</p>")
        mrows = [[k.upper() if k != "fpr95" else "FPR95", _f(m.get(k), True)] for k in ("auroc", "ap", "fpr95") if k in m]
        mrows += [[label, _f(gt.get(k), True)] for k, label in (("miou", "mIoU"), ("anomaly_iou", "anomaly IoU"))
                  if gt.get(k) is not None]
        if gt.get("note"):
            mrows.append(["note", gt["note"]])
        p.append(_html_table(mrows, ["metric", "value"], raw=False))
        if "fleet_roc.png" in plots:
            p.append("<div class='row'><img src='fleet_roc.png' alt='ROC'><img src='fleet_pr.png' alt='PR'></div>")
    if worst:
        p.append("<h2>Frames with the largest anomalies, whole fleet</h2>" + _html_table([
            [f"<a href='{e(w['report'])}'>{e(w['bag'])}</a>", e(w["topic"]), w["index"],
             f"{100 * w['anomaly_fraction']:.2f} %", w["regions"], f"{w['max_score']:.2f}"]
            for w in worst], ["bag (report)", "topic", "frame", "anomalous", "regions", "max score"], raw=True,
            left=(0, 1)))
    if "fleet_alarms.png" in plots:
        p.append("<h2>Alarms per bag</h2><img src='fleet_alarms.png' alt='alarm rate per bag'>")
    p.append("<h2>Bags</h2>")
    body = []
    for r in rows:
        name = (f"<a href='{e(r['report'])}'>{e(r['output'])}</a>" if r["report"] else e(r["output"]))
        body.append([name, f"<span class='{CLASS.get(r['outcome'], '')}'>{e(r['outcome'])}</span>",
                     _f(r["frames_processed"]), _f(r["frames_skipped"]),
                     _f(r["frames_with_anomaly"] / r["frames_processed"] if r["frames_processed"] else None, True),
                     _f(r["mean_anomaly_fraction"], True, 3),
                     f"{_f(r['alarms'])} ({_f(r['alarm_rate'], True, 1)})" if r["alarms"] is not None else "-",
                     f"{_f(r['latency_p50_ms'], digits=1)} / {_f(r['latency_p95_ms'], digits=1)}",
                     _f(r["auroc"], True) if any(x["auroc"] is not None for x in rows) else None,
                     e(str(r["worker"] or "-")) + (f" ({r['attempts']} tries)" if (r["attempts"] or 1) > 1 else ""),
                     e(r["reason"])])
    has_gt = any(x["auroc"] is not None for x in rows)
    head = ["bag", "result", "frames", "skipped", "anomalous frames", "mean anomalous", "alarms",
            "latency p50 / p95 [ms]", "AUROC", "worker", "reason / notes"]
    if not has_gt:
        head.pop(8)
        body = [b[:8] + b[9:] for b in body]
    p.append(_html_table(body, head, raw=True, left=(0, len(head) - 1), reason_col=len(head) - 1))
    p.append("<p>Every figure: <a href='fleet_summary.json'>fleet_summary.json</a>; one row per bag: "
             "<a href='bags.csv'>bags.csv</a>.</p></body></html>")
    return "\n".join(p)


def _html_table(rows: list[list[Any]], head: list[str], raw: bool, left: tuple[int, ...] = (0,),
                reason_col: int | None = None) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    out = []
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            text = str(c) if raw else html.escape(str(c))
            cls = "reason" if i == reason_col else ("l" if i in left else "")
            cells.append(f"<td class='{cls}'>{text}</td>" if cls else f"<td>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(out)}</tbody></table>"


def run_status(entries: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    missing = [{"bag": r["bag"], "reason": r["reason"] or "not replayed"} for r in rows
               if r["outcome"] in ("refused", "not replayed")]
    failed = sum(r["outcome"] == "failed" for r in rows)
    if missing:
        text = (f"INCOMPLETE: {len(missing)} of {len(rows)} bag(s) have no result (listed below with the reason); "
                "run the same command with --resume to replay only those")
    else:
        text = (f"complete: every one of the {len(rows)} bag(s) was replayed" if not failed else
                f"complete: all {len(rows)} bag(s) tried; {len(rows) - failed} replayed, {failed} failed by "
                "itself (corrupt, no image topics...: the reason is in the table; not retried)")
    return {"status": "complete" if not missing else "incomplete", "text": text, "missing": missing}


def write_fleet_report(out: Path, entries: list[dict[str, Any]], info: dict[str, Any]) -> Path:
    rows = bag_rows(out, entries)
    status = run_status(entries, rows)
    fleet = fleet_figures(rows, entries)
    worst = worst_frames(entries, out)
    pooled = pooled_ground_truth(out, entries)
    gt = None
    if pooled is not None:
        gt = pooled.compute()
        gt["bags"] = sum(1 for e in entries if (e.get("record") or {}).get("ground_truth_state"))
    plots = _plots(out, rows, pooled)
    summary = {"status": status["status"], "status_text": status["text"], "missing": status["missing"],
               "fleet": fleet, "ground_truth": gt, "worst_frames": worst, "bags": rows, "plots": plots,
               "run": {k: v for k, v in info.items() if k != "command"} | {"command": info.get("command", "")}}
    _write(out / SUMMARY, json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["bag"])
    w.writeheader()
    w.writerows(rows)
    _write(out / "bags.csv", buf.getvalue())
    index = out / "index.html"
    _write(index, _page(status, fleet, rows, worst, gt, plots, info))
    return index
