"""Build the demo's real-road clip: frames of a real drive with held-out objects pasted on the road.

`pebal demo` replays this small asset (``pebal_ros/demo_data/road_clip``, installed with the
package) through the real-road model. It is rebuilt, byte for byte on the same OpenCV build, by

  pebal build-demo-road --clip SRC/lanelines/test_videos/solidWhiteRight.mp4 --objects BANK \\
      --out pebal_ros/demo_data/road_clip

(``models/fetch_road_sources.sh`` downloads the clip; ``pebal build-objects`` builds BANK.)

What it does: reads the clip with OpenCV, takes ``--frames`` frames at equal steps from the first,
drops rows at the top (sky) to reach the output's aspect ratio and resizes to ``--size``. Into each
frame it pastes ``--min-objects``..``--max-objects`` objects of the bank's held-out ``eval`` split
(kinds no model of this project was trained on) with the training code's placement
(``data/road_mix.py``): on the near road (``--road``), sized by perspective from the clip's
horizon (``--horizon``, ``--height``), random gain and flip, standing or, with chance ``--lying``,
fallen on its side like debris (then the length it shows follows the perspective rule); seeded
per frame (``default_rng([seed, i])``). The label is 1 where the object's alpha is at least 128,
0 elsewhere: the clip is an ordinary highway drive, so every other pixel is normal.

Only objects whose licence lets the asset be redistributed with the package are accepted (public
domain or CC0, as the bank's manifest states it); SOURCES.md beside the frames names the clip's
licence (MIT, with its notice) and every object's.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pebal_ros.demo_road import FORMAT, MANIFEST

# The clip the bundled asset is made of (models/fetch_road_sources.sh downloads it).
CLIP = {"name": "solidWhiteRight.mp4", "repository": "udacity/CarND-LaneLines-P1",
        "path": "test_videos/solidWhiteRight.mp4", "url": "https://github.com/udacity/CarND-LaneLines-P1",
        "licence": "MIT", "copyright": "Copyright (c) 2016-2018 Udacity, Inc."}
MIT_NOTICE = """\
Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""
# solidWhiteRight's near road (fractions of the 960x540 frame, x,y): the ego lane, the right
# shoulder and the left lane below the cars ahead, so an object never stands on a car. The
# horizon (where the lane lines meet) is at 0.565 of the height.
ROAD = "0.04,1.0;0.36,0.685;0.66,0.685;0.98,1.0"
HORIZON = 0.565
# Object height / camera height (training draws 0.12-0.8): the demo leaves out the smallest, which
# no model of this size finds at 512x256, so that the pictures show what it does find.
HEIGHT_RANGE = (0.3, 0.8)
# Licences that allow shipping the pixels inside this package (the bank's manifest words).
REDISTRIBUTABLE = ("public domain", "cc0")


def redistributable(licence: str) -> bool:
    low = licence.lower()
    return any(word in low for word in REDISTRIBUTABLE)


def parse_polygon(text: str) -> np.ndarray:
    """``"x,y;x,y;..."`` (fractions of the frame) -> float array N x 2; ValueError when malformed."""
    try:
        pts = np.array([[float(v) for v in p.split(",")] for p in text.split(";")], np.float64)
    except ValueError:
        raise ValueError(f"--road: {text!r} is not 'x,y;x,y;...' with numbers") from None
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3 or not np.isfinite(pts).all() \
            or (pts < 0).any() or (pts > 1).any():
        raise ValueError(f"--road: {text!r} needs at least 3 points 'x,y' with 0 <= x, y <= 1")
    return pts


