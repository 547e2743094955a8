"""Calibrate a model's anomaly threshold on your own camera's normal frames (rosbag2 or images).

Runs every frame through the same runtime and per-frame pipeline as `pebal infer`, `pebal replay`
and the ROS 2 node (the fused graph's score output), and picks the threshold that meets ONE target:
  --pixel-fpr P         at most a fraction P of the normal frames' pixels anomalous (default 0.001)
  --frame-alarm-rate R  at most a fraction R of the normal frames hold an anomalous region of at least
                        --min-region-area camera pixels (what the node reports as regions)
  --tpr Q               at least a fraction Q of the labelled anomalous pixels detected
                        (needs --anomalies or --anomaly-images/--anomaly-labels)
It prints a table of thresholds around the chosen one (pixel FPR, frame alarm rate, TPR; AP with
labelled anomalies), writes a plot, and writes the calibration record beside the model
(<model>.calibration.yaml; the user cache when that folder is read-only; or --output), which
infer, replay, export and the node then use. Memory does not grow with the number of frames.

Examples:
  pebal calibrate drive_normal.mcap --topic /front/image_raw/compressed --model pebal.onnx
  pebal calibrate clean_frames/ --model espnetv2_s_2.0_city_1024x512.pth --pixel-fpr 0.001
  pebal calibrate drive/ --model m.onnx --frame-alarm-rate 0.01 --every 5
  pebal calibrate clean/ --model m.onnx --tpr 0.95 --anomalies fs_lostandfound=/data/fishyscapes
"""
from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path
from typing import Any

import cv2

PROG = "pebal calibrate"
MAX_REASONS = 10          # skip reasons printed; the rest are summed


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..config import add_config_arguments
    from ..replay.model import MODEL_PRESET_HELP

    p.add_argument("inputs", nargs="+", metavar="NORMAL",
                   help="normal frames: rosbag2 recordings (folder, .mcap, .db3) and/or image files/folders")
    p.add_argument("--model", default=None, help="model (.onnx/.pt/.pth/.engine); default: the bundled model")
    p.add_argument("--runtime", default=None, help="onnxruntime | torch | tensorrt (default: from the suffix)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    from ..model_settings import add_input_arguments, add_runtime_arguments
    add_runtime_arguments(p)
    add_input_arguments(p)
    p.add_argument("--input-size", default=None, metavar="HxW",
                   help="network input size of a .pt/.pth checkpoint (default: its config's); the "
                   "threshold holds for this size only")
    add_config_arguments(p, MODEL_PRESET_HELP)
    target = p.add_mutually_exclusive_group()
    target.add_argument("--pixel-fpr", type=float, default=None, metavar="P",
                        help="target pixel false-positive rate on the normal frames (default 0.001)")
    target.add_argument("--frame-alarm-rate", type=float, default=None, metavar="R",
                        help="target fraction of normal frames with an anomalous region >= --min-region-area")
    target.add_argument("--tpr", type=float, default=None, metavar="Q",
                        help="target true-positive rate on labelled anomalous pixels")
    p.add_argument("--topic", dest="topics", action="append", default=None, metavar="TOPIC",
                   help="image topic to read from the bags (repeatable; default: every camera topic)")
    p.add_argument("--every", type=int, default=1, metavar="N", help="use every N-th frame of each topic")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="use at most N normal frames")
    p.add_argument("--recursive", action="store_true", help="look into sub-folders for images")
    p.add_argument("--anomalies", action="append", default=None, metavar="NAME=ROOT",
                   help="labelled anomaly frames in a benchmark layout: fs_lostandfound, fs_static, "
                   "lostandfound, road_anomaly (repeatable)")
    p.add_argument("--anomaly-images", type=Path, default=None, metavar="DIR", help="folder of anomaly images")
    p.add_argument("--anomaly-labels", type=Path, default=None, metavar="DIR", help="folder of their label PNGs, same "
                   "stems (0 inlier/1 anomaly/255 void, or train ids with 254 anomaly)")
    p.add_argument("--min-region-area", type=int, default=None, metavar="PX",
                   help="smallest alarming region in camera pixels (default: the config's, 50)")
    p.add_argument("--output", type=Path, default=None, metavar="YAML", help="where to write the record "
                   "(default: <model>.calibration.yaml beside the model)")
    p.add_argument("--plot", type=Path, default=None, metavar="PNG", help="plot PNG (default: beside the record)")
    p.add_argument("--dry-run", action="store_true", help="print the table and plot, write no record")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _fail(msg: str, code: int = 2) -> int:
    print(f"{PROG}: {msg}", file=sys.stderr)
    return code


def _target(args: argparse.Namespace) -> tuple[str, float]:
    for name in ("pixel_fpr", "frame_alarm_rate", "tpr"):
        value = getattr(args, name)
        if value is not None:
            return name, float(value)
    return "pixel_fpr", 0.001


