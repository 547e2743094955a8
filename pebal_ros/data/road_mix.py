"""AnomalyMix for road frames: objects standing on the ground, sized by perspective.

The official AnomalyMix pastes a COCO object at native size at a uniformly random position. Road
obstacles stand on the road and shrink towards the horizon, and a real-time network sees the frame
at a quarter of Cityscapes' resolution, so here an object is (with probability ``p_ground``)
placed with its bottom edge on a road or sidewalk pixel of the frame and scaled to a height of
``U(height_range) * (bottom row - horizon row)`` pixels -- the height an object of that fraction of
the camera height has at that distance on a flat road -- with the horizon estimated from the
frame's own road pixels. Otherwise it goes where the official code puts it (uniform position),
with a height drawn log-uniformly from ``free_height_range`` (fractions of the frame height).

Colour: a random gain (``brightness_range``), then the object's own alpha (soft edges) blends it
in; the label is 254 where alpha >= 128, exactly the pixels that show mostly object.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from pebal_ros.labels import ANOMALY_LABEL, VOID_LABEL

GROUND_IDS = (0, 1)      # Cityscapes train ids objects may stand on: road, sidewalk
ALPHA_MASK = 128


@dataclass(frozen=True)
class RoadMixSettings:
    p_ground: float = 0.8                              # chance an object stands on the road/sidewalk
    height_range: tuple[float, float] = (0.12, 0.8)    # object height / camera height (ground placement)
    free_height_range: tuple[float, float] = (0.04, 0.35)   # object height / frame height (anywhere)
    min_height: float = 0.03                           # smallest object height, fraction of the frame height
    brightness_range: tuple[float, float] = (0.6, 1.15)
    flip_probability: float = 0.5


def estimate_horizon(target: np.ndarray) -> float:
    """Row of the horizon: a little above the topmost rows of road (train id 0) that are not
    noise; 0.45 of the height when the frame has (almost) no road."""
    h = target.shape[0]
    rows = (target == 0).sum(axis=1)
    road_rows = np.flatnonzero(rows >= max(3, int(0.01 * target.shape[1])))
    if road_rows.size < 0.05 * h:
        return 0.45 * h
    top = float(np.percentile(road_rows, 2))
    return max(0.2 * h, top - 0.02 * h)


def _resize_object(rgb: np.ndarray, alpha: np.ndarray, height: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = alpha.shape
    s = height / h
    size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    return cv2.resize(rgb, size, interpolation=interp), cv2.resize(alpha, size, interpolation=interp)


def paste(image: np.ndarray, target: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, top_left: tuple[int, int],
          gain: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Blend ``rgb`` with ``alpha`` into ``image`` at ``top_left`` (clipped at the borders), in place;
    label 254 where alpha >= 128. Returns (image, target)."""
    H, W = target.shape
    y, x = top_left
    h, w = alpha.shape
    y0, x0, y1, x1 = max(0, y), max(0, x), min(H, y + h), min(W, x + w)
    if y1 <= y0 or x1 <= x0:
        return image, target
    a = alpha[y0 - y:y1 - y, x0 - x:x1 - x].astype(np.float32)[..., None] / 255.0
    obj = np.clip(rgb[y0 - y:y1 - y, x0 - x:x1 - x].astype(np.float32) * gain, 0, 255)
    region = image[y0:y1, x0:x1]
    region[...] = np.rint(a * obj + (1.0 - a) * region).astype(np.uint8)
    target[y0:y1, x0:x1][alpha[y0 - y:y1 - y, x0 - x:x1 - x] >= ALPHA_MASK] = ANOMALY_LABEL
    return image, target


def place_object(image: np.ndarray, target: np.ndarray, obj: dict[str, Any], rng: np.random.Generator,
                 settings: RoadMixSettings = RoadMixSettings(), horizon: float | None = None) -> dict[str, Any] | None:
    """Paste one outlier item (``image`` RGB, ``alpha``) into ``image``/``target`` in place.

    ``horizon``: the horizon row when it is known (a fixed camera whose ground region is only the
    near road); None estimates it from the frame's road pixels. Returns what was done (position,
    height, ground or not) or None if the object ended up smaller than ``min_height`` or entirely
    outside the frame.
    """
    H, W = target.shape
    rgb, alpha = obj["image"], obj["alpha"]
    if rng.random() < settings.flip_probability:
        rgb, alpha = rgb[:, ::-1], alpha[:, ::-1]
    ground = np.flatnonzero(np.isin(target, GROUND_IDS).ravel())
    on_ground = ground.size > 0 and rng.random() < settings.p_ground
    if on_ground:
        p = int(ground[int(rng.integers(ground.size))])
        yb, xc = divmod(p, W)
        row = estimate_horizon(target) if horizon is None else horizon
        height = float(rng.uniform(*settings.height_range)) * max(0.0, yb - row)
    else:
        lo, hi = settings.free_height_range
        height = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) * H
        yb, xc = int(rng.integers(0, H)), int(rng.integers(0, W))
    gain = float(rng.uniform(*settings.brightness_range))
    if height < settings.min_height * H:
        return None
    rgb_s, alpha_s = _resize_object(np.ascontiguousarray(rgb), np.ascontiguousarray(alpha), int(round(height)))
    h, w = alpha_s.shape
    if on_ground:
        top_left = (yb - h + 1, xc - w // 2)
    else:
        top_left = (yb - h // 2, xc - w // 2)
    before = int((target == ANOMALY_LABEL).sum())
    paste(image, target, rgb_s, alpha_s, top_left, gain)
    if int((target == ANOMALY_LABEL).sum()) == before:
        return None
    return {"name": obj.get("name", ""), "kind": obj.get("kind", ""), "top_left": list(top_left),
            "size": [w, h], "ground": bool(on_ground)}


def mix_objects(image: np.ndarray, target: np.ndarray, objects: list[dict[str, Any]], rng: np.random.Generator,
                settings: RoadMixSettings = RoadMixSettings(), horizon: float | None = None,
                ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Copies of ``image``/``target`` with each of ``objects`` placed in turn (a later one may cover
    an earlier one); void pixels under an object become 254 too. ``horizon``: see place_object."""
    image, target = image.copy(), target.copy()
    placed = []
    for obj in objects:
        done = place_object(image, target, obj, rng, settings, horizon)
        if done is not None:
            placed.append(done)
    return image, target, placed


def anomaly_labels(target: np.ndarray) -> np.ndarray:
    """Benchmark labels of a mixed target: 1 on 254, 255 on void, 0 elsewhere."""
    out = np.zeros(target.shape, np.uint8)
    out[target == VOID_LABEL] = VOID_LABEL
    out[target == ANOMALY_LABEL] = 1
    return out
