"""The node's threshold over the real `ros2 param` CLI and DDS (issue 17): a value float32 cannot hold
is refused (it used to be accepted, then every frame failed); the documented ``threshold NaN`` (text,
as `ros2 param set` sends it) means the model's own; the read-only ``effective_threshold`` shows what
runs, where ``threshold`` says NaN; and the status carries that same threshold.
"""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import rclpy
from ament_index_python.packages import get_package_prefix
from pebal_msgs.msg import PebalStatus
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from _common import BEST_EFFORT, image_msg, pixels, ros2, spin_until, tiny_onnx
from pebal_ros.graph.contract import read_spec

EXE = Path(get_package_prefix("pebal_ros")) / "lib" / "pebal_ros" / "detector_node"
NS = "thr"
NODE = f"/{NS}/pebal_detector"
H, W = 32, 64


@pytest.fixture(scope="module")
def client():
    rclpy.init()
    node = rclpy.create_node("pebal_threshold_probe")
    yield node
    node.destroy_node()
    rclpy.shutdown()


def _double(name: str) -> float:
    res = ros2("param", "get", NODE, name)
    assert "Double value is:" in res.stdout, res.stdout + res.stderr
    return float(res.stdout.split("Double value is:")[1].split()[0])


def _set(name: str, value: str) -> str:
    res = ros2("param", "set", NODE, name, value)
    return res.stdout + res.stderr


def test_threshold_range_nan_text_and_effective_threshold(client, tmp_path):
    model = tiny_onnx(H, W, folder=str(tmp_path))
    own = read_spec(model).threshold          # what "the model's own" means for this file
    proc = subprocess.Popen([str(EXE), "--ros-args", "-r", f"__ns:=/{NS}", "-r", f"image:=/{NS}/image_raw",
                             "-p", "device:=cpu", "-p", f"model:={model}"],
                            env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    status: list[PebalStatus] = []
    sub = client.create_subscription(PebalStatus, f"/{NS}/pebal/status", status.append,
                                     QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST,
                                                reliability=ReliabilityPolicy.RELIABLE))
    pub = client.create_publisher(Image, f"/{NS}/image_raw", BEST_EFFORT)

    def status_threshold(seq: int) -> float:
        status.clear()
        img = pixels(H, W, seq)
        assert spin_until(client, lambda: any(s.header.stamp.sec == seq for s in status), 60,
                          step=lambda: pub.publish(image_msg(img, "rgb8", (seq, 0)))), "no status"
        return next(s for s in status if s.header.stamp.sec == seq).threshold

    try:
        assert spin_until(client, lambda: client.count_publishers(f"/{NS}/pebal/status") > 0, 60), "node not up"
        # threshold says NaN ("the model's own"); effective_threshold says which number that is
        assert "nan" in ros2("param", "get", NODE, "threshold").stdout.lower()
        assert _double("effective_threshold") == pytest.approx(own)
        assert status_threshold(1) == pytest.approx(own)

        # a value float32 cannot hold: refused with the reason, the old threshold kept
        out = _set("threshold", "1.0e+308")
        assert "Setting parameter failed" in out and "between -1e+06 and 1e+06" in out, out
        assert _double("effective_threshold") == pytest.approx(own)
        assert status_threshold(2) == pytest.approx(own)      # frames still flow

        out = _set("threshold", "-2.5")
        assert "Set parameter successful" in out, out
        assert _double("effective_threshold") == -2.5 and status_threshold(3) == -2.5

        # `ros2 param set ... threshold NaN` sends the text "NaN": accepted as the model's own
        out = _set("threshold", "NaN")
        assert "Set parameter successful" in out, out
        assert _double("effective_threshold") == pytest.approx(own)
        assert status_threshold(4) == pytest.approx(own)

        out = _set("effective_threshold", "1.0")
        assert "Setting parameter failed" in out and "read-only" in out, out
        assert _double("effective_threshold") == pytest.approx(own)
    finally:
        client.destroy_subscription(sub)
        client.destroy_publisher(pub)
        proc.send_signal(signal.SIGINT)
        try:
            log = proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            log = proc.communicate()[0]
    assert "Traceback" not in log, log[-3000:]
