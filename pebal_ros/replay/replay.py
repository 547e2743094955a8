"""Bag in, result bag and report out: every camera frame through the node's own per-frame pipeline.

One pass over the recording in storage order. Image messages go through
:class:`pebal_ros.pipeline.frame.FramePipeline` (the code the ROS 2 node runs) and its output
messages are written to an MCAP result bag with the input frame's receive time as log time and
its header copied (what ``ros2 bag record`` of the node's topics would have produced). Label
messages and label PNGs are matched to frames for the accuracy figures. Every message read is
accounted for: processed, skipped with a reason, used as ground truth, or counted as another topic;
the difference between what the metadata declares and what could be read is reported with where
the file broke.
"""
from __future__ import annotations

import csv
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..pipeline.frame import FramePipeline, PipelineConfig
from ..pipeline.messages import OUTPUT_NAMES, OUTPUT_TYPES, MessageFactory
from . import report as rep
from .bag import IMAGE_TYPES, BagReader, BagWriter, TopicInfo, make_typestore
from .groundtruth import Accuracy, LabelFolder, LabelTopicMatcher, label_from_message

IMAGE = "sensor_msgs/msg/Image"
LABEL_HINTS = ("label", "ground_truth", "groundtruth", "/gt")


class ReplayError(Exception):
    """Nothing could be replayed (the message says why); the CLI exits non-zero."""


@dataclass
class ReplayOptions:
    topics: Sequence[str] | None = None          # image topics; None = every Image/CompressedImage topic
    label_topic: str | None = "auto"             # mono8 label topic; "auto": by name; None: no labels
    labels_dir: Path | None = None               # label PNGs matched to the frames of the first topic
    label_match: str = "auto"
    label_kind: str = "auto"
    threshold: float | None = None               # None: the model's default
    outputs: Sequence[str] = OUTPUT_NAMES
    namespace: str = ""                          # the node's namespace; outputs go to /<ns>/pebal/...
    output_resolution: str = "camera"
    min_region_area: int = 50
    reproducible: bool = False                   # write 0 for the measured latencies in status
    top_k: int = 12
    max_frames: int | None = None                # per topic
    progress: bool = True
    overwrite: bool = False
    writer_thread: bool = True                   # serialise + write on a background thread
    settings: dict[str, Any] | None = None       # the resolved model settings (cli.settings_report)


@dataclass
class ReplayResult:
    bag: Path
    out_dir: Path
    result_bag: Path | None
    report_dir: Path
    summary: dict[str, Any]
    exit_code: int
    messages: list[str] = field(default_factory=list)
    accuracy: Accuracy | None = None     # the ground-truth accumulators, to pool several bags


def _output_prefix(namespace: str, topic: str, several: bool) -> str:
    """Where the node would publish: ``/<ns>/pebal`` (``/pebal`` without namespace), as
    launch/detector.launch.py names it. With several cameras each gets the camera topic's parent
    namespace, like the launch file's one-detector-per-camera instances (``/front/pebal/...``)."""
    parts = [namespace.strip("/")]
    if several:
        parts.append(topic.rsplit("/", 1)[0].strip("/"))
    ns = "/".join(p for p in parts if p)
    return f"/{ns}/pebal" if ns else "/pebal"


