"""Build the COCO outlier set (Meta-OoD layout) from COCO's instances JSON.

Follows Meta-OoD's ``preparation/prepare_coco_segmentation.py``, which the official PEBAL code
uses for its outlier images:

* every image containing an instance of a class that Cityscapes also has is dropped:
  person, bicycle, car, motorcycle, bus, truck, traffic light, stop sign (crowd annotations
  included, as ``getImgIds(catIds=...)`` does);
* only images whose height and width are both at least 480 px are kept;
* the mask is the union of all remaining instance masks (crowd included): 0 background,
  254 object, written as ``annotations/ood_seg_<split>/<image id:012d>.png``.

Difference: images without any annotation are skipped (Meta-OoD writes an all-zero mask for
them, which can never give an outlier pixel); ``--keep-empty`` restores that.

Output layout (read by ``CocoOutlierDataset``)::

    <out>/<split>/<id>.jpg                            (copied, hard- or sym-linked)
    <out>/annotations/ood_seg_<split>/<id>.png        (uint8, 0 / 254)

Example::

    pebal build-coco-ood --coco-root /data/coco --out /data/coco_ood
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch.utils.data import Dataset
from tqdm import tqdm

from pebal_ros.data.io import check_same_size, read_label, read_rgb
from pebal_ros.labels import ANOMALY_LABEL

# Meta-OoD's exclusion list: COCO classes that are Cityscapes classes (or close enough to one).
EXCLUDE_CLASSES: tuple[str, ...] = ("person", "bicycle", "car", "motorcycle", "bus", "truck",
                                    "traffic light", "stop sign")
MIN_IMAGE_SIZE = 480
LAYOUT = "<root>/<split>/<id>.jpg (or .png) and <root>/annotations/ood_seg_<split>/<id>.png (0 background, 254 object)"


class CocoOutlierDataset(Dataset):
    """The COCO outlier set in Meta-OoD layout.

    Items: ``{"image": uint8 HxWx3 RGB, "target": uint8 HxW (0 background, 254 object), "name"}``.
    Sorted by file name; subsampling (the official code keeps ``0.1 x #Cityscapes frames``
    random images) is done by the training set, not here.
    """

    def __init__(self, root: str | Path, split: str = "train2017") -> None:
        self.root = Path(root)
        self.split = split
        mask_dir = self.root / "annotations" / f"ood_seg_{split}"
        if not mask_dir.is_dir():
            raise FileNotFoundError(f"COCO outlier set: {mask_dir} does not exist; expected layout {LAYOUT} "
                                    "(build it with `pebal build-coco-ood`)")
        self.targets = sorted(mask_dir.glob("*.png"))
        if not self.targets:
            raise FileNotFoundError(f"COCO outlier set: no masks in {mask_dir}; expected layout {LAYOUT}")
        # COCO ships JPEGs; a generated outlier set may store lossless PNGs under the same stem.
        self.images = [self._image_for(t.stem) for t in self.targets]
        missing = [str(p) for p in self.images if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"COCO outlier set: {len(missing)} mask(s) without image, e.g. "
                                    f"{missing[0]}; expected layout {LAYOUT}")

    def _image_for(self, stem: str) -> Path:
        jpg = self.root / self.split / f"{stem}.jpg"
        png = jpg.with_suffix(".png")
        return png if not jpg.is_file() and png.is_file() else jpg

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = read_rgb(self.images[index])
        target = read_label(self.targets[index])
        check_same_size(image, target, self.images[index], self.targets[index])
        return {"image": image, "target": target, "name": self.targets[index].stem}


def select_images(coco: Any, exclude: tuple[str, ...] = EXCLUDE_CLASSES, min_size: int = MIN_IMAGE_SIZE,
                  keep_empty: bool = False) -> list[int]:
    """Ids of images with no instance of an excluded class and both sides >= ``min_size``."""
    cat_ids = coco.getCatIds(catNms=list(exclude))
    found = {c["name"] for c in coco.loadCats(cat_ids)}
    unknown = sorted(set(exclude) - found)
    if unknown:
        raise ValueError(f"class name(s) not in the COCO categories: {unknown}")
    excluded: set[int] = set()
    for cat in cat_ids:
        excluded.update(coco.getImgIds(catIds=[cat]))
    keep = []
    for img_id in sorted(coco.getImgIds()):
        if img_id in excluded:
            continue
        info = coco.imgs[img_id]
        if info["height"] < min_size or info["width"] < min_size:
            continue
        if not keep_empty and not coco.getAnnIds(imgIds=[img_id], iscrowd=None):
            continue
        keep.append(img_id)
    return keep


def outlier_mask(coco: Any, img_id: int) -> np.ndarray:
    """Union of all instance masks of one image: 0 background, 254 object (uint8 HxW)."""
    info = coco.imgs[img_id]
    mask = np.zeros((info["height"], info["width"]), dtype=bool)
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img_id], iscrowd=None)):
        mask |= coco.annToMask(ann).astype(bool)
    return mask.astype(np.uint8) * np.uint8(ANOMALY_LABEL)


def _place(src: Path, dst: Path, how: str) -> None:
    if dst.exists() or dst.is_symlink():
        if dst.resolve() == src.resolve():
            return
        dst.unlink()
    if how == "copy":
        shutil.copy2(src, dst)
    elif how == "hardlink":
        os.link(src, dst)
    elif how == "symlink":
        dst.symlink_to(src.resolve())
    else:
        raise ValueError(f"unknown --images mode {how!r}")


def build(coco_root: Path, out: Path, split: str = "train2017", annotations: Path | None = None,
          exclude: tuple[str, ...] = EXCLUDE_CLASSES, min_size: int = MIN_IMAGE_SIZE,
          images: str = "symlink", keep_empty: bool = False, limit: int | None = None,
          progress: bool = True) -> dict[str, int]:
    """Write the outlier set; returns counts. See the module docstring for the rules."""
    from pycocotools.coco import COCO

    ann_file = annotations or coco_root / "annotations" / f"instances_{split}.json"
    img_dir = coco_root / split
    if not ann_file.is_file():
        raise FileNotFoundError(f"COCO annotations not found: {ann_file} (expected "
                                f"<coco-root>/annotations/instances_{split}.json, or pass --annotations)")
    if not img_dir.is_dir():
        raise FileNotFoundError(f"COCO images not found: {img_dir} (expected <coco-root>/{split}/*.jpg)")
    coco = COCO(str(ann_file))
    ids = select_images(coco, exclude, min_size, keep_empty)
    # Meta-OoD only considers images that are on disk (a partial download still works).
    on_disk = [i for i in ids if (img_dir / coco.imgs[i]["file_name"]).is_file()]
    missing = len(ids) - len(on_disk)
    if limit is not None:
        on_disk = on_disk[:limit]
    mask_dir = out / "annotations" / f"ood_seg_{split}"
    out_img_dir = out / split
    mask_dir.mkdir(parents=True, exist_ok=True)
    same_dir = out_img_dir.resolve() == img_dir.resolve()
    if not same_dir:
        out_img_dir.mkdir(parents=True, exist_ok=True)
    for img_id in tqdm(on_disk, desc="COCO outlier masks", unit="img", disable=not progress):
        stem = f"{img_id:012d}"
        if not cv2.imwrite(str(mask_dir / f"{stem}.png"), outlier_mask(coco, img_id)):
            raise OSError(f"cannot write {mask_dir / f'{stem}.png'}")
        if not same_dir:
            _place(img_dir / coco.imgs[img_id]["file_name"], out_img_dir / f"{stem}.jpg", images)
    return {"images_in_json": len(coco.imgs), "selected": len(ids), "missing_on_disk": missing,
            "written": len(on_disk)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--coco-root", type=Path, required=True,
                        help="COCO root with <split>/*.jpg and annotations/instances_<split>.json")
    parser.add_argument("--out", type=Path, default=None,
                        help="output root (default: the COCO root itself, as Meta-OoD does)")
    parser.add_argument("--split", default="train2017", help="COCO split to read (default: train2017)")
    parser.add_argument("--annotations", type=Path, default=None, help="instances JSON (overrides the default path)")
    parser.add_argument("--min-size", type=int, default=MIN_IMAGE_SIZE,
                        help="minimum image height and width in pixels (Meta-OoD: 480)")
    parser.add_argument("--exclude", nargs="+", default=list(EXCLUDE_CLASSES),
                        help="COCO class names whose images are dropped (default: Meta-OoD's list)")
    parser.add_argument("--images", choices=("symlink", "hardlink", "copy"), default="symlink",
                        help="how images get into <out>/<split> when --out differs from the COCO root")
    parser.add_argument("--keep-empty", action="store_true",
                        help="also write all-zero masks for images without annotations (Meta-OoD does)")
    parser.add_argument("--limit", type=int, default=None, help="write at most this many images")


def main(args: argparse.Namespace) -> int:
    out = args.out or args.coco_root
    counts = build(args.coco_root, out, split=args.split, annotations=args.annotations,
                   exclude=tuple(args.exclude), min_size=args.min_size, images=args.images,
                   keep_empty=args.keep_empty, limit=args.limit)
    print(f"COCO outlier set in {out}: {counts['written']} images written "
          f"({counts['selected']} of {counts['images_in_json']} selected, "
          f"{counts['missing_on_disk']} selected but not on disk)")
    return 0 if counts["written"] else 1
