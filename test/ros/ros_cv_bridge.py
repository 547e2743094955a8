"""The project's own message -> array conversion (pebal_ros.pipeline.convert) against the real
cv_bridge: bit-identical RGB/BGR arrays for every encoding both support, and the list of encodings
only we convert (printed, and pinned so a change is noticed).
"""
from __future__ import annotations

import numpy as np
import pytest
from cv_bridge import CvBridge, CvBridgeError
from sensor_msgs.msg import CompressedImage, Image

from pebal_ros.pipeline.convert import SUPPORTED_ENCODINGS, compressed_to_array, encoding_info, image_to_array

H, W = 6, 10   # even sizes: bayer and the 4:2:x formats need them


def _msg(encoding: str, seed: int) -> Image:
    info = encoding_info(encoding)
    rng = np.random.default_rng(seed)
    dtype = np.dtype(info.dtype).newbyteorder("<")
    rows = H * 3 // 2 if info.kind == "yuv420sp" else H
    cols = W * info.channels if info.kind == "packed" else W * (2 if info.kind == "yuv422" else 1)
    data = rng.integers(0, np.iinfo(dtype).max + 1, (rows, cols), dtype=np.uint64).astype(dtype)
    msg = Image()
    msg.height, msg.width, msg.encoding, msg.is_bigendian = H, W, encoding, 0
    msg.step = cols * dtype.itemsize
    msg.data.frombytes(data.tobytes())
    return msg


def _cv_bridge(bridge: CvBridge, msg: Image, order: str) -> np.ndarray | None:
    try:
        return bridge.imgmsg_to_cv2(msg, desired_encoding=f"{order}8")
    except (CvBridgeError, Exception):   # cv_bridge raises plain cv2/TypeErrors for some encodings
        return None


# cv_bridge refuses these (no colour conversion for generic 8UC1/16UC1, no uyvy/yuyv aliases, no
# NV12/NV21 in its conversion table); listed in docs/ros2.md
ONLY_OURS = {"8UC1", "16UC1", "uyvy", "yuyv", "nv12", "nv21"}


def test_conversion_is_bit_identical_to_cv_bridge(capsys):
    bridge = CvBridge()
    both, only_ours, differ = [], [], []
    for i, enc in enumerate(SUPPORTED_ENCODINGS):
        msg = _msg(enc, i)
        for order in ("rgb", "bgr"):
            ref = _cv_bridge(bridge, msg, order)
            if ref is None:
                if order == "rgb":
                    only_ours.append(enc)
                continue
            ours = image_to_array(msg, order)
            if ours.shape != ref.shape or ours.dtype != ref.dtype or not np.array_equal(ours, ref):
                n = int((ours != ref).sum()) if ours.shape == ref.shape else -1
                differ.append(f"{enc}->{order}: {n} values differ (max {np.abs(ours.astype(int) - ref).max() if n > 0 else '?'})")
            elif order == "rgb":
                both.append(enc)
    with capsys.disabled():
        print(f"\ncv_bridge parity: identical for {both}\nonly pebal converts: {only_ours}\ndiffer: {differ}")
    assert not differ, differ
    assert set(only_ours) == ONLY_OURS, only_ours
    assert {"rgb8", "bgr8", "mono8", "rgba8", "bgra8", "rgb16", "mono16"} <= set(both)


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_compressed_decoding_is_identical_to_cv_bridge(kind):
    import cv2
    img = np.random.default_rng(1).integers(0, 256, (H * 8, W * 8, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(f".{'jpg' if kind == 'jpeg' else 'png'}", img)
    assert ok
    msg = CompressedImage(format=kind)
    msg.data.frombytes(buf.tobytes())
    ref = CvBridge().compressed_imgmsg_to_cv2(msg, desired_encoding="rgb8")
    np.testing.assert_array_equal(compressed_to_array(msg, "rgb"), ref)
