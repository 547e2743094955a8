"""Ground truth for a replay: label PNGs in a folder or a label image topic, matched to frames.

Two label conventions are understood (``kind="auto"`` tells them apart per image):
- anomaly labels, as Fishyscapes / the synthetic test set: 0 inlier, 1 anomaly, 255 void;
- semantic labels: Cityscapes train ids 0-18, 254 anomaly, 255 void (then mIoU is the 19-class
  semantic mIoU; with anomaly labels it is the 2-class inlier/anomaly mIoU of the mask).

Folder matching (``match``): "stamp" (file stem = header stamp in ns, or ``<sec>_<nanosec>``),
"name" (the number at the end of the stem = frame index on the topic), "index" (sorted order =
frame order); "auto" picks the first that fits every file.
"""
from __future__ import annotations

import re
from pathlib import Path
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from ..image_limits import DEFAULT_MAX_PIXELS, check_pixels, read_image
from ..labels import ANOMALY_LABEL, NUM_CLASSES, VOID_LABEL

_STAMP = re.compile(r"^(\d{10})[_.](\d{1,9})$")
_TRAILING = re.compile(r"(\d+)$")
CURVE_STRIDE = 4     # ROC/PR curves use every 4th pixel in each direction (metrics use all pixels)
DETECTED_SHARE = 0.5  # a labelled anomaly counts as detected when at least this share of it is flagged


def _stamp_of(stem: str) -> int | None:
    if stem.isdigit() and len(stem) >= 16:
        return int(stem)
    m = _STAMP.match(stem)
    return int(m.group(1)) * 1_000_000_000 + int(m.group(2).ljust(9, "0")) if m else None


class LabelFolder:
    """Label PNGs matched to the frames of one image topic."""

    def __init__(self, folder: str | Path, match: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.folder = Path(folder)
        self.max_pixels = max_pixels
        if not self.folder.is_dir():
            raise FileNotFoundError(f"label folder not found: {self.folder}")
        files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() == ".png")
        if not files:
            raise ValueError(f"label folder {self.folder} holds no .png files")
        self.files = files
        stems = [p.stem for p in files]
        if match == "auto":
            if all(_stamp_of(s) is not None for s in stems):
                match = "stamp"
            elif None not in (nums := [m.group(1) if (m := _TRAILING.search(s)) else None for s in stems]) \
                    and len({int(n) for n in nums if n is not None}) == len(stems):
                match = "name"
            else:
                match = "index"
        self.match = match
        if match == "stamp":
            self.by_key = {_stamp_of(p.stem): p for p in files}
            if None in self.by_key:
                raise ValueError(f"--label-match stamp: not every file name in {self.folder} is a stamp")
        elif match == "name":
            self.by_key = {int(m.group(1)): p for p in files if (m := _TRAILING.search(p.stem))}
        elif match == "index":
            self.by_key = dict(enumerate(files))
        else:
            raise ValueError(f"label match must be auto, stamp, name or index, got {match!r}")
        self.used: set[Path] = set()

    def describe(self) -> str:
        return f"folder {self.folder} ({len(self.files)} PNGs, matched by {self.match})"

    def get(self, index: int, stamp_ns: int | None) -> np.ndarray | None:
        key = stamp_ns if self.match == "stamp" else index
        path = self.by_key.get(key)
        if path is None:
            return None
        try:
            label = read_image(path, cv2.IMREAD_UNCHANGED, self.max_pixels)
        except OSError as exc:
            raise ValueError(f"{path}: {exc.strerror or exc}") from None
        if label is None:
            raise ValueError(f"{path}: not a readable PNG")
        if label.ndim == 3:      # a colour-saved label: the channels are equal by convention
            label = label[..., 0]
        self.used.add(path)
        return label.astype(np.uint8, copy=False)