def select_topics(reader: BagReader, opts: ReplayOptions) -> tuple[list[TopicInfo], TopicInfo | None]:
    """Image topics to process and the label topic, with clear errors for impossible choices."""
    topics = reader.topics
    listing = ", ".join(f"{t.name} [{t.msgtype}]" for t in topics.values()) or "no topics at all"
    if not topics and reader.scan_notes:
        listing += f" ({'; '.join(reader.scan_notes)})"
    label: TopicInfo | None = None
    if opts.label_topic and opts.label_topic != "auto":
        label = topics.get(opts.label_topic)
        if label is None:
            raise ReplayError(f"label topic {opts.label_topic} is not in {reader.path}; it has: {listing}")
        if label.msgtype != IMAGE:
            raise ReplayError(f"label topic {label.name} has type {label.msgtype}; labels must be "
                              "mono8 sensor_msgs/msg/Image")
    if opts.topics:
        chosen = []
        for name in opts.topics:
            t = topics.get(name)
            if t is None:
                raise ReplayError(f"topic {name} is not in {reader.path}; it has: {listing}")
            if t.msgtype not in IMAGE_TYPES:
                raise ReplayError(f"topic {name} has message type {t.msgtype}, which is not an image "
                                  f"type ({' or '.join(IMAGE_TYPES)}); image topics here: "
                                  f"{[x.name for x in topics.values() if x.msgtype in IMAGE_TYPES] or 'none'}")
            chosen.append(t)
    else:
        chosen = [t for t in topics.values() if t.msgtype in IMAGE_TYPES]
        hinted = [t for t in chosen if t.msgtype == IMAGE and any(h in t.name.lower() for h in LABEL_HINTS)]
        if label is None and opts.label_topic == "auto" and len(hinted) == 1:
            label = hinted[0]
        # Label topics are ground truth, never cameras (name them in --topics to force it).
        chosen = [t for t in chosen if t not in hinted and (label is None or t.name != label.name)]
        if not chosen:
            raise ReplayError(f"{reader.path} has no image topics (sensor_msgs/msg/Image or "
                              f"CompressedImage); it has: {listing}")
    return sorted(chosen, key=lambda t: t.name), label


def _prepare_out(out_dir: Path, overwrite: bool) -> tuple[Path, Path]:
    result_bag, report_dir = out_dir / "result_bag", out_dir / "report"
    for p in (result_bag, report_dir):
        if p.exists():
            if not overwrite:
                raise ReplayError(f"{p} exists already; pass --overwrite or choose another --out")
            shutil.rmtree(p)
    report_dir.mkdir(parents=True)
    return result_bag, report_dir


