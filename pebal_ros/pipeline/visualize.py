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


_LUTS: dict[int, tuple[np.ndarray, list[np.ndarray]]] = {}
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
    # One single-channel cv2.LUT per colour channel, then one merge: 0.03 ms at 256x128, against
    # 0.07 for numpy's gather and 0.12 for a 3-channel LUT on the id map merged to 3 channels.
    lut = _LUTS.get(id(palette))
    if lut is None or lut[0] is not palette:
        table = np.asarray(palette, dtype=np.uint8).reshape(256, 3)
        lut = _LUTS[id(palette)] = (palette, [np.ascontiguousarray(table[:, c]) for c in range(3)])
    cv2.merge([cv2.LUT(semantic, c) for c in lut[1]], dst=buf)
    return buf


def overlay(
    image_rgb: np.ndarray,
    semantic_rgb: np.ndarray | None,
    mask: np.ndarray,
    alpha: float = 0.5,
    anomaly_color: Sequence[int] = ANOMALY_COLOR,
    boxes: Sequence[tuple[float, float, float, float]] = (),
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
    color = tuple(int(c) for c in anomaly_color)
    for bx, by, bw, bh in boxes:
        cv2.rectangle(buf, (int(bx), int(by)), (int(bx + bw - 1), int(by + bh - 1)), color, 2)
    return buf


# Heat maps: one fixed scale around the threshold, the same for every frame and image, so that
# colours compare between frames and a frame where nothing is flagged shows no red at all. A
# diverging map (Moreland's cool-warm): blue far below the threshold, light grey at it, red above.
HEATMAP_SPAN = 3.0     # default score units either side of the threshold (inference.heatmap_span)
_COOLWARM = ((0.0, (59, 76, 192)), (0.25, (124, 159, 249)), (0.5, (221, 221, 221)),
             (0.75, (244, 154, 123)), (1.0, (180, 4, 38)))
THRESHOLD_LINE = (0, 0, 0)      # the iso-line score == threshold, drawn around flagged regions


@functools.lru_cache(maxsize=1)
def heatmap_lut() -> np.ndarray:
    """256x1x3 uint8 RGB lookup table of the diverging map; index 127.5 is the threshold."""
    x = np.linspace(0.0, 1.0, 256)
    stops = np.array([t for t, _ in _COOLWARM])
    rgb = np.stack([np.interp(x, stops, [c[i] for _, c in _COOLWARM]) for i in range(3)], axis=-1)
    return np.ascontiguousarray(np.round(rgb).astype(np.uint8).reshape(256, 1, 3))


def score_to_u8(score: np.ndarray, threshold: float, span: float = HEATMAP_SPAN) -> np.ndarray:
    """Scores mapped linearly from ``threshold - span`` (0) to ``threshold + span`` (255), clipped.
    The threshold falls between 127 and 128: a pixel is on the red side exactly when it is flagged."""
    if not (span > 0 and np.isfinite(span)):
        raise ValueError(f"heat-map span must be a positive number, got {span}")
    s = np.asarray(score, dtype=np.float32)
    v = (s - np.float32(threshold)) * np.float32(127.5 / span) + np.float32(127.5)
    # flagged (score > threshold) -> 128..255, the rest -> 0..127: never rounded across the threshold
    return np.where(s > threshold, np.clip(np.ceil(v), 128, 255), np.clip(np.floor(v), 0, 127)).astype(np.uint8)


def score_heatmap(score: np.ndarray, threshold: float, span: float = HEATMAP_SPAN,
                  out: np.ndarray | None = None, outline: bool = True) -> np.ndarray:
    """Score map -> RGB heat map on the fixed scale ``threshold +- span`` (see :func:`heatmap_lut`),
    with the threshold's iso-line drawn around the flagged regions when ``outline``."""
    u8 = score_to_u8(score, threshold, span)
    buf = _buffer(out, u8.shape + (3,))
    cv2.LUT(cv2.merge((u8, u8, u8)), heatmap_lut(), dst=buf)
    if outline:
        mask = (np.asarray(score) > threshold).view(np.uint8)
        if cv2.countNonZero(mask):
            ring = cv2.subtract(cv2.dilate(mask, _ring_kernel(outline_width(mask.shape))), mask)
            buf[ring.astype(bool)] = THRESHOLD_LINE
    return buf


def colorbar(width: int, threshold: float, span: float = HEATMAP_SPAN, scale: float = 0.4,
             title: str = "anomaly score, flagged above the threshold") -> np.ndarray:
    """A legend strip (RGB, white background): the heat map's colours from ``threshold - span`` to
    ``threshold + span`` with their values, and the threshold marked with a tick and its value."""
    font = cv2.FONT_HERSHEY_SIMPLEX

    def text_w(t: str, sc: float) -> int:
        return cv2.getTextSize(t, font, sc, 1)[0][0]

    ticks = [(threshold - span, f"{threshold - span:.1f}"), (threshold, f"threshold {threshold:.2f}"),
             (threshold + span, f"{threshold + span:.1f}")]
    # the type shrinks until the labels fit the strip (a small image gets a small legend)
    while scale > 0.25 and (text_w(ticks[1][1], scale) + 2 * text_w(ticks[0][1], scale) > 0.9 * width):
        scale = round(scale - 0.05, 2)
    line = max(10, int(round(26 * scale / 0.4)))
    bar_h, pad = max(8, line // 2), max(4, line // 4)
    h = pad + line + bar_h + pad + line
    img = np.full((h, width, 3), 255, np.uint8)
    side = max(text_w(ticks[0][1], scale), text_w(ticks[2][1], scale)) // 2 + pad
    x0, x1 = side, width - side
    tscale = scale
    while tscale > 0.25 and text_w(title, tscale) > width - 2 * pad:
        tscale = round(tscale - 0.05, 2)
    cv2.putText(img, title, (pad, pad + line - line // 4), font, tscale, (0, 0, 0), 1, cv2.LINE_AA)
    y0 = pad + line
    ramp = np.linspace(0, 255, x1 - x0).astype(np.uint8)
    img[y0:y0 + bar_h, x0:x1] = heatmap_lut()[ramp, 0][None, :, :]
    cv2.rectangle(img, (x0 - 1, y0 - 1), (x1, y0 + bar_h), (0, 0, 0), 1)
    for k, (value, text) in enumerate(ticks):
        x = int(round(x0 + (value - threshold + span) / (2 * span) * (x1 - x0 - 1)))
        top = y0 - (pad if k == 1 else 0)
        cv2.line(img, (x, top), (x, y0 + bar_h + pad // 2), (0, 0, 0), 2 if k == 1 else 1)
        tw = text_w(text, scale)
        tx = min(max(x - tw // 2, 0), width - tw)
        cv2.putText(img, text, (tx, y0 + bar_h + pad + line - line // 3), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def with_colorbar(heat: np.ndarray, threshold: float, span: float = HEATMAP_SPAN) -> np.ndarray:
    """``heat`` with its colour bar in the bottom-right corner (the image keeps its size)."""
    h, w = heat.shape[:2]
    scale = float(np.clip(min(h, w) / 900, 0.3, 0.8))
    bar = colorbar(max(int(w * 0.38), 120), threshold, span, scale)
    bh, bw = bar.shape[:2]
    if bh > h or bw > w:         # too small for an inset: nothing legible would fit
        return heat
    out = heat.copy()
    out[h - bh:, w - bw:] = bar
    cv2.rectangle(out, (w - bw, h - bh), (w - 1, h - 1), (0, 0, 0), 1)
    return out