def label_from_message(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A mono8 sensor_msgs/Image -> uint8 HxW (no copy of the pixels)."""
    if msg.encoding not in ("mono8", "8UC1"):
        raise ValueError(f"label images must be mono8, got {msg.encoding!r}")
    # the metrics bring the predictions to the label's size: a huge label would cost that many floats
    check_pixels(int(msg.height), int(msg.width), max_pixels, "label image")
    data = np.frombuffer(memoryview(msg.data), np.uint8)
    return data[: msg.height * msg.step].reshape(msg.height, msg.step)[:, : msg.width]


class Accuracy:
    """Streaming AUROC/AP/FPR95 (pebal_ros.metrics.OODMetrics) plus mIoU, and a curve sample."""

    def __init__(self, kind: str = "auto") -> None:
        from ..metrics import OODMetrics, SegMetrics

        if kind not in ("auto", "anomaly", "semantic"):
            raise ValueError(f"label kind must be auto, anomaly or semantic, got {kind!r}")
        self.kind = kind
        self.ood = OODMetrics()
        self.seg = SegMetrics()
        self.binary_conf = np.zeros((2, 2), np.int64)      # [label, prediction] inlier/anomaly
        self.kinds_seen: set[str] = set()
        self.frames = 0
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        # Every labelled anomaly (8-connected region of anomaly pixels) of every labelled frame:
        # (frame, its pixels, how many of them the mask flagged). An object seen in several frames
        # counts once per frame: that is what a detector running frame by frame gets right or not.
        self.objects: list[tuple[str, int, int]] = []

    def _kind_of(self, label: np.ndarray) -> str:
        if self.kind != "auto":
            return self.kind
        # Any train id above 1 or the 254 anomaly id means semantic labels.
        present = np.bincount(label.reshape(-1), minlength=256)
        return "semantic" if present[2:VOID_LABEL].any() else "anomaly"

    def update(self, score: np.ndarray, mask: np.ndarray, semantic: np.ndarray, label: np.ndarray,
               frame: str = "") -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Add one labelled frame. Returns the labelled anomaly as uint8 0/1 at the label's size and
        the frame's labelled objects as (pixels, flagged pixels)."""
        h, w = label.shape
        if score.shape != (h, w):
            # The label is the truth: bring the predictions to its size.
            score = cv2.resize(score, (w, h), interpolation=cv2.INTER_LINEAR)
            semantic = cv2.resize(semantic, (w, h), interpolation=cv2.INTER_NEAREST)
            mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        kind = self._kind_of(label)
        self.kinds_seen.add(kind)
        if kind == "semantic":
            ood = np.where(label == ANOMALY_LABEL, 1, np.where(label == VOID_LABEL, 255, 0)).astype(np.uint8)
            target = np.where(label < NUM_CLASSES, label, VOID_LABEL).astype(np.uint8)
            self.seg.update(semantic, target)
        else:
            ood = label
        self.ood.update(score, ood)
        valid = ood != 255
        conf = np.bincount(2 * ood[valid].astype(np.int64) + (mask[valid] != 0), minlength=4)
        self.binary_conf += conf[:4].reshape(2, 2)
        sub = (slice(None, None, CURVE_STRIDE), slice(None, None, CURVE_STRIDE))
        v = valid[sub]
        self._scores.append(score[sub][v].astype(np.float32))
        self._labels.append(ood[sub][v])
        self.frames += 1
        truth = (ood == 1).view(np.uint8)
        objects: list[tuple[int, int]] = []
        if truth.any():
            n, regions, stats, _ = cv2.connectedComponentsWithStats(truth, connectivity=8)
            flagged = np.bincount(regions[(mask != 0) & (truth != 0)], minlength=n)
            objects = [(int(stats[i, cv2.CC_STAT_AREA]), int(flagged[i])) for i in range(1, n)]
            self.objects.extend((frame, a, f) for a, f in objects)
        return truth, objects

    # Pooling several bags (pebal replay --ray): the pixel histogram, the confusion matrices and the
    # frame count add up exactly; the curve sample is per bag only (pooled curves come from the
    # histogram).
    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "ood": self.ood.state(), "seg_confusion": self.seg.confusion.copy(),
                "binary_conf": self.binary_conf.copy(), "kinds_seen": sorted(self.kinds_seen),
                "frames": self.frames}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Accuracy":
        from ..metrics import OODMetrics

        acc = cls(str(state["kind"]))
        acc.ood = OODMetrics.from_state(state["ood"])
        acc.seg.confusion[:] = np.asarray(state["seg_confusion"], np.int64)
        acc.binary_conf[:] = np.asarray(state["binary_conf"], np.int64)
        acc.kinds_seen = set(state["kinds_seen"])
        acc.frames = int(state["frames"])
        return acc

    def merge(self, other: "Accuracy") -> "Accuracy":
        self.ood.merge(other.ood)
        self.seg.confusion += other.seg.confusion
        self.binary_conf += other.binary_conf
        self.kinds_seen |= other.kinds_seen
        self.frames += other.frames
        return self

    def curve_sample(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._scores:
            return np.zeros(0, np.float32), np.zeros(0, np.uint8)
        return np.concatenate(self._scores), np.concatenate(self._labels)

    def compute(self) -> dict[str, Any]:
        out: dict[str, Any] = {"frames_with_labels": self.frames, "label_kind": sorted(self.kinds_seen)}
        if not self.frames:
            return out
        c = self.binary_conf
        ious = [c[k, k] / max(1, c[k, :].sum() + c[:, k].sum() - c[k, k]) for k in (0, 1)]
        out["anomaly_iou"] = float(ious[1])
        has_both = c[0].sum() > 0 and c[1].sum() > 0
        out["metrics"] = {k: float(v) for k, v in self.ood.compute().items()} if has_both else {}
        if not has_both:
            out["note"] = "labels hold only one class (no anomaly or no inlier pixels): AUROC/AP/FPR95 undefined"
        if "semantic" in self.kinds_seen:
            seg = self.seg.compute()
            out["miou"] = float(seg["miou"])
            out["pixel_acc"] = float(seg.get("pixel_acc", float("nan")))
            iou = seg.get("iou")
            if iou is not None:
                from ..labels import TRAIN_ID_NAMES
                vals = iou.values() if isinstance(iou, dict) else list(iou)
                out["iou"] = {TRAIN_ID_NAMES[i]: float(v) for i, v in enumerate(vals) if v == v}
        else:
            out["miou"] = float(np.mean(ious))   # inlier/anomaly 2-class mIoU of the mask
        # The same in words a reader can check: what share of each class the mask flagged.
        out["flagged_share"] = {"anomaly_pixels": float(c[1, 1] / c[1].sum()) if c[1].sum() else None,
                                "inlier_pixels": float(c[0, 1] / c[0].sum()) if c[0].sum() else None}
        out["objects"] = self.object_summary()
        return out

    def object_summary(self, worst: int = 5) -> dict[str, Any]:
        """Labelled anomalies found or missed: detected (at least half of the object's pixels
        flagged), partly (some), missed (none), and the largest misses by name."""
        objs = self.objects
        missed = sorted((o for o in objs if o[2] == 0), key=lambda o: (-o[1], o[0]))
        partly = [o for o in objs if 0 < o[2] < DETECTED_SHARE * o[1]]
        return {"labelled": len(objs), "detected": len(objs) - len(missed) - len(partly),
                "partly": len(partly), "missed": len(missed), "detected_share": DETECTED_SHARE,
                "largest_misses": [{"frame": f, "pixels": a, "flagged": 0} for f, a, _ in missed[:worst]],
                "least_found": [{"frame": f, "pixels": a, "flagged": k} for f, a, k in
                                sorted(partly, key=lambda o: (o[2] / o[1], -o[1], o[0]))[:worst]]}


class LabelTopicMatcher:
    """Pairs label messages with processed frames by (frame_id, stamp), in either arrival order.

    One label serves every camera topic with the same frame and stamp (e.g. the raw and the
    compressed stream of one camera). Only a window of recent stamps is kept on both sides, so
    memory stays bounded on long recordings; what falls out unmatched is counted.
    """

    def __init__(self, accuracy: Accuracy | Callable[[Any, np.ndarray, Any], None], window: int = 64) -> None:
        """``accuracy``: the Accuracy to update, or a callable ``(outputs, label, tag)`` called with
        each matched pair (``tag``: what :meth:`frame` was given with the outputs)."""
        from collections import OrderedDict

        self.on_match = accuracy if not isinstance(accuracy, Accuracy) else (
            lambda o, label, tag: accuracy.update(o.score, o.mask, o.semantic, label))
        self.window = window
        self.labels: OrderedDict[tuple[str, int], list[Any]] = OrderedDict()   # key -> [label, uses]
        self.pending: OrderedDict[tuple[str, int], list[Any]] = OrderedDict()  # key -> [outputs...]
        self.frames_without_label = 0
        self.labels_without_frame = 0

    def frame(self, key: tuple[str, int], outputs: Any, tag: Any = None) -> None:
        entry = self.labels.get(key)
        if entry is not None:
            self.on_match(outputs, entry[0], tag)
            entry[1] += 1
            return
        self.pending.setdefault(key, []).append((outputs, tag))
        while len(self.pending) > self.window:
            self.frames_without_label += len(self.pending.popitem(last=False)[1])

    def label(self, key: tuple[str, int], label: np.ndarray) -> None:
        waiting = self.pending.pop(key, [])
        for outputs, tag in waiting:
            self.on_match(outputs, label, tag)
        self.labels[key] = [label.copy(), len(waiting)]
        while len(self.labels) > self.window:
            _, (_, uses) = self.labels.popitem(last=False)
            self.labels_without_frame += uses == 0

    def finish(self) -> None:
        self.frames_without_label += sum(len(v) for v in self.pending.values())
        self.labels_without_frame += sum(1 for _, uses in self.labels.values() if uses == 0)
        self.pending.clear()
        self.labels.clear()
