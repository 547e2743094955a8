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
import io
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..config import InputConfig
from ..output_folder import FolderBusy, OutputFolder, write_file
from ..pipeline.frame import FramePipeline, PipelineConfig
from ..pipeline.messages import OUTPUT_NAMES, OUTPUT_TYPES, MessageFactory
from ..pipeline.visualize import HEATMAP_SPAN
from . import report as rep
from .bag import IMAGE_TYPES, BagReader, BagWriteError, BagWriter, TopicInfo, make_typestore
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
    max_decoded_pixels: int = InputConfig.max_decoded_pixels   # larger frames and labels are refused
    reproducible: bool = False                   # write 0 for the measured latencies in status
    top_k: int = 12                              # frames on the contact sheet (largest flagged fraction)
    top_misses: int = 6                          # frames on the misses sheet (with ground truth)
    heatmap_span: float = HEATMAP_SPAN           # score units either side of the threshold in pictures
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


def _output_problem(exc: BaseException, folder: OutputFolder) -> str:
    """A failed write in one line, naming the output file (its final name, not the staging one)."""
    if isinstance(exc, OSError) and exc.filename is not None:
        return folder.public(f"{exc.filename}: {exc.strerror or exc}")
    return folder.public(str(exc))


def replay_bag(bag: str | Path, runtime: Any, out_dir: str | Path, opts: ReplayOptions | None = None,
               threshold_default: float | None = None) -> ReplayResult:
    """Replay one bag. Raises :class:`BagError`/:class:`ReplayError` when nothing can be done.

    ``out_dir`` is locked for the run (another run into it gets a ReplayError naming this process)
    and ``result_bag/`` and ``report/`` are written under temporary names and moved into place at
    the end. When writing fails (a full disk), the result is ``exit_code`` 1 with
    ``summary["deterministic"]["status"] == "incomplete"`` and the reason, naming the output, in
    ``status_text``, ``incomplete`` and ``messages``; ``report/`` then holds only that
    ``summary.json``, and ``result_bag/`` is kept only if it was closed intact."""
    opts = opts or ReplayOptions()
    bag, out_dir = Path(bag), Path(out_dir)
    threshold = opts.threshold if opts.threshold is not None else threshold_default
    if threshold is None:
        from .model import default_threshold
        threshold = default_threshold(runtime)
    with BagReader(bag) as reader:
        cams, label_topic = select_topics(reader, opts)
        try:
            folder = OutputFolder(out_dir, ("result_bag", "report"), overwrite=opts.overwrite).__enter__()
        except FolderBusy as exc:
            raise ReplayError(str(exc)) from None
        except FileExistsError as exc:
            raise ReplayError(f"{exc.filename} {exc.strerror}") from None
        try:
            return _replay_into(folder, bag, reader, cams, label_topic, runtime, float(threshold), opts)
        finally:
            folder.__exit__(None, None, None)


