"""Box-level check of a detector on real obstacle frames: which obstacles are flagged, at what cost.

Given frames and a JSON of obstacle boxes (``test/fixtures/anomaly_boxes.json``), runs the model
through the same runtime and per-frame path as ``pebal infer`` (fused graph, the model's
calibrated threshold unless ``--threshold``) and reports, per obstacle, the fraction of its box
flagged (a *hit* when >= ``--hit-fraction``, default 10 %), and per frame the share of the pixels
outside every box that are flagged, and the box-vs-rest AUROC of the score. Boxes are coarse (a
box also holds road around the object), so 10 % of a box is a modest bar, and "other pixels"
include the ego-vehicle's bonnet, where false alarms really occur.

    python3 -m pebal_ros.road.boxes --images ../shared/data/anomaly --boxes test/fixtures/anomaly_boxes.json \\
        --model models/pebal_espnetv2_road.pt [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np


def load_boxes(path: str | Path) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    frames = data.get("frames")
    if not isinstance(frames, dict) or not frames:
        raise ValueError(f"{path}: expected {{'frames': {{file: {{'size', 'obstacles'}}}}}}")
    for name, f in frames.items():
        for o in f["obstacles"]:
            x0, y0, x1, y1 = o["box"]
            if not (0 <= x0 < x1 <= f["size"][0] and 0 <= y0 < y1 <= f["size"][1]):
                raise ValueError(f"{path}: {name}: box {o['box']} of {o['id']} outside the {f['size']} frame")
    return data


def score_frame(score: np.ndarray, mask: np.ndarray, obstacles: list[dict[str, Any]],
                hit_fraction: float = 0.10) -> dict[str, Any]:
    """Per-obstacle flagged fractions and hits, the other pixels' flagged share, box-vs-rest AUROC."""
    from sklearn.metrics import roc_auc_score
    inside = np.zeros(mask.shape, bool)
    per = []
    for o in obstacles:
        x0, y0, x1, y1 = o["box"]
        frac = float(mask[y0:y1, x0:x1].astype(bool).mean())
        per.append({"id": o["id"], "kind": o["kind"], "flagged": frac, "hit": frac >= hit_fraction})
        inside[y0:y1, x0:x1] = True
    other = ~inside
    auroc = float(roc_auc_score(inside.ravel(), score.ravel())) if inside.any() and other.any() else float("nan")
    return {"obstacles": per, "other_flagged": float(mask[other].astype(bool).mean()), "other_pixels": int(other.sum()),
            "other_flagged_pixels": int(mask[other].astype(bool).sum()), "box_auroc": auroc}


def check(runtime: Any, threshold: float, images: Path, boxes: dict[str, Any],
          hit_fraction: float = 0.10) -> dict[str, Any]:
    from pebal_ros.infer import run_on_image
    frames = {}
    for name, f in boxes["frames"].items():
        bgr = cv2.imread(str(images / name), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"cannot read {images / name}")
        if (bgr.shape[1], bgr.shape[0]) != tuple(f["size"]):
            raise ValueError(f"{name} is {bgr.shape[1]}x{bgr.shape[0]}, the boxes are for {f['size']}")
        out = run_on_image(runtime, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), threshold)
        frames[name] = score_frame(out.score, out.mask, f["obstacles"], hit_fraction)
    obs = [o for fr in frames.values() for o in fr["obstacles"]]
    other = sum(fr["other_flagged_pixels"] for fr in frames.values()) / sum(fr["other_pixels"] for fr in frames.values())
    return {"threshold": threshold, "hit_fraction": hit_fraction, "frames": frames,
            "hits": sum(o["hit"] for o in obs), "obstacles": len(obs),
            "other_flagged": other, "other_flagged_max": max(fr["other_flagged"] for fr in frames.values())}


def _short(name: str) -> str:
    stem = Path(name).stem.replace("_leftImg8bit", "")
    return stem if len(stem) <= 30 else stem[:12] + "…" + stem[-17:]


def format_table(result: dict[str, Any]) -> str:
    lines = ["| frame | obstacle | kind | box flagged | hit |", "|---|---|---|---:|:---:|"]
    for name, fr in result["frames"].items():
        for o in fr["obstacles"]:
            lines.append(f"| {_short(name)} | {o['id']} | {o['kind']} | {100 * o['flagged']:.1f} % | "
                         f"{'yes' if o['hit'] else 'no'} |")
    lines += ["", "| frame | other pixels flagged | box-vs-rest AUROC |", "|---|---:|---:|"]
    for name, fr in result["frames"].items():
        lines.append(f"| {_short(name)} | {100 * fr['other_flagged']:.2f} % | {fr['box_auroc']:.3f} |")
    lines.append(f"\n{result['hits']} of {result['obstacles']} obstacles hit (>= {100 * result['hit_fraction']:.0f} % "
                 f"of the box flagged); other pixels flagged {100 * result['other_flagged']:.2f} % overall, "
                 f"at most {100 * result['other_flagged_max']:.2f} % of a frame; threshold {result['threshold']:.4g}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from pebal_ros.config import add_config_arguments
    from pebal_ros.model_settings import add_runtime_arguments, command_settings
    from pebal_ros.open_model import open_runtime
    p = argparse.ArgumentParser(prog="python3 -m pebal_ros.road.boxes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, required=True, help="folder holding the frames named in --boxes")
    p.add_argument("--boxes", type=Path, required=True, help="obstacle boxes JSON")
    p.add_argument("--model", default=None, help="model file (default: the bundled default model)")
    p.add_argument("--runtime", default=None, help="onnxruntime | torch (default: from the suffix)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threshold", type=float, default=None, help="default: the model's calibrated threshold")
    p.add_argument("--hit-fraction", type=float, default=0.10, help="share of a box that makes a hit")
    p.add_argument("--json", type=Path, default=None, help="also write the result as JSON")
    add_runtime_arguments(p)
    add_config_arguments(p)
    args = p.parse_args(argv)
    settings = command_settings(args, "road boxes", args.model, runtime=args.runtime, device=args.device,
                                flags={"threshold": args.threshold})
    runtime = open_runtime(settings)
    result = check(runtime, settings.threshold, args.images, load_boxes(args.boxes), args.hit_fraction)
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
