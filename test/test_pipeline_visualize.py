"""The overlay's anomaly colour is unlike every Cityscapes class colour, and anomalies are outlined."""
from __future__ import annotations

import numpy as np
import pytest

from pebal_ros.labels import PALETTE
from pebal_ros.pipeline.visualize import ANOMALY_COLOR, TINT, outline_width, overlay

CITYSCAPES_19 = PALETTE[:19].astype(np.float64)


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (0..255) -> CIELAB (D65), straight from the definitions (no OpenCV)."""
    c = np.asarray(rgb, np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375],
                  [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def test_anomaly_colour_far_from_every_cityscapes_class() -> None:
    colour = np.array(ANOMALY_COLOR, np.float64)
    rgb_distance = np.linalg.norm(CITYSCAPES_19 - colour, axis=1)
    lab_distance = np.linalg.norm(_lab(CITYSCAPES_19) - _lab(colour), axis=1)
    assert rgb_distance.min() > 150, rgb_distance.min()       # magenta: 43 from sidewalk
    assert lab_distance.min() > 50, lab_distance.min()        # magenta: ~13 dE from sidewalk
    # And it is the best choice within a 5-level grid of the RGB cube (up to grid spacing).
    grid = np.stack(np.meshgrid(*[np.linspace(0, 255, 5)] * 3, indexing="ij"), -1).reshape(-1, 3)
    best = np.linalg.norm(_lab(grid)[:, None] - _lab(CITYSCAPES_19)[None], axis=-1).min(1).max()
    assert lab_distance.min() >= best - 1e-6


def _ring4(mask: np.ndarray) -> np.ndarray:
    """Pixels outside ``mask`` with a 4-neighbour inside it (the 1-px outline)."""
    m = mask.astype(bool)
    grown = m.copy()
    grown[1:] |= m[:-1]
    grown[:-1] |= m[1:]
    grown[:, 1:] |= m[:, :-1]
    grown[:, :-1] |= m[:, 1:]
    return grown & ~m


@pytest.mark.parametrize("high", [1, 255])
def test_overlay_tints_and_outlines(high: int) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    mask = np.zeros((60, 80), np.uint8)
    mask[20:30, 10:25] = high                 # a region
    mask[45, 60] = high                       # a single anomalous pixel
    assert outline_width(mask.shape) == 1
    out = overlay(image, None, mask)
    ring = _ring4(mask)
    inside = mask > 0
    expected_tint = np.clip(np.round(image * (1 - TINT) + np.array(ANOMALY_COLOR) * TINT), 0, 255)
    assert np.abs(out[inside].astype(int) - expected_tint[inside]).max() <= 1
    assert (out[ring] == ANOMALY_COLOR).all()
    untouched = ~(inside | ring)
    np.testing.assert_array_equal(out[untouched], image[untouched])
    # The single pixel is drawn as a plus of 5 pixels: visible, not lost at 1/4800 of the frame.
    assert ((out[44:47, 59:62] == ANOMALY_COLOR).all(-1) | inside[44:47, 59:62]).sum() == 5


def test_outline_scales_with_the_image() -> None:
    assert outline_width((512, 1024)) == 2 and outline_width((1024, 2048)) == 3
    image = np.zeros((512, 1024, 3), np.uint8)
    mask = np.zeros((512, 1024), np.uint8)
    mask[200:300, 400:500] = 1
    out = overlay(image, None, mask)
    green = (out == ANOMALY_COLOR).all(-1)
    assert green[250, 398] and green[250, 501] and not green[250, 397] and not green[250, 502]  # 2 px ring
    assert not overlay(image, None, np.zeros_like(mask)).any()                # no anomaly: no paint


def test_outline_near_the_borders_matches_full_frame_dilation() -> None:
    """The outline is computed in the anomalies' bounding box only; at the image borders and with
    regions far apart it must equal the whole-frame morphological ring."""
    import cv2

    image = np.full((512, 1024, 3), 90, np.uint8)
    mask = np.zeros((512, 1024), np.uint8)
    mask[0:3, 0:5] = 1
    mask[509:512, 1016:1024] = 1
    mask[250, 500] = 1
    r = outline_width(mask.shape)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    ring = (cv2.dilate(mask, kernel) > 0) & (mask == 0)
    green = (overlay(image, None, mask) == ANOMALY_COLOR).all(-1)
    np.testing.assert_array_equal(green & (mask == 0), ring)


# -- the score heat map: one scale around the threshold ------------------------------------------
COOLWARM = [(0.0, (59, 76, 192)), (0.5, (221, 221, 221)), (1.0, (180, 4, 38))]   # ends and middle


def test_heatmap_fixed_scale_around_the_threshold() -> None:
    """A frame with nothing above the threshold shows no red anywhere (the per-frame 1st-99th
    percentile scale painted its own top 1 % deep red), and a score has the same colour in every
    frame whatever else the frame holds."""
    from pebal_ros.pipeline.visualize import score_heatmap

    thr, span = -3.7, 3.0
    rng = np.random.default_rng(0)
    calm = rng.uniform(thr - 2.0, thr - 0.01, (40, 60)).astype(np.float32)       # 0 % flagged
    heat = score_heatmap(calm, thr, span)
    assert (heat[..., 0].astype(int) <= heat[..., 2]).all()          # blue side only: R <= B
    busy = np.concatenate([calm, rng.uniform(thr + 0.5, thr + 9.0, (40, 60)).astype(np.float32)], 1)
    heat2 = score_heatmap(busy, thr, span, outline=False)
    assert np.array_equal(score_heatmap(calm, thr, span, outline=False), heat2[:, :60])
    right = heat2[:, 60:].astype(int)
    assert (right[..., 0] > right[..., 2]).all()                      # flagged: red side
    # ends and middle of the scale: the colours the colour bar promises (independent of the LUT code)
    edges = np.array([[thr - span - 5, thr - span, thr, thr + span, thr + span + 5]], np.float32)
    got = score_heatmap(edges, thr, span, outline=False)[0]
    for i, (_, rgb) in zip((0, 1, 2, 3, 4), [COOLWARM[0], COOLWARM[0], COOLWARM[1], COOLWARM[2], COOLWARM[2]]):
        assert np.abs(got[i].astype(int) - np.array(rgb)).max() <= 2, (i, got[i])


def test_heatmap_threshold_line_is_the_mask_outline() -> None:
    from pebal_ros.pipeline.visualize import THRESHOLD_LINE, score_heatmap

    score = np.full((30, 40), -6.0, np.float32)
    score[10:18, 12:25] = -1.0
    heat = score_heatmap(score, -3.0, 3.0)
    line = np.all(heat == THRESHOLD_LINE, axis=-1)
    assert np.array_equal(line, _ring4(score > -3.0))      # the overlay's outline, as for the mask


def test_colorbar_marks_the_threshold() -> None:
    """The legend's gradient runs from threshold - span to threshold + span; the threshold's tick
    sits where the colours cross from the blue to the red side."""
    from pebal_ros.pipeline.visualize import colorbar, with_colorbar

    bar = colorbar(400, -3.73, 3.0)
    rows = [y for y in range(bar.shape[0]) if (np.abs(bar[y].astype(int) - [59, 76, 192]).sum(1) <= 3).any()]
    row = bar[rows[len(rows) // 2]].astype(int)
    blue = np.flatnonzero(np.abs(row - [59, 76, 192]).sum(1) <= 3)
    red = np.flatnonzero(np.abs(row - [180, 4, 38]).sum(1) <= 12)
    tick = np.flatnonzero((row == 0).all(1))
    inner = tick[(tick > blue.min() + 2) & (tick < red.max() - 2)]
    assert blue.max() < red.min() and len(inner)
    middle = (blue.min() + red.max()) / 2
    assert abs(inner.mean() - middle) <= 2
    heat = np.zeros((300, 600, 3), np.uint8)
    inset = with_colorbar(heat, -3.73, 3.0)
    assert inset.shape == heat.shape and (inset[-5:, -5:] != 0).any() and (inset[:50, :50] == 0).all()
