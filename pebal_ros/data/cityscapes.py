"""Cityscapes reader for the official on-disk layout.

    <root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png

``*_labelTrainIds.png`` are written by cityscapesScripts' ``createTrainIdLabelImgs``; where only
the raw ``*_gtFine_labelIds.png`` exist they are mapped with ``labels.ID_TO_TRAIN_ID`` (the same
table, so both give identical targets). (The official PEBAL code reads a flattened copy,
``images/city_gt_fine/<split>`` + ``annotation/city_gt_fine/<split>``; the standard layout is what
the Cityscapes download unpacks to.)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from pebal_ros.data.io import check_same_size, read_label, read_rgb
from pebal_ros.labels import ID_TO_TRAIN_ID

IMAGE_SUFFIX = "_leftImg8bit.png"
LAYOUT = ("<root>/leftImg8bit/<split>/<city>/*_leftImg8bit.png and "
          "<root>/gtFine/<split>/<city>/*_gtFine_labelTrainIds.png (or *_gtFine_labelIds.png)")


class CityscapesDataset(Dataset):
    """Items: ``{"image": uint8 HxWx3 RGB, "target": uint8 HxW train ids (255 void), "name"}``.

    ``name`` is the frame stem, e.g. ``frankfurt_000000_000294``. Frames are sorted by path so the
    index order is the same on every machine.
    """

    def __init__(self, root: str | Path, split: str = "train", mode: str = "gtFine") -> None:
        self.root = Path(root)
        self.split = split
        self.mode = mode
        img_dir = self.root / "leftImg8bit" / split
        if not img_dir.is_dir():
            raise FileNotFoundError(f"Cityscapes: {img_dir} does not exist; expected layout {LAYOUT}")
        self.images = sorted(img_dir.glob(f"*/*{IMAGE_SUFFIX}"))
        if not self.images:
            raise FileNotFoundError(f"Cityscapes: no *{IMAGE_SUFFIX} under {img_dir}; expected layout {LAYOUT}")
        self.targets: list[tuple[Path, bool]] = [self._target_for(p) for p in self.images]

    def _target_for(self, image: Path) -> tuple[Path, bool]:
        """(label path, needs id->train-id mapping) for one frame; error if neither file exists."""
        stem = image.name[: -len(IMAGE_SUFFIX)]
        gt_dir = self.root / self.mode / self.split / image.parent.name
        train_ids = gt_dir / f"{stem}_{self.mode}_labelTrainIds.png"
        if train_ids.is_file():
            return train_ids, False
        ids = gt_dir / f"{stem}_{self.mode}_labelIds.png"
        if ids.is_file():
            return ids, True
        raise FileNotFoundError(f"Cityscapes: image {image} has no label ({train_ids.name} or {ids.name} "
                                f"in {gt_dir}); expected layout {LAYOUT}")

    def __len__(self) -> int:
        return len(self.images)

    def name(self, index: int) -> str:
        return self.images[index].name[: -len(IMAGE_SUFFIX)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path = self.images[index]
        label_path, map_ids = self.targets[index]
        image = read_rgb(image_path)
        target = read_label(label_path)
        if map_ids:
            target = ID_TO_TRAIN_ID[target]
        check_same_size(image, target, image_path, label_path)
        return {"image": image, "target": np.ascontiguousarray(target), "name": self.name(index)}

    def __repr__(self) -> str:
        return f"CityscapesDataset(root={str(self.root)!r}, split={self.split!r}, frames={len(self)})"