def _replay_into(folder: OutputFolder, bag: Path, reader: BagReader, cams: list[TopicInfo],
                 label_topic: TopicInfo | None, runtime: Any, threshold: float,
                 opts: ReplayOptions) -> ReplayResult:
    from tqdm import tqdm

    result_bag, report_dir = folder.final("result_bag"), folder.final("report")
    in_store = make_typestore(reader.topics.values())
    factory = MessageFactory.for_rosbags(make_typestore())
    pipe = FramePipeline(runtime, PipelineConfig(
        threshold=threshold, output_resolution=opts.output_resolution,
        outputs=tuple(opts.outputs), min_region_area=opts.min_region_area,
        max_decoded_pixels=opts.max_decoded_pixels).validate(), factory)
    several = len(cams) > 1
    prefixes = {t.name: _output_prefix(opts.namespace, t.name, several) for t in cams}
    cam_names = {t.name for t in cams}
    summaries = {t.name: rep.TopicSummary(t.name, t.msgtype, t.declared) for t in cams}
    labels_dir = (LabelFolder(opts.labels_dir, opts.label_match, opts.max_decoded_pixels)
                  if opts.labels_dir else None)
    accuracy = Accuracy(opts.label_kind) if (labels_dir or label_topic) else None
    top = rep.TopK(opts.top_k)
    misses = rep.TopK(opts.top_misses if accuracy is not None else 0)

    def scored(outputs: Any, label: np.ndarray, tile: rep.Tile | None) -> None:
        """A frame and its label met: the metrics, and the label onto the frame's tile."""
        assert accuracy is not None
        truth, objects = accuracy.update(outputs.score, outputs.mask, outputs.semantic, label,
                                         frame=tile.title if tile is not None else "")
        if tile is not None:
            rep.attach_truth(tile, truth, objects)
            if tile.missed_pixels and misses.wants(tile.missed_pixels):
                misses.add(tile.missed_pixels, tile)

    matcher = LabelTopicMatcher(scored) if (accuracy is not None and label_topic) else None
    label_stats: Counter[str] = Counter()
    other: Counter[str] = Counter()
    records: list[rep.FrameRecord] = []
    stages: defaultdict[str, float] = defaultdict(float)
    total = sum(t.declared or 0 for t in cams) or None
    if opts.max_frames and total:
        total = min(total, opts.max_frames * len(cams))
    failure: str | None = None

    t_start = time.perf_counter()
    writer: BagWriter | None = None
    try:
        # a frame's messages are written while the next frame's inference runs (BagWriter: deferred)
        writer = BagWriter(folder.stage("result_bag"), factory.typestore, threaded=opts.writer_thread,
                           deferred=True)
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
                    _process(raw, rec, in_store, pipe, opts, writer, prefixes[raw.topic], top, stages,
                             tiles_for_all=accuracy is not None)
                    bar.update(1)
                records.append(rec)
                if rec.status == "processed":
                    s.processed += 1
                    outputs, frame_id, tile = rec.__dict__.pop("_outputs")
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
                            scored(outputs, label, tile)
                    elif matcher is not None and rec.stamp_ns is not None:
                        matcher.frame((frame_id, rec.stamp_ns), outputs, tile)
                    stages["ground_truth_metrics"] += (time.perf_counter() - t_gt) * 1e3
                else:
                    s.skipped += 1
                    s.skip_reasons[rec.reason] = s.skip_reasons.get(rec.reason, 0) + 1
            elif label_topic is not None and raw.topic == label_topic.name:
                t_gt = time.perf_counter()
                label_stats["read"] += 1
                try:
                    msg = in_store.deserialize_cdr(raw.data, raw.msgtype)
                    label = label_from_message(msg, opts.max_decoded_pixels)
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
    except BagWriteError as exc:        # the output failed (disk full): stop, say so, keep nothing half-written
        failure = _output_problem(exc, folder)
    finally:
        if writer is not None:
            try:
                writer.close()
            except BagWriteError as exc:
                failure = failure or _output_problem(exc, folder)
    wall = time.perf_counter() - t_start
    # Everything in the loop that is not per-frame processing: reading the bag, labels, metrics.
    stages["bag_read_and_other"] = (wall * 1e3 - sum(r.latency_ms for r in records)
                                    - stages.get("ground_truth_metrics", 0.0))
    if accuracy is None:      # no labels: no "ground truth metrics" stage in the report
        stages.pop("ground_truth_metrics", None)

    if matcher is not None:
        matcher.finish()
        label_stats["frames_without_label"] += matcher.frames_without_label
        label_stats["labels_without_frame"] += matcher.labels_without_frame
    summary = _summarise(bag, result_bag, runtime, threshold, opts, cams, summaries, dict(reader.topics),
                         other, records, [str(i) for i in reader.issues], dict(reader.backends), wall,
                         label_topic, labels_dir, accuracy, label_stats, top, stages)
    if failure is None:
        try:
            _write_report(folder.stage("report"), summary, records, top, misses, accuracy, opts)
        except OSError as exc:
            failure = _output_problem(exc, folder)
    if failure is not None:
        _mark_incomplete(summary, failure)
        if writer is None or writer.error is not None:
            folder.discard("result_bag")
            summary["deterministic"]["result_bag"] = None
        try:         # what the run can still say: the summary alone, saying what is missing and why
            stage = folder.stage("report", fresh=True)
            stage.mkdir()
            rep.write_summary(stage, summary)
        except OSError:
            folder.discard("report")        # not even that fits: no report at all, never a stale one
    folder.commit()
    processed = sum(s.processed for s in summaries.values())
    code = 0 if processed and failure is None else 1
    return ReplayResult(bag, folder.folder, result_bag if summary["deterministic"]["result_bag"] else None,
                        report_dir, summary, code, [failure] if failure else [], accuracy=accuracy)


def _mark_incomplete(summary: dict[str, Any], failure: str) -> None:
    det = summary["deterministic"]
    det["status"] = "incomplete"
    det["incomplete"] = failure
    det["status_text"] = f"incomplete, writing the results failed: {failure} ({det['status_text']} before that)"
    det["contact_sheet"] = det["misses_sheet"] = False


