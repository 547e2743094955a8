"""Generate the synthetic proxy dataset: street scenes (Cityscapes layout), outliers, anomaly test set.

Real Cityscapes / COCO / Fishyscapes cannot be downloaded everywhere, so this writes stand-ins in
the same on-disk layouts, procedurally rendered (numpy + cv2), deterministic in --seed:

  <out>/cityscapes/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  <out>/cityscapes/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png  (+ _labelIds)
  <out>/coco_ood/train2017/<id>.jpg, <out>/coco_ood/annotations/ood_seg_train2017/<id>.png  (0 / 254)
  <out>/anomaly_test/original/<name>.png, <out>/anomaly_test/labels/<name>.png  (0 / 1 / 255)

Outlier objects come in families: only TRAIN_FAMILIES go into coco_ood, only TEST_FAMILIES are
planted in anomaly_test (see docs/synthetic.md). The figures measured on it are a synthetic proxy,
not the paper's benchmarks.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from pebal_ros.data.synthetic_outliers import TEST_FAMILIES, TRAIN_FAMILIES, render_outlier
from pebal_ros.data.synthetic_scene import (
    DriveFrame, anomaly_label, drive_sequence, render_anomaly_frame, render_anomaly_frame_ids, render_scene,
    render_scene_ids)
from pebal_ros.data import synthetic_textures as tex
from pebal_ros.labels import ANOMALY_LABEL, ID_TO_TRAIN_ID

__all__ = [
    "TRAIN_FAMILIES", "TEST_FAMILIES", "render_outlier", "render_scene", "render_anomaly_frame",
    "drive_sequence", "DriveFrame", "anomaly_label", "generate", "write_cityscapes", "write_coco_ood",
    "write_anomaly_test", "render_coco_ood_item", "CITIES", "PARTS",
]

CITIES: dict[str, tuple[str, ...]] = {
    "train": ("arden", "brill", "corvin", "dunmore"),
    "val": ("eastwick", "fenmoor"),
}
PARTS = ("cityscapes", "coco_ood", "anomaly_test")
_PART_CODE = {"train": 1, "val": 2, "coco_ood": 3, "anomaly_test": 4}
FORMAT_VERSION = 1


def _rng(seed: int, part: str, index: int) -> np.random.Generator:
    """Each item has its own stream: output is independent of worker count and of other parts."""
    return np.random.default_rng([seed, _PART_CODE[part], index])


def _imwrite(path: Path, image: np.ndarray, params: Sequence[int] = ()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if not cv2.imwrite(str(path), arr, list(params)):
        raise OSError(f"could not write {path}")


def cityscapes_name(split: str, index: int) -> tuple[str, str]:
    """(city, stem) of frame ``index`` of ``split``; frames are spread over the split's cities."""
    cities = CITIES[split]
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_000019"


