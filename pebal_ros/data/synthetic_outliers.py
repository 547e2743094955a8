"""Procedural outlier objects in families, for AnomalyMix training and for synthetic test anomalies.

PEBAL trains on COCO objects pasted into Cityscapes frames and is tested on road anomalies of other
kinds (lost cargo, animals, tyres, ...). The synthetic proxy keeps that separation: the families in
``TRAIN_FAMILIES`` (abstract, COCO-like shapes: blobs, polygons, striped boxes, rings, stars,
checkered discs) are the only ones written to the outlier set, and the families in ``TEST_FAMILIES``
(rocks, tyres, animal silhouettes, traffic cones, cargo boxes) are the only ones planted in test
scenes. The two sets share no family, so a detector cannot pass the test by memorising its outliers.

``render_outlier(rng, family, size)`` draws one object filling (most of) a ``size = (width, height)``
canvas and returns ``(rgb uint8 HxWx3, mask bool HxW)``; pixels outside the mask are black.
"""
from __future__ import annotations

import colorsys
from typing import Callable

import cv2
import numpy as np

from pebal_ros.data import synthetic_textures as tex

TRAIN_FAMILIES: tuple[str, ...] = ("blob", "polygon", "stripes_box", "ring", "star", "checker")
TEST_FAMILIES: tuple[str, ...] = ("rock", "tyre", "animal", "cone", "cargo_box")

def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        w = h = int(size)
    else:
        try:
            w, h = (int(s) for s in size)
        except (TypeError, ValueError):
            raise ValueError(f"size must be an int or (width, height), got {size!r}") from None
    if w < 2 or h < 2:
        raise ValueError(f"outlier size must be at least 2x2 pixels, got {w}x{h}")
    return w, h


def _grid(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] along each axis (u right, v down)."""
    u = (np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1
    v = (np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1
    return u[None, :], v[:, None]


def _hsv(rng: np.random.Generator, s: tuple[float, float] = (0.4, 1.0),
         v: tuple[float, float] = (0.35, 1.0)) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*s), rng.uniform(*v))
    return np.array(rgb, dtype=np.float32) * 255


def _texture(rng: np.random.Generator, h: int, w: int, kind: str, scale: float) -> np.ndarray:
    t = tex.tiles()[kind]
    return tex.screen_noise(t, h, w, rng.integers(256), rng.integers(256), scale, scale)


def _light(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A linear shading ramp from a random light direction (brighter towards the light)."""
    a = rng.uniform(0, 2 * np.pi)
    return 1.0 + rng.uniform(0.1, 0.3) * (np.cos(a) * u + np.sin(a) * v)


def _radial(theta: np.ndarray, rng: np.random.Generator, ks: range, amp: float,
            decay: float) -> np.ndarray:
    r = np.full_like(theta, 1.0)
    for k in ks:
        r = r + rng.uniform(0, amp) / k ** decay * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return r


def _fit_radial(r_fn: Callable[[np.ndarray], np.ndarray], margin: float = 0.94) -> float:
    th = np.linspace(-np.pi, np.pi, 720, dtype=np.float32)
    return margin / float(np.max(r_fn(th)))


