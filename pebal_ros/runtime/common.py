"""Input checks and small helpers shared by the runtimes (so every backend fails the same way)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


class RuntimeUnavailable(RuntimeError):
    """The requested backend cannot run on this machine (no GPU, package missing, ...)."""


def check_image(image: np.ndarray, input_size: tuple[int, int] | None,
                min_hw: tuple[int, int] | None = None, max_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Validate a camera frame (uint8 HxWx3) and return it C-contiguous (copying only if needed)."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array (uint8 HxWx3), got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 HxWx3, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 (3 colour channels), got shape {image.shape}")
    hw = tuple(image.shape[:2])
    if input_size is not None and hw != tuple(input_size):
        raise ValueError(f"image is {hw[0]}x{hw[1]} (HxW) but this model was exported for "
                         f"{input_size[0]}x{input_size[1]}: resize the frame first or export with "
                         "--size / --dynamic")
    if min_hw is not None and (hw[0] < min_hw[0] or hw[1] < min_hw[1]):
        raise ValueError(f"image {hw[0]}x{hw[1]} is below the exported range minimum {min_hw[0]}x{min_hw[1]}")
    if max_hw is not None and (hw[0] > max_hw[0] or hw[1] > max_hw[1]):
        raise ValueError(f"image {hw[0]}x{hw[1]} is above the exported range maximum {max_hw[0]}x{max_hw[1]}")
    return image if image.flags.c_contiguous else np.ascontiguousarray(image)


def check_file(path: str | Path, what: str, suffixes: tuple[str, ...]) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{path}: expected a {what} ({', '.join(suffixes)}), got {path.suffix!r}")
    return path
