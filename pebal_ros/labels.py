"""Cityscapes label table and the label values PEBAL uses.

The 19 evaluation classes ("train ids" 0-18) are the inlier classes. Two extra label values
travel through every target map: ``ANOMALY_LABEL`` (254) marks outlier pixels (AnomalyMix pastes,
benchmark anomalies) and ``VOID_LABEL`` (255) marks pixels excluded from losses and metrics.
The network has one more output than there are inlier classes: channel ``ABSTAIN_CHANNEL`` (19)
is the abstention (anomaly) class.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

NUM_CLASSES = 19
ABSTAIN_CHANNEL = 19
NUM_OUTPUTS = NUM_CLASSES + 1
ANOMALY_LABEL = 254
VOID_LABEL = 255


class Label(NamedTuple):
    name: str
    id: int
    train_id: int  # 255 = not evaluated
    color: tuple[int, int, int]


# The official cityscapesScripts table (labels.py), minus category bookkeeping.
LABELS: tuple[Label, ...] = (
    Label("unlabeled", 0, 255, (0, 0, 0)),
    Label("ego vehicle", 1, 255, (0, 0, 0)),
    Label("rectification border", 2, 255, (0, 0, 0)),
    Label("out of roi", 3, 255, (0, 0, 0)),
    Label("static", 4, 255, (0, 0, 0)),
    Label("dynamic", 5, 255, (111, 74, 0)),
    Label("ground", 6, 255, (81, 0, 81)),
    Label("road", 7, 0, (128, 64, 128)),
    Label("sidewalk", 8, 1, (244, 35, 232)),
    Label("parking", 9, 255, (250, 170, 160)),
    Label("rail track", 10, 255, (230, 150, 140)),
    Label("building", 11, 2, (70, 70, 70)),
    Label("wall", 12, 3, (102, 102, 156)),
    Label("fence", 13, 4, (190, 153, 153)),
    Label("guard rail", 14, 255, (180, 165, 180)),
    Label("bridge", 15, 255, (150, 100, 100)),
    Label("tunnel", 16, 255, (150, 120, 90)),
    Label("pole", 17, 5, (153, 153, 153)),
    Label("polegroup", 18, 255, (153, 153, 153)),
    Label("traffic light", 19, 6, (250, 170, 30)),
    Label("traffic sign", 20, 7, (220, 220, 0)),
    Label("vegetation", 21, 8, (107, 142, 35)),
    Label("terrain", 22, 9, (152, 251, 152)),
    Label("sky", 23, 10, (70, 130, 180)),
    Label("person", 24, 11, (220, 20, 60)),
    Label("rider", 25, 12, (255, 0, 0)),
    Label("car", 26, 13, (0, 0, 142)),
    Label("truck", 27, 14, (0, 0, 70)),
    Label("bus", 28, 15, (0, 60, 100)),
    Label("caravan", 29, 255, (0, 0, 90)),
    Label("trailer", 30, 255, (0, 0, 110)),
    Label("train", 31, 16, (0, 80, 100)),
    Label("motorcycle", 32, 17, (0, 0, 230)),
    Label("bicycle", 33, 18, (119, 11, 32)),
    Label("license plate", -1, 255, (0, 0, 142)),
)

TRAIN_ID_NAMES: tuple[str, ...] = tuple(
    next(lab.name for lab in LABELS if lab.train_id == t) for t in range(NUM_CLASSES)
)

# uint8 lookup tables, applied with fancy indexing (one vectorised gather per frame).
ID_TO_TRAIN_ID = np.full(256, VOID_LABEL, dtype=np.uint8)
for _lab in LABELS:
    if _lab.id >= 0:
        ID_TO_TRAIN_ID[_lab.id] = _lab.train_id

# Palette indexed by train id; 254 (anomaly) is orange, 255 (void) black.
PALETTE = np.zeros((256, 3), dtype=np.uint8)
for _lab in LABELS:
    if _lab.train_id < NUM_CLASSES:
        PALETTE[_lab.train_id] = _lab.color
PALETTE[ANOMALY_LABEL] = (255, 128, 0)


def color_to_train_id(color_image: np.ndarray) -> np.ndarray:
    """Map an official ``*_gtFine_color.png`` (H, W, 3 RGB) to train ids (void where unmatched).

    Several ids share a colour (e.g. license plate and car); the evaluated class wins, which is
    what the id→train-id mapping would give for those pixels anyway.
    """
    rgb = np.asarray(color_image, dtype=np.uint32)
    key = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    out = np.full(key.shape, VOID_LABEL, dtype=np.uint8)
    for lab in LABELS:
        if lab.train_id < NUM_CLASSES:
            r, g, b = lab.color
            out[key == ((r << 16) | (g << 8) | b)] = lab.train_id
    return out
