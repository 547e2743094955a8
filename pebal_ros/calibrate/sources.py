"""Frames for calibration: normal frames from rosbag2 recordings or image files, labelled anomaly
frames from the benchmark layouts :mod:`pebal_ros.data.benchmarks` reads or from two folders.

Every source yields :class:`Frame` items lazily (one frame in memory at a time) and counts what it
had to skip, with the reason, instead of stopping: a calibration over a long drive must not die on
one corrupt message.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..image_limits import DEFAULT_MAX_PIXELS
from ..labels import ANOMALY_LABEL, VOID_LABEL


class SourceError(ValueError):
    """An input cannot be used at all (not found, no frames, wrong topic); the message says why."""


@dataclass
class Frame:
    name: str
    msg: Any = None                  # a deserialised sensor_msgs Image / CompressedImage
    rgb: np.ndarray | None = None    # or an RGB uint8 image
    label: np.ndarray | None = None  # 0 inlier / 1 anomaly / 255 void, at the image's size


@dataclass
class Skips:
    reasons: Counter = field(default_factory=Counter)

    def add(self, reason: str) -> None:
        self.reasons[reason[:160]] += 1

    @property
    def total(self) -> int:
        return sum(self.reasons.values())


def anomaly_label(label: np.ndarray) -> np.ndarray:
    """0/1/255 labels as they are; train-id labels (0-18, 254 anomaly, 255 void) mapped to 0/1/255,
    the two conventions ``pebal replay --labels`` understands."""
    present = np.bincount(label.reshape(-1), minlength=256)
    if not present[2:VOID_LABEL].any():
        return label
    return np.where(label == ANOMALY_LABEL, 1, np.where(label == VOID_LABEL, 255, 0)).astype(np.uint8)


# -- normal frames ----------------------------------------------------------------------------
class NormalFrames:
    """The normal frames named on the command line: bags and image files/folders, in the given order.

    ``topics``: image topics to read from bags (default: every Image/CompressedImage topic that is
    not a label topic, as ``pebal replay`` picks them). ``every``: use every N-th frame per topic
    (consecutive camera frames are nearly identical). ``max_frames``: stop after N frames in all.
    ``max_pixels``: image files declaring more pixels are skipped with the reason, undecoded (bag
    frames are capped by the pipeline that decodes them).
    """

    def __init__(self, inputs: list[str | Path], topics: list[str] | None = None, every: int = 1,
                 max_frames: int | None = None, recursive: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        from ..data.io import collect_images
        from ..replay.bag import is_bag

        if every < 1:
            raise SourceError(f"--every must be >= 1, got {every}")
        self.topics, self.every, self.max_frames, self.max_pixels = topics, every, max_frames, max_pixels
        self.bags: list[Path] = []
        self.images: list[Path] = []
        self.problems: list[str] = []
        for item in map(Path, inputs):
            if item.exists() and is_bag(item):
                self.bags.append(item)
            else:
                files, problems = collect_images([item], recursive)
                self.images.extend(files)
                self.problems.extend(problems)
        if not self.bags and not self.images:
            raise SourceError("no normal frames: " + ("; ".join(self.problems) or "no inputs given"))
        if topics and not self.bags:
            raise SourceError("--topic applies to rosbag2 recordings, but no input is a bag")
        self.skips = Skips()
        self.used_topics: set[str] = set()

    def describe(self) -> str:
        parts = [str(b.resolve()) for b in self.bags]
        if self.bags and self.used_topics:
            parts[-1] += f" [{', '.join(sorted(self.used_topics))}]"
        if self.images:
            folders = sorted({str(p.parent.resolve()) for p in self.images})
            parts.append(f"{len(self.images)} image(s) in {', '.join(folders[:3])}"
                         + (" ..." if len(folders) > 3 else ""))
        return "; ".join(parts)

    def estimate(self) -> int | None:
        """Frames to expect (for the progress bar), None when the bags do not declare counts."""
        n = len(self.images)
        for bag in self.bags:
            from ..replay.bag import BagReader
            try:
                with BagReader(bag) as r:
                    cams = self._cameras(r)
                    counts = [t.declared for t in cams]
            except Exception:  # noqa: BLE001 - only for the progress bar; reading reports it later
                return None
            if None in counts:
                return None
            n += sum(-(-c // self.every) for c in counts)   # type: ignore[operator]
        return min(n, self.max_frames) if self.max_frames else n

    def _cameras(self, reader: Any) -> list[Any]:
        from ..replay.replay import ReplayError, ReplayOptions, select_topics
        try:
            cams, _ = select_topics(reader, ReplayOptions(topics=self.topics, label_topic=None))
        except ReplayError as exc:
            raise SourceError(str(exc)) from None
        return cams

    def __iter__(self) -> Iterator[Frame]:
        n = 0
        for frame in self._all():
            if self.max_frames is not None and n >= self.max_frames:
                return
            n += 1
            yield frame

    def _all(self) -> Iterator[Frame]:
        from ..replay.bag import BagError, BagReader, make_typestore

        for bag in self.bags:
            try:
                reader = BagReader(bag)
            except BagError as exc:
                raise SourceError(str(exc)) from None
            with reader:
                cams = self._cameras(reader)
                store = make_typestore(reader.topics.values())
                names = {t.name for t in cams}
                self.used_topics |= names
                seen: Counter = Counter()
                for raw in reader.messages(names):
                    i = seen[raw.topic]
                    seen[raw.topic] += 1
                    if i % self.every:
                        continue
                    try:
                        msg = store.deserialize_cdr(raw.data, raw.msgtype)
                    except Exception as exc:  # noqa: BLE001 - a corrupt message costs only itself
                        self.skips.add(f"undecodable message ({type(exc).__name__})")
                        continue
                    yield Frame(f"{bag.name}:{raw.topic}#{i}", msg=msg)
                for issue in reader.issues:
                    self.skips.add(f"bag read problem: {issue}")
        from ..data.io import read_rgb
        for path in self.images:
            try:
                rgb = read_rgb(path, self.max_pixels)
            except FileNotFoundError:
                self.skips.add(f"{path}: not a readable image")
                continue
            except ValueError as exc:   # over the decode cap: the reason names the file, size and cap
                self.skips.add(str(exc))
                continue
            yield Frame(path.name, rgb=rgb)


# -- labelled anomaly frames --------------------------------------------------------------------
class LabelledFrames:
    """Labelled anomaly frames: benchmark layouts (``NAME=ROOT`` with NAME one of
    :data:`pebal_ros.data.benchmarks.BENCHMARKS`) and/or an image folder with a label folder, matched
    by file stem (``x.jpg`` <-> ``x.png``; a ``_leftImg8bit`` image suffix may be dropped)."""

    def __init__(self, datasets: list[str] | None = None, images: str | Path | None = None,
                 labels: str | Path | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        from ..data.benchmarks import BENCHMARKS, load_benchmark

        self.max_pixels = max_pixels
        self.parts: list[tuple[str, Any]] = []
        for spec in datasets or []:
            name, sep, root = spec.partition("=")
            if not sep or name not in BENCHMARKS:
                raise SourceError(f"--anomalies expects NAME=ROOT with NAME one of {sorted(BENCHMARKS)}, "
                                  f"got {spec!r}")
            try:
                self.parts.append((spec, load_benchmark(name, root)))
            except (FileNotFoundError, ValueError) as exc:
                raise SourceError(str(exc)) from None
        if (images is None) != (labels is None):
            raise SourceError("--anomaly-images and --anomaly-labels go together")
        self.pairs: list[tuple[Path, Path]] = []
        if images is not None and labels is not None:
            self.pairs = _pair_folders(Path(images), Path(labels))
        self.skips = Skips()

    def __len__(self) -> int:
        return sum(len(ds) for _, ds in self.parts) + len(self.pairs)

    def describe(self) -> str:
        parts = [s for s, _ in self.parts]
        if self.pairs:
            parts.append(f"{self.pairs[0][0].parent} + {self.pairs[0][1].parent}")
        return "; ".join(parts)

    def __iter__(self) -> Iterator[Frame]:
        from ..data.io import check_same_size, read_label, read_rgb

        for _, ds in self.parts:
            for i in range(len(ds)):
                try:
                    item = ds[i]
                except (FileNotFoundError, ValueError) as exc:
                    self.skips.add(str(exc))
                    continue
                yield Frame(item["name"], rgb=item["image"], label=item["label"])
        for img, lab in self.pairs:
            try:
                rgb, label = read_rgb(img, self.max_pixels), read_label(lab, self.max_pixels)
                check_same_size(rgb, label, img, lab)
            except (FileNotFoundError, ValueError) as exc:
                self.skips.add(str(exc))
                continue
            yield Frame(img.name, rgb=rgb, label=anomaly_label(label))


def _pair_folders(images: Path, labels: Path) -> list[tuple[Path, Path]]:
    from ..data.io import IMAGE_SUFFIXES

    for d in (images, labels):
        if not d.is_dir():
            raise SourceError(f"{d}: no such folder")
    imgs = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not imgs:
        raise SourceError(f"{images}: folder holds no images")
    labs = {p.stem: p for p in labels.iterdir() if p.suffix.lower() == ".png"}
    pairs, missing = [], []
    for img in imgs:
        stem = img.stem
        lab = labs.get(stem) or labs.get(stem.removesuffix("_leftImg8bit"))
        if lab is None:
            missing.append(img.name)
        else:
            pairs.append((img, lab))
    if missing:
        raise SourceError(f"{len(missing)} image(s) in {images} have no label PNG of the same name in "
                          f"{labels}, e.g. {missing[0]}")
    return pairs