# ------------------------------------------------------------------------------ per-item jobs
def _cityscapes_item(root: str, split: str, index: int, seed: int, size: tuple[int, int]) -> dict:
    img, ids = render_scene_ids(_rng(seed, split, index), size)
    city, stem = cityscapes_name(split, index)
    base = Path(root)
    _imwrite(base / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", img)
    _imwrite(base / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
    _imwrite(base / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png", ID_TO_TRAIN_ID[ids])
    return {"name": stem}


def _coco_background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Cluttered indoor/outdoor-looking backgrounds: gradients, blotches, rectangles, grain."""
    tiles = tex.tiles()
    c1, c2 = rng.uniform(20, 235, 3).astype(np.float32), rng.uniform(20, 235, 3).astype(np.float32)
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = np.clip((np.cos(a) * xx / w + np.sin(a) * yy / h + 1) / 2, 0, 1)
    bg = c1 * (1 - t[..., None]) + c2 * t[..., None]
    blot = tex.screen_noise(tiles["coarse"], h, w, rng.integers(256), rng.integers(256), 256 / max(w, h) * 0.8,
                            256 / max(w, h) * 0.8)
    bg *= (1 + 0.25 * blot)[..., None]
    for _ in range(int(rng.integers(0, 7))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(w // 10, w // 2)), y0 + int(rng.integers(h // 10, h // 2))
        cv2.rectangle(bg, (x0, y0), (x1, y1), tuple(float(c) for c in rng.uniform(20, 235, 3)), -1)
    fine = tex.screen_noise(tiles["fine"], h, w, rng.integers(256), rng.integers(256))
    bg += (fine * rng.uniform(2, 12))[..., None]
    if rng.random() < 0.5:
        bg = cv2.GaussianBlur(bg, (0, 0), rng.uniform(0.5, 2.0))
    return bg


def render_coco_ood_item(rng: np.random.Generator, size: tuple[int, int],
                         families: Sequence[str] = TRAIN_FAMILIES) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A COCO-like outlier image: 1-3 objects of ``families`` on a random background.

    Returns (RGB uint8, mask uint8 with 0 background / 254 object union, families used).
    """
    w, h = size
    img = _coco_background(rng, w, h)
    mask = np.zeros((h, w), np.uint8)
    used = []
    for _ in range(int(rng.integers(1, 4))):
        fam = str(families[int(rng.integers(len(families)))])
        side = rng.uniform(0.25, 0.7) * min(w, h)
        ow = max(4, int(side * rng.uniform(0.7, 1.4)))
        oh = max(4, int(side * rng.uniform(0.7, 1.4)))
        ow, oh = min(ow, w), min(oh, h)
        rgb, m = render_outlier(rng, fam, (ow, oh))
        x0, y0 = int(rng.integers(0, w - ow + 1)), int(rng.integers(0, h - oh + 1))
        region = img[y0:y0 + oh, x0:x0 + ow]
        region[m] = rgb[m]
        mask[y0:y0 + oh, x0:x0 + ow][m] = ANOMALY_LABEL
        used.append(fam)
    # Photograph-like finish over objects and background alike, so that a pasted object is not
    # recognisable by being cleaner than the street scenes (which get the same treatment).
    img *= np.float32(rng.uniform(0.7, 1.2))
    if rng.random() < 0.6:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.0))
    img += (rng.standard_normal((h, w), dtype=np.float32) * np.float32(rng.uniform(0.5, 5.0)))[..., None]
    out = np.clip(img, 0, 255).astype(np.uint8)
    return out, mask, used


def _coco_item(root: str, index: int, seed: int, size: tuple[int, int]) -> dict:
    img, mask, used = render_coco_ood_item(_rng(seed, "coco_ood", index), size)
    name = f"{index + 1:012d}"
    base = Path(root)
    _imwrite(base / "train2017" / f"{name}.jpg", img, (cv2.IMWRITE_JPEG_QUALITY, 92))
    _imwrite(base / "annotations" / "ood_seg_train2017" / f"{name}.png", mask)
    return {"name": name, "families": used}


def _anomaly_item(root: str, index: int, seed: int, size: tuple[int, int]) -> dict:
    rng = _rng(seed, "anomaly_test", index)
    img, ids = render_anomaly_frame_ids(rng, size, TEST_FAMILIES)
    name = f"synthetic_{index:05d}"
    base = Path(root)
    _imwrite(base / "original" / f"{name}.png", img)
    _imwrite(base / "labels" / f"{name}.png", anomaly_label(ids))
    return {"name": name, "anomaly_pixels": int(np.count_nonzero(ids == 254))}


def _call(job: tuple[Callable, tuple]) -> dict:
    fn, args = job
    return fn(*args)


def _run(jobs: list[tuple[Callable, tuple]], desc: str, workers: int) -> list[dict]:
    if not jobs:
        return []
    if workers <= 1:
        return [_call(j) for j in tqdm(jobs, desc=desc, unit="img", dynamic_ncols=True)]
    # fork where available: spawned workers would re-import the package (torch included) each.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(workers) as pool:
        return list(tqdm(pool.imap(_call, jobs, chunksize=8), total=len(jobs), desc=desc, unit="img",
                         dynamic_ncols=True))


# ------------------------------------------------------------------------------ public writers
def write_cityscapes(root: Path, counts: dict[str, int], size: tuple[int, int], seed: int = 0,
                     workers: int = 1) -> list[dict]:
    out = []
    for split, n in counts.items():
        if split not in CITIES:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(CITIES)}")
        jobs = [(_cityscapes_item, (str(root), split, i, seed, size)) for i in range(n)]
        out += _run(jobs, f"cityscapes/{split}", workers)
    return out


