"""AnomalyMix: paste outlier objects into inlier frames, and the PEBAL fine-tuning dataset.

What the official PEBAL code does (``CityscapesCocoMix`` in ``code/dataset/data_loader.py``),
reproduced here, seeded:

1. The epoch's items are the ``N`` Cityscapes frames followed by ``int(0.1 * N)`` COCO outlier
   images (a random subset drawn once, fixed for the whole run). An item ``i < N`` is frame ``i``
   unchanged; an item ``i >= N`` takes its COCO image, cuts the bounding box around all pixels
   labelled 254, and pastes it at native size at a uniformly random position of a uniformly
   random frame: only the object's pixels (mask 254) replace frame pixels, and are labelled 254.
   So about 1/11 of the items carry an object; ``AnomalyMixConfig.outlier_fraction`` is the 0.1,
   ``probability`` (0 = official) additionally gives ordinary frames an object with that chance.
2. Afterwards flip (p = 0.8), scale (one of 0.5 ... 2.0), normalise and crop/pad to 900 x 900
   (``transforms.train_transform``); an item is "mixed" only if some 254 pixel survives the crop.

Differences from the official code, all deliberate: every random draw comes from
``numpy.random.default_rng([seed, epoch, index])``, so item ``i`` of epoch ``e`` is the same in
any worker, process or run (the official code uses the global ``random`` module); the random frame
is drawn from the frames only (the official ``random.randint(0, N)`` can return index ``N``, a COCO
image); an object larger than the frame is cut to the frame size at a random offset (the official
code raises); frames need not be 2048 x 1024 (the official code skips mixing otherwise).

The paper also suggests transforming the pasted object; ``object_scale_range``,
``object_rotation_deg`` and ``seam_blur_sigma`` do that and are off by default.
"""
from __future__ import annotations

from typing import Any, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from pebal_ros.config import AnomalyMixConfig, InferenceConfig
from pebal_ros.data.transforms import train_transform
from pebal_ros.labels import ANOMALY_LABEL

_SUBSET_STREAM = 0x5EB  # separates the once-per-run outlier subset draw from per-item streams


def cut_object(image: np.ndarray, target: np.ndarray,
               anomaly_value: int = ANOMALY_LABEL) -> tuple[np.ndarray, np.ndarray] | None:
    """Bounding box around all ``anomaly_value`` pixels: (patch uint8 hxwx3, mask bool hxw), or None."""
    mask = target == anomaly_value
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return image[y0:y1, x0:x1], mask[y0:y1, x0:x1]