def crop_box(src_wh: tuple[int, int], out_wh: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x0, y0, w, h) of the source to keep for the output's aspect ratio: rows are dropped at the
    top (sky, never road), columns equally on both sides."""
    sw, sh = src_wh
    ow, oh = out_wh
    rows = int(round(sw * oh / ow))
    if rows <= sh:
        return 0, sh - rows, sw, rows
    cols = int(round(sh * ow / oh))
    return (sw - cols) // 2, 0, cols, sh


def on_its_side(obj: dict[str, Any]) -> dict[str, Any]:
    """The object fallen over: image, alpha and target turned by 90 degrees (its top to the left;
    the placement flips half of them)."""
    return dict(obj, **{k: np.ascontiguousarray(np.rot90(obj[k])) for k in ("image", "alpha", "target")})


def lying_settings(settings: Any, obj: dict[str, Any]) -> Any:
    """Placement settings for ``obj`` lying down: the length it shows is the height it would
    have standing (road_mix's perspective rule), so its height is that times its width/height."""
    from dataclasses import replace

    h, w = obj["alpha"].shape
    lo, hi = settings.height_range
    return replace(settings, height_range=(lo * w / h, hi * w / h))


def read_clip(path: Path, indices: list[int]) -> tuple[dict[int, np.ndarray], int, float]:
    """The frames at ``indices`` (BGR), the clip's frame count and its frame rate."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SystemExit(f"--clip: {path} cannot be opened as a video")
    fps = float(cap.get(cv2.CAP_PROP_FPS)) or 25.0
    wanted, frames, n = set(indices), {}, 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if n in wanted:
            frames[n] = frame
        n += 1
    cap.release()
    return frames, n, fps


def _objects(bank: Path, ids: list[str] | None) -> list[dict[str, Any]]:
    from pebal_ros.data.object_bank import ObjectBank

    held_out = ObjectBank(bank, "eval")
    entries = {e["id"]: (i, e) for i, e in enumerate(held_out.entries)}
    if ids:
        unknown = [i for i in ids if i not in entries]
        if unknown:
            raise SystemExit(f"--object: {', '.join(unknown)} not in the held-out (eval) split of {bank}; it has "
                             f"{', '.join(entries)}")
        chosen = [entries[i] for i in ids]
    else:
        chosen = [v for v in entries.values() if redistributable(v[1].get("licence", ""))]
    refused = [e["id"] for _, e in chosen if not redistributable(e.get("licence", ""))]
    if refused:
        raise SystemExit(f"--object: {', '.join(refused)} may not be bundled: the bank gives no public-domain or CC0 "
                         "licence for it (the asset is redistributed with the package)")
    if not chosen:
        raise SystemExit(f"--objects: no held-out object in {bank} has a public-domain or CC0 licence")
    return [dict(held_out[i], licence=e["licence"], origin=e.get("origin", ""), source=e.get("source", ""))
            for i, e in chosen]


def build(clip: Path, bank: Path, out: Path, n_frames: int = 32, size: tuple[int, int] = (512, 256),
          seed: int = 0, object_ids: list[str] | None = None, min_objects: int = 1, max_objects: int = 2,
          road: str = ROAD, horizon: float = HORIZON, p_lying: float = 0.5,
          height_range: tuple[float, float] = HEIGHT_RANGE, quality: int = 90, command: str = "") -> dict[str, Any]:
    """Write the asset into ``out``; returns its manifest."""
    from pebal_ros.config import RoadConfig
    from pebal_ros.data.road_mix import RoadMixSettings, place_object

    polygon = parse_polygon(road)
    objects = _objects(bank, object_ids)
    cap = cv2.VideoCapture(str(clip))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    cap.release()
    if total < n_frames:
        raise SystemExit(f"--clip: {clip} has {total} frames, fewer than --frames {n_frames}")
    step = (total - 1) // max(1, n_frames - 1)
    indices = [i * step for i in range(n_frames)]
    frames, total, fps = read_clip(clip, indices)
    if len(frames) != n_frames:
        raise SystemExit(f"--clip: only {len(frames)} of the {n_frames} frames could be decoded from {clip}")
    sh, sw = frames[0].shape[:2]
    x0, y0, cw, ch = crop_box((sw, sh), size)
    w, h = size
    # the road polygon and the horizon in output pixels
    poly = np.stack([(polygon[:, 0] * sw - x0) * w / cw, (polygon[:, 1] * sh - y0) * h / ch], 1)
    horizon_row = (horizon * sh - y0) * h / ch
    ground = np.full((h, w), 255, np.uint8)
    cv2.fillPoly(ground, [np.round(poly).astype(np.int32)], 0)     # 0: Cityscapes' road train id
    road_cfg = RoadConfig()
    settings = RoadMixSettings(p_ground=1.0, height_range=height_range,
                               brightness_range=road_cfg.brightness_range,
                               flip_probability=road_cfg.flip_probability)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    for i, index in enumerate(indices):
        bgr = frames[index][y0:y0 + ch, x0:x0 + cw]
        rgb = cv2.cvtColor(cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        rng = np.random.default_rng([seed, i])
        chosen = [objects[int(rng.integers(len(objects)))] for _ in range(int(rng.integers(min_objects,
                                                                                           max_objects + 1)))]
        image, mixed, placed = rgb.copy(), ground.copy(), []
        for obj in chosen:       # in turn: a later object may cover an earlier one
            lying = bool(rng.random() < p_lying)
            item, how = (on_its_side(obj), lying_settings(settings, obj)) if lying else (obj, settings)
            done = place_object(image, mixed, item, rng, how, horizon=horizon_row)
            if done is not None:
                placed.append(dict(done, pose="lying" if lying else "upright"))
        label = (mixed == 254).astype(np.uint8)
        names = (f"frames/{i:03d}.jpg", f"labels/{i:03d}.png")
        ok = cv2.imwrite(str(out / names[0]), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        ok = ok and cv2.imwrite(str(out / names[1]), label, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        if not ok:
            raise OSError(f"build-demo-road: cannot write {out / names[0]}")
        entries.append({"frame": names[0], "label": names[1],
                        "sha256": [hashlib.sha256((out / n).read_bytes()).hexdigest() for n in names],
                        "clip_frame": index, "time_s": round(index / fps, 4),
                        "objects": [{k: o[k] for k in ("name", "kind", "pose", "top_left", "size")} for o in placed],
                        "anomaly_pixels": int(label.sum())})
    used = {o["name"] for e in entries for o in e["objects"]}
    manifest = {"format": FORMAT, "size": [w, h], "period_ns": int(round(step / fps * 1e9)),
                "clip": dict(CLIP, frames=total, fps=fps, source_size=[sw, sh]),
                "crop": {"x": x0, "y": y0, "w": cw, "h": ch}, "road_polygon": np.round(poly, 1).tolist(),
                "horizon_row": round(horizon_row, 1), "seed": seed, "p_lying": p_lying, "jpeg_quality": quality,
                "objects": {o["name"]: {k: o[k] for k in ("kind", "licence", "origin", "source")}
                            for o in objects if o["name"] in used},
                "command": command, "frames": entries}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    (out / "SOURCES.md").write_text(_sources_md(manifest))
    return manifest


def _sources_md(m: dict[str, Any]) -> str:
    clip = m["clip"]
    rows = [f"| {oid} | {o['kind']} | {o['origin']} `{o['source']}` | {o['licence']} |" for oid, o in m["objects"].items()]
    return "\n".join([
        "# The demo's road clip: sources and licences", "",
        f"{len(m['frames'])} frames ({m['size'][0]}x{m['size'][1]}, JPEG) of `{clip['path']}` from "
        f"[{clip['repository']}]({clip['url']}), {clip['frames']} frames at {clip['fps']:g} fps, "
        f"{clip['source_size'][0]}x{clip['source_size'][1]}; every {m['frames'][1]['clip_frame'] if len(m['frames']) > 1 else 1}th "
        f"frame from the first, the top {m['crop']['y']} rows (sky) cut, resized. Held-out objects pasted on the "
        "road (labels: 1 object, 0 normal) by `pebal build-demo-road`:", "",
        f"    {m['command']}" if m["command"] else "", "",
        "## The clip", "",
        f"{clip['licence']} License, {clip['copyright']}:", "",
        *["    " + line if line else "" for line in MIT_NOTICE.splitlines()], "",
        "## The pasted objects", "",
        "Cut-outs of the object bank's held-out split (`pebal build-objects`; kinds never used in training):", "",
        "| object | kind | source | licence |", "|---|---|---|---|", *rows, "",
        "Other held-out objects of the bank are not bundled: their photos' provenance is not stated.", ""])


# --- CLI ------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clip", type=Path, required=True,
                   help="the drive video (udacity/CarND-LaneLines-P1 test_videos/solidWhiteRight.mp4)")
    p.add_argument("--objects", type=Path, required=True, help="object bank (pebal build-objects)")
    p.add_argument("--out", type=Path, required=True, help="asset folder to write (frames/, labels/, manifest.json, "
                   "SOURCES.md); the bundled one is pebal_ros/demo_data/road_clip")
    p.add_argument("--frames", type=int, default=32, help="frames to take, at equal steps over the clip (default 32)")
    p.add_argument("--size", default="512x256", metavar="WxH", help="output frame size (default 512x256, the road "
                   "model's input)")
    p.add_argument("--object", dest="object_ids", action="append", default=None, metavar="ID",
                   help="held-out object of the bank to paste (repeatable; default: every one with a public-domain "
                        "or CC0 licence)")
    p.add_argument("--min-objects", type=int, default=1, help="fewest objects pasted into a frame (default 1)")
    p.add_argument("--max-objects", type=int, default=2, help="most objects pasted into a frame (default 2)")
    p.add_argument("--seed", type=int, default=0, help="placement seed (default 0)")
    p.add_argument("--road", default=ROAD, metavar="X,Y;X,Y;...",
                   help="the region objects stand on, as fractions of the clip's frame (default: solidWhiteRight's "
                        f"near road, {ROAD})")
    p.add_argument("--horizon", type=float, default=HORIZON,
                   help=f"horizon row as a fraction of the clip's height, for the objects' size (default {HORIZON})")
    p.add_argument("--height", default=",".join(f"{v:g}" for v in HEIGHT_RANGE), metavar="LO,HI",
                   help="object height as a fraction of the camera height, uniform in [LO, HI] (a lying object shows "
                        f"this as its length; default {HEIGHT_RANGE[0]:g},{HEIGHT_RANGE[1]:g}; training uses 0.12,0.8)")
    p.add_argument("--lying", type=float, default=0.5, metavar="P",
                   help="chance an object lies on its side (debris) instead of standing (default 0.5)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the frames (default 90)")


def main(args: argparse.Namespace) -> int:
    from pebal_ros.export.onnx import parse_hw

    try:
        size = parse_hw(args.size)
        parse_polygon(args.road)
    except ValueError as exc:
        raise SystemExit(f"pebal build-demo-road: {exc}") from None
    try:
        lo, hi = (float(v) for v in args.height.split(","))
    except ValueError:
        lo = hi = float("nan")
    if not 0 < lo <= hi:
        raise SystemExit(f"pebal build-demo-road: --height {args.height!r} is not LO,HI with 0 < LO <= HI")
    if args.frames < 2:
        raise SystemExit("pebal build-demo-road: --frames must be at least 2")
    if not 0 <= args.min_objects <= args.max_objects:
        raise SystemExit("pebal build-demo-road: --min-objects must be between 0 and --max-objects")
    if not 0 < args.horizon < 1 or not 0 <= args.lying <= 1 or not 1 <= args.quality <= 100:
        raise SystemExit("pebal build-demo-road: --horizon must be in (0, 1), --lying in [0, 1] and --quality in "
                         "1..100")
    if not args.clip.is_file():
        raise SystemExit(f"pebal build-demo-road: --clip {args.clip} is not a file")
    command = " ".join(["pebal build-demo-road", "--clip", str(args.clip.name), "--objects", "BANK", "--out", "OUT",
                        "--frames", str(args.frames), "--size", args.size, "--seed", str(args.seed),
                        "--min-objects", str(args.min_objects), "--max-objects", str(args.max_objects),
                        "--height", f"{lo:g},{hi:g}", "--lying", f"{args.lying:g}"]
                       + [f"--object {o}" for o in args.object_ids or []])
    m = build(args.clip, args.objects, args.out, args.frames, size, args.seed, args.object_ids, args.min_objects,
              args.max_objects, args.road, args.horizon, args.lying, (lo, hi), args.quality, command)
    n_obj = sum(len(f["objects"]) for f in m["frames"])
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {len(m['frames'])} frames with {n_obj} objects ({', '.join(m['objects'])}) to {args.out} "
          f"({total / 1e6:.2f} MB)", file=sys.stderr)
    return 0
