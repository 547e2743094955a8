"""Text a sender chose is echoed capped: message fields in frame errors, bytes that do not
deserialize, the node's statistics (its /diagnostics last_error), with real rosbags messages."""
from __future__ import annotations

import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from pebal_ros.node.wire import UndecodableMessageError, Wire
from pebal_ros.node.worker import RunningStats, SlotCounts, diagnostic_values
from pebal_ros.pipeline.convert import FrameError, compressed_to_array, image_to_array
from pebal_ros.textcap import MAX_ECHO_CHARS, capped

HUGE = 10_000_000


def test_capped_bounds_length_and_shows_control_characters():
    assert capped("short text") == "short text"
    s = capped("x" * HUGE)
    assert len(s) < MAX_ECHO_CHARS + 40 and s.startswith("x" * MAX_ECHO_CHARS) and f"{HUGE} characters" in s
    assert capped("a\nb\x1b[31mc\x00") == "a\\x0ab\\x1b[31mc\\x00"     # one line, no terminal escapes
    assert capped(ValueError("boom")) == "boom"
    assert capped("é" * 10) == "é" * 10                                 # only control characters are escaped


@pytest.fixture
def store():
    return get_typestore(Stores.ROS2_JAZZY)


def _roundtrip(store, msg):
    raw = store.serialize_cdr(msg, msg.__msgtype__)
    return store.deserialize_cdr(raw, msg.__msgtype__)


def _header(store):
    H, T = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    return H(stamp=T(sec=1, nanosec=2), frame_id="cam")


def test_a_10_mb_format_or_encoding_gives_a_short_error(store):
    C = store.types["sensor_msgs/msg/CompressedImage"]
    I = store.types["sensor_msgs/msg/Image"]
    cases = [
        (compressed_to_array, C(header=_header(store), format="f" * HUGE, data=np.zeros(8, np.uint8))),
        (compressed_to_array, C(header=_header(store), format="jpeg" + "d" * HUGE, data=np.zeros(0, np.uint8))),
        (compressed_to_array, C(header=_header(store), format="p" * HUGE + "png",
                                data=np.frombuffer(b"not an image at all", np.uint8))),
        (image_to_array, I(header=_header(store), height=2, width=2, encoding="e" * HUGE, is_bigendian=0, step=6,
                           data=np.zeros(12, np.uint8))),
    ]
    for convert, msg in cases:
        with pytest.raises(FrameError) as exc:
            convert(_roundtrip(store, msg))
        text = str(exc.value)
        assert len(text) < 2 * MAX_ECHO_CHARS + 300, len(text)
        assert "characters)" in text     # says how long the field was


def test_undecodable_bytes_error_is_short():
    wire = Wire(compressed_input=True, distro="jazzy")
    with pytest.raises(UndecodableMessageError) as exc:
        wire.take(b"\x00\x01\x00\x00" + b"\xff" * 64)
    assert len(str(exc.value)) < 2 * MAX_ECHO_CHARS + 200


def test_statistics_keep_a_capped_last_error():
    stats = RunningStats()
    stats.record_bad("CompressedImage format '" + "f" * HUGE + "' is not supported")
    values = dict(diagnostic_values(stats.snapshot(SlotCounts(1, 0)), {}))
    assert len(values["last_error"]) < MAX_ECHO_CHARS + 40
    stats.record_failure("x" * HUGE)
    values = dict(diagnostic_values(stats.snapshot(SlotCounts(2, 0)), {}))
    assert len(values["last_error"]) < MAX_ECHO_CHARS + 40
