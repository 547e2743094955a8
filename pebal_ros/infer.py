"""Run the detector on image files or folders: overlay, semantic colour and anomaly heat-map PNGs.

For every input image three PNGs go to --out: <name>_overlay.png (image + semantic colours,
anomalous pixels tinted green and outlined, anomalous regions boxed), <name>_semantic.png (Cityscapes palette)
and <name>_anomaly.png (anomaly score heat map on one fixed scale around the threshold: blue
below it, red above it, flagged regions outlined in black, a colour bar in the corner); --mask also
writes <name>_mask.png (0/255). Images of any size: a model with a fixed input size gets a
resized copy and its outputs are scaled back to the image.

Examples:
  pebal infer street.png --out out/infer
  pebal infer photos/ more/frame_001.jpg --out out/infer --model my_model.onnx --threshold -8
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from .data.io import collect_images
from .image_limits import read_image


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders")
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--model", default=None, help="model file (.onnx/.pt/.engine); default: the bundled "
                   "model through ONNX Runtime")
    p.add_argument("--runtime", default=None, help="onnxruntime | torch | tensorrt (default: from the suffix)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    from .model_settings import add_input_arguments, add_runtime_arguments
    add_runtime_arguments(p)
    add_input_arguments(p)
    from .config import add_config_arguments
    from .replay.model import MODEL_PRESET_HELP
    add_config_arguments(p, MODEL_PRESET_HELP)
    p.add_argument("--threshold", type=float, default=None, help="score threshold (default: the model's)")
    p.add_argument("--recursive", action="store_true", help="also look into sub-folders")
    p.add_argument("--mask", action="store_true", help="also write the binary anomaly mask")
    p.add_argument("--min-region-area", type=int, default=None,
                   help="smallest region to box, in pixels (default: the model's settings, 50)")


def _out_names(files: list[Path]) -> list[str]:
    """Output stems, unique even when two folders hold the same file name."""
    seen: dict[str, int] = {}
    names = []
    for f in files:
        n = seen.get(f.stem, 0)
        seen[f.stem] = n + 1
        names.append(f.stem if n == 0 else f"{f.stem}_{n}")
    return names


def run_on_image(runtime, rgb: np.ndarray, threshold: float):
    """Outputs at the image's own size, whatever input size the runtime needs."""
    from .runtime.base import FrameOutputs

    h, w = rgb.shape[:2]
    size = getattr(runtime, "input_size", None)
    net_in = rgb if not size or tuple(size) == (h, w) else cv2.resize(rgb, (size[1], size[0]),
                                                                      interpolation=cv2.INTER_LINEAR)
    if getattr(runtime, "channel_order", "rgb") == "bgr":
        net_in = cv2.cvtColor(net_in, cv2.COLOR_RGB2BGR)
    out = runtime.infer(np.ascontiguousarray(net_in), threshold)
    if out.semantic.shape == (h, w):
        return FrameOutputs(out.semantic.copy(), out.score.copy(), out.mask.copy())
    score = cv2.resize(out.score, (w, h), interpolation=cv2.INTER_LINEAR)
    semantic = cv2.resize(out.semantic, (w, h), interpolation=cv2.INTER_NEAREST)
    return FrameOutputs(semantic, score, (score > threshold).astype(np.uint8))


def main(args: argparse.Namespace) -> int:
    from .outputs import writable_folder, write_ok
    from .pipeline.regions import find_regions
    from .pipeline.visualize import colorize, overlay, score_heatmap, with_colorbar
    from .model_settings import command_settings, model_problem
    from .open_model import open_runtime

    files, problems = collect_images(args.inputs, args.recursive)
    for p in problems:
        print(f"pebal infer: {p}", file=sys.stderr)
    if not files:
        print("pebal infer: nothing to do (no input images)", file=sys.stderr)
        return 2
    try:
        settings = command_settings(args, "pebal infer", args.model, runtime=args.runtime, device=args.device,
                                    flags={"threshold": args.threshold, "min_region_area": args.min_region_area})
    except SystemExit as exc:
        print(f"pebal infer: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"pebal infer: {model_problem(exc)}", file=sys.stderr)
        return 2
    writable_folder(args.out)      # before the model: an unwritable --out fails in a second, not after it
    try:
        runtime = open_runtime(settings)
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as exc:
        print(f"pebal infer: cannot load the model: {exc}", file=sys.stderr)
        return 2
    threshold = settings.threshold
    min_area = settings.inference.min_region_area
    max_pixels = settings.config.input.max_decoded_pixels
    span = settings.inference.heatmap_span
    from tqdm import tqdm

    failed = 0
    for path, name in tqdm(list(zip(files, _out_names(files))), desc="infer", unit="img",
                           disable=len(files) < 2):
        try:
            bgr = read_image(path, cv2.IMREAD_COLOR, max_pixels)
        except (OSError, ValueError) as exc:   # unreadable; over the decode cap or no readable header (named)
            reason = f"{path}: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)
            print(f"pebal infer: {reason}, skipped", file=sys.stderr)
            failed += 1
            continue
        if bgr is None:
            print(f"pebal infer: {path}: not a readable image, skipped", file=sys.stderr)
            failed += 1
            continue
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        try:
            out = run_on_image(runtime, rgb, threshold)
        except ValueError as exc:
            print(f"pebal infer: {path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        regions = find_regions(out.mask, out.score, min_area=min_area)
        sem = colorize(out.semantic)
        ov = overlay(rgb, sem, out.mask, boxes=[(r.x_offset, r.y_offset, r.width, r.height) for r in regions])
        # one scale around the threshold for every image, with its colour bar (inference.heatmap_span)
        heat = with_colorbar(score_heatmap(out.score, threshold, span), threshold, span)
        images = {"overlay": ov, "semantic": sem, "anomaly": heat}
        for kind, img in images.items():
            target = args.out / f"{name}_{kind}.png"
            write_ok(cv2.imwrite(str(target), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)), target)
        if args.mask:
            target = args.out / f"{name}_mask.png"
            write_ok(cv2.imwrite(str(target), out.mask * 255), target)
        print(f"{path}: {100 * float(out.mask.mean()):.2f} % anomalous, {len(regions)} region(s)")
    done = len(files) - failed
    print(f"wrote {done * (4 if args.mask else 3)} PNGs for {done} image(s) to {args.out}")
    return 0 if done else 1
