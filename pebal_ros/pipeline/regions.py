"""Connected anomalous regions: what a planner needs without looking at the mask.

One ``cv2.connectedComponentsWithStats`` pass labels the mask; per-region score statistics are
gathered only over the anomalous pixels (usually a small fraction of the frame) with
``np.bincount`` / ``np.maximum.at``, so the cost does not depend on the number of regions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Region:
    x_offset: int
    y_offset: int
    width: int
    height: int
    area: int
    centroid_x: float
    centroid_y: float
    mean_score: float
    max_score: float

    def scaled(self, sx: float, sy: float) -> "Region":
        """The region in an image scaled by (sx, sy) (network -> camera pixels)."""
        if sx == 1.0 and sy == 1.0:
            return self
        x0 = math.floor(self.x_offset * sx)
        y0 = math.floor(self.y_offset * sy)
        x1 = math.ceil((self.x_offset + self.width) * sx)
        y1 = math.ceil((self.y_offset + self.height) * sy)
        return Region(x0, y0, x1 - x0, y1 - y0, scaled_area(self.area, sx * sy),
                      (self.centroid_x + 0.5) * sx - 0.5, (self.centroid_y + 0.5) * sy - 0.5,
                      self.mean_score, self.max_score)


def scaled_area(area: int, scale: float) -> int:
    """A region's area in pixels of an image with ``scale`` times as many pixels (network -> camera)."""
    return int(round(area * scale))


def min_area_at_scale(min_area: int, scale: float) -> int:
    """The fewest pixels a region needs on a grid ``scale`` times smaller (by area) than the one
    ``min_area`` is counted in, for its :func:`scaled_area` to reach ``min_area``: regions are found
    on the network's grid, ``min_region_area`` is in camera pixels, and no reported region may be
    smaller than it."""
    a = max(1, int(math.floor(min_area / scale)))
    while a > 1 and scaled_area(a - 1, scale) >= min_area:
        a -= 1
    while scaled_area(a, scale) < min_area:
        a += 1
    return a


def find_regions(
    mask: np.ndarray,
    score: np.ndarray,
    min_area: int = 1,
    max_regions: int | None = None,
    connectivity: int = 8,
) -> list[Region]:
    """Connected components of ``mask != 0`` with at least ``min_area`` pixels, largest first.

    ``score`` (float, same shape) gives each region's mean and max score.
    """
    if mask.shape != score.shape or mask.ndim != 2:
        raise ValueError(f"mask {mask.shape} and score {score.shape} must be equal 2-D shapes")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    m = mask if mask.dtype == np.uint8 else (mask != 0).astype(np.uint8)
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(m, connectivity=connectivity, ltype=cv2.CV_32S)
    if n <= 1:
        return []
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.nonzero(areas >= max(1, min_area))[0] + 1   # label ids
    if keep.size == 0:
        return []
    fg = labels != 0
    lab = labels[fg]
    sc = score[fg].astype(np.float64)
    sums = np.bincount(lab, weights=sc, minlength=n)
    maxes = np.full(n, -np.inf)
    np.maximum.at(maxes, lab, sc)
    order = keep[np.argsort(-stats[keep, cv2.CC_STAT_AREA], kind="stable")]
    if max_regions is not None:
        order = order[:max_regions]
    # one Python object per region, built from whole-array conversions (not per-element numpy access)
    st = stats[order]
    means = (sums[order] / st[:, cv2.CC_STAT_AREA]).tolist()
    return [Region(x, y, w, h, a, cx, cy, mean, mx) for (x, y, w, h, a), (cx, cy), mean, mx
            in zip(st[:, :5].tolist(), centroids[order].tolist(), means, maxes[order].tolist())]