def _tight(patch: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    cut = cut_object(patch, mask.astype(np.uint8), 1)
    return cut


def transform_object(patch: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                     scale_range: tuple[float, float] | None = None,
                     rotation_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray] | None:
    """Optional (paper-suggested) object transforms: uniform scale, then rotation by U(-deg, deg).

    Image bilinear, mask nearest; the result is re-cut to the mask's bounding box (None if the
    object vanished, e.g. scaled below one pixel).
    """
    if scale_range is not None:
        s = float(rng.uniform(scale_range[0], scale_range[1]))
        h, w = mask.shape
        size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
        patch = cv2.resize(patch, size, interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    if rotation_deg:
        angle = float(rng.uniform(-rotation_deg, rotation_deg))
        h, w = mask.shape
        rot = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
        cos, sin = abs(rot[0, 0]), abs(rot[0, 1])
        nw, nh = int(np.ceil(h * sin + w * cos)), int(np.ceil(h * cos + w * sin))
        rot[0, 2] += nw / 2.0 - w / 2.0   # keep the whole rotated object on the canvas
        rot[1, 2] += nh / 2.0 - h / 2.0
        patch = cv2.warpAffine(patch, rot, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=0)
        mask = cv2.warpAffine(mask.astype(np.uint8), rot, (nw, nh), flags=cv2.INTER_NEAREST,
                              borderValue=0).astype(bool)
    return _tight(patch, mask)


def paste_object(image: np.ndarray, target: np.ndarray, patch: np.ndarray, mask: np.ndarray,
                 rng: np.random.Generator, seam_blur_sigma: float = 0.0,
                 anomaly_value: int = ANOMALY_LABEL) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Paste ``patch`` where ``mask`` is set at a uniformly random position; returns copies + (y, x).

    The top-left corner is uniform over all positions where the box fits. A box larger than the
    frame is first cut to the frame size at a uniformly random offset. ``seam_blur_sigma`` > 0
    feathers the object's border into the frame (alpha = Gaussian-blurred mask, inside the mask
    only); the label is 254 on the whole mask either way.
    """
    H, W = target.shape
    h, w = mask.shape
    if h > H or w > W:
        oy = int(rng.integers(0, h - H + 1)) if h > H else 0
        ox = int(rng.integers(0, w - W + 1)) if w > W else 0
        patch, mask = patch[oy:oy + min(h, H), ox:ox + min(w, W)], mask[oy:oy + min(h, H), ox:ox + min(w, W)]
        h, w = mask.shape
    y = int(rng.integers(0, H - h + 1))
    x = int(rng.integers(0, W - w + 1))
    image = image.copy()
    target = target.copy()
    region = image[y:y + h, x:x + w]
    if seam_blur_sigma > 0:
        alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), seam_blur_sigma) * mask
        alpha = alpha[..., None]
        region[...] = np.rint(alpha * patch + (1.0 - alpha) * region).astype(np.uint8)
    else:
        region[mask] = patch[mask]
    target[y:y + h, x:x + w][mask] = anomaly_value
    return image, target, (y, x)


def anomaly_mix(image: np.ndarray, target: np.ndarray, outlier_image: np.ndarray, outlier_target: np.ndarray,
                rng: np.random.Generator, cfg: AnomalyMixConfig | None = None,
                ) -> tuple[np.ndarray, np.ndarray, tuple[int, int] | None]:
    """Cut the outlier object, optionally transform it, paste it into the frame.

    Returns (image, target, (y, x) of the pasted box or None when the outlier has no 254 pixel,
    in which case the frame is returned unchanged, as in the official code).
    """
    cfg = cfg or AnomalyMixConfig()
    obj = cut_object(outlier_image, outlier_target)
    if obj is not None and (cfg.object_scale_range is not None or cfg.object_rotation_deg):
        obj = transform_object(*obj, rng, cfg.object_scale_range, cfg.object_rotation_deg)
    if obj is None:
        return image, target, None
    return paste_object(image, target, obj[0], obj[1], rng, cfg.seam_blur_sigma)


class PebalTrainSet(Dataset):
    """Inlier frames + outlier images -> AnomalyMix training items, deterministic per (seed, epoch, i).

    ``inliers`` yields ``{"image", "target" (train ids, 255 void), "name"}`` (e.g.
    ``CityscapesDataset``), ``outliers`` ``{"image", "target" (254 = object), "name"}`` (e.g.
    ``CocoOutlierDataset``). Items: ``{"image": float32 [3, h, w] normalised, "target": int64
    [h, w] (0-18, 254, 255), "mixed": bool, "name": str}`` with (h, w) = ``mix.crop_size``.
    Call ``set_epoch(e)`` before each epoch (DataLoader workers must be re-created per epoch,
    i.e. ``persistent_workers=False``, the default, so they see the new epoch).
    """

    def __init__(self, inliers: Dataset, outliers: Dataset | None, mix: AnomalyMixConfig | None = None,
                 seed: int = 0, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        self.inliers = inliers
        self.outliers = outliers
        self.mix = mix or AnomalyMixConfig()
        self.seed = int(seed)
        inf = InferenceConfig()
        self.mean = tuple(mean if mean is not None else inf.mean)
        self.std = tuple(std if std is not None else inf.std)
        self.n_frames = len(inliers)  # type: ignore[arg-type]
        if self.n_frames == 0:
            raise ValueError("PebalTrainSet: the inlier dataset is empty")
        n_out_avail = len(outliers) if (outliers is not None and self.mix.enabled) else 0  # type: ignore[arg-type]
        n_out = min(n_out_avail, int(self.mix.outlier_fraction * self.n_frames))
        # Official: the COCO list is shuffled once and truncated; the subset stays fixed all run.
        perm = np.random.default_rng([self.seed, _SUBSET_STREAM]).permutation(n_out_avail)
        self.outlier_subset = perm[:n_out]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n_frames + len(self.outlier_subset)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def mixed_frame(self, index: int, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Item ``index`` before flip/scale/crop: uint8 image, uint8 target, paste position."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        rng = rng or self.rng(index)
        mix_p = self.mix.probability if (self.mix.enabled and self.outliers is not None) else 0.0
        outlier_index = None
        if index >= self.n_frames:
            outlier_index = int(self.outlier_subset[index - self.n_frames])
            frame_index = int(rng.integers(self.n_frames))
        else:
            frame_index = index
            if mix_p > 0 and rng.random() < mix_p:
                outlier_index = int(rng.integers(len(self.outliers)))  # type: ignore[arg-type]
        frame = self.inliers[frame_index]
        image, target, name, pos = frame["image"], frame["target"], frame["name"], None
        if outlier_index is not None:
            out = self.outliers[outlier_index]  # type: ignore[index]
            image, target, pos = anomaly_mix(image, target, out["image"], out["target"], rng, self.mix)
            name = f"{name}+{out['name']}"
        return {"image": image, "target": target, "name": name, "position": pos, "rng": rng}

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.mixed_frame(index)
        m = self.mix
        image, target = train_transform(
            item["image"], item["target"], item["rng"], crop=tuple(m.crop_size), mean=self.mean, std=self.std,
            flip_p=m.flip_probability if m.flip else 0.0, scale_choices=m.scale_choices,
            scale_range=tuple(m.scale_range))
        return {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                "target": torch.from_numpy(target.astype(np.int64)),
                "mixed": bool((target == ANOMALY_LABEL).any()),
                "name": item["name"]}