def network_min_area(min_area_camera: int, camera: tuple[int, int], network: tuple[int, int]) -> int:
    """The node's rule (pipeline/frame.py): regions are found at network resolution, and one counts
    when its area scaled to camera pixels reaches ``min_area_camera``."""
    from ..pipeline.regions import min_area_at_scale

    return min_area_at_scale(min_area_camera, (camera[1] / network[1]) * (camera[0] / network[0]))


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.4g} %"


def format_table(stats: Any, thresholds: list[float], chosen: float) -> str:
    labelled = stats.anomaly_pixels > 0
    head = ["threshold", "pixel FPR", "frame alarm rate"] + (["TPR"] if labelled else [])
    rows = []
    fpr, far = stats.pixel_fpr(thresholds), stats.frame_alarm_rate(thresholds)
    tpr = stats.tpr(thresholds) if labelled else None
    for i, t in enumerate(thresholds):
        row = [f"{t:.4f}" + (" *" if t == chosen else "  "), _pct(fpr[i]), _pct(far[i])]
        if tpr is not None:
            row.append(_pct(tpr[i]))
        rows.append(row)
    widths = [max(len(r[c]) for r in rows + [head]) for c in range(len(head))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"]
    lines += ["| " + " | ".join(v.rjust(w) for v, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join(lines)


def accumulate(runtime: Any, normal: Any, labelled: Any, min_area: int, progress: bool = True,
               max_pixels: int | None = None) -> Any:
    """Every frame through the runtime's per-frame pipeline into a :class:`CalibrationStats`; a frame
    that fails is counted in its source's skips with the reason, and the others go on."""
    from tqdm import tqdm

    from ..pipeline.convert import FrameError
    from ..pipeline.frame import FramePipeline, PipelineConfig
    from .stats import CalibrationStats

    # Network-resolution outputs for the normal frames: what the node's status and regions describe;
    # camera resolution for labelled frames, whose labels are the truth at the image's size.
    cap = {} if max_pixels is None else {"max_decoded_pixels": max_pixels}   # bag frames: the pipeline decodes
    net_pipe = FramePipeline(runtime, PipelineConfig(threshold=0.0, output_resolution="network", outputs=(), **cap))
    cam_pipe = FramePipeline(runtime, PipelineConfig(threshold=0.0, output_resolution="camera", outputs=(), **cap))

    def run(pipe: FramePipeline, frame: Any) -> Any:
        if frame.msg is not None:
            return pipe.process(frame.msg, outputs=())
        return pipe.process_image(frame.rgb, order="rgb", outputs=())

    stats = CalibrationStats()
    bar = tqdm(total=normal.estimate(), desc="normal frames", unit="frame", disable=not progress)
    for frame in normal:
        try:
            res = run(net_pipe, frame)
            score = res.outputs.score
            stats.add_normal(score, network_min_area(min_area, res.camera_size, score.shape))
        except (FrameError, ValueError, RuntimeError) as exc:
            normal.skips.add(f"{type(exc).__name__}: {exc}")
        bar.update(1)
    bar.close()
    if len(labelled):
        for frame in tqdm(labelled, total=len(labelled), desc="anomaly frames", unit="frame",
                          disable=not progress):
            try:
                res = run(cam_pipe, frame)
                score = res.outputs.score
                if score.shape != frame.label.shape:
                    score = cv2.resize(score, frame.label.shape[::-1], interpolation=cv2.INTER_LINEAR)
                stats.add_labelled(score, frame.label)
            except (FrameError, ValueError, RuntimeError) as exc:
                labelled.skips.add(f"{frame.name}: {type(exc).__name__}: {exc}")
    return stats


class ScoringFailed(Exception):
    """The frames could not be scored at all (no model, no cluster); the message says why."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def score_here(settings: Any, normal: Any, labelled: Any, min_area: int,
               progress: bool) -> tuple[Any, tuple[int, int] | None]:
    """Every frame scored in this process: the statistics and the network's input size."""
    from ..open_model import open_runtime

    try:
        runtime = open_runtime(settings)
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as exc:
        raise ScoringFailed(f"cannot load the model: {exc}") from None
    stats = accumulate(runtime, normal, labelled, min_area, progress=progress,
                       max_pixels=settings.config.input.max_decoded_pixels)
    return stats, tuple(runtime.input_size) if getattr(runtime, "input_size", None) else None


def main(args: argparse.Namespace, score: Any = score_here) -> int:
    """``score``: how the frames are scored (:func:`score_here`; ``pebal calibrate --ray`` passes the
    fleet's, which scores the bags on a Ray cluster and merges the statistics exactly)."""
    from ..calibration import Calibration, file_sha256, sidecar_path, write_calibration
    from ..model_settings import command_settings, model_problem
    from .plot import write_plot
    from .sources import LabelledFrames, NormalFrames, SourceError
    from .stats import CalibrationTargetError

    target, value = _target(args)
    if not 0.0 < value < 1.0:
        return _fail(f"--{target.replace('_', '-')} must be between 0 and 1 (exclusive), got {value:g}")
    try:
        normal = NormalFrames(args.inputs, args.topics, args.every, args.max_frames, args.recursive)
        labelled = LabelledFrames(args.anomalies, args.anomaly_images, args.anomaly_labels)
    except SourceError as exc:
        return _fail(str(exc))
    for problem in normal.problems:
        print(f"{PROG}: {problem}", file=sys.stderr)
    if target == "tpr" and not len(labelled):
        return _fail("--tpr needs labelled anomaly frames: --anomalies NAME=ROOT or "
                     "--anomaly-images DIR --anomaly-labels DIR")

    # The same settings resolution and runtime as infer/replay/the node, so the threshold means the
    # same everywhere (the bundled model: its cached ONNX export through ONNX Runtime).
    flags: dict = {"min_region_area": args.min_region_area}
    if args.input_size:
        from ..export.onnx import parse_hw
        try:
            flags["input_size"] = parse_hw(args.input_size)
        except ValueError as exc:
            return _fail(f"--input-size: {exc}")
    try:
        settings = command_settings(args, PROG, args.model, runtime=args.runtime, device=args.device,
                                    flags=flags, quiet=True)
    except SystemExit as exc:
        return _fail(str(exc))
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as exc:
        return _fail(model_problem(exc))
    print(f"{PROG}: {settings.summary()}", flush=True)   # its own warnings would say "calibrate": we are
    model = settings.model
    min_area = int(settings.inference.min_region_area)
    if min_area < 1:
        return _fail(f"--min-region-area must be >= 1, got {min_area}")

    # image files are read lazily, so the cap resolved with the settings still applies to them
    normal.max_pixels = labelled.max_pixels = settings.config.input.max_decoded_pixels
    try:
        stats, net_size = score(settings, normal, labelled, min_area, not args.no_progress)
    except ScoringFailed as exc:
        return _fail(str(exc), exc.code)
    except SourceError as exc:
        return _fail(str(exc))
    for what, skips in (("normal", normal.skips), ("anomaly", labelled.skips)):
        common = skips.reasons.most_common()
        for reason, n in common[:MAX_REASONS]:
            print(f"{PROG}: {n} {what} frame(s) skipped: {reason}", file=sys.stderr)
        if len(common) > MAX_REASONS:
            rest = sum(n for _, n in common[MAX_REASONS:])
            print(f"{PROG}: {rest} more {what} frame(s) skipped for {len(common) - MAX_REASONS} other reasons",
                  file=sys.stderr)
    if stats.frames == 0:
        return _fail("no normal frame could be scored" + (f" ({normal.skips.total} skipped)"
                                                           if normal.skips.total else ""), 1)
    try:
        choice = stats.choose(target, value)
    except CalibrationTargetError as exc:
        return _fail(str(exc), 1)

    threshold = choice.threshold
    achieved = stats.figures(threshold)
    achieved.update(stats.labelled_metrics())
    achieved["normal_pixels"] = float(stats.normal_pixels)
    print(f"\n{stats.frames} normal frame(s), {stats.normal_pixels} pixels"
          + (f"; {len(labelled) - labelled.skips.total} labelled anomaly frame(s), "
             f"{stats.anomaly_pixels} anomalous pixels" if len(labelled) else "")
          + f"; regions >= {min_area} camera px\n")
    print(format_table(stats, stats.candidates(threshold), threshold))
    extra = stats.labelled_metrics()
    if extra:
        print(f"\nlabelled anomalies: AP {100 * extra['ap']:.2f} %, AUROC {100 * extra['auroc']:.2f} %, "
              f"FPR95 {100 * extra['fpr95']:.2f} %")
    print(f"\nchosen: threshold {threshold:.4f} for {target} = {value:g} (* above)")

    cal = Calibration(threshold=threshold, target=target, target_value=value, model_sha256=file_sha256(model),
                      achieved=achieved, data=normal.describe() + (f"; anomalies: {labelled.describe()}"
                                                                   if len(labelled) else ""),
                      frames=stats.frames, anomaly_frames=len(labelled) - labelled.skips.total,
                      input_size=net_size, min_region_area=min_area,  # type: ignore[arg-type]
                      date=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat())
    record = args.output if args.output is not None else sidecar_path(model)
    if not args.dry_run:
        try:
            record = write_calibration(model, cal, args.output)
        except OSError as exc:
            return _fail(f"cannot write the calibration record: {exc}", 1)
        print(f"record: {record}")
    plot = args.plot or record.with_name(record.name.removesuffix(".yaml") + ".png")
    try:
        print(f"plot:   {write_plot(stats, threshold, plot, f'{model.name}: {cal.describe()}')}")
    except OSError as exc:
        print(f"{PROG}: cannot write the plot: {exc}", file=sys.stderr)
    return 0