def _finish(rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = np.asarray(mask, dtype=bool)
    out = np.clip(rgb, 0, 255).astype(np.uint8)
    out[~mask] = 0
    if not mask.any():  # degenerate tiny canvases: keep the contract "an object is there"
        mask[mask.shape[0] // 2, mask.shape[1] // 2] = True
    return out, mask


# ---------------------------------------------------------------- training (COCO-like) families
def _blob(rng, w, h):
    u, v = _grid(w, h)
    theta, rho = np.arctan2(v, u), np.hypot(u, v)
    seed = rng.integers(1 << 31)
    fn = lambda th: _radial(th, np.random.default_rng(seed), range(2, 6), 0.35, 0.5)  # noqa: E731
    k = _fit_radial(fn)
    r = fn(theta) * k
    mask = rho < r
    height = np.sqrt(np.clip(1 - (rho / r) ** 2, 0, 1))
    col = _hsv(rng)
    shade = (0.55 + 0.45 * height) * _light(rng, u, v)
    rgb = col * shade[..., None]
    if rng.random() < 0.5:  # spots of a second colour
        spots = _texture(rng, h, w, "mid", 48.0 / max(w, h)) > rng.uniform(0.3, 1.0)
        rgb = np.where(spots[..., None], _hsv(rng) * shade[..., None], rgb)
    return _finish(rgb, mask)


def _polygon(rng, w, h):
    n = int(rng.integers(3, 9))
    # jittered regular angles: irregular polygons, but no degenerate slivers
    ang = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * (2 * np.pi / n) + rng.uniform(0, 2 * np.pi)
    rad = rng.uniform(0.6, 0.97, n)
    pts = np.stack([(np.cos(ang) * rad + 1) / 2 * w, (np.sin(ang) * rad + 1) / 2 * h], 1)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    u, v = _grid(w, h)
    rgb = np.broadcast_to(_hsv(rng), (h, w, 3)) * _light(rng, u, v)[..., None]
    rgb = np.ascontiguousarray(rgb, dtype=np.float32)
    thick = max(1, int(round(min(w, h) * rng.uniform(0.01, 0.05))))
    cv2.polylines(rgb, [np.round(pts).astype(np.int32)], True, tuple(float(c) for c in _hsv(rng, v=(0.1, 0.5))), thick)
    return _finish(rgb, mask > 0)


def _stripes_box(rng, w, h):
    u, v = _grid(w, h)
    a = rng.uniform(0, np.pi)
    ru, rv = np.cos(a) * u + np.sin(a) * v, -np.sin(a) * u + np.cos(a) * v
    half_u, half_v = rng.uniform(0.4, 0.66, 2)
    mask = (np.abs(ru) < half_u) & (np.abs(rv) < half_v)
    freq = rng.uniform(2, 7)
    stripes = (ru * freq) % 1.0 < rng.uniform(0.3, 0.7)
    rgb = np.where(stripes[..., None], _hsv(rng), _hsv(rng)) * _light(rng, u, v)[..., None]
    return _finish(rgb, mask)


def _ring(rng, w, h):
    u, v = _grid(w, h)
    rho = np.hypot(u, v)
    r_out = rng.uniform(0.85, 0.97)
    r_in = r_out * rng.uniform(0.3, 0.7)
    mask = (rho < r_out) & (rho > r_in)
    bands = ((rho - r_in) / (r_out - r_in) * rng.integers(1, 4)).astype(np.int32) % 2 == 0
    rgb = np.where(bands[..., None], _hsv(rng), _hsv(rng)) * _light(rng, u, v)[..., None]
    return _finish(rgb, mask)


def _star(rng, w, h):
    u, v = _grid(w, h)
    theta, rho = np.arctan2(v, u), np.hypot(u, v)
    k = int(rng.integers(4, 9))
    r_in = rng.uniform(0.3, 0.6)
    phase = rng.uniform(0, 2 * np.pi)
    tri = np.abs(((theta + phase) * k / (2 * np.pi)) % 1.0 - 0.5) * 2  # 1 at tips, 0 between
    r = (r_in + (1 - r_in) * tri) * 0.95
    mask = rho < r
    rgb = _hsv(rng) * (_light(rng, u, v) * (0.75 + 0.25 * tri))[..., None]
    return _finish(rgb, mask)


def _checker(rng, w, h):
    u, v = _grid(w, h)
    au, av = rng.uniform(0.75, 0.97, 2)
    if rng.random() < 0.5:
        mask = (u / au) ** 2 + (v / av) ** 2 < 1
    else:
        mask = (np.abs(u) < au) & (np.abs(v) < av)
    n = rng.uniform(2, 6)
    cells = (np.floor((u + 1) * n) + np.floor((v + 1) * n)).astype(np.int32) % 2 == 0
    rgb = np.where(cells[..., None], _hsv(rng), _hsv(rng)) * _light(rng, u, v)[..., None]
    return _finish(rgb, mask)


# ---------------------------------------------------------------- test (road-anomaly) families
def _rock(rng, w, h):
    u, v = _grid(w, h)
    # Rocks rest on the ground: centre the radial shape low and flatten its bottom.
    vc = v - 0.1
    theta, rho = np.arctan2(vc, u), np.hypot(u, vc)
    seed = rng.integers(1 << 31)
    fn = lambda th: _radial(th, np.random.default_rng(seed), range(2, 14), 0.45, 0.9)  # noqa: E731
    k = _fit_radial(fn, 0.98)
    r = fn(theta) * k
    rough = _texture(rng, h, w, "mid", 96.0 / max(w, h)) * 0.05
    mask = (rho < r + rough) & (v < 0.95)
    height = np.sqrt(np.clip(1 - (rho / r) ** 2, 0, 1))
    g = rng.uniform(60, 175)
    base = np.clip(g + rng.uniform(-18, 18, 3) + np.array([8, 2, -6]) * rng.uniform(0, 2), 20, 235)
    t = _texture(rng, h, w, "fine", 1.0) * 0.12 + _texture(rng, h, w, "mid", 64.0 / max(w, h)) * 0.15
    shade = (0.45 + 0.45 * height - 0.25 * v) * (1 + t)
    cracks = np.abs(_texture(rng, h, w, "mid", 80.0 / max(w, h))) < 0.06
    shade = np.where(cracks, shade * 0.55, shade)
    return _finish(base.astype(np.float32) * shade[..., None], mask)


def _tyre(rng, w, h):
    u, v = _grid(w, h)
    rubber = np.float32(rng.uniform(18, 55))
    ell = np.hypot(u, v)
    theta = np.arctan2(v, u)
    mask = ell < 0.96
    rim_r = rng.uniform(0.45, 0.62)
    tread = ((theta * rng.integers(16, 40) / (2 * np.pi)) % 1.0) < 0.5
    shade = 0.85 + 0.3 * tread * (ell > 0.85)
    rgb = np.broadcast_to(rubber * shade[..., None], (h, w, 3)).astype(np.float32)
    if rng.random() < 0.85:  # a metal rim with a darker hub; otherwise an empty hole
        metal = np.float32(rng.uniform(110, 200))
        rim = ell < rim_r
        hub = ell < rim_r * rng.uniform(0.2, 0.4)
        spokes = ((theta * rng.integers(4, 8) / (2 * np.pi)) % 1.0) < 0.35
        rcol = metal * (0.75 + 0.35 * (-(u + v) / 2))[..., None] * np.ones(3, np.float32)
        rcol = np.where((spokes & ~hub)[..., None], rcol * 0.55, rcol)
        rgb = np.where(rim[..., None], rcol, rgb)
        rgb = np.where(hub[..., None], rgb * 0.6, rgb)
    else:
        mask &= ell > rim_r
    return _finish(rgb * _light(rng, u, v)[..., None], mask)


_ANIMAL_COATS = np.array([[125, 82, 48], [35, 30, 28], [215, 210, 198], [185, 145, 95],
                          [120, 118, 112], [160, 110, 60]], np.float32)


def _animal(rng, w, h):
    """A quadruped in side view (cow, dog, deer...), optionally with patches."""
    m = np.zeros((h, w), np.uint8)
    sx, sy = w / 2.0, h / 2.0
    face = 1 if rng.random() < 0.5 else -1

    def P(x, y):  # normalised (x right, y down in [-1, 1]) -> fixed-point pixels
        return (int(round((x * face + 1) * sx * 16)), int(round((y + 1) * sy * 16)))

    def A(ax, ay):
        return (max(1, int(round(ax * sx * 16))), max(1, int(round(ay * sy * 16))))

    body_top, body_bot = rng.uniform(-0.55, -0.35), rng.uniform(0.05, 0.25)
    by = (body_top + body_bot) / 2
    cv2.ellipse(m, P(-0.1, by), A(0.62, (body_bot - body_top) / 2), 0, 0, 360, 1, -1, cv2.LINE_8, 4)
    leg_w = rng.uniform(0.05, 0.1)
    for lx in (-0.6, -0.45, 0.2, 0.38):
        lx += rng.uniform(-0.05, 0.05)
        foot = lx + rng.uniform(-0.08, 0.08)
        pts = np.array([P(lx - leg_w, by), P(lx + leg_w, by), P(foot + leg_w * 0.7, 0.97),
                        P(foot - leg_w * 0.7, 0.97)], np.int32)
        cv2.fillPoly(m, [pts], 1, cv2.LINE_8, 4)
    head_y = rng.uniform(-0.9, -0.3)
    neck = np.array([P(0.35, body_top + 0.05), P(0.55, body_top), P(0.78, head_y), P(0.62, head_y + 0.1)], np.int32)
    cv2.fillPoly(m, [neck], 1, cv2.LINE_8, 4)
    cv2.ellipse(m, P(0.78, head_y), A(0.17, 0.11), float(rng.uniform(-30, 30)), 0, 360, 1, -1, cv2.LINE_8, 4)
    ear = np.array([P(0.7, head_y - 0.05), P(0.66, head_y - 0.25), P(0.76, head_y - 0.08)], np.int32)
    cv2.fillPoly(m, [ear], 1, cv2.LINE_8, 4)
    tail_end = P(-0.85, by + rng.uniform(0.0, 0.5))
    cv2.line(m, P(-0.68, body_top + 0.1), tail_end, 1, max(1, int(0.04 * min(w, h))), cv2.LINE_8, 4)
    mask = m > 0
    u, v = _grid(w, h)
    coat = _ANIMAL_COATS[rng.integers(len(_ANIMAL_COATS))] * rng.uniform(0.8, 1.15)
    rgb = np.broadcast_to(coat, (h, w, 3)) * (1.1 - 0.35 * (v + 1) / 2)[..., None]
    if rng.random() < 0.4:
        patches = _texture(rng, h, w, "mid", 40.0 / max(w, h)) > 0.3
        other = _ANIMAL_COATS[rng.integers(len(_ANIMAL_COATS))]
        rgb = np.where(patches[..., None], other * (1.1 - 0.35 * (v + 1) / 2)[..., None], rgb)
    rgb = rgb * (1 + 0.08 * _texture(rng, h, w, "fine", 1.0))[..., None]
    return _finish(rgb, mask)


_CONE_COLOURS = np.array([[240, 95, 20], [230, 50, 30], [245, 190, 20], [250, 120, 40]], np.float32)


def _cone(rng, w, h):
    u, v = _grid(w, h)
    top, base_y = -0.95, rng.uniform(0.7, 0.85)
    half_top, half_bot = rng.uniform(0.08, 0.2), rng.uniform(0.55, 0.75)
    t = np.clip((v - top) / (base_y - top), 0, 1)
    half = half_top + (half_bot - half_top) * t
    body = (v >= top) & (v < base_y) & (np.abs(u) < half)
    plate = (v >= base_y) & (v < 0.97) & (np.abs(u) < 0.95)
    mask = body | plate
    col = _CONE_COLOURS[rng.integers(len(_CONE_COLOURS))] * rng.uniform(0.8, 1.1)
    cyl = 0.55 + 0.45 * np.cos(np.clip(u / np.maximum(half, 1e-3), -1, 1) * np.pi / 2 + rng.uniform(-0.4, 0.4))
    rgb = col * cyl[..., None]
    nb = int(rng.integers(1, 3))
    for i in range(nb):
        c = 0.3 + 0.3 * i
        band = body & (t > c) & (t < c + 0.12)
        rgb = np.where(band[..., None], np.float32(235) * cyl[..., None] * np.ones(3, np.float32), rgb)
    rgb = np.where(plate[..., None], (col * 0.45 if rng.random() < 0.5 else np.full(3, 35, np.float32)) * np.ones((1, 1, 3), np.float32), rgb)
    return _finish(rgb, mask)


_BOX_COLOURS = np.array([[176, 134, 84], [150, 108, 66], [200, 170, 120], [50, 90, 160],
                         [170, 40, 35], [90, 90, 95], [230, 230, 225]], np.float32)


def _cargo_box(rng, w, h):
    """A box (carton, crate, suitcase) in perspective: front, top and one side face."""
    m_face = np.zeros((h, w), np.uint8)  # 1 front, 2 top, 3 side
    depth_x, depth_y = rng.uniform(0.15, 0.4), rng.uniform(0.15, 0.4)
    left = rng.random() < 0.5
    fx0, fx1 = (-0.96 + depth_x, 0.96) if left else (-0.96, 0.96 - depth_x)
    fy0, fy1 = -0.96 + depth_y, 0.96
    dx = -depth_x if left else depth_x

    def pts(arr):
        a = np.asarray(arr, np.float32)
        return np.round(np.stack([(a[:, 0] + 1) * w / 2, (a[:, 1] + 1) * h / 2], 1) * 16).astype(np.int32)

    front = [(fx0, fy0), (fx1, fy0), (fx1, fy1), (fx0, fy1)]
    top = [(fx0, fy0), (fx1, fy0), (fx1 + dx, fy0 - depth_y), (fx0 + dx, fy0 - depth_y)]
    sx = fx0 if left else fx1
    side = [(sx, fy0), (sx + dx, fy0 - depth_y), (sx + dx, fy1 - depth_y), (sx, fy1)]
    for val, poly in ((3, side), (2, top), (1, front)):
        cv2.fillPoly(m_face, [pts(poly)], val, cv2.LINE_8, 4)
    col = _BOX_COLOURS[rng.integers(len(_BOX_COLOURS))] * rng.uniform(0.8, 1.15)
    factor = np.array([0, 1.0, 1.18, 0.72], np.float32)[m_face]
    u, v = _grid(w, h)
    rgb = col * factor[..., None] * (1 + 0.06 * _texture(rng, h, w, "fine", 1.0))[..., None]
    kind = rng.random()
    if kind < 0.45:  # carton: a tape strip across the top and down the front
        tape = (np.abs(u - (fx0 + fx1) / 2 - (v < fy0) * dx / 2) < 0.06) & (m_face > 0) & (m_face < 3)
        rgb = np.where(tape[..., None], np.float32(rng.uniform(150, 220)) * factor[..., None] * np.ones(3, np.float32), rgb)
    elif kind < 0.75:  # crate: horizontal planks
        gaps = ((v * rng.uniform(3, 6)) % 1.0 < 0.12) & (m_face == 1)
        rgb = np.where(gaps[..., None], rgb * 0.45, rgb)
    return _finish(rgb, m_face > 0)


_FAMILY_FUNCS: dict[str, Callable] = {
    "blob": _blob, "polygon": _polygon, "stripes_box": _stripes_box, "ring": _ring, "star": _star,
    "checker": _checker,
    "rock": _rock, "tyre": _tyre, "animal": _animal, "cone": _cone, "cargo_box": _cargo_box,
}

# Width / height ranges of each family as it stands on the road (used to plant test anomalies).
_ASPECT: dict[str, tuple[float, float]] = {
    "blob": (0.6, 1.6), "polygon": (0.6, 1.6), "stripes_box": (0.6, 1.6), "ring": (0.8, 1.25),
    "star": (0.8, 1.25), "checker": (0.6, 1.6),
    "rock": (1.0, 1.8), "tyre": (0.45, 1.0), "animal": (1.2, 1.8), "cone": (0.5, 0.75),
    "cargo_box": (0.9, 1.6),
}


def natural_aspect(rng: np.random.Generator, family: str) -> float:
    """A plausible width/height ratio for ``family`` (so tyres stand upright, animals are wide)."""
    if family not in _ASPECT:
        raise ValueError(f"unknown outlier family {family!r}; known: {sorted(_ASPECT)}")
    return float(rng.uniform(*_ASPECT[family]))


def render_outlier(rng: np.random.Generator, family: str,
                   size: int | tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Draw one object of ``family`` on a ``size`` = (width, height) canvas.

    Returns ``(rgb, mask)``: uint8 H x W x 3 RGB (black outside the object) and bool H x W.
    """
    fn = _FAMILY_FUNCS.get(family)
    if fn is None:
        raise ValueError(f"unknown outlier family {family!r}; train families: {TRAIN_FAMILIES}, "
                         f"test families: {TEST_FAMILIES}")
    w, h = _size(size)
    return fn(rng, w, h)