def write_coco_ood(root: Path, n: int, size: tuple[int, int], seed: int = 0, workers: int = 1) -> list[dict]:
    jobs = [(_coco_item, (str(root), i, seed, size)) for i in range(n)]
    return _run(jobs, "coco_ood", workers)


def write_anomaly_test(root: Path, n: int, size: tuple[int, int], seed: int = 0, workers: int = 1) -> list[dict]:
    jobs = [(_anomaly_item, (str(root), i, seed, size)) for i in range(n)]
    return _run(jobs, "anomaly_test", workers)


def generate(out: Path, *, size: tuple[int, int] = (512, 256), n_train: int = 400, n_val: int = 100,
             n_coco: int = 300, n_anomaly: int = 100, coco_size: tuple[int, int] = (256, 192), seed: int = 0,
             parts: Sequence[str] = PARTS, workers: int = 1, overwrite: bool = False) -> dict[str, Any]:
    """Write the requested ``parts`` under ``out``; returns (and writes) the dataset's metadata.

    A part's folder that already holds files is an error unless ``overwrite`` (then it is
    replaced): leftovers of an earlier, larger run would otherwise be read as part of this one.
    """
    out = Path(out)
    for p in parts:
        if p not in PARTS:
            raise ValueError(f"unknown part {p!r}; expected some of {PARTS}")
    for p in parts:
        d = out / p
        if d.exists() and any(d.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{d} already holds files; pass --overwrite (overwrite=True) to replace it")
            shutil.rmtree(d)
    t0 = time.perf_counter()
    meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "seed": seed, "size": list(size),
                            "train_families": list(TRAIN_FAMILIES), "test_families": list(TEST_FAMILIES)}
    if "cityscapes" in parts:
        write_cityscapes(out / "cityscapes", {"train": n_train, "val": n_val}, size, seed, workers)
        meta["cityscapes"] = {"seed": seed, "size": list(size), "train": n_train, "val": n_val,
                              "cities": {k: list(v) for k, v in CITIES.items()}}
    if "coco_ood" in parts:
        items = write_coco_ood(out / "coco_ood", n_coco, coco_size, seed, workers)
        meta["coco_ood"] = {"seed": seed, "count": n_coco, "size": list(coco_size),
                            "families": {it["name"]: it["families"] for it in items}}
    if "anomaly_test" in parts:
        items = write_anomaly_test(out / "anomaly_test", n_anomaly, size, seed, workers)
        meta["anomaly_test"] = {"seed": seed, "size": list(size), "count": n_anomaly, "families": list(TEST_FAMILIES),
                                "anomaly_pixels": {it["name"]: it["anomaly_pixels"] for it in items}}
    meta["seconds"] = round(time.perf_counter() - t0, 2)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "synthetic_meta.json"
    merged = {}
    if meta_path.exists():  # parts written by an earlier run keep their entries
        try:
            merged = {k: v for k, v in json.loads(meta_path.read_text()).items() if k in PARTS}
        except (json.JSONDecodeError, AttributeError):
            merged = {}
    merged.update(meta)
    meta_path.write_text(json.dumps(merged, indent=1))
    return meta


