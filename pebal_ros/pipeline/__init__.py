"""The ROS-free per-frame core shared by the ROS 2 node and rosbag replay.

    from pebal_ros.pipeline import FramePipeline, PipelineConfig, MessageFactory
    pipe = FramePipeline(runtime, PipelineConfig(threshold=-10.0), MessageFactory.for_rosbags(typestore))
    result = pipe.process(image_or_compressed_msg)      # raises FrameError subclasses on bad frames
    result.messages["overlay"], result.status, result.timings

Modules: convert (message fields <-> arrays, every camera encoding), frame (the pipeline),
messages (output message factory for rclpy / rosbags, pebal_msgs definitions), regions
(connected anomalous regions), visualize (palette, overlay, heat map).
"""
from .convert import (
    CorruptCompressedImageError,
    EmptyImageError,
    FrameError,
    ImageLayoutError,
    UnsupportedEncodingError,
)
from .frame import FramePipeline, FrameResult, PipelineConfig, RuntimeOutputError
from .messages import OUTPUT_NAMES, OUTPUT_TYPES, MessageFactory, StatusFields, default_typestore, register_pebal_types

__all__ = [
    "CorruptCompressedImageError", "EmptyImageError", "FrameError", "ImageLayoutError", "UnsupportedEncodingError",
    "FramePipeline", "FrameResult", "PipelineConfig", "RuntimeOutputError",
    "OUTPUT_NAMES", "OUTPUT_TYPES", "MessageFactory", "StatusFields", "default_typestore", "register_pebal_types",
]