def replay_bag(bag: str | Path, runtime: Any, out_dir: str | Path, opts: ReplayOptions | None = None,
               threshold_default: float | None = None) -> ReplayResult:
    """Replay one bag. Raises :class:`BagError`/:class:`ReplayError` when nothing can be done."""
    from tqdm import tqdm

    opts = opts or ReplayOptions()
    bag, out_dir = Path(bag), Path(out_dir)
    threshold = opts.threshold if opts.threshold is not None else threshold_default
    if threshold is None:
        from .model import default_threshold
        threshold = default_threshold(runtime)
    with BagReader(bag) as reader:
        cams, label_topic = select_topics(reader, opts)
        result_bag, report_dir = _prepare_out(out_dir, opts.overwrite)
        in_store = make_typestore(reader.topics.values())
        factory = MessageFactory.for_rosbags(make_typestore())
        pipe = FramePipeline(runtime, PipelineConfig(
            threshold=float(threshold), output_resolution=opts.output_resolution,
            outputs=tuple(opts.outputs), min_region_area=opts.min_region_area).validate(), factory)
        several = len(cams) > 1
        prefixes = {t.name: _output_prefix(opts.namespace, t.name, several) for t in cams}
        cam_names = {t.name for t in cams}
        summaries = {t.name: rep.TopicSummary(t.name, t.msgtype, t.declared) for t in cams}
        labels_dir = LabelFolder(opts.labels_dir, opts.label_match) if opts.labels_dir else None
        accuracy = Accuracy(opts.label_kind) if (labels_dir or label_topic) else None
        matcher = LabelTopicMatcher(accuracy) if (accuracy is not None and label_topic) else None
        label_stats: Counter[str] = Counter()
        other: Counter[str] = Counter()
        records: list[rep.FrameRecord] = []
        stages: defaultdict[str, float] = defaultdict(float)
        top = rep.TopK(opts.top_k)
        total = sum(t.declared or 0 for t in cams) or None
        if opts.max_frames and total:
            total = min(total, opts.max_frames * len(cams))

        t_start = time.perf_counter()
        writer = BagWriter(result_bag, factory.typestore, threaded=opts.writer_thread)
        try:
            for t in cams:
                for name in opts.outputs:
                    writer.add_topic(f"{prefixes[t.name]}/{name}", OUTPUT_TYPES[name])
            bar = tqdm(total=total, desc=f"replay {bag.name}", unit="frame", disable=not opts.progress, leave=False)
            for raw in reader.messages():
                if raw.topic in cam_names:
                    s = summaries[raw.topic]
                    index = s.read
                    s.read += 1
                    rec = rep.FrameRecord(raw.topic, index, raw.timestamp)
                    if opts.max_frames is not None and index >= opts.max_frames:
                        rec.status, rec.reason = "skipped", f"beyond --max-frames {opts.max_frames}"
                    else:
                        _process(raw, rec, in_store, pipe, opts, writer, prefixes[raw.topic], top, stages)
                        bar.update(1)
                    records.append(rec)
                    if rec.status == "processed":
                        s.processed += 1
                        outputs, frame_id = rec.__dict__.pop("_outputs")
                        t_gt = time.perf_counter()
                        if labels_dir is not None and raw.topic == cams[0].name:
                            try:
                                label = labels_dir.get(index, rec.stamp_ns)
                            except ValueError as exc:
                                label_stats[f"unusable: {exc}"[:160]] += 1
                                label = None
                            if label is None:
                                label_stats["frames_without_label"] += 1
                            elif accuracy is not None:
                                accuracy.update(outputs.score, outputs.mask, outputs.semantic, label)
                        elif matcher is not None and rec.stamp_ns is not None:
                            matcher.frame((frame_id, rec.stamp_ns), outputs)
                        stages["ground_truth_metrics"] += (time.perf_counter() - t_gt) * 1e3
                    else:
                        s.skipped += 1
                        s.skip_reasons[rec.reason] = s.skip_reasons.get(rec.reason, 0) + 1
                elif label_topic is not None and raw.topic == label_topic.name:
                    t_gt = time.perf_counter()
                    label_stats["read"] += 1
                    try:
                        msg = in_store.deserialize_cdr(raw.data, raw.msgtype)
                        label = label_from_message(msg)
                        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                    except Exception as exc:  # noqa: BLE001 - a bad label costs only itself
                        label_stats[f"unusable: {type(exc).__name__}: {exc}"[:160]] += 1
                        continue
                    if matcher is not None:
                        matcher.label((msg.header.frame_id, stamp), label)
                    stages["ground_truth_metrics"] += (time.perf_counter() - t_gt) * 1e3
                else:
                    other[raw.topic] += 1
            bar.close()
        finally:
            writer.close()
        wall = time.perf_counter() - t_start
        # Everything in the loop that is not per-frame processing: reading the bag, labels, metrics.
        stages["bag_read_and_other"] = (wall * 1e3 - sum(r.latency_ms for r in records)
                                        - stages.get("ground_truth_metrics", 0.0))
        if accuracy is None:      # no labels: no "ground truth metrics" stage in the report
            stages.pop("ground_truth_metrics", None)
        issues = [str(i) for i in reader.issues]
        backends = dict(reader.backends)
        all_topics = dict(reader.topics)

    if matcher is not None:
        matcher.finish()
        label_stats["frames_without_label"] += matcher.frames_without_label
        label_stats["labels_without_frame"] += matcher.labels_without_frame
    summary = _summarise(bag, result_bag, runtime, float(threshold), opts, cams, summaries, all_topics,
                         other, records, issues, backends, wall, label_topic, labels_dir, accuracy,
                         label_stats, top, report_dir, stages)
    rep.write_summary(report_dir, summary)
    with (report_dir / "frames.csv").open("w", newline="", encoding="utf-8") as fh:
        rows = rep.records_to_rows(records)
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["topic"])
        w.writeheader()
        w.writerows(rows)
    rep.write_html(report_dir, summary)
    processed = sum(s.processed for s in summaries.values())
    code = 0 if processed else 1
    return ReplayResult(bag, out_dir, result_bag, report_dir, summary, code, accuracy=accuracy)


