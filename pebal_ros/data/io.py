"""Image and label-map reading shared by the dataset readers and the tools (OpenCV, RGB out)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from ..image_limits import DEFAULT_MAX_PIXELS, ImageHeaderError, read_image

# What cv2.imread reads and people keep camera frames in
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _read(path: str | Path, flags: int, max_pixels: int, what: str) -> np.ndarray:
    try:
        img = read_image(path, flags, max_pixels)   # ImageTooLargeError (a ValueError) propagates
    except OSError as exc:
        raise FileNotFoundError(f"cannot read {what} {path} ({exc.strerror or exc})") from None
    except ImageHeaderError as exc:
        raise FileNotFoundError(f"cannot read {what} {path} (not an image: {exc})") from None
    if img is None:
        raise FileNotFoundError(f"cannot read {what} {path} (missing or not an image)")
    return img


def read_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as uint8 H x W x 3 RGB (the network's channel order); one that declares
    more than ``max_pixels`` pixels raises :class:`~pebal_ros.image_limits.ImageTooLargeError`
    (a ValueError) before it is decoded."""
    bgr = _read(path, cv2.IMREAD_COLOR, max_pixels, "image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_label(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a single-channel 8-bit label map (H x W uint8), keeping the stored values.

    ``IMREAD_UNCHANGED`` keeps the raw ids; ``IMREAD_GRAYSCALE`` would turn an RGB-stored map
    into luminance. An RGB file is accepted only when its three channels are equal. Capped at
    ``max_pixels`` like :func:`read_rgb`.
    """
    lab = _read(path, cv2.IMREAD_UNCHANGED, max_pixels, "label map")
    if lab.ndim == 3:
        if lab.shape[2] == 4:
            lab = lab[..., :3]
        if not (np.array_equal(lab[..., 0], lab[..., 1]) and np.array_equal(lab[..., 0], lab[..., 2])):
            raise ValueError(f"label map {path} is a colour image; expected one channel of ids")
        lab = lab[..., 0]
    if lab.dtype != np.uint8:
        if lab.max(initial=0) > 255:
            raise ValueError(f"label map {path} has values > 255 ({lab.dtype}); expected 8-bit ids")
        lab = lab.astype(np.uint8)
    return np.ascontiguousarray(lab)


def check_same_size(image: np.ndarray, label: np.ndarray, image_path: Path, label_path: Path) -> None:
    if image.shape[:2] != label.shape[:2]:
        raise ValueError(f"size mismatch: image {image_path} is {image.shape[1]}x{image.shape[0]}, "
                         f"label {label_path} is {label.shape[1]}x{label.shape[0]}")


def collect_images(inputs: Iterable[str | Path], recursive: bool = False) -> tuple[list[Path], list[str]]:
    """The image files named or contained in ``inputs`` (sorted per folder) and the problems found."""
    files: list[Path] = []
    problems: list[str] = []
    for item in map(Path, inputs):
        try:
            if item.is_dir():
                pattern = "**/*" if recursive else "*"
                found = sorted(p for p in item.glob(pattern)
                               if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
                if not found:
                    problems.append(f"{item}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
                files.extend(found)
            elif item.is_file():
                files.append(item)
            else:
                problems.append(f"{item}: no such file or folder")
        except OSError as exc:   # e.g. under a folder the user may not enter: skip it, keep the rest
            problems.append(f"{item}: cannot be read: {exc.strerror or exc}")
    return files, problems
