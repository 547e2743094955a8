"""Run the whole job on two sample drives: recording -> detector (ONNX Runtime, CPU) -> result bag + report.

Two parts, each written as a rosbag2 recording (MCAP) with its ground truth on /camera/labels,
replayed with ONNX Runtime exactly as `pebal replay` does, with its own report:

  synthetic  a synthetic drive down a street with anomalies lying on the road (labels: mono8
             train ids, 254 = anomaly), through the bundled synthetic model
             pebal_synthetic_espnetv2.pt (trained on such renderings);
  road       a real highway drive (udacity/CarND-LaneLines-P1's solidWhiteRight clip, MIT, bundled
             with the package) with held-out objects pasted on the road (labels: 0 normal,
             1 object), through the bundled real-road model pebal_espnetv2_road.pt.

Prints where each result bag and report are. --model, --threshold and --preset/--config/--set
apply to every part that runs. Needs no GPU, no ROS 2 and no network; a model's ONNX export is
built on first use and cached.

Examples:
  pebal demo
  pebal demo --part road
  pebal demo --out /tmp/demo --frames 200 --format both
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RAW, COMPRESSED, LABELS = "/camera/image_raw", "/camera/image_raw/compressed", "/camera/labels"
PARTS = ("synthetic", "road")
# Each part runs the model made for its frames, named explicitly: the package's default model
# may change without changing what a part shows.
MODELS = {"synthetic": "pebal_synthetic_espnetv2.pt", "road": "pebal_espnetv2_road.pt"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("pebal_demo"),
                   help="output folder (default ./pebal_demo); each part writes OUT/synthetic or OUT/road")
    p.add_argument("--part", default="both", choices=("synthetic", "road", "both"),
                   help="which sample drive: the synthetic one, the real road clip, or both (default)")
    p.add_argument("--frames", type=int, default=100, help="frames in the synthetic drive (10 per second)")
    p.add_argument("--road-frames", type=int, default=None, metavar="N",
                   help="replay only the first N frames of the bundled road clip (default: all of them)")
    p.add_argument("--size", default="512x256", metavar="WxH", help="synthetic camera image size (default 512x256)")
    p.add_argument("--format", default="raw", choices=("raw", "compressed", "both"),
                   help="camera topic(s): sensor_msgs/Image rgb8, CompressedImage JPEG, or both")
    p.add_argument("--seed", type=int, default=0, help="which synthetic drive (scene, anomalies)")
    p.add_argument("--model", default=None,
                   help="model file (.pt/.onnx) for every part run, instead of the bundled ones "
                        f"({MODELS['synthetic']} for the synthetic drive, {MODELS['road']} for the road clip)")
    p.add_argument("--threshold", type=float, default=None, help="score threshold (default: the model's)")
    from .config import add_config_arguments
    from .replay.model import MODEL_PRESET_HELP
    add_config_arguments(p, MODEL_PRESET_HELP)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def semantic_label(train_ids: np.ndarray, anomaly: np.ndarray) -> np.ndarray:
    """Train ids with 254 where the anomaly label is 1 (the replay reads both mIoU and OOD from it)."""
    from .labels import ANOMALY_LABEL

    out = train_ids.copy()
    out[anomaly == 1] = ANOMALY_LABEL
    return out


def _write(path: Path, frames: Iterable[tuple[np.ndarray, np.ndarray]], fmt: str, period_ns: int = 100_000_000) -> int:
    from .replay.recording import write_recording

    return write_recording(path, frames, topic=RAW if fmt in ("raw", "both") else None,
                           compressed_topic=COMPRESSED if fmt in ("compressed", "both") else None,
                           label_topic=LABELS, fmt="jpg", period_ns=period_ns)


def write_sample_recording(path: Path, n_frames: int, size: tuple[int, int], fmt: str = "raw",
                           seed: int = 0, progress: bool = True) -> int:
    """The synthetic drive as a rosbag2 MCAP bag; returns the number of frames."""
    from tqdm import tqdm

    from .data.synthetic_scene import drive_sequence

    seq = drive_sequence(seed, n_frames, size)
    frames = ((f.image, semantic_label(f.train_ids, f.label)) for f in
              tqdm(seq, total=n_frames, desc="recording", unit="frame", disable=not progress, leave=False))
    return _write(path, frames, fmt)


def write_road_recording(path: Path, frames: list[tuple[np.ndarray, np.ndarray]], period_ns: int,
                         fmt: str = "raw") -> int:
    """Frames of the road clip (``demo_road.road_frames``: read and verified) as a rosbag2 MCAP
    bag, stamped at the drive's own times; returns the number of frames."""
    return _write(path, frames, fmt, period_ns)


@dataclass
class Part:
    name: str
    settings: Any


def _parts(args: argparse.Namespace) -> list[Part]:
    """Each part's resolved model settings (announced); raises what command_settings raises."""
    from .model_settings import command_settings
    from .paths import bundled_model

    names = PARTS if args.part == "both" else (args.part,)
    # ONNX Runtime on the CPU is the point of the demo: a .pt model is exported (and cached) first.
    kind = None if args.model and Path(args.model).suffix.lower() in (".engine", ".plan") else "onnxruntime"
    out = []
    for name in names:
        model = args.model or bundled_model(MODELS[name])
        settings = command_settings(args, f"pebal demo ({name})", model, runtime=kind, device="cpu",
                                    flags={"threshold": args.threshold})
        out.append(Part(name, settings))
    return out


