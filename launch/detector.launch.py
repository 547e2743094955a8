"""Launch the PEBAL road-anomaly detector (one or several cameras), optionally with RViz.

    ros2 launch pebal_ros detector.launch.py camera_topic:=/camera/image_raw model:=/path/model.onnx
    ros2 launch pebal_ros detector.launch.py compressed:=true rviz:=true
    ros2 launch pebal_ros detector.launch.py cameras:="front:/cam_front/image_raw,rear:/cam_rear/image_raw"
    ros2 launch pebal_ros detector.launch.py cameras:="front:/cam_front/image_raw,rear:/cam_rear/image_raw" batch:=true

Each detector publishes under <namespace>/pebal/ (overlay, semantic, semantic_color, anomaly_score,
anomaly_mask, status) and reports on /diagnostics. See docs/ros2.md.
"""
from __future__ import annotations

import os
import tempfile

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch_ros.actions import Node

from pebal_ros.node.launch_utils import (batched_remappings, camera_info_topic, emulate_tty, input_remapping,
                                         parse_cameras, rviz_camera, rviz_config_for)

PACKAGE = "pebal_ros"
TRUE = ("true", "1", "yes", "on")


def _share(*parts: str) -> str:
    return os.path.join(get_package_share_directory(PACKAGE), *parts)


def _have_package(name: str) -> bool:
    try:
        get_package_share_directory(name)
    except PackageNotFoundError:
        return False
    return True


ARGUMENTS = (
    ("model", "", "Model file (.onnx / .engine / .pt); empty: the params file's, else the bundled default model"),
    ("runtime", "", "Runtime: auto, onnxruntime, tensorrt or torch; empty: the params file's (default auto)"),
    ("device", "", "auto, cpu or cuda; empty: the params file's (default auto)"),
    ("camera_topic", "/camera/image_raw", "Raw image topic of the camera (with compressed:=true its /compressed "
                                          "sibling is used)"),
    ("namespace", "", "Namespace of the detector (outputs on <namespace>/pebal/...)"),
    ("cameras", "", "Several cameras: 'ns1:topic1,ns2:topic2' starts one detector per camera in namespace nsN "
                    "(prefixed by namespace:=); overrides camera_topic"),
    ("batch", "false", "With cameras:=..., one detector serves them all (one batched inference per tick, "
                       "outputs still on <namespace>/<camera>/pebal/...) instead of one detector per camera"),
    ("params_file", "", "Parameters YAML (default: the package's config/detector.yaml)"),
    ("compressed", "false", "Subscribe to sensor_msgs/CompressedImage on <camera_topic>/compressed"),
    ("use_camera_info", "false", "Also subscribe to the camera's camera_info and republish it for the outputs"),
    ("threshold", "", "Anomaly threshold (score > threshold is anomalous); empty: the params file's"),
    ("rviz", "false", "Start RViz with rviz/pebal.rviz (camera, overlay, semantic colours, anomaly mask)"),
    ("rviz_camera", "", "With cameras:=..., the camera RViz shows (its namespace, e.g. rear); default: the first"),
    ("rviz_config", "", "RViz config to use instead of the package's rviz/pebal.rviz"),
    ("log_level", "info", "Logging level of the detector nodes"),
)


def _detectors(context: LaunchContext) -> list:
    arg = {name: context.launch_configurations.get(name, default) for name, default, _ in ARGUMENTS}
    compressed = arg["compressed"].lower() in TRUE
    use_info = arg["use_camera_info"].lower() in TRUE
    params_file = arg["params_file"] or _share("config", "detector.yaml")
    overrides: dict = {"input_type": "compressed" if compressed else "raw", "use_camera_info": use_info}
    for name in ("model", "runtime", "device"):
        if arg[name]:
            overrides[name] = arg[name]
    if arg["threshold"]:
        overrides["threshold"] = float(arg["threshold"])
    cameras = parse_cameras(arg["cameras"], arg["namespace"], arg["camera_topic"])
    shown = rviz_camera(cameras, arg["rviz_camera"])   # checked even without rviz:=true: a typo fails early

    common = {"package": PACKAGE, "executable": "detector_node", "name": "pebal_detector", "output": "screen",
              # a pseudo-terminal (coloured logs) only for a terminal: no raw escape codes in files and pipes
              "emulate_tty": emulate_tty(), "arguments": ["--ros-args", "--log-level", arg["log_level"]]}
    actions: list = []
    if arg["batch"].lower() in TRUE and len(cameras) > 1:
        # one process and one model for all cameras, their newest frames batched per tick
        ns = arg["namespace"].strip("/")
        names, remaps = batched_remappings(cameras, ns, compressed, use_info)
        actions.append(LogInfo(msg=f"pebal detector '/{ns}' serving cameras {', '.join(names)} in one batch"))
        actions.append(Node(namespace=ns, parameters=[params_file, {**overrides, "cameras": names}],
                            remappings=remaps, **common))
    else:
        for cam in cameras:
            remaps = [input_remapping(cam.topic, compressed)]
            if use_info:
                remaps.append(("camera_info", camera_info_topic(cam.topic)))
            actions.append(LogInfo(msg=f"pebal detector '/{cam.namespace}' on {remaps[0][1]}"))
            actions.append(Node(namespace=cam.namespace, parameters=[params_file, overrides], remappings=remaps,
                                **common))
    if arg["rviz"].lower() in TRUE and not _have_package("rviz2"):
        # a headless vehicle computer or a minimal ROS install: the detectors matter, RViz does not
        actions.append(LogInfo(msg="rviz:=true but rviz2 is not installed (no package 'rviz2' in the ament index): "
                                   "starting the detectors without RViz; install ros-$ROS_DISTRO-rviz2 or run RViz "
                                   "on another machine with rviz/pebal.rviz"))
    elif arg["rviz"].lower() in TRUE:
        config = arg["rviz_config"]
        if not config:
            with open(_share("rviz", "pebal.rviz"), encoding="utf-8") as fh:
                text = rviz_config_for(fh.read(), shown)
            fd, config = tempfile.mkstemp(prefix="pebal_", suffix=".rviz")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
        actions.append(Node(package="rviz2", executable="rviz2", name="pebal_rviz", arguments=["-d", config],
                            output="screen"))
    return actions


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=desc) for name, default, desc in ARGUMENTS]
        + [OpaqueFunction(function=_detectors)]
    )
