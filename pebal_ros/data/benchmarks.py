"""Anomaly-segmentation benchmark readers, all giving labels 0 inlier / 1 anomaly / 255 void.

``load_benchmark(name, root)`` with the layouts the official PEBAL code (and Meta-OoD) read:

* ``fs_lostandfound``, ``fs_static`` -- Fishyscapes validation: ``<root>/original/<name>.png``
  and ``<root>/labels/<name>.png`` with 0 / 1 / 255 stored as is. ``root`` may also be the
  Fishyscapes folder holding ``LostAndFound/`` and ``Static/`` (the official code's
  ``fishy_root_path``).
* ``lostandfound`` -- LostAndFound test set in Cityscapes layout:
  ``<root>/leftImg8bit/test/<city>/<stem>_leftImg8bit.png`` and
  ``<root>/gtCoarse/test/<city>/<stem>_gtCoarse_labelTrainIds.png``. LostAndFound's train ids are
  1 = free road (inlier), 2 = obstacle (anomaly), 0 = non-hazard objects and 255 = unlabelled;
  the official evaluation uses only 1 and 2 (``train_id_in=1, train_id_out=2``), so 0 and 255
  both become void. Where only ``*_gtCoarse_labelIds.png`` exist, the LostAndFound label table
  maps them the same way.
* ``road_anomaly`` -- Road Anomaly as downloaded: ``<root>/frames/<name>.jpg`` and
  ``<root>/frames/<name>.labels/labels_semantic.png`` (0 background, 1 road, 2 anomaly: values
  >= 2 are anomalies, as in the dataset authors' code; 255 void). The flattened copy the
  official PEBAL code reads, ``<root>/original/*.jpg`` + ``<root>/labels/*.png`` (0/1), is
  also accepted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
from torch.utils.data import Dataset

from pebal_ros.data.io import check_same_size, read_label, read_rgb
from pebal_ros.labels import VOID_LABEL

INLIER, ANOMALY = 0, 1


def _lut(pairs: dict[int, int], default: int = VOID_LABEL) -> np.ndarray:
    lut = np.full(256, default, dtype=np.uint8)
    for k, v in pairs.items():
        lut[k] = v
    return lut


IDENTITY_01 = _lut({0: INLIER, 1: ANOMALY})
# LostAndFound train ids (official table): 1 free -> inlier, 2 obstacle -> anomaly, rest void.
LAF_TRAIN_ID_LUT = _lut({1: INLIER, 2: ANOMALY})
# LostAndFound label ids -> train ids, from the official LostAndFound label table.
_LAF_NON_HAZARD_IDS = (31, 33, 34, 36, 37, 38, 39)
_LAF_ID_TO_TRAIN_ID = np.full(256, VOID_LABEL, dtype=np.uint8)
_LAF_ID_TO_TRAIN_ID[1] = 1
_LAF_ID_TO_TRAIN_ID[2:44] = 2
_LAF_ID_TO_TRAIN_ID[list(_LAF_NON_HAZARD_IDS)] = 0
LAF_LABEL_ID_LUT = LAF_TRAIN_ID_LUT[_LAF_ID_TO_TRAIN_ID]
# Road Anomaly labels_semantic.png: >= 2 anomaly, 0/1 inlier, 255 void.
ROAD_ANOMALY_LUT = _lut({0: INLIER, 1: INLIER, **{v: ANOMALY for v in range(2, 255)}})


class BenchmarkDataset(Dataset):
    """(image, label) file pairs plus a 256-entry LUT mapping stored values to 0/1/255.

    Items: ``{"image": uint8 HxWx3 RGB, "label": uint8 HxW in {0, 1, 255}, "name"}``.
    """

    def __init__(self, name: str, pairs: list[tuple[Path, Path, str]], lut: np.ndarray | list[np.ndarray]) -> None:
        self.name = name
        self.pairs = pairs
        self.luts = lut if isinstance(lut, list) else [lut] * len(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path, label_path, name = self.pairs[index]
        image = read_rgb(image_path)
        raw = read_label(label_path)
        check_same_size(image, raw, image_path, label_path)
        return {"image": image, "label": self.luts[index][raw], "name": name}

    def __repr__(self) -> str:
        return f"BenchmarkDataset({self.name!r}, frames={len(self)})"


def _require_dir(path: Path, bench: str, layout: str) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"{bench}: {path} does not exist; expected layout {layout}")


def _flat_pairs(root: Path, bench: str, ext: str, layout: str) -> list[tuple[Path, Path, str]]:
    """``original/<n><ext>`` + ``labels/<n>.png`` pairs (the official Fishyscapes/RoadAnomaly copy)."""
    _require_dir(root / "original", bench, layout)
    images = sorted((root / "original").glob(f"*{ext}"))
    if not images:
        raise FileNotFoundError(f"{bench}: no *{ext} images in {root / 'original'}; expected layout {layout}")
    pairs = []
    for img in images:
        lab = root / "labels" / f"{img.stem}.png"
        if not lab.is_file():
            raise FileNotFoundError(f"{bench}: image {img} has no label {lab}; expected layout {layout}")
        pairs.append((img, lab, img.stem))
    return pairs


def fishyscapes(root: str | Path, split: str) -> BenchmarkDataset:
    """Fishyscapes validation split ``"LostAndFound"`` or ``"Static"``."""
    root = Path(root)
    if not (root / "original").is_dir() and (root / split / "original").is_dir():
        root = root / split
    bench = f"Fishyscapes {split}"
    layout = "<root>/original/<name>.png and <root>/labels/<name>.png (0 inlier, 1 anomaly, 255 void)"
    return BenchmarkDataset(f"fs_{split.lower()}", _flat_pairs(root, bench, ".png", layout), IDENTITY_01)


def lostandfound(root: str | Path, split: str = "test") -> BenchmarkDataset:
    root = Path(root)
    layout = (f"<root>/leftImg8bit/{split}/<city>/<stem>_leftImg8bit.png and "
              f"<root>/gtCoarse/{split}/<city>/<stem>_gtCoarse_labelTrainIds.png (or _labelIds.png)")
    img_dir = root / "leftImg8bit" / split
    _require_dir(img_dir, "LostAndFound", layout)
    images = sorted(img_dir.glob("*/*_leftImg8bit.png"))
    if not images:
        raise FileNotFoundError(f"LostAndFound: no *_leftImg8bit.png under {img_dir}; expected layout {layout}")
    pairs, luts = [], []
    for img in images:
        stem = img.name[: -len("_leftImg8bit.png")]
        gt_dir = root / "gtCoarse" / split / img.parent.name
        train_ids = gt_dir / f"{stem}_gtCoarse_labelTrainIds.png"
        ids = gt_dir / f"{stem}_gtCoarse_labelIds.png"
        if train_ids.is_file():
            pairs.append((img, train_ids, stem))
            luts.append(LAF_TRAIN_ID_LUT)
        elif ids.is_file():
            pairs.append((img, ids, stem))
            luts.append(LAF_LABEL_ID_LUT)
        else:
            raise FileNotFoundError(f"LostAndFound: image {img} has no label {train_ids}; expected layout {layout}")
    return BenchmarkDataset("lostandfound", pairs, luts)


def road_anomaly(root: str | Path) -> BenchmarkDataset:
    root = Path(root)
    layout = ("<root>/frames/<name>.jpg and <root>/frames/<name>.labels/labels_semantic.png "
              "(or the flattened <root>/original/<name>.jpg + <root>/labels/<name>.png)")
    if not (root / "frames").is_dir() and (root / "original").is_dir():
        return BenchmarkDataset("road_anomaly", _flat_pairs(root, "Road Anomaly", ".jpg", layout), IDENTITY_01)
    _require_dir(root / "frames", "Road Anomaly", layout)
    images = sorted(p for p in (root / "frames").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp")
                    and p.is_file())
    if not images:
        raise FileNotFoundError(f"Road Anomaly: no images in {root / 'frames'}; expected layout {layout}")
    pairs = []
    for img in images:
        lab = img.parent / f"{img.stem}.labels" / "labels_semantic.png"
        if not lab.is_file():
            raise FileNotFoundError(f"Road Anomaly: image {img} has no label {lab}; expected layout {layout}")
        pairs.append((img, lab, img.stem))
    return BenchmarkDataset("road_anomaly", pairs, ROAD_ANOMALY_LUT)


BENCHMARKS: dict[str, Callable[[Path], BenchmarkDataset]] = {
    "fs_lostandfound": lambda root: fishyscapes(root, "LostAndFound"),
    "fs_static": lambda root: fishyscapes(root, "Static"),
    "lostandfound": lostandfound,
    "road_anomaly": road_anomaly,
}


def load_benchmark(name: str, root: str | Path) -> BenchmarkDataset:
    """Open benchmark ``name`` (one of ``BENCHMARKS``) stored under ``root``."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{name}: dataset root {root} does not exist")
    return BENCHMARKS[name](root)
