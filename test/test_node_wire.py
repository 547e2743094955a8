"""The node's wire format (ROS-free): camera frames in and outputs out as CDR bytes via rosbags.

The real-ROS side (rclpy raw subscriptions and ``publish(bytes)``, byte equality with rclpy's own
serialiser) is checked in test/ros/ros_cv_bridge.py and the launch tests.
"""
from __future__ import annotations

import numpy as np
import pytest

from pebal_ros.node.wire import UndecodableMessageError, Wire, typestore_for
from pebal_ros.pipeline.convert import FrameError, msg_to_array
from pebal_ros.pipeline.messages import OUTPUT_TYPES, StatusFields
from pebal_ros.pipeline.regions import Region


def test_frames_are_read_without_copying_the_payload():
    wire = Wire(compressed_input=False, distro="jazzy")
    f = wire.factory
    img = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    raw = bytes(f.typestore.serialize_cdr(f.image(f.header(3, 4, "cam"), img, "rgb8"), "sensor_msgs/msg/Image"))
    msg = wire.take(raw)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (3, 4, "cam")
    assert np.shares_memory(msg.data, np.frombuffer(raw, np.uint8))      # a view of the bytes received
    np.testing.assert_array_equal(msg_to_array(msg, "rgb"), img)
    np.testing.assert_array_equal(msg_to_array(msg, "bgr"), img[..., ::-1])


def test_outputs_serialize_to_what_rosbags_reads_back():
    wire = Wire(compressed_input=True, distro="humble")
    f = wire.factory
    hdr = f.header(1, 2, "cam")
    score = np.random.default_rng(1).standard_normal((8, 12)).astype(np.float32)
    status = StatusFields(12, 8, -3.5, 0.25, 4.0, -1.0, 2.0, 5.0,
                          [Region(1, 2, 3, 4, 5, 1.5, 2.5, 0.5, 0.75)])
    for name, msg in (("anomaly_score", f.image(hdr, score, "32FC1")), ("status", f.status(hdr, status))):
        raw = wire.serialize(name, msg)
        assert isinstance(raw, bytes)
        back = f.typestore.deserialize_cdr(raw, OUTPUT_TYPES[name])
        assert back.header.frame_id == "cam"
    back = f.typestore.deserialize_cdr(wire.serialize("anomaly_score", f.image(hdr, score, "32FC1")),
                                       "sensor_msgs/msg/Image")
    np.testing.assert_array_equal(np.frombuffer(back.data.tobytes(), "<f4").reshape(8, 12), score)
    st = f.typestore.deserialize_cdr(wire.serialize("status", f.status(hdr, status)), OUTPUT_TYPES["status"])
    assert st.regions[0].area == 5 and st.threshold == pytest.approx(-3.5)


def test_bytes_that_are_not_the_subscribed_type_are_a_frame_error():
    wire = Wire(compressed_input=False)
    with pytest.raises(UndecodableMessageError, match="sensor_msgs/msg/Image") as exc:
        wire.take(b"\x00\x01\x00\x00\x05")
    assert isinstance(exc.value, FrameError)          # the node counts it as a bad frame and goes on


def test_typestore_follows_the_distro():
    assert "pebal_msgs/msg/PebalStatus" in typestore_for("humble").types
    assert "sensor_msgs/msg/Image" in typestore_for("a-future-distro").types   # newest known definitions
