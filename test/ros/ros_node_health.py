"""The detector node's honest health, as a process over real DDS (``lib/pebal_ros/detector_node``):
its /diagnostics level follows the recent frames (ERROR while every frame fails, OK again once they
succeed, the totals kept); a 10 MB CompressedImage ``format`` is echoed capped in diagnostics and
logs; a model reload runs in the background (diagnostics and status keep coming, "model_loading"
says so), a load that fails later sets the parameter back; ``ros2 topic echo`` shows the model
summary whole. No timing assertions: the windows are waited for, never timed.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from ament_index_python.packages import get_package_prefix
from diagnostic_msgs.msg import DiagnosticArray
from pebal_msgs.msg import PebalStatus
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import GetParameters, SetParameters
from sensor_msgs.msg import CompressedImage, Image

from _common import RVIZ_QOS, image_msg, jpeg_msg, pixels, ros2, spin_until, tiny_onnx
from pebal_ros.model_info import read_model_info
from pebal_ros.paths import bundled_model
from pebal_ros.textcap import MAX_ECHO_CHARS

EXE = Path(get_package_prefix("pebal_ros")) / "lib" / "pebal_ros" / "detector_node"
H, W = 48, 80
OK, WARN, ERROR = 0, 1, 2


def _start(ns: str, *params: str, compressed: bool = False, env: dict[str, str] | None = None) -> subprocess.Popen:
    topic = "image/compressed" if compressed else "image"
    args = [str(EXE), "--ros-args", "-r", f"__ns:=/{ns}", "-r", f"{topic}:=/{ns}/{topic.replace('image', 'image_raw')}",
            "-p", "device:=cpu", "-p", "input_qos:=reliable", "-p", "diagnostics_period:=0.2",
            "-p", f"input_type:={'compressed' if compressed else 'raw'}"]
    for p in params:
        args += ["-p", p]
    return subprocess.Popen(args, env=env or os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=60)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0]


@pytest.fixture(scope="module")
def client():
    rclpy.init()
    node = rclpy.create_node("pebal_health_probe")
    yield node
    node.destroy_node()
    rclpy.shutdown()


class Watch:
    """A camera publisher plus every /diagnostics status and status message of one detector."""

    def __init__(self, node, ns: str, compressed: bool = False):
        self.node, self.ns = node, ns
        topic = f"/{ns}/image_raw" + ("/compressed" if compressed else "")
        self.pub = node.create_publisher(CompressedImage if compressed else Image, topic, RVIZ_QOS)
        self.diag: list[tuple[float, int, str, dict[str, str]]] = []
        self.status: list[float] = []
        self.subs = [node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50),
                     node.create_subscription(PebalStatus, f"/{ns}/pebal/status",
                                              lambda m: self.status.append(time.monotonic()), RVIZ_QOS)]

    def _on_diag(self, arr: DiagnosticArray) -> None:
        for s in arr.status:
            if f"/{self.ns}/" in s.name:
                level = int.from_bytes(s.level, "little") if isinstance(s.level, bytes) else int(s.level)
                self.diag.append((time.monotonic(), level, s.message, {kv.key: kv.value for kv in s.values}))

    def until(self, done, timeout: float, make=None, period: float = 0.1) -> bool:
        last = [0.0]

        def step() -> None:
            if make is not None and time.monotonic() - last[0] >= period:
                self.pub.publish(make())
                last[0] = time.monotonic()
        return spin_until(self.node, done, timeout, step=step, period=0.02)

    def latest(self) -> tuple[int, str, dict[str, str]]:
        _, level, message, values = self.diag[-1]
        return level, message, values

    def close(self) -> None:
        for s in self.subs:
            self.node.destroy_subscription(s)
        self.node.destroy_publisher(self.pub)


def test_level_follows_the_recent_frames_and_hostile_text_is_capped(client, tmp_path):
    ns = "health"
    proc = _start(ns, f"model:={tiny_onnx(H, W, folder=str(tmp_path))}", "threshold:=-2.0", compressed=True)
    w = Watch(client, ns, compressed=True)
    huge = "f" * 10_000_000    # a sender's 10 MB `format`

    def bad() -> CompressedImage:
        msg = jpeg_msg(pixels(H, W, 1), (1, 0), data=b"not an image")
        msg.format = huge
        return msg

    good_jpeg = jpeg_msg(pixels(H, W, 2), (2, 0))
    try:
        # every recent frame fails: ERROR, not a WARN that looks like "mostly fine"
        assert w.until(lambda: w.diag and int(w.latest()[2].get("frames_bad", "0")) >= 2, 120, bad, period=0.5), \
            "no diagnostics counting the bad frames"
        level, message, values = w.latest()
        assert level == ERROR and "no frame succeeded" in message, (level, message)
        assert len(values["last_error"]) < MAX_ECHO_CHARS + 100 and "characters)" in values["last_error"], \
            len(values["last_error"])
        assert len(message) < 4 * MAX_ECHO_CHARS and all(len(v) < MAX_ECHO_CHARS + 100 for v in values.values())
        # good frames only from now on: OK once the bad ones have left the health window; totals kept
        assert w.until(lambda: w.latest()[0] == OK, 90, lambda: good_jpeg, period=0.1), w.latest()
        level, message, values = w.latest()
        assert int(values["frames_bad"]) >= 2 and values["recent_frames_bad"] == "0", values
        assert int(values["recent_frames_ok"]) > 0, values
    finally:
        w.close()
        out = _stop(proc)
    assert proc.returncode == 0, out[-3000:]
    assert "bad frame skipped" in out, out[-3000:]
    # the warning quotes the format capped: no 10 MB log line
    assert len(out) < 200_000 and max(len(line) for line in out.splitlines()) < 4 * MAX_ECHO_CHARS, len(out)


def _set(client, ns: str, name: str, value: str):
    cli = client.create_client(SetParameters, f"/{ns}/pebal_detector/set_parameters")
    assert cli.wait_for_service(timeout_sec=60)
    req = SetParameters.Request()
    req.parameters = [ParameterMsg(name=name, value=ParameterValue(type=ParameterType.PARAMETER_STRING,
                                                                   string_value=value))]
    return cli.call_async(req)


def _get(client, ns: str, name: str) -> str:
    cli = client.create_client(GetParameters, f"/{ns}/pebal_detector/get_parameters")
    assert cli.wait_for_service(timeout_sec=60)
    fut = cli.call_async(GetParameters.Request(names=[name]))
    rclpy.spin_until_future_complete(client, fut, timeout_sec=60)
    return fut.result().values[0].string_value


def test_reload_in_the_background_keeps_reporting_and_serving(client, tmp_path):
    ns = "reload"
    # a checkpoint this node has never seen, with an empty export cache: the load must export it to
    # ONNX first (seconds of work on any machine), which is what used to silence the node
    fresh = tmp_path / "models" / bundled_model().name
    fresh.parent.mkdir()
    shutil.copy(bundled_model(), fresh)
    env = {**os.environ, "PEBAL_CACHE": str(tmp_path / "cache")}
    proc = _start(ns, f"model:={tiny_onnx(H, W, folder=str(tmp_path))}", env=env)
    w = Watch(client, ns)
    img = pixels(H, W, 3)
    camera = lambda: image_msg(img, "rgb8", (3, 0))   # noqa: E731
    try:
        assert w.until(lambda: len(w.status) >= 3 and len(w.diag) >= 2, 120, camera), "node never answered"
        fut = _set(client, ns, "model", str(fresh))
        swapped = lambda: any(v.get("runtime_model") == str(fresh) for _, _, _, v in w.diag)   # noqa: E731
        assert w.until(lambda: fut.done() and swapped(), 300, camera), "the new model never ran"
        assert fut.result().results[0].successful, fut.result().results[0].reason
        t_swap = next(t for t, _, _, v in w.diag if v.get("runtime_model") == str(fresh))
        loading = [t for t, _, m, v in w.diag if "model_loading" in v and t <= t_swap]
        # diagnostics kept coming while it loaded, and said so ...
        assert loading, "no /diagnostics message while the model loaded"
        assert all(str(fresh) in v["model_loading"] for _, _, _, v in w.diag if "model_loading" in v)
        # ... and the old model kept answering the camera meanwhile
        assert any(loading[0] <= t <= t_swap for t in w.status), "no status while the model loaded"
        # the model summary is whole where a user reads it (ros2 topic echo cuts at 128 characters)
        summary = read_model_info(fresh).summary()
        echo = ros2("topic", "echo", "--once", "--no-daemon", "/diagnostics", "diagnostic_msgs/msg/DiagnosticArray",
                    timeout=120)
        assert f"value: {summary}" in echo.stdout or f"value: '{summary}'" in echo.stdout, (summary, echo.stdout)

        # a file that passes the quick check but does not load: accepted, fails in the background,
        # the parameter goes back to the model that runs, and diagnostics say why
        broken = tmp_path / "broken.onnx"
        broken.write_bytes(b"this is not an ONNX graph")
        fut = _set(client, ns, "model", str(broken))
        assert w.until(lambda: fut.done() and any("model_load_error" in v for _, _, _, v in w.diag), 120, camera)
        values = next(v for _, _, _, v in reversed(w.diag) if "model_load_error" in v)
        assert "broken.onnx" in values["model_load_error"] and values["runtime_model"] == str(fresh), values
        assert w.until(lambda: _get(client, ns, "model") == str(fresh), 30, camera)
        n = len(w.status)
        assert w.until(lambda: len(w.status) > n, 60, camera), "no status after the failed load"
    finally:
        w.close()
        out = _stop(proc)
    assert proc.returncode == 0, out[-3000:]
    assert "cannot load model" in out and "Traceback" not in out, out[-3000:]