def _process(raw: Any, rec: rep.FrameRecord, store: Any, pipe: FramePipeline, opts: ReplayOptions,
             writer: BagWriter, prefix: str, top: rep.TopK, stages: defaultdict[str, float]) -> None:
    """Decode + pipeline + write one frame; fills ``rec`` (a skipped frame gets its reason) and adds
    the time of each stage to ``stages`` (ms)."""
    from ..pipeline.convert import FrameError

    t0 = time.perf_counter()
    try:
        msg = store.deserialize_cdr(raw.data, raw.msgtype)
    except Exception as exc:  # noqa: BLE001 - corrupt CDR: this frame only
        rec.status, rec.reason = "skipped", f"undecodable message ({type(exc).__name__})"
        return
    t1 = time.perf_counter()
    try:
        rec.stamp_ns = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
        result = pipe.process(msg, received_at=t0)
    except FrameError as exc:
        rec.status, rec.reason = "skipped", f"{type(exc).__name__}: {exc}"[:200]
        return
    except Exception as exc:  # noqa: BLE001 - runtime failure on this frame: record it, go on
        rec.status, rec.reason = "skipped", f"pipeline error {type(exc).__name__}: {exc}"[:200]
        return
    st = result.status
    msgs = result.messages
    if opts.reproducible and "status" in msgs:
        msgs["status"] = pipe.factory.status(result.header, replace(st, inference_latency_ms=0.0,
                                                                    end_to_end_latency_ms=0.0))
    t2 = time.perf_counter()
    for name, m in msgs.items():
        writer.write(f"{prefix}/{name}", raw.timestamp, m)
    t3 = time.perf_counter()
    rec.latency_ms = (t3 - t0) * 1e3
    stages["cdr_decode_input"] += (t1 - t0) * 1e3
    for key in ("decode", "preprocess", "inference", "postprocess", "encode"):
        stages[f"pipeline_{key}"] += float(result.timings.get(key, 0.0))
    stages["cdr_encode_and_write"] += (t3 - t2) * 1e3
    rec.inference_ms = float(result.timings.get("inference", 0.0))
    rec.anomaly_fraction, rec.max_score, rec.mean_score = st.anomaly_fraction, st.max_score, st.mean_score
    rec.regions = len(st.regions)
    if top.wants(st.anomaly_fraction):
        ov = msgs.get("overlay")
        img = (np.asarray(ov.data).reshape(ov.height, ov.width, 3) if ov is not None
               else _overlay_image(pipe, msg, result.outputs))
        top.add(st.anomaly_fraction, f"{rec.topic} #{rec.index}", img)
    rec.__dict__["_outputs"] = (result.outputs, str(msg.header.frame_id))


def _overlay_image(pipe: FramePipeline, msg: Any, outputs: Any) -> np.ndarray:
    """The overlay for the contact sheet when the overlay output itself is not requested."""
    import cv2

    from ..pipeline.visualize import colorize, overlay

    image = pipe.decode(msg)
    if pipe.runtime.channel_order == "bgr":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    h, w = outputs.mask.shape
    if image.shape[:2] != (h, w):
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    return overlay(image, colorize(outputs.semantic), outputs.mask)


