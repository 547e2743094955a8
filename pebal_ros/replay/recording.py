"""Write camera recordings as rosbag2 bags: the demo's sample drive and the test fixtures.

Frames become ``sensor_msgs/Image`` (rgb8) and/or ``sensor_msgs/CompressedImage`` (PNG/JPEG) messages
with the stamps a 10 Hz camera would give; ground-truth labels (0 inlier / 1 anomaly / 255 void) go on
a separate mono8 ``sensor_msgs/Image`` topic with the same header, which is how a labelled recording
looks after an annotation tool has written it back.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .bag import BagWriter, make_typestore

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
START_NS = 1_700_000_000_000_000_000   # fixed epoch: recordings are byte-for-byte reproducible


def _header(store: Any, stamp_ns: int, frame_id: str) -> Any:
    Time = store.types["builtin_interfaces/msg/Time"]
    Header = store.types["std_msgs/msg/Header"]
    return Header(stamp=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000),
                  frame_id=frame_id)


def image_message(store: Any, array: np.ndarray, stamp_ns: int, frame_id: str,
                  encoding: str | None = None) -> Any:
    """A sensor_msgs/Image holding ``array`` (HxW mono8 / HxWx3 rgb8 unless ``encoding`` says)."""
    array = np.ascontiguousarray(array)
    if encoding is None:
        encoding = "mono8" if array.ndim == 2 else "rgb8"
    h, w = array.shape[:2]
    return store.types[IMAGE](header=_header(store, stamp_ns, frame_id), height=h, width=w,
                              encoding=encoding, is_bigendian=0, step=array.strides[0],
                              data=array.reshape(-1).view(np.uint8))


def compressed_message(store: Any, rgb: np.ndarray, stamp_ns: int, frame_id: str,
                       fmt: str = "png") -> Any:
    ok, buf = cv2.imencode("." + fmt, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"could not encode a frame as {fmt}")
    return store.types[COMPRESSED](header=_header(store, stamp_ns, frame_id), format=fmt,
                                   data=buf.reshape(-1))


def write_recording(path: str | Path, frames: Iterable[tuple[np.ndarray, np.ndarray | None]], *,
                    topic: str | None = "/camera/image_raw", compressed_topic: str | None = None,
                    label_topic: str | None = "/camera/labels", frame_id: str = "camera",
                    period_ns: int = 100_000_000, storage: str = "mcap", version: int = 9,
                    compression: str | None = None, fmt: str = "png") -> int:
    """Write (rgb, label) frames; ``topic=None`` writes only the compressed topic. Returns frames."""
    store = make_typestore()
    n = 0
    with BagWriter(path, store, storage=storage, version=version, compression=compression) as bag:
        if topic:
            bag.add_topic(topic, IMAGE)
        if compressed_topic:
            bag.add_topic(compressed_topic, COMPRESSED)
        if label_topic:
            bag.add_topic(label_topic, IMAGE)
        for i, (rgb, label) in enumerate(frames):
            stamp = START_NS + i * period_ns
            if topic:
                bag.write(topic, stamp, image_message(store, rgb, stamp, frame_id))
            if compressed_topic:
                bag.write(compressed_topic, stamp, compressed_message(store, rgb, stamp, frame_id, fmt))
            if label_topic and label is not None:
                bag.write(label_topic, stamp, image_message(store, label, stamp, frame_id, "mono8"))
            n += 1
    return n
