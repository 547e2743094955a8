"""Run the whole job on a sample drive: recording -> detector (ONNX Runtime, CPU) -> result bag + report.

Writes a rosbag2 recording (MCAP) of a synthetic drive down a street with anomalies lying on the
road (sensor_msgs/Image rgb8 and/or CompressedImage JPEG, plus the ground-truth labels on
/camera/labels as mono8 train ids with 254 = anomaly), replays it through the bundled default
model with ONNX Runtime exactly as `pebal replay` does, and prints where the result bag and the
report are. Needs no GPU, no ROS 2 and no network; the model's ONNX export is built on first use
and cached.

Examples:
  pebal demo
  pebal demo --out /tmp/demo --frames 200 --format both
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

RAW, COMPRESSED, LABELS = "/camera/image_raw", "/camera/image_raw/compressed", "/camera/labels"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("pebal_demo"), help="output folder (default ./pebal_demo)")
    p.add_argument("--frames", type=int, default=100, help="frames in the sample drive (10 per second)")
    p.add_argument("--size", default="512x256", metavar="WxH", help="camera image size (default 512x256)")
    p.add_argument("--format", default="raw", choices=("raw", "compressed", "both"),
                   help="camera topic(s): sensor_msgs/Image rgb8, CompressedImage JPEG, or both")
    p.add_argument("--seed", type=int, default=0, help="which drive (scene, anomalies)")
    p.add_argument("--model", default=None, help="model file instead of the bundled default (.pt/.onnx)")
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


def write_sample_recording(path: Path, n_frames: int, size: tuple[int, int], fmt: str = "raw",
                           seed: int = 0, progress: bool = True) -> int:
    """The synthetic drive as a rosbag2 MCAP bag; returns the number of frames."""
    from tqdm import tqdm

    from .data.synthetic_scene import drive_sequence
    from .replay.recording import write_recording

    seq = drive_sequence(seed, n_frames, size)
    frames = ((f.image, semantic_label(f.train_ids, f.label)) for f in
              tqdm(seq, total=n_frames, desc="recording", unit="frame", disable=not progress, leave=False))
    return write_recording(path, frames, topic=RAW if fmt in ("raw", "both") else None,
                           compressed_topic=COMPRESSED if fmt in ("compressed", "both") else None,
                           label_topic=LABELS, fmt="jpg")


def main(args: argparse.Namespace) -> int:
    from .export.onnx import parse_hw
    from .model_settings import command_settings, model_problem
    from .output_folder import FolderBusy, folder_lock
    from .outputs import writable_folder
    from .replay.cli import settings_report
    from .open_model import open_runtime
    from .replay.replay import ReplayOptions, replay_bag
    from .replay.report import ground_truth_words

    try:
        w, h = parse_hw(args.size)          # written WxH here, as image sizes usually are
    except ValueError as exc:
        print(f"pebal demo: --size: {exc}", file=sys.stderr)
        return 2
    if args.frames < 1:
        print("pebal demo: --frames must be at least 1", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        # ONNX Runtime on the CPU is the point of the demo: a .pt model is exported (and cached) first.
        kind = None if args.model and Path(args.model).suffix.lower() in (".engine", ".plan") else "onnxruntime"
        settings = command_settings(args, "pebal demo", args.model, runtime=kind, device="cpu",
                                    flags={"threshold": args.threshold})
    except (FileNotFoundError, ValueError, RuntimeError, ImportError, SystemExit) as exc:
        print(f"pebal demo: {model_problem(exc) if not isinstance(exc, SystemExit) else exc}", file=sys.stderr)
        return 2
    writable_folder(args.out)   # a read-only working folder fails here in a second, not after the model
    try:
        # The network runs at the input size the model was trained for; frames are resized to it.
        runtime = open_runtime(settings, threads=args.threads)
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as exc:
        print(f"pebal demo: cannot load the model: {exc}", file=sys.stderr)
        return 2
    t_model = time.perf_counter()
    out = args.out
    recording = out / "recording"
    try:
        with folder_lock(out):       # the recording is replaced too: one demo per folder at a time
            if recording.exists():
                shutil.rmtree(recording)
            n = write_sample_recording(recording, args.frames, (w, h), args.format, args.seed,
                                       not args.no_progress)
            t1 = time.perf_counter()
            res = replay_bag(recording, runtime, out, ReplayOptions(
                threshold=settings.threshold, min_region_area=settings.inference.min_region_area,
                label_topic=LABELS, progress=not args.no_progress, overwrite=True,
                heatmap_span=settings.inference.heatmap_span,
                settings=settings_report(settings)))
    except FolderBusy as exc:
        print(f"pebal demo: {exc}", file=sys.stderr)
        return 1
    if res.messages:          # the results could not be written completely (e.g. a full disk)
        print(f"pebal demo: {res.messages[0]}", file=sys.stderr)
        return res.exit_code
    det, timing = res.summary["deterministic"], res.summary["timing"]
    gt = det.get("ground_truth") or {}
    m = gt.get("metrics") or {}
    print(f"sample recording ({n} frames, {w}x{h}, {args.format}): {recording}")
    print(f"result bag:  {res.result_bag}")
    print(f"report:      {res.report_dir / 'report.html'}")
    print(f"{det['status_text']}; {timing['frames_per_s']:.1f} frames/s replay, inference p50 "
          f"{timing['inference_ms'].get('p50', 0):.1f} ms ({det['runtime']['name']}, {det['runtime']['model']})")
    if m:
        print(f"anomaly detection: AUROC {100 * m['auroc']:.1f} %  AP {100 * m['ap']:.1f} %  "
              f"FPR95 {100 * m['fpr95']:.1f} %  mIoU {100 * gt.get('miou', float('nan')):.1f} %")
    # what the figures mean for the labelled anomalies, in words (the first misses by name)
    words = ground_truth_words(gt)
    for line in [w for w in words if not w.startswith("missed:")] + [w for w in words if w.startswith("missed:")][:3]:
        print(line)
    print(f"done in {time.perf_counter() - t0:.0f} s (model {t_model - t0:.0f} s, recording "
          f"{t1 - t_model:.0f} s, replay and report {time.perf_counter() - t1:.0f} s)")
    return res.exit_code