def _run_part(part: Part, runtime: Any, args: argparse.Namespace, size: tuple[int, int], clip: Any,
              road: list[tuple[np.ndarray, np.ndarray]], t0: float) -> tuple[int, list[str]]:
    """Record, replay and report one part into OUT/<part>; returns (exit code, lines to print)."""
    from .replay.cli import settings_report
    from .replay.replay import ReplayOptions, replay_bag
    from .replay.report import ground_truth_words

    settings = part.settings
    t_model = time.perf_counter()
    folder = args.out / part.name
    recording = folder / "recording"
    if recording.exists():
        shutil.rmtree(recording)
    folder.mkdir(parents=True, exist_ok=True)
    if part.name == "synthetic":
        n = write_sample_recording(recording, args.frames, size, args.format, args.seed, not args.no_progress)
        what = f"synthetic drive ({n} frames, {size[0]}x{size[1]}, {args.format})"
    else:
        n = write_road_recording(recording, road, clip.period_ns, args.format)
        w, h = clip.size
        what = f"road clip ({n} of {len(clip.frames)} frames, {w}x{h}, {args.format}; {clip.describe()})"
    t1 = time.perf_counter()
    res = replay_bag(recording, runtime, folder, ReplayOptions(
        threshold=settings.threshold, min_region_area=settings.inference.min_region_area,
        label_topic=LABELS, progress=not args.no_progress, overwrite=True,
        heatmap_span=settings.inference.heatmap_span, settings=settings_report(settings)))
    if res.messages:          # the results could not be written completely (e.g. a full disk)
        print(f"pebal demo: {res.messages[0]}", file=sys.stderr)
        return res.exit_code, []
    det, timing = res.summary["deterministic"], res.summary["timing"]
    gt = det.get("ground_truth") or {}
    m = gt.get("metrics") or {}
    lines = [f"== {part.name}: {what}", f"recording:   {recording}", f"result bag:  {res.result_bag}",
             f"report:      {res.report_dir / 'report.html'}",
             f"{det['status_text']}; {timing['frames_per_s']:.1f} frames/s replay, inference p50 "
             f"{timing['inference_ms'].get('p50', 0):.1f} ms ({det['runtime']['name']}, {det['runtime']['model']})"]
    if m:
        miou = "mIoU" if "semantic" in gt.get("label_kind", []) else "mIoU (normal/anomaly)"
        lines.append(f"anomaly detection: AUROC {100 * m['auroc']:.1f} %  AP {100 * m['ap']:.1f} %  "
                     f"FPR95 {100 * m['fpr95']:.1f} %  {miou} {100 * gt.get('miou', float('nan')):.1f} %")
    # what the figures mean for the labelled anomalies, in words (the first misses by name)
    words = ground_truth_words(gt)
    lines += [w for w in words if not w.startswith("missed:")] + [w for w in words if w.startswith("missed:")][:3]
    lines.append(f"{part.name} done in {time.perf_counter() - t0:.0f} s (model {t_model - t0:.0f} s, recording "
                 f"{t1 - t_model:.0f} s, replay and report {time.perf_counter() - t1:.0f} s)")
    return res.exit_code, lines


def main(args: argparse.Namespace) -> int:
    from .demo_road import RoadClipError, open_road_clip, road_frames
    from .export.onnx import parse_hw
    from .model_settings import model_problem
    from .open_model import open_runtime
    from .output_folder import FolderBusy, folder_lock
    from .outputs import writable_folder

    try:
        size = parse_hw(args.size)          # written WxH here, as image sizes usually are
    except ValueError as exc:
        print(f"pebal demo: --size: {exc}", file=sys.stderr)
        return 2
    if args.frames < 1:
        print("pebal demo: --frames must be at least 1", file=sys.stderr)
        return 2
    if args.road_frames is not None and args.road_frames < 1:
        print("pebal demo: --road-frames must be at least 1", file=sys.stderr)
        return 2
    clip, road = None, []
    if args.part in ("road", "both"):
        try:      # every bundled file verified before any model is loaded: a damaged install is one line
            clip = open_road_clip()
            road = list(road_frames(clip, args.road_frames))
        except RoadClipError as exc:
            print(f"pebal demo: {exc}", file=sys.stderr)
            return 1
    t0 = time.perf_counter()
    try:
        parts = _parts(args)
    except (FileNotFoundError, ValueError, RuntimeError, ImportError, SystemExit) as exc:
        print(f"pebal demo: {model_problem(exc) if not isinstance(exc, SystemExit) else exc}", file=sys.stderr)
        return 2
    writable_folder(args.out)   # a read-only working folder fails here in a second, not after the model
    reports = []
    try:
        with folder_lock(args.out):       # the recordings are replaced too: one demo per folder at a time
            for part in parts:
                t_part = time.perf_counter()
                try:
                    # The network runs at the input size the model was trained for; frames are resized to it.
                    runtime = open_runtime(part.settings, threads=args.threads)
                except (FileNotFoundError, ValueError, RuntimeError, ImportError) as exc:
                    print(f"pebal demo: cannot load the model: {exc}", file=sys.stderr)
                    return 2
                rc, lines = _run_part(part, runtime, args, size, clip, road, t_part)
                print("\n".join(lines), flush=True)
                if rc:
                    return rc
                reports.append((part.name, args.out / part.name / "report" / "report.html"))
    except FolderBusy as exc:
        print(f"pebal demo: {exc}", file=sys.stderr)
        return 1
    for name, report in reports:
        print(f"{name} report: {report}")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0
