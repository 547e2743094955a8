"""Helpers shared by the real ROS tests in test/ros/ (imported only where rclpy is available)."""
from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from pebal_msgs.msg import PebalStatus
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from pebal_ros.graph.fused import build_fused
from pebal_ros.export.onnx import export_fused

IMAGE_OUTPUTS = {"semantic": "mono8", "semantic_color": "rgb8", "anomaly_score": "32FC1",
                 "anomaly_mask": "mono8", "overlay": "rgb8"}
OUTPUT_TYPES: dict[str, type] = {**{n: Image for n in IMAGE_OUTPUTS}, "status": PebalStatus}
# RViz's image display subscribes reliable, keep last (its default); our outputs must reach it.
RVIZ_QOS = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
BEST_EFFORT = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT)


class TinyNet(torch.nn.Module):
    """Deterministic 20-class conv net strong enough to give both anomalous and normal pixels;
    ``depth`` extra 64-channel layers make it as slow as a test needs (the overload test)."""

    def __init__(self, seed: int = 0, depth: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        layers: list[torch.nn.Module] = []
        ch = 3
        for _ in range(depth):
            layers += [torch.nn.Conv2d(ch, 64, 3, padding=1), torch.nn.ReLU()]
            ch = 64
        layers.append(torch.nn.Conv2d(ch, 20, 3, padding=1))
        self.net = torch.nn.Sequential(*layers)
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 if depth == 0 else 0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def tiny_onnx(h: int, w: int, seed: int = 0, depth: int = 0, folder: str | None = None) -> str:
    folder = folder or tempfile.mkdtemp(prefix="pebal_ros_test_")
    path = Path(folder) / f"tiny_{seed}_{depth}_{h}x{w}.onnx"
    if not path.is_file():
        export_fused(build_fused(TinyNet(seed, depth).eval()), path, (h, w))
    return str(path)


def pixels(h: int, w: int, seq: int, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seq).integers(0, 256, (h, w, channels), dtype=np.uint8)


def image_msg(img: np.ndarray, encoding: str, stamp: tuple[int, int], frame_id: str = "test_camera",
              step: int | None = None, data: bytes | None = None) -> Image:
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = img.shape[:2]
    msg.encoding, msg.is_bigendian = encoding, 0
    msg.step = img.shape[1] * (img.shape[2] if img.ndim == 3 else 1) * img.itemsize if step is None else step
    msg.data.frombytes(img.tobytes() if data is None else data)
    return msg


def jpeg_msg(img_rgb: np.ndarray, stamp: tuple[int, int], frame_id: str = "test_camera",
             data: bytes | None = None) -> CompressedImage:
    import cv2
    msg = CompressedImage()
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    msg.header.frame_id = frame_id
    msg.format = "rgb8; jpeg compressed bgr8"
    if data is None:
        ok, buf = cv2.imencode(".jpg", img_rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        data = buf.tobytes()
    msg.data.frombytes(data)
    return msg


def stamp_of(msg: Any) -> tuple[int, int]:
    return msg.header.stamp.sec, msg.header.stamp.nanosec


class Outputs:
    """Subscribes to a detector's outputs and keeps every message by (output, stamp)."""

    def __init__(self, node: Node, ns: str, names: list[str] | None = None, qos: QoSProfile = RVIZ_QOS):
        self.node = node
        self.got: dict[tuple[str, tuple[int, int]], Any] = {}
        self.arrivals: list[tuple[str, tuple[int, int], float]] = []
        prefix = f"/{ns}/pebal" if ns else "/pebal"
        self.names = list(OUTPUT_TYPES) if names is None else names
        self.subs = [node.create_subscription(OUTPUT_TYPES[n], f"{prefix}/{n}", self._keeper(n), qos)
                     for n in self.names]

    def _keeper(self, name: str) -> Callable[[Any], None]:
        def keep(msg: Any) -> None:
            self.got[(name, stamp_of(msg))] = msg
            self.arrivals.append((name, stamp_of(msg), time.time()))
        return keep

    def for_stamp(self, stamp: tuple[int, int]) -> dict[str, Any]:
        return {n: self.got[(n, stamp)] for n in self.names if (n, stamp) in self.got}

    def close(self) -> None:
        for s in self.subs:
            self.node.destroy_subscription(s)


def spin_until(node: Node, done: Callable[[], bool], timeout: float, step: Callable[[], None] | None = None,
               period: float = 0.1) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if step is not None:
            step()
        rclpy.spin_once(node, timeout_sec=period)
        if done():
            return True
    return done()


def send_and_wait(node: Node, pub: Any, make: Callable[[tuple[int, int]], Any], outs: Outputs, seq: int,
                  timeout: float = 60.0, resend: float = 1.0) -> dict[str, Any]:
    """Publish a frame (re-sent with the same stamp until the detector answers: discovery may not be
    complete yet) and return every output with its stamp."""
    stamp = (1000 + seq, 123)
    last = [0.0]

    def step() -> None:
        if time.time() - last[0] >= resend:
            pub.publish(make(stamp))
            last[0] = time.time()

    spin_until(node, lambda: len(outs.for_stamp(stamp)) == len(outs.names), timeout, step)
    return outs.for_stamp(stamp)


# What becomes of every frame the node receives (node/worker.py, node/detector.py): exactly one of these,
# once the worker is done with it. A frame waiting in the mailbox or being processed has none yet.
OUTCOMES = ("frames_processed", "frames_dropped", "frames_bad", "frames_failed", "frames_skipped_no_subscribers")


def accounted(values: dict[str, str]) -> bool:
    """Every received frame has its outcome: nothing is waiting or in progress."""
    return "frames_received" in values and \
        int(values["frames_received"]) == sum(int(values.get(k, "0")) for k in OUTCOMES)


def delta(after: dict[str, str], before: dict[str, str], key: str) -> int:
    return int(after.get(key, "0")) - int(before.get(key, "0"))


class Diagnostics:
    def __init__(self, node: Node, name_part: str):
        self.node, self.name_part = node, name_part
        self.latest: dict[str, str] = {}
        self.level = -1
        self.message = ""
        self.sub = node.create_subscription(DiagnosticArray, "/diagnostics", self._on, 10)

    def _on(self, arr: DiagnosticArray) -> None:
        for s in arr.status:
            if self.name_part in s.name:
                self.latest = {kv.key: kv.value for kv in s.values}
                self.level, self.message = int.from_bytes(s.level, "little") if isinstance(s.level, bytes) \
                    else int(s.level), s.message

    def wait(self, done: Callable[[dict[str, str]], bool], timeout: float = 20.0) -> dict[str, str]:
        self.latest = {}
        spin_until(self.node, lambda: bool(self.latest) and done(self.latest), timeout)
        return self.latest

    def settled(self, timeout: float = 120.0) -> dict[str, str]:
        """The node's counters once the camera stopped and the node finished with every frame it got:
        two reports in a row with every received frame accounted for and the same count, so a frame
        still on its way through DDS or the node's executor when the first was made is counted too.
        Counts compared after this are exact, however slow the machine is; fails after ``timeout``."""
        last: dict[str, str] = {}
        end = time.time() + timeout
        while time.time() < end:
            values = self.wait(accounted, max(end - time.time(), 0.1))
            if not accounted(values):
                break
            if last and values["frames_received"] == last["frames_received"]:
                return values
            last = values
        raise AssertionError(f"the node's counters did not settle in {timeout:.0f} s "
                             f"(received != processed + dropped + bad + failed + skipped): {self.latest}")


def ros2(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """The real ``ros2`` CLI, as a user would type it (in this test's environment)."""
    return subprocess.run(["ros2", *args], capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


@pytest.fixture
def ros():
    """rclpy initialised for one test (the node runs in this process)."""
    rclpy.init()
    yield
    rclpy.shutdown()


def patient_shutdown() -> list:
    """Launch actions to put first in a launch test's description: at the end, launch sends SIGINT and
    escalates to SIGTERM after ``sigterm_timeout`` (default 5 s) and SIGKILL 10 s later. On a loaded
    machine a clean exit can take longer than that in wall time, and these tests check that the exit
    is clean (code 0), not how fast it is (ros_node_process.py checks that Ctrl-C does not wait for
    the inference in progress)."""
    from launch.actions import SetLaunchConfiguration
    return [SetLaunchConfiguration("sigterm_timeout", "60")]


def assert_clean_exit(case: Any, proc_info: Any, proc_output: Any) -> None:
    """After a launch test: launch ends the nodes with SIGINT and escalates to SIGTERM only after
    ``sigterm_timeout`` (patient_shutdown), so exit code 0 means SIGINT alone ended them; and nothing
    printed a traceback."""
    import launch_testing.asserts

    launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0])
    text = "".join(o.text.decode(errors="replace") for o in proc_output)
    case.assertNotIn("Traceback", text)