def _summarise(bag: Path, result_bag: Path, runtime: Any, threshold: float, opts: ReplayOptions,
               cams: list[TopicInfo], summaries: dict[str, rep.TopicSummary], all_topics: dict[str, TopicInfo],
               other: Counter, records: list[rep.FrameRecord], issues: list[str], backends: dict[str, str],
               wall: float, label_topic: TopicInfo | None, labels_dir: LabelFolder | None,
               accuracy: Accuracy | None, label_stats: Counter, top: rep.TopK, report_dir: Path,
               stages: defaultdict[str, float]) -> dict[str, Any]:
    processed = [r for r in records if r.status == "processed"]
    # Declared-but-unreadable messages: every message the metadata promises must show up somewhere.
    unread = {t.name: t.declared - t.read for t in all_topics.values()
              if t.declared is not None and t.declared > t.read}
    fractions = [r.anomaly_fraction for r in processed]
    try:
        desc = runtime.describe()
    except Exception:  # noqa: BLE001
        desc = {}
    runtime_info = {"name": getattr(runtime, "name", "?"), "input_size": list(getattr(runtime, "input_size", None) or []),
                    "model": Path(str(desc.get("model", ""))).name, "channel_order": getattr(runtime, "channel_order", "")}
    n_proc = len(processed)
    n_skip = len(records) - n_proc
    status_text = (f"{n_proc} of {len(records)} frames processed" + (f", {n_skip} skipped" if n_skip else "")
                   + (f"; {sum(unread.values())} declared messages could not be read" if unread else ""))
    det: dict[str, Any] = {
        "bag": str(bag), "result_bag": str(result_bag), "runtime": runtime_info, "threshold": threshold,
        "threshold_source": (opts.settings or {}).get("threshold_source", "replay option"),
        "threshold_calibrated": (opts.settings or {}).get("threshold_calibrated"),
        "model_settings": opts.settings,
        "status": "ok" if n_proc and not n_skip and not issues and not unread else ("failed" if not n_proc else "partial"),
        "status_text": status_text,
        "topics": [rep.asdict(summaries[t.name]) for t in cams],
        "other_topics": dict(sorted(other.items())),
        "label_topic": label_topic.name if label_topic else None,
        "declared_but_unread": unread, "issues": issues, "readers": backends,
        "frames": {"read": len(records), "processed": n_proc, "skipped": n_skip},
        "anomaly": {
            "frames": n_proc, "frames_with_anomaly": int(sum(f > 0 for f in fractions)),
            "mean_fraction": float(np.mean(fractions)) if fractions else None,
            "max_fraction": float(np.max(fractions)) if fractions else None,
        },
        "output_topics": sorted(f"{_output_prefix(opts.namespace, t.name, len(cams) > 1)}/{n}"
                                for t in cams for n in opts.outputs),
    }
    if fractions:
        rep.plot_anomaly_over_time(records, report_dir / "anomaly_over_time.png")
    det["contact_sheet"] = rep.contact_sheet(top.items(), report_dir / "contact_sheet.png")
    if accuracy is not None:
        gt = accuracy.compute()
        gt["source"] = labels_dir.describe() if labels_dir else f"topic {label_topic.name if label_topic else '?'}"
        gt["frames_without_labels"] = int(label_stats.get("frames_without_label", 0))
        gt["label_messages"] = {k: v for k, v in label_stats.items() if k not in ("matched", "frames_without_label")}
        if gt.get("metrics"):
            scores, labels = accuracy.curve_sample()
            rep.plot_curves(scores, labels, gt["metrics"], report_dir)
        det["ground_truth"] = gt
    timing = {
        "wall_s": wall, "frames_per_s": n_proc / wall if wall > 0 else 0.0,
        "latency_ms": rep.latency_stats([r.latency_ms for r in processed]),
        "inference_ms": rep.latency_stats([r.inference_ms for r in processed]),
        # Mean ms per processed frame spent in each stage of the loop (sums to wall / frames).
        "stages_ms_per_frame": {k: v / n_proc for k, v in sorted(stages.items())} if n_proc else {},
    }
    return {"deterministic": det, "timing": timing}
