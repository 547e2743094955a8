"""The node's model settings on real rclpy (in-process node, real publishers and parameter services):
what it resolved and from where is in /diagnostics; an uncalibrated threshold is a WARN until the user
sets one; a baked-in input size cannot be overridden; a checkpoint carrying pickled code is refused
and its code never runs."""
from __future__ import annotations

import time
from pathlib import Path

import rclpy
import torch
from _common import image_msg, pixels, ros, tiny_onnx  # noqa: F401 - ros is a fixture
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from pebal_msgs.msg import PebalStatus
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image

from pebal_ros.models import build_model, save_checkpoint
from pebal_ros.node.detector import PebalDetector

H, W = 48, 80


class Probe:
    """A second real node: publishes camera frames to the detector and reads its /diagnostics."""

    def __init__(self, detector: PebalDetector):
        self.detector = detector
        self.node = rclpy.create_node("settings_probe")
        self.pub = self.node.create_publisher(Image, "image", 10)
        self.diag: list[DiagnosticArray] = []
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diag.append, 10)
        # the node computes nothing nobody listens to: listen to its status
        self.status: list[PebalStatus] = []
        self.node.create_subscription(PebalStatus, "pebal/status", self.status.append, 10)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.executor.add_node(detector)

    def spin_until(self, done, timeout: float = 30.0) -> bool:
        end = time.time() + timeout
        while time.time() < end and not done():
            self.executor.spin_once(timeout_sec=0.05)
        return done()

    def diagnostics(self) -> tuple[int, str, dict[str, str]]:
        """Publish the detector's status now (as its timer does) and read it back over DDS."""
        assert self.spin_until(lambda: self.detector._diag_pub.get_subscription_count() > 0, 10)
        since = self.detector.get_clock().now().nanoseconds   # the timer's older reports may still be queued
        self.diag.clear()

        def fresh() -> bool:
            self.detector._publish_diagnostics()
            return any(a.header.stamp.sec * 10**9 + a.header.stamp.nanosec >= since for a in self.diag)
        assert self.spin_until(fresh, 20)
        latest = [a for a in self.diag if a.header.stamp.sec * 10**9 + a.header.stamp.nanosec >= since][-1]
        st = next(s for s in latest.status if "PEBAL" in s.name)
        return _level(st.level), st.message, {kv.key: kv.value for kv in st.values}

    def send_frame(self, seq: int) -> None:
        before = self.detector.cameras[0].stats.processed
        assert self.spin_until(lambda: self.pub.get_subscription_count() > 0
                               and self.node.count_publishers("pebal/status") > 0, 10)
        self.pub.publish(image_msg(pixels(H, W, seq), "rgb8", (seq, 0)))
        assert self.spin_until(lambda: self.detector.cameras[0].stats.processed > before, 60), "frame not processed"

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def _level(value) -> int:
    """DiagnosticStatus levels are a `byte` field: bytes in rclpy."""
    return int.from_bytes(value, "little") if isinstance(value, bytes) else int(value)


def _detector(**params) -> PebalDetector:
    return PebalDetector(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])


def test_settings_and_sources_in_diagnostics(ros, tmp_path: Path) -> None:
    node = _detector(model=tiny_onnx(H, W, folder=str(tmp_path)), device="cpu")
    probe = Probe(node)
    try:
        level, message, values = probe.diagnostics()
        assert values["setting_threshold"].endswith("(ONNX metadata)")
        assert values["setting_input_size"] == f"{H}x{W} (ONNX metadata)"
        assert values["threshold_calibrated"] == "no" and "model_summary" in values
        probe.send_frame(1)            # frames flow fine, but the threshold means nothing for this model yet
        level, message, _ = probe.diagnostics()
        assert level == _level(DiagnosticStatus.WARN) and "pebal calibrate" in message
        # an explicit threshold is the user's choice: no longer "uncalibrated"
        assert node.set_parameters([Parameter("threshold", value=-2.0)])[0].successful
        probe.send_frame(2)
        level, message, values = probe.diagnostics()
        assert level == _level(DiagnosticStatus.OK), message
        assert values["setting_threshold"] == "-2.0 (node parameter)" and values["threshold"] == "-2"
        # NaN = the model's own again
        assert node.set_parameters([Parameter("threshold", value=float("nan"))])[0].successful
        assert probe.diagnostics()[2]["setting_threshold"].endswith("(ONNX metadata)")
        # the graph's input size is baked in: another one is refused and the model kept
        runtime = node._pipeline.runtime
        res = node.set_parameters([Parameter("input_size", value="512x1024")])[0]
        assert not res.successful and "baked in" in res.reason and node._pipeline.runtime is runtime
        res = node.set_parameters([Parameter("input_size", value="big")])[0]
        assert not res.successful and "HEIGHTxWIDTH" in res.reason
    finally:
        probe.close()
        node.destroy_node()


def test_pickled_code_is_refused(ros, tmp_path: Path) -> None:
    marker = tmp_path / "pwned.txt"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('x')",))

    save_checkpoint(build_model("espnetv2", s=0.5, abstention=True), tmp_path / "ok.pt")
    state = torch.load(tmp_path / "ok.pt", weights_only=True)
    state["meta"]["evil"] = Payload()
    torch.save(state, tmp_path / "evil.pt")
    for runtime in ("auto", "torch"):
        node = _detector(model=str(tmp_path / "evil.pt"), runtime=runtime, device="cpu")
        probe = Probe(node)
        try:
            assert node._pipeline is None and "unpickle" in node._model_error
            level, message, _ = probe.diagnostics()
            assert level == _level(DiagnosticStatus.ERROR) and "unpickle" in message
        finally:
            probe.close()
            node.destroy_node()
    assert not marker.exists()
