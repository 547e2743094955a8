"""launch_testing: start the detector through launch/detector.launch.py with a small ONNX model,
publish camera frames and check every output topic, /diagnostics, bad-frame handling and a
rejected parameter change.

Run by test/test_ros.py (which finds or builds the workspace); by hand, in a sourced workspace:
    python3 -m pytest -q test/ros/ros_launch_detector.py     # or: launch_test <this file>
"""
from __future__ import annotations

import math
import os
import tempfile
import time
import unittest
from pathlib import Path

import numpy as np
import pytest

REASON = ("needs a ROS 2 install with pebal_ros and pebal_msgs built and sourced "
          "(launch_testing, rclpy, launch_ros); not available here")
pytest.importorskip("launch_testing", reason=REASON)
pytest.importorskip("rclpy", reason=REASON)
pytest.importorskip("launch_ros", reason=REASON)
pytest.importorskip("pebal_msgs", reason=REASON)

import launch  # noqa: E402
import launch.actions  # noqa: E402
import launch_testing  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
import launch_testing_ros  # noqa: E402,F401  (declared test dependency; used by ros2 launch_test)
import rclpy  # noqa: E402
import torch  # noqa: E402
from ament_index_python.packages import get_package_share_directory  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from pebal_msgs.msg import PebalStatus  # noqa: E402
from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.msg import ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from pebal_ros.export.fused import build_fused  # noqa: E402
from pebal_ros.export.onnx import export_fused  # noqa: E402

NS = "pebal_test"
CAMERA = f"/{NS}/image_raw"
H, W = 64, 128
IMAGE_OUTPUTS = {"semantic": "mono8", "semantic_color": "rgb8", "anomaly_score": "32FC1",
                 "anomaly_mask": "mono8", "overlay": "rgb8"}


