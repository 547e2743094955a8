"""Output messages, built the same way for the node, replay and the tools.

A :class:`MessageFactory` knows the message classes of one library and how that library wants a
``uint8[]`` field filled; everything else (field values, header copying, region lists) is common
code. ``MessageFactory.for_rosbags(typestore)`` is what everything uses: the node too, since it
publishes serialized bytes (pebal_ros/node/wire.py). Image payloads are never converted per
element: rosbags holds numpy uint8 arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from .convert import array_to_image_fields, encode_compressed, float_image_fields
from .regions import Region

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
HEADER_TYPE = "std_msgs/msg/Header"
STATUS_TYPE = "pebal_msgs/msg/PebalStatus"
REGION_TYPE = "pebal_msgs/msg/AnomalyRegion"

# Output name (= topic name relative to the node's namespace) -> message type and encoding.
OUTPUT_NAMES: tuple[str, ...] = ("semantic", "semantic_color", "anomaly_score", "anomaly_mask", "overlay", "status")
OUTPUT_TYPES: dict[str, str] = {
    "semantic": IMAGE_TYPE,
    "semantic_color": IMAGE_TYPE,
    "anomaly_score": IMAGE_TYPE,
    "anomaly_mask": IMAGE_TYPE,
    "overlay": IMAGE_TYPE,
    "status": STATUS_TYPE,
}
OUTPUT_ENCODINGS: dict[str, str] = {
    "semantic": "mono8",          # Cityscapes train ids 0-18
    "semantic_color": "rgb8",     # Cityscapes palette
    "anomaly_score": "32FC1",     # PEBAL free energy, higher = more anomalous
    "anomaly_mask": "mono8",      # 0 / 255
    "overlay": "rgb8",
}

# The .msg definitions of pebal_msgs (msg/*.msg in the repository, checked equal by the tests),
# embedded so that the pip-installed package can register them in a rosbags typestore.
MSG_DEFINITIONS: dict[str, str] = {
    REGION_TYPE: """\
# One connected region of anomalous pixels (8-connected, score above the threshold).
# All geometry is in pixels of the camera image the status message refers to
# (PebalStatus.image_width x image_height), whatever resolution the network ran at.

# Axis-aligned bounding box: left, top, width, height (same convention as sensor_msgs/RegionOfInterest).
uint32 x_offset
uint32 y_offset
uint32 width
uint32 height

# Number of anomalous pixels in the region.
uint32 area

# Centroid of the region's pixels.
float32 centroid_x
float32 centroid_y

# Mean and maximum anomaly score (PEBAL free energy, higher = more anomalous) over the region.
float32 mean_score
float32 max_score
""",
    STATUS_TYPE: """\
# Per-frame summary of the PEBAL anomaly detector, usable by a planner without decoding images.

# The camera frame's header (stamp and frame_id copied from the input image).
std_msgs/Header header

# Size of the camera image that the regions' pixel coordinates refer to.
uint32 image_width
uint32 image_height

# Score threshold in use: pixels with score > threshold are anomalous.
float32 threshold

# Fraction of pixels (0..1) whose score is above the threshold. This and the scores below are
# computed at the network's resolution (what the model produced), before any upsampling.
float32 anomaly_fraction

# Maximum and mean anomaly score over the whole image (higher = more anomalous).
float32 max_score
float32 mean_score

# Wall time of the network / runtime call alone, in milliseconds.
float32 inference_latency_ms

# From the frame's arrival at the detector to this message: waiting for the worker,
# decoding, pre-processing, inference, post-processing and encoding, in milliseconds.
float32 end_to_end_latency_ms

# Anomalous regions with at least the configured minimum area, largest first
# (at most the configured maximum number of regions).
AnomalyRegion[] regions
""",
}


def register_pebal_types(typestore: Any) -> Any:
    """Add pebal_msgs' types to a rosbags typestore (idempotent); returns the typestore."""
    from rosbags.typesys import get_types_from_msg

    missing = {name: text for name, text in MSG_DEFINITIONS.items() if name not in typestore.types}
    if missing:
        types: dict[str, Any] = {}
        for name, text in missing.items():
            types.update(get_types_from_msg(text, name))
        typestore.register(types)
    return typestore


def default_typestore(distro: str = "humble") -> Any:
    """A rosbags typestore for a ROS 2 distribution with pebal_msgs registered."""
    from rosbags.typesys import Stores, get_typestore

    try:
        store = Stores[f"ROS2_{distro.upper()}"]
    except KeyError:
        raise ValueError(f"unknown ROS 2 distribution {distro!r}") from None
    return register_pebal_types(get_typestore(store))


