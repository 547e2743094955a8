"""Images on the wire: the node takes and publishes serialized (CDR) messages, ROS-free.

Why not rclpy's message objects: rclpy converts every ``uint8[]`` field between C and Python,
building a Python object and copying the payload on the way in, and copying it twice more on the
way out (Python -> C message -> CDR). rosbags deserialises an Image into a zero-copy numpy view of
the received bytes and serialises an output with one copy, so a 1024x512 frame with five image
outputs costs a few milliseconds less per frame (docs/ros2.md, "Over real DDS"). The messages the
pipeline sees are then the very rosbags classes ``pebal replay`` uses: live and replay run the
same code from the bytes on.

rclpy passes ``bytes`` to ``Publisher.publish`` straight to ``rmw_publish_serialized_message``,
and a subscription created with ``raw=True`` hands its callback the bytes.
"""
from __future__ import annotations

import os
from typing import Any

from ..pipeline.convert import FrameError
from ..pipeline.messages import COMPRESSED_IMAGE_TYPE, IMAGE_TYPE, OUTPUT_TYPES, MessageFactory, default_typestore
from ..textcap import capped

# The distributions whose message definitions rosbags ships; Image, CompressedImage, Header and
# Time are the same in all of them, so an unknown (newer) distro uses the newest we know.
_KNOWN_DISTROS = ("humble", "iron", "jazzy", "kilted")


class UndecodableMessageError(FrameError):
    """The received bytes are not a serialized message of the subscribed type."""


def typestore_for(distro: str | None = None) -> Any:
    """A rosbags typestore (with pebal_msgs) for ``distro`` (default ``$ROS_DISTRO``)."""
    distro = (distro or os.environ.get("ROS_DISTRO") or "jazzy").lower()
    return default_typestore(distro if distro in _KNOWN_DISTROS else _KNOWN_DISTROS[-1])


class Wire:
    """Deserialise incoming camera frames and serialise outputs, with one rosbags typestore."""

    def __init__(self, compressed_input: bool, distro: str | None = None):
        self.factory = MessageFactory.for_rosbags(typestore_for(distro))
        self._store = self.factory.typestore
        self.input_type = COMPRESSED_IMAGE_TYPE if compressed_input else IMAGE_TYPE

    def take(self, raw: bytes) -> Any:
        """The camera message in ``raw`` (its payload a read-only view of ``raw``, not a copy)."""
        try:
            # a memoryview: rosbags slices off the CDR header, which would copy a bytes object
            return self._store.deserialize_cdr(memoryview(raw), self.input_type)
        except Exception as exc:  # noqa: BLE001 - rosbags raises several kinds for bad bytes
            raise UndecodableMessageError(
                f"{len(raw)} bytes do not deserialize as {self.input_type} ({type(exc).__name__}: {capped(exc)})") from None

    def serialize(self, name: str, msg: Any) -> bytes:
        """CDR bytes of output ``name`` (a pipeline output message) for ``Publisher.publish``."""
        return bytes(self._store.serialize_cdr(msg, OUTPUT_TYPES[name]))