def contact_sheet(seed: int = 0, tile: tuple[int, int] = (256, 128), rows: int = 3) -> np.ndarray:
    """An RGB overview: per row a scene, its train-id colours, an anomaly frame, its anomaly label;
    then a strip of training outlier families and one of test anomaly families."""
    from pebal_ros.labels import PALETTE

    w, h = tile
    out = []
    for r in range(rows):
        img, train = render_scene(np.random.default_rng([seed, 10, r]), tile)
        aimg, alab = render_anomaly_frame(np.random.default_rng([seed, 11, r]), tile)
        overlay = (aimg * 0.45).astype(np.uint8)
        overlay[alab == 1] = (255, 128, 0)
        overlay[alab == 255] = 0
        out.append(np.hstack([img, PALETTE[train], aimg, overlay]))
    for families in (TRAIN_FAMILIES, TEST_FAMILIES):
        n = 8
        cell = np.full((h // 2, (4 * w) // n, 3), 255, np.uint8)
        strip = []
        rng = np.random.default_rng([seed, 12, len(families)])
        for i in range(n):
            c = cell.copy()
            rgb, m = render_outlier(rng, families[i % len(families)], (c.shape[1] - 8, c.shape[0] - 8))
            c[4:-4, 4:-4][m] = rgb[m]
            strip.append(c)
        out.append(np.hstack(strip))
    return np.vstack(out)


def write_preview(path: Path, sheet: np.ndarray) -> None:
    """Write a contact sheet as a 256-colour PNG (a quarter of the size of an RGB PNG of noisy
    renders; Pillow comes with matplotlib), or as plain RGB PNG without Pillow."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        from PIL import Image
    except ImportError:
        _imwrite(path, sheet)
        return
    Image.fromarray(sheet).quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)


# ------------------------------------------------------------------------------ CLI
def parse_size(text: str) -> tuple[int, int]:
    """'512x256' -> (512, 256) (width x height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 512x256 (width x height), got {text!r}") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"size must be at least 16x16, got {text!r}")
    return w, h


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"count must be >= 0, got {n}")
    return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("data/synthetic"), help="output folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default: 0)")
    parser.add_argument("--size", type=parse_size, default=(512, 256), metavar="WxH",
                        help="street-scene resolution, width x height (default: 512x256)")
    parser.add_argument("--train", type=_count, default=400, help="Cityscapes-layout train frames (default: 400)")
    parser.add_argument("--val", type=_count, default=100, help="Cityscapes-layout val frames (default: 100)")
    parser.add_argument("--coco", type=_count, default=300, help="outlier images for AnomalyMix (default: 300)")
    parser.add_argument("--anomaly", type=_count, default=100, help="anomaly test frames (default: 100)")
    parser.add_argument("--coco-size", type=parse_size, default=(256, 192), metavar="WxH",
                        help="outlier image resolution (default: 256x192)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="which parts to write (default: all)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace parts that already exist under --out (default: refuse)")
    parser.add_argument("--preview", type=Path, default=None, metavar="PNG",
                        help="also write a contact sheet of examples (scenes, labels, anomalies, families)")


def main(args: argparse.Namespace) -> int:
    if args.workers < 1:
        print("error: --workers must be >= 1", file=sys.stderr)
        return 2
    try:
        meta = generate(args.out, size=args.size, n_train=args.train, n_val=args.val, n_coco=args.coco,
                        n_anomaly=args.anomaly, coco_size=args.coco_size, seed=args.seed, parts=args.parts,
                        workers=args.workers, overwrite=args.overwrite)
    except (FileExistsError, OSError) as exc:
        print(f"pebal make-synthetic: {exc}", file=sys.stderr)
        return 1
    if args.preview is not None:
        write_preview(args.preview, contact_sheet(args.seed))
        print(f"contact sheet: {args.preview}")
    print(f"wrote synthetic data to {args.out} in {meta['seconds']} s:")
    for part in PARTS:
        if part in meta:
            print(f"  {args.out / part}")
    return 0