@dataclass
class StatusFields:
    """Everything in a PebalStatus except the header (library-independent)."""
    image_width: int
    image_height: int
    threshold: float
    anomaly_fraction: float
    max_score: float
    mean_score: float
    inference_latency_ms: float
    end_to_end_latency_ms: float
    regions: list[Region] = field(default_factory=list)


class MessageFactory:
    """Builds sensor_msgs/Image, CompressedImage and pebal_msgs/PebalStatus for one message library.

    ``types`` maps full type names (``sensor_msgs/msg/Image`` ...) to classes that accept every
    field as a keyword argument; ``data_adapter`` turns a flat uint8 array into the library's
    ``uint8[]`` representation (it must copy: the caller may reuse the array).
    """

    def __init__(self, types: Mapping[str, Any], data_adapter: Callable[[np.ndarray], Any], library: str):
        needed = (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE, HEADER_TYPE, STATUS_TYPE, REGION_TYPE)
        absent = [t for t in needed if t not in types]
        if absent:
            raise ValueError(f"{library} message factory lacks type(s) {absent}")
        self.types = dict(types)
        self._data = data_adapter
        self.library = library
        self._Image = types[IMAGE_TYPE]
        self._Compressed = types[COMPRESSED_IMAGE_TYPE]
        self._Status = types[STATUS_TYPE]
        self._Region = types[REGION_TYPE]

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def for_rosbags(cls, typestore: Any = None) -> "MessageFactory":
        store = default_typestore() if typestore is None else register_pebal_types(typestore)
        factory = cls(store.types, lambda a: np.array(a, dtype=np.uint8, copy=True).reshape(-1), "rosbags")
        factory.typestore = store
        factory._keeps_arrays = True
        return factory

    typestore: Any = None   # set for rosbags factories (serialisation)
    _keeps_arrays = False   # uint8[] fields may be numpy arrays (rosbags), not a library's own type

    # -- messages -----------------------------------------------------------------------------
    def header(self, sec: int = 0, nanosec: int = 0, frame_id: str = "") -> Any:
        time_cls: Any = self.types.get("builtin_interfaces/msg/Time")
        if time_cls is None:   # rclpy: import lazily, only the node uses this path
            from builtin_interfaces.msg import Time  # type: ignore[import-not-found]
            time_cls = Time
        return self.types[HEADER_TYPE](stamp=time_cls(sec=int(sec), nanosec=int(nanosec)), frame_id=str(frame_id))

    def image(self, header: Any, image: np.ndarray, encoding: str, fresh: bool = False) -> Any:
        """sensor_msgs/Image from an array (uint8 HxW / HxWxC, or float32 HxW for 32FC1).

        ``fresh``: the array was made for this message and nobody else writes to it, so a library
        that can hold a numpy array (rosbags) keeps it as it is instead of copying it.
        """
        fields = float_image_fields(image) if encoding == "32FC1" else array_to_image_fields(image, encoding)
        data = fields["data"]
        if not (fresh and self._keeps_arrays and data.flags.writeable):
            data = self._data(data)
        fields["data"] = data
        return self._Image(header=header, **fields)

    def compressed_image(self, header: Any, image: np.ndarray, kind: str = "jpeg", order: str = "rgb",
                         quality: int = 90) -> Any:
        fmt, payload = encode_compressed(image, kind, order, quality)
        return self._Compressed(header=header, format=fmt, data=self._data(payload))

    def region(self, r: Region) -> Any:
        return self._Region(
            x_offset=int(r.x_offset), y_offset=int(r.y_offset), width=int(r.width), height=int(r.height),
            area=int(r.area), centroid_x=float(r.centroid_x), centroid_y=float(r.centroid_y),
            mean_score=float(r.mean_score), max_score=float(r.max_score),
        )

    def status(self, header: Any, s: StatusFields) -> Any:
        # Python floats/ints: rclpy's setters reject numpy scalars.
        return self._Status(
            header=header,
            image_width=int(s.image_width), image_height=int(s.image_height),
            threshold=float(s.threshold), anomaly_fraction=float(s.anomaly_fraction),
            max_score=float(s.max_score), mean_score=float(s.mean_score),
            inference_latency_ms=float(s.inference_latency_ms),
            end_to_end_latency_ms=float(s.end_to_end_latency_ms),
            regions=[self.region(r) for r in s.regions],
        )
