"""Training-time geometric transforms (flip, scale, crop/pad) and normalisation, with OpenCV.

They follow the official PEBAL ``TrainPre``: horizontal flip with probability 0.8
(``random.random() >= 0.2``), a scale drawn from ``[0.5, 0.75, 1, 1.5, 1.75, 2]`` (bilinear for
the image, nearest for the label), normalisation, then a random crop padded to the crop size
(image padded with 0 after normalisation, i.e. the mean colour; label padded with 255, padding
split evenly on both sides). All randomness comes from the ``numpy.random.Generator`` passed in.
One small fix: the official crop offset is drawn from ``[0, H - crop + 1]``, one past the last
full crop, which occasionally shaves a row/column off and pads it back; here it is
``[0, H - crop]``.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from pebal_ros.labels import VOID_LABEL


def random_flip(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                p: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right with probability ``p`` (one draw from ``rng`` either way)."""
    if rng.random() < p:
        return cv2.flip(image, 1), cv2.flip(label, 1)
    return image, label


def draw_scale(rng: np.random.Generator, choices: Sequence[float] | None = None,
               scale_range: tuple[float, float] = (0.5, 2.0)) -> float:
    """One of ``choices`` uniformly (official), or uniform in ``scale_range`` when ``choices`` is None."""
    if choices:
        return float(choices[int(rng.integers(len(choices)))])
    return float(rng.uniform(scale_range[0], scale_range[1]))


def rescale(image: np.ndarray, label: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Resize by ``scale`` (``int(size * scale)`` as the official code); linear image, nearest label."""
    h, w = label.shape[:2]
    sh, sw = max(1, int(h * scale)), max(1, int(w * scale))
    if (sh, sw) == (h, w):
        return image, label
    return (cv2.resize(image, (sw, sh), interpolation=cv2.INTER_LINEAR),
            cv2.resize(label, (sw, sh), interpolation=cv2.INTER_NEAREST))


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 RGB HxWx3 -> float32 (x / 255 - mean) / std, in one fused pass per channel."""
    scale = (1.0 / (255.0 * np.asarray(std, dtype=np.float32))).reshape(1, 1, 3)
    shift = (np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)).reshape(1, 1, 3)
    out = image.astype(np.float32)
    out *= scale
    out -= shift
    return out


def crop_offset(size: tuple[int, int], crop: tuple[int, int], rng: np.random.Generator) -> tuple[int, int]:
    """Uniform top-left corner of a ``crop`` window in an image of ``size`` (0 where it fits)."""
    (h, w), (ch, cw) = size, crop
    y = int(rng.integers(0, h - ch + 1)) if h > ch else 0
    x = int(rng.integers(0, w - cw + 1)) if w > cw else 0
    return y, x


def crop_pad(image: np.ndarray, label: np.ndarray, offset: tuple[int, int], crop: tuple[int, int],
             image_pad: float = 0.0, label_pad: int = VOID_LABEL) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``crop`` at ``offset``; pad what is missing evenly on both sides (official ``pad_image_to_shape``)."""
    y, x = offset
    ch, cw = crop
    img = image[y:y + ch, x:x + cw]
    lab = label[y:y + ch, x:x + cw]
    ph, pw = ch - lab.shape[0], cw - lab.shape[1]
    if ph > 0 or pw > 0:
        top, left = max(ph, 0) // 2, max(pw, 0) // 2
        bottom, right = max(ph, 0) - top, max(pw, 0) - left
        img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT,
                                 value=(image_pad,) * 4)
        lab = cv2.copyMakeBorder(lab, top, bottom, left, right, cv2.BORDER_CONSTANT, value=int(label_pad))
    return img, lab


def random_crop_pad(image: np.ndarray, label: np.ndarray, crop: tuple[int, int], rng: np.random.Generator,
                    image_pad: float = 0.0, label_pad: int = VOID_LABEL) -> tuple[np.ndarray, np.ndarray]:
    return crop_pad(image, label, crop_offset(label.shape[:2], crop, rng), crop, image_pad, label_pad)


def train_transform(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, *,
                    crop: tuple[int, int], mean: Sequence[float], std: Sequence[float],
                    flip_p: float = 0.8, scale_choices: Sequence[float] | None = None,
                    scale_range: tuple[float, float] = (0.5, 2.0)) -> tuple[np.ndarray, np.ndarray]:
    """Official order: flip, scale, normalise, crop/pad. Returns (float32 HxWx3, uint8 HxW)."""
    image, label = random_flip(image, label, rng, flip_p)
    image, label = rescale(image, label, draw_scale(rng, scale_choices, scale_range))
    y, x = crop_offset(label.shape[:2], crop, rng)
    ch, cw = crop
    # Normalising is per pixel, so crop first and normalise only what is kept (a 2x-scaled
    # 2048x1024 frame would otherwise cost a 100 MB float copy); pad with 0 afterwards as the
    # official code pads the normalised image.
    image = normalize(image[y:y + ch, x:x + cw], mean, std)
    return crop_pad(image, label[y:y + ch, x:x + cw], (0, 0), crop)
