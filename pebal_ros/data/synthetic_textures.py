"""Periodic noise tiles shared by the synthetic renderers.

The tiles are made once per process from a fixed seed, so every frame samples the same texture
field (a frame's randomness comes only from its own generator). Sampling with world coordinates
gives perspective-correct texture on the ground and facades at the cost of one gather.
"""
from __future__ import annotations

from functools import lru_cache
from typing import SupportsFloat

import numpy as np
from numpy.typing import ArrayLike

TILE = 256
_MASK = TILE - 1
_TILE_SEED = 20220727


@lru_cache(maxsize=1)
def tiles() -> dict[str, np.ndarray]:
    """``fine`` (white), ``mid`` (clumps of ~8 px) and ``coarse`` (~40 px) noise, zero mean, unit std."""
    rng = np.random.default_rng(_TILE_SEED)
    fy = np.fft.fftfreq(TILE)[:, None]
    fx = np.fft.fftfreq(TILE)[None, :]
    rad = np.sqrt(fx * fx + fy * fy)
    out: dict[str, np.ndarray] = {}
    for name, cutoff in (("fine", None), ("mid", 0.06), ("coarse", 0.012)):
        white = rng.standard_normal((TILE, TILE))
        if cutoff is None:
            field = white
        else:
            # Gaussian low-pass in the Fourier domain keeps the tile periodic (no seams when wrapping).
            spec = np.fft.fft2(white) * np.exp(-0.5 * (rad / cutoff) ** 2)
            field = np.real(np.fft.ifft2(spec))
        field = (field - field.mean()) / field.std()
        out[name] = field.astype(np.float32)
    return out


def sample(tile: np.ndarray, u: ArrayLike, v: ArrayLike) -> np.ndarray:
    """Nearest-neighbour lookup of a periodic tile at (u, v) in tile pixels (any shapes that broadcast)."""
    iu = np.asarray(u).astype(np.int32) & _MASK
    iv = np.asarray(v).astype(np.int32) & _MASK
    return tile[iv, iu]


def screen_noise(tile: np.ndarray, h: int, w: int, ox: SupportsFloat, oy: SupportsFloat,
                 sx: float = 1.0, sy: float = 1.0) -> np.ndarray:
    """An h x w window of a tile (wrapping), offset by (ox, oy), ``sx``/``sy`` tile pixels per pixel."""
    ys = (np.arange(h) * sy + float(oy)).astype(np.int32) & _MASK
    xs = (np.arange(w) * sx + float(ox)).astype(np.int32) & _MASK
    return tile[ys[:, None], xs[None, :]]
