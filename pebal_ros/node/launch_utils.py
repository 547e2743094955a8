"""Plain-Python helpers of launch/detector.launch.py (camera lists, topic names, RViz config).

Kept out of the launch file so they are unit-tested without ROS 2.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Mapping, TextIO

from ..pipeline.messages import OUTPUT_NAMES
from ..ros_names import check_namespace, check_topic

# The topics the shipped rviz/pebal.rviz displays (namespace "", camera /camera/image_raw).
RVIZ_CAMERA_TOPIC = "/camera/image_raw"
RVIZ_OUTPUT_PREFIX = "/pebal/"


@dataclass(frozen=True)
class Camera:
    namespace: str   # "" or a ROS namespace without leading slash, e.g. "front" or "vehicle/front"
    topic: str       # the raw image topic (image_transport base topic)


def _check_namespace(ns: str) -> str:
    """ROS's namespace rules (pebal_ros.ros_names); the namespace without surrounding '/'."""
    return check_namespace(ns)


def _check_topic(topic: str) -> str:
    return check_topic(topic)


def parse_cameras(cameras: str, namespace: str = "", camera_topic: str = RVIZ_CAMERA_TOPIC) -> list[Camera]:
    """Detector instances to start.

    ``cameras`` is "" (one detector in ``namespace`` on ``camera_topic``) or a list
    "ns1:topic1,ns2:topic2" (one detector per camera, each in its own namespace); a bare "ns"
    entry means the topic "/ns/image_raw".
    """
    text = cameras.strip()
    if not text:
        return [Camera(_check_namespace(namespace), _check_topic(camera_topic))]
    out: list[Camera] = []
    for entry in re.split(r"[,;\s]+", text):
        if not entry:
            continue
        ns, _, topic = entry.partition(":")
        ns = _check_namespace(ns)
        if not ns:
            raise ValueError(f"camera entry {entry!r} needs a namespace (ns:topic)")
        if namespace.strip("/"):
            ns = _check_namespace(f"{_check_namespace(namespace)}/{ns}")   # the whole one: its length too
        out.append(Camera(ns, _check_topic(topic or f"/{ns}/image_raw")))
    names = [c.namespace for c in out]
    if len(set(names)) != len(names):
        raise ValueError(f"camera namespaces must be unique, got {names}")
    if not out:
        raise ValueError(f"no cameras in {cameras!r}")
    return out


def input_remapping(topic: str, compressed: bool) -> tuple[str, str]:
    """(node-side name, camera topic): image -> topic, or image/compressed -> topic/compressed."""
    if compressed:
        return "image/compressed", topic if topic.endswith("/compressed") else f"{topic.rstrip('/')}/compressed"
    return "image", topic


def batched_remappings(cameras: list[Camera], namespace: str, compressed: bool,
                       use_camera_info: bool) -> tuple[list[str], list[tuple[str, str]]]:
    """One node in ``namespace`` serving all ``cameras``: its ``cameras`` parameter (each camera's
    namespace relative to the node's, so the outputs land where one node per camera would put
    them) and the remappings of each camera's inputs to its driver's topics."""
    ns = namespace.strip("/")
    names: list[str] = []
    remaps: list[tuple[str, str]] = []
    for cam in cameras:
        if ns and not cam.namespace.startswith(ns + "/"):
            raise ValueError(f"camera namespace {cam.namespace!r} is not inside the node's namespace {ns!r}")
        name = cam.namespace[len(ns) + 1:] if ns else cam.namespace
        local, topic = input_remapping(cam.topic, compressed)
        names.append(name)
        remaps.append((f"{name}/{local}", topic))
        if use_camera_info:
            remaps.append((f"{name}/camera_info", camera_info_topic(cam.topic)))
    return names, remaps


def camera_info_topic(topic: str) -> str:
    """The CameraInfo beside an image topic (image_transport convention: same namespace)."""
    base = topic[: -len("/compressed")] if topic.endswith("/compressed") else topic
    parent = base.rsplit("/", 1)[0] if "/" in base.strip("/") else ""
    return f"{parent}/camera_info" if parent or base.startswith("/") else "camera_info"


def output_topic(namespace: str, name: str) -> str:
    if name not in OUTPUT_NAMES and name != "camera_info":
        raise ValueError(f"unknown output {name!r}")
    ns = namespace.strip("/")
    return f"/{ns}/pebal/{name}" if ns else f"/pebal/{name}"


def rviz_camera(cameras: list[Camera], name: str) -> Camera:
    """The camera RViz shows: the one whose namespace is ``name`` (or ends in ``/name``), else the first."""
    name = name.strip().strip("/")
    if not name:
        return cameras[0]
    for cam in cameras:
        if cam.namespace == name or cam.namespace.endswith("/" + name):
            return cam
    raise ValueError(f"rviz_camera {name!r} is not one of the cameras: "
                     f"{', '.join(c.namespace or '(no namespace)' for c in cameras)}")


def rviz_config_for(template: str, camera: Camera) -> str:
    """The shipped RViz config re-targeted to one camera's topics."""
    text = template.replace(f"Value: {RVIZ_CAMERA_TOPIC}\n", f"Value: {camera.topic}\n")
    ns = camera.namespace.strip("/")
    if ns:
        text = text.replace(f"Value: {RVIZ_OUTPUT_PREFIX}", f"Value: /{ns}{RVIZ_OUTPUT_PREFIX}")
    return text


def emulate_tty(stream: TextIO | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Whether launch should give the node a pseudo-terminal (rcutils then colours its log lines):
    only when launch's own output is a terminal and RCUTILS_COLORIZED_OUTPUT does not say 0. Else
    the escape codes would land raw in a log file, a pipe or journald."""
    stream = sys.stdout if stream is None else stream
    env = os.environ if env is None else env
    if env.get("RCUTILS_COLORIZED_OUTPUT", "").strip() == "0":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):   # a closed or unusual stream: no terminal
        return False