def _write_report(report_dir: Path, summary: dict[str, Any], records: list[rep.FrameRecord],
                  top: rep.TopK, misses: rep.TopK, accuracy: Accuracy | None, opts: ReplayOptions) -> None:
    """Plots, contact sheet, frames.csv and report.html, then summary.json last."""
    report_dir.mkdir(parents=True, exist_ok=True)
    det = summary["deterministic"]
    if det["anomaly"]["frames"]:
        rep.plot_anomaly_over_time(records, report_dir / "anomaly_over_time.png")
    thr = float(det["threshold"])
    det["contact_sheet"] = rep.contact_sheet([t for _, t in top.items()], report_dir / "contact_sheet.png",
                                             thr, opts.heatmap_span)
    det["misses_sheet"] = rep.contact_sheet([t for _, t in misses.items()], report_dir / "misses.png",
                                            thr, opts.heatmap_span)
    gt = det.get("ground_truth")
    if accuracy is not None and gt and gt.get("metrics"):
        scores, labels = accuracy.curve_sample()
        rep.plot_curves(scores, labels, gt["metrics"], report_dir)
    rows = rep.records_to_rows(records)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["topic"])
    w.writeheader()
    w.writerows(rows)
    write_file(report_dir / "frames.csv", buf.getvalue())
    rep.write_html(report_dir, summary)
    rep.write_summary(report_dir, summary)


def _process(raw: Any, rec: rep.FrameRecord, store: Any, pipe: FramePipeline, opts: ReplayOptions,
             writer: BagWriter, prefix: str, top: rep.TopK, stages: defaultdict[str, float],
             tiles_for_all: bool = False) -> None:
    """Decode + pipeline + write one frame; fills ``rec`` (a skipped frame gets its reason) and adds
    the time of each stage to ``stages`` (ms)."""
    from ..pipeline.convert import FrameError

    t0 = time.perf_counter()
    try:
        # a memoryview: rosbags slices off the CDR header, which would copy a bytes payload (as the node)
        msg = store.deserialize_cdr(memoryview(raw.data), raw.msgtype)
    except Exception as exc:  # noqa: BLE001 - corrupt CDR: this frame only
        rec.status, rec.reason = "skipped", f"undecodable message ({type(exc).__name__})"
        return
    t1 = time.perf_counter()
    handing_over = 0.0

    def hand_over() -> None:
        """The previous frames' messages to the writer thread, now that the GIL goes free."""
        nonlocal handing_over
        t = time.perf_counter()
        writer.release()         # blocks only while the writer's queue is full (it falls behind)
        handing_over = time.perf_counter() - t

    try:
        rec.stamp_ns = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
        result = pipe.process(msg, received_at=t0, before_inference=hand_over)
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
    stages["cdr_encode_and_write"] += (t3 - t2 + handing_over) * 1e3
    rec.inference_ms = float(result.timings.get("inference", 0.0))
    rec.anomaly_fraction, rec.max_score, rec.mean_score = st.anomaly_fraction, st.max_score, st.mean_score
    rec.regions = len(st.regions)
    tile = None
    # With ground truth every frame may turn out to be a miss worth showing: each gets its tile.
    if tiles_for_all or top.wants(st.anomaly_fraction):
        ov = msgs.get("overlay")
        img = (np.asarray(ov.data).reshape(ov.height, ov.width, 3) if ov is not None
               else _overlay_image(pipe, msg, result.outputs))
        score = result.outputs.score
        if getattr(pipe.runtime, "reuse_outputs", False):   # overwritten by the next frame otherwise
            score = score.copy()
        # references, not thumbnails: only the frames still on the sheet at the end are shrunk
        tile = rep.make_tile(f"{rec.topic} #{rec.index}", st.anomaly_fraction, img, score)
        if top.wants(st.anomaly_fraction):
            top.add(st.anomaly_fraction, tile)
    rec.__dict__["_outputs"] = (result.outputs, str(msg.header.frame_id), tile)


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
               accuracy: Accuracy | None, label_stats: Counter, top: rep.TopK,
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
    det["contact_sheet"] = bool(top.items())
    det["heatmap"] = {"low": threshold - opts.heatmap_span, "threshold": threshold,
                      "high": threshold + opts.heatmap_span}
    if accuracy is not None:
        gt = accuracy.compute()
        gt["source"] = labels_dir.describe() if labels_dir else f"topic {label_topic.name if label_topic else '?'}"
        gt["frames_without_labels"] = int(label_stats.get("frames_without_label", 0))
        gt["label_messages"] = {k: v for k, v in label_stats.items() if k not in ("matched", "frames_without_label")}
        det["ground_truth"] = gt
    timing = {
        "wall_s": wall, "frames_per_s": n_proc / wall if wall > 0 else 0.0,
        "latency_ms": rep.latency_stats([r.latency_ms for r in processed]),
        "inference_ms": rep.latency_stats([r.inference_ms for r in processed]),
        # Mean ms per processed frame spent in each stage of the loop (sums to wall / frames).
        "stages_ms_per_frame": {k: v / n_proc for k, v in sorted(stages.items())} if n_proc else {},
    }
    return {"deterministic": det, "timing": timing}