class _TinyNet(torch.nn.Module):
    """Deterministic 20-output conv net; strong enough to give both anomalous and normal pixels."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 20, 3, padding=1)
        with torch.no_grad():
            for p in self.conv.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _model_path() -> str:
    path = Path(tempfile.mkdtemp(prefix="pebal_launch_test_")) / "tiny.onnx"
    export_fused(build_fused(_TinyNet().eval()), path, (H, W))
    return str(path)


@pytest.mark.launch_test
def generate_test_description():
    launch_file = os.path.join(get_package_share_directory("pebal_ros"), "launch", "detector.launch.py")
    detector = launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(launch_file),
        launch_arguments={"model": _model_path(), "device": "cpu", "namespace": NS, "camera_topic": CAMERA,
                          "threshold": "nan"}.items(),
    )
    return launch.LaunchDescription([detector, launch_testing.actions.ReadyToTest()])


def _frame(node: Node, encoding: str = "bgr8", seq: int = 0) -> Image:
    rng = np.random.default_rng(seq)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    msg = Image()
    msg.header.stamp.sec = 1000 + seq
    msg.header.stamp.nanosec = 123
    msg.header.frame_id = "test_camera"
    msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step = H, W, encoding, 0, W * 3
    msg.data.frombytes(img.tobytes())
    return msg


class TestDetector(unittest.TestCase):
    node: Node

    @classmethod
    def setUpClass(cls):
        rclpy.init()
        cls.node = rclpy.create_node("pebal_launch_test_client")

    @classmethod
    def tearDownClass(cls):
        cls.node.destroy_node()
        rclpy.shutdown()

    def _collect(self, topics: dict, timeout: float = 60.0, bad_every: int = 0) -> dict:
        got: dict = {}
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)

        def keeper(name: str):
            def keep(msg) -> None:
                got.setdefault(name, msg)
            return keep

        subs = [self.node.create_subscription(t, f"/{NS}/pebal/{name}", keeper(name), qos)
                for name, t in topics.items()]
        pub = self.node.create_publisher(Image, CAMERA, 10)
        end, seq = time.time() + timeout, 0
        try:
            while time.time() < end and len(got) < len(topics):
                seq += 1
                bad = bool(bad_every) and seq % bad_every == 0
                pub.publish(_frame(self.node, "yuv444_unknown" if bad else "bgr8", seq))
                rclpy.spin_once(self.node, timeout_sec=0.1)
        finally:
            for s in subs:
                self.node.destroy_subscription(s)
            self.node.destroy_publisher(pub)
        return got

    def test_every_output_topic(self):
        topics: dict[str, type] = {name: Image for name in IMAGE_OUTPUTS}
        topics["status"] = PebalStatus
        got = self._collect(topics, bad_every=3)
        self.assertEqual(set(got), set(topics), "no message on some outputs")
        for name, enc in IMAGE_OUTPUTS.items():
            m = got[name]
            self.assertEqual((m.encoding, m.height, m.width), (enc, H, W), name)
            self.assertEqual(m.header.frame_id, "test_camera")
            self.assertEqual(m.header.stamp.nanosec, 123)
            bpp = {"mono8": 1, "rgb8": 3, "32FC1": 4}[enc]
            self.assertEqual(len(m.data), H * W * bpp)
        score = np.frombuffer(bytes(got["anomaly_score"].data), np.float32)
        self.assertTrue(np.isfinite(score).all())
        mask = np.frombuffer(bytes(got["anomaly_mask"].data), np.uint8)
        self.assertTrue(set(np.unique(mask)) <= {0, 255})
        st = got["status"]
        self.assertEqual((st.image_width, st.image_height), (W, H))
        self.assertTrue(0.0 <= st.anomaly_fraction <= 1.0 and math.isfinite(st.threshold))
        self.assertGreater(st.inference_latency_ms, 0.0)
        self.assertGreaterEqual(st.end_to_end_latency_ms, st.inference_latency_ms)
        # The bad frames (unknown encoding) were counted, and the node kept working.
        values = self._diagnostics(lambda v: int(v.get("frames_bad", "0")) > 0)
        self.assertGreater(int(values["frames_bad"]), 0, values)
        self.assertIn("not supported", values.get("last_error", ""))

    def _diagnostics(self, done, timeout: float = 15.0) -> dict:
        got: list = []
        sub = self.node.create_subscription(DiagnosticArray, "/diagnostics", got.append, 10)
        values: dict = {}
        end = time.time() + timeout
        while time.time() < end:
            rclpy.spin_once(self.node, timeout_sec=0.2)
            mine = [s for a in got for s in a.status if NS in s.name and "pebal" in s.name]
            if mine:
                values = {kv.key: kv.value for kv in mine[-1].values}
                if done(values):
                    break
        self.node.destroy_subscription(sub)
        return values

    def test_diagnostics(self):
        self._collect({"overlay": Image}, timeout=30)
        values = self._diagnostics(lambda v: int(v.get("frames_processed", "0")) > 0)
        self.assertTrue({"rate_hz", "frames_dropped", "latency_ms_p50", "inference_ms_p99",
                         "runtime_name"} <= set(values), values)
        self.assertEqual(values["runtime_name"], "onnxruntime")

    def test_bad_parameter_rejected(self):
        client = self.node.create_client(SetParameters, f"/{NS}/pebal_detector/set_parameters")
        self.assertTrue(client.wait_for_service(timeout_sec=10))
        req = SetParameters.Request()
        req.parameters = [ParameterMsg(name="output_resolution", value=ParameterValue(
            type=ParameterType.PARAMETER_STRING, string_value="full"))]
        future = client.call_async(req)
        rclpy.spin_until_future_complete(self.node, future, timeout_sec=10)
        result = future.result().results[0]
        self.assertFalse(result.successful)
        self.assertIn("output_resolution", result.reason)
        req.parameters = [ParameterMsg(name="model", value=ParameterValue(
            type=ParameterType.PARAMETER_STRING, string_value="/nonexistent/model.onnx"))]
        future = client.call_async(req)
        rclpy.spin_until_future_complete(self.node, future, timeout_sec=30)
        self.assertFalse(future.result().results[0].successful)
        # still serving with the previous model
        self.assertIn("overlay", self._collect({"overlay": Image}, timeout=30))


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_clean_exit(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0, -2, -15])
