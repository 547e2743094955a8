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
