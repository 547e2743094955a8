"""Colour images for people: Cityscapes palette, overlay with anomalies, score heat map.

All functions take an optional ``out`` buffer so the per-frame path can reuse its allocations.
"""
from __future__ import annotations

import functools
from typing import Sequence

import cv2
import numpy as np

from ..labels import PALETTE

# Pure green: of all RGB colours, the one farthest from every Cityscapes class colour in CIELAB
# (>= 58 dE76 from all 19; vegetation/terrain are the nearest). The old magenta (255, 0, 255) was 13 dE
# from sidewalk (244, 35, 232): a frame with 1 % anomalous pixels looked mostly "anomalous".
ANOMALY_COLOR: tuple[int, int, int] = (0, 255, 0)


_LUTS: dict[int, tuple[np.ndarray, np.ndarray]] = {}
TINT = 0.65   # weight of the anomaly colour in the overlay's anomalous pixels
_SOLID: dict[tuple, np.ndarray] = {}


def _solid(shape: tuple[int, ...], color: Sequence[int]) -> np.ndarray:
    """A cached constant-colour image (read-only use)."""
    key = (shape, tuple(int(c) for c in color))
    img = _SOLID.get(key)
    if img is None:
        if len(_SOLID) > 8:
            _SOLID.clear()
        img = _SOLID[key] = np.empty(shape, np.uint8)
        img[:] = key[1]
    return img


@functools.lru_cache(maxsize=8)
def _ring_kernel(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def outline_width(shape: tuple[int, ...]) -> int:
    """Outline width ~1/300 of the shorter side: 2 px at 512x1024, 1 px on small images."""
    return max(1, round(min(shape[:2]) / 300))


def _buffer(out: np.ndarray | None, shape: tuple[int, ...], dtype: type = np.uint8) -> np.ndarray:
    if out is not None and out.shape == shape and out.dtype == dtype:
        return out
    return np.empty(shape, dtype=dtype)


def colorize(semantic: np.ndarray, out: np.ndarray | None = None, palette: np.ndarray = PALETTE) -> np.ndarray:
    """Train-id map (uint8 HxW) -> RGB (uint8 HxWx3) with the Cityscapes palette."""
    if semantic.dtype != np.uint8 or semantic.ndim != 2:
        raise ValueError(f"semantic must be uint8 HxW, got {semantic.dtype} {semantic.shape}")
    buf = _buffer(out, semantic.shape + (3,))
    # cv2.LUT on the id map replicated to 3 channels: ~3x faster than numpy's gather at 1024x512.
    lut = _LUTS.get(id(palette))
    if lut is None or lut[0] is not palette:
        lut = _LUTS[id(palette)] = (palette, np.ascontiguousarray(palette.reshape(256, 1, 3), dtype=np.uint8))
    cv2.LUT(cv2.merge((semantic, semantic, semantic)), lut[1], dst=buf)
    return buf


def overlay(
    image_rgb: np.ndarray,
    semantic_rgb: np.ndarray | None,
    mask: np.ndarray,
    alpha: float = 0.5,
    anomaly_color: Sequence[int] = ANOMALY_COLOR,
    boxes: Sequence[tuple[int, int, int, int]] = (),
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Camera image blended with the semantic colours, anomalous pixels tinted and outlined, regions boxed.

    ``mask`` is uint8 0/1 (or 0/255). ``semantic_rgb`` None gives the plain image with the anomalies; ``boxes`` are
    (x, y, width, height) rectangles drawn in the anomaly colour.
    """
    if image_rgb.shape[:2] != mask.shape:
        raise ValueError(f"image {image_rgb.shape} and mask {mask.shape} sizes differ")
    buf = _buffer(out, image_rgb.shape)
    if semantic_rgb is None:
        np.copyto(buf, image_rgb)
    else:
        cv2.addWeighted(image_rgb, 1.0 - alpha, semantic_rgb, alpha, 0.0, dst=buf)
    # Anomalies: a strong tint rather than a flat fill so the object stays recognisable. Whole-frame
    # cv2 ops plus a masked copy are ~10x faster than boolean fancy indexing on large masks.
    if cv2.countNonZero(mask):
        # Tint and outline only inside the anomalies' bounding box (grown by the outline width):
        # typically a small part of the frame.
        r = outline_width(mask.shape)
        x, y, w, h = cv2.boundingRect(mask)
        x0, y0 = max(0, x - r), max(0, y - r)
        x1, y1 = min(mask.shape[1], x + w + r), min(mask.shape[0], y + h + r)
        roi, out_roi = mask[y0:y1, x0:x1], buf[y0:y1, x0:x1]
        solid = _solid(image_rgb.shape, anomaly_color)[y0:y1, x0:x1]
        tint = cv2.addWeighted(image_rgb[y0:y1, x0:x1], 1.0 - TINT, solid, TINT, 0.0)
        cv2.copyTo(tint, roi, out_roi)
        # Outline: the ring just outside each region in the full colour, so even a few pixels show and
        # a region's edge stays visible where the tint is faint against a similar background.
        ring = cv2.subtract(cv2.dilate(roi, _ring_kernel(r)), roi)
        cv2.copyTo(solid, ring, out_roi)
    for x, y, w, h in boxes:
        cv2.rectangle(buf, (int(x), int(y)), (int(x + w - 1), int(y + h - 1)), tuple(int(c) for c in anomaly_color), 2)
    return buf


def score_heatmap(
    score: np.ndarray, lo: float | None = None, hi: float | None = None, out: np.ndarray | None = None
) -> np.ndarray:
    """Score map -> RGB heat map (TURBO), linearly scaled from ``lo`` (blue) to ``hi`` (red).

    Without limits the frame's own 1st/99th percentiles are used (fine for a single image; pass
    fixed limits for videos so colours are comparable between frames).
    """
    s = np.asarray(score, dtype=np.float32)
    if lo is None or hi is None:
        p_lo, p_hi = np.percentile(s, [1, 99])
        lo = float(p_lo) if lo is None else lo
        hi = float(p_hi) if hi is None else hi
    scale = 255.0 / max(hi - lo, 1e-6)
    u8 = np.clip((s - lo) * scale, 0, 255).astype(np.uint8)
    bgr = cv2.applyColorMap(u8, cv2.COLORMAP_TURBO)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=_buffer(out, s.shape + (3,)))
