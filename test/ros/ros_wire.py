"""The node's wire path against real rclpy: the CDR bytes it publishes (rosbags) are what rclpy's
own serialiser makes of the same message, and rclpy's bytes of a camera frame are what the node
reads (pebal_ros.node.wire). Also: ``Publisher.publish(bytes)`` and a ``raw=True`` subscription
carry them over real DDS unchanged.
"""
from __future__ import annotations

import array
import time

import numpy as np
import pytest
import rclpy
from pebal_msgs.msg import AnomalyRegion, PebalStatus
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, Image

from pebal_ros.node.wire import Wire
from pebal_ros.pipeline.convert import msg_to_array
from pebal_ros.pipeline.messages import StatusFields
from pebal_ros.pipeline.regions import Region


def _rclpy_image(arr: np.ndarray, encoding: str, step: int) -> Image:
    m = Image()
    m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id = 12, 345, "cam_front"
    m.height, m.width, m.encoding, m.step = arr.shape[0], arr.shape[1], encoding, step
    m.data = array.array("B", arr.tobytes())
    return m


CASES = [("rgb8", (7, 13, 3), np.uint8), ("mono8", (5, 9), np.uint8), ("32FC1", (6, 11), np.float32)]


@pytest.mark.parametrize("encoding,shape,dtype", CASES)
def test_published_bytes_equal_rclpy_serialisation(encoding, shape, dtype):
    wire = Wire(compressed_input=False)
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal(shape).astype(dtype) if dtype == np.float32
           else rng.integers(0, 256, shape, dtype=dtype))
    ours = wire.serialize("anomaly_score" if encoding == "32FC1" else "overlay",
                          wire.factory.image(wire.factory.header(12, 345, "cam_front"), arr, encoding))
    ref = serialize_message(_rclpy_image(arr, encoding, arr.strides[0]))
    assert ours == ref


def test_status_bytes_equal_rclpy_serialisation():
    wire = Wire(compressed_input=False)
    regions = [Region(1, 2, 3, 4, 5, 1.5, 2.5, 0.25, 0.75), Region(10, 20, 30, 40, 50, 11.5, 22.5, -1.0, 3.0)]
    fields = StatusFields(1024, 512, -3.5, 0.0125, 4.0, -6.5, 21.0, 30.5, regions)
    ours = wire.serialize("status", wire.factory.status(wire.factory.header(12, 345, "cam_front"), fields))
    ref = PebalStatus()
    ref.header.stamp.sec, ref.header.stamp.nanosec, ref.header.frame_id = 12, 345, "cam_front"
    ref.image_width, ref.image_height, ref.threshold, ref.anomaly_fraction = 1024, 512, -3.5, 0.0125
    ref.max_score, ref.mean_score, ref.inference_latency_ms, ref.end_to_end_latency_ms = 4.0, -6.5, 21.0, 30.5
    ref.regions = [AnomalyRegion(x_offset=r.x_offset, y_offset=r.y_offset, width=r.width, height=r.height,
                                 area=r.area, centroid_x=r.centroid_x, centroid_y=r.centroid_y,
                                 mean_score=r.mean_score, max_score=r.max_score) for r in regions]
    assert ours == serialize_message(ref)
    back = deserialize_message(ours, PebalStatus)
    assert back.regions[1].area == 50 and back.header.frame_id == "cam_front"


def test_frames_serialized_by_rclpy_read_identically():
    img = np.random.default_rng(1).integers(0, 256, (9, 14, 3), dtype=np.uint8)
    for enc, arr in (("rgb8", img), ("bgr8", np.ascontiguousarray(img[..., ::-1]))):
        msg = Wire(compressed_input=False).take(serialize_message(_rclpy_image(arr, enc, 14 * 3)))
        assert (msg.header.stamp.sec, msg.header.frame_id, msg.encoding) == (12, "cam_front", enc)
        np.testing.assert_array_equal(msg_to_array(msg, "rgb"), img)
    c = CompressedImage()
    c.format, c.data = "png", array.array("B", b"\x89PNG junk")
    got = Wire(compressed_input=True).take(serialize_message(c))
    assert got.format == "png" and bytes(got.data) == b"\x89PNG junk"


def test_bytes_travel_over_dds_unchanged():
    rclpy.init()
    try:
        node = rclpy.create_node("pebal_wire_test")
        got: list[bytes] = []
        node.create_subscription(Image, "/wire_test", got.append, 10, raw=True)
        pub = node.create_publisher(Image, "/wire_test", 10)
        wire = Wire(compressed_input=False)
        arr = np.random.default_rng(2).integers(0, 256, (256, 512, 3), dtype=np.uint8)
        payload = wire.serialize("overlay", wire.factory.image(wire.factory.header(1, 2, "cam"), arr, "rgb8"))
        deadline = time.monotonic() + 20
        while not got and time.monotonic() < deadline:
            pub.publish(payload)
            rclpy.spin_once(node, timeout_sec=0.2)
        assert got and got[0] == payload
        np.testing.assert_array_equal(msg_to_array(wire.take(got[0]), "rgb"), arr)
        node.destroy_node()
    finally:
        rclpy.shutdown()
