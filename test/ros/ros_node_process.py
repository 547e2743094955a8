"""The detector node as a process (``lib/pebal_ros/detector_node``, what ``ros2 run`` starts), real
rclpy and DDS: Ctrl-C ends it promptly without a traceback; a 30 Hz camera faster than inference
gives bounded latency and counted drops (newest frame only); a missing model keeps the node up and
a good ``model`` parameter recovers it; a bad params file is refused with one clear line.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from ament_index_python.packages import get_package_prefix
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from sensor_msgs.msg import Image

from _common import BEST_EFFORT, RVIZ_QOS, Diagnostics, Outputs, image_msg, pixels, spin_until, tiny_onnx

EXE = Path(get_package_prefix("pebal_ros")) / "lib" / "pebal_ros" / "detector_node"
SIGINT_LIMIT_S = 2.0   # the requirement for Ctrl-C


def _start(*params: str, ns: str = "proc") -> subprocess.Popen:
    args = [str(EXE), "--ros-args", "-r", f"__ns:=/{ns}", "-r", f"image:=/{ns}/image_raw", "-p", "device:=cpu"]
    for p in params:
        args += ["-p", p]
    return subprocess.Popen(args, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.fixture(scope="module")
def client():
    rclpy.init()
    node = rclpy.create_node("pebal_process_probe")
    yield node
    node.destroy_node()
    rclpy.shutdown()


def _stop(proc: subprocess.Popen) -> tuple[float, str]:
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        out = proc.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0]
    return time.monotonic() - t0, out


def test_sigint_while_busy_ends_cleanly(client, tmp_path):
    proc = _start(f"model:={tiny_onnx(128, 256, depth=2, folder=str(tmp_path))}", ns="sig")
    outs = Outputs(client, "sig", ["overlay"])
    pub = client.create_publisher(Image, "/sig/image_raw", BEST_EFFORT)
    try:
        img = pixels(256, 512, 1)
        assert spin_until(client, lambda: len(outs.arrivals) >= 3, 90,
                          step=lambda: pub.publish(image_msg(img, "rgb8", (1, 0)))), "node never answered"
        # frames keep coming while the signal arrives: the worker is mid-inference
        for _ in range(5):
            pub.publish(image_msg(img, "rgb8", (2, 0)))
    finally:
        outs.close()
        took, out = _stop(proc)
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out and "Exception" not in out, out[-3000:]
    assert took < SIGINT_LIMIT_S, f"SIGINT took {took:.2f} s"


def test_overload_keeps_latency_bounded_and_counts_drops(client, tmp_path):
    # ~16 GFLOP per frame (~0.3 s on 2 free cores): a 30 Hz camera is several times faster than the
    # node on any CPU this runs on
    proc = _start(f"model:={tiny_onnx(192, 384, depth=4, folder=str(tmp_path))}", "diagnostics_period:=0.5",
                  ns="busy")
    outs = Outputs(client, "busy", ["status"], RVIZ_QOS)
    pub = client.create_publisher(Image, "/busy/image_raw", RVIZ_QOS)
    img = pixels(192, 384, 2)
    seq = [0]
    sent_at: dict[int, float] = {}

    def camera() -> None:   # 30 Hz, each frame stamped with its sequence number
        seq[0] += 1
        sent_at[seq[0]] = time.time()
        pub.publish(image_msg(img, "rgb8", (seq[0], 0)))

    try:
        assert spin_until(client, lambda: len(outs.got) >= 1, 90, step=camera, period=1 / 30), "no answer"
        outs.got.clear()
        outs.arrivals.clear()
        spin_until(client, lambda: False, 8.0, step=camera, period=1 / 30)
        diag = Diagnostics(client, "busy")
        values = diag.wait(lambda v: int(v.get("frames_dropped", "0")) > 0)
    finally:
        outs.close()
        took, out = _stop(proc)
    latencies = np.array([t - sent_at[stamp[0]] for _, stamp, t in outs.arrivals if stamp[0] in sent_at])
    assert len(latencies) >= 10, out[-2000:]
    inference_p99 = float(values["inference_ms_p99"]) / 1e3
    sent = len(sent_at)
    print(f"overload: {sent} frames sent at 30 Hz, {len(latencies)} answered, dropped {values['frames_dropped']}, "
          f"latency p50 {np.median(latencies) * 1e3:.0f} ms, p99 {np.percentile(latencies, 99) * 1e3:.0f} ms, "
          f"inference p99 {inference_p99 * 1e3:.0f} ms")
    assert int(values["frames_dropped"]) > 0, values
    assert len(latencies) < 0.8 * sent, "inference was not slower than the camera: the test proves nothing"
    # no backlog: a frame waits at most for the one in progress, so latency stays within a few
    # inference times instead of growing with the run; the last answers are no later than the first
    assert np.percentile(latencies, 99) < 4 * inference_p99 + 0.25, (latencies, inference_p99)
    n = len(latencies) // 3
    assert latencies[-n:].mean() < 2 * latencies[:n].mean() + 0.1, latencies


def test_missing_model_keeps_node_up_and_a_good_model_recovers(client, tmp_path):
    proc = _start("model:=/nonexistent/model.onnx", ns="nomodel")
    try:
        diag = Diagnostics(client, "nomodel")
        diag.wait(lambda v: True, timeout=60)
        assert diag.level == 2 and "no model loaded" in diag.message, (diag.level, diag.message)
        cli = client.create_client(SetParameters, "/nomodel/pebal_detector/set_parameters")
        assert cli.wait_for_service(timeout_sec=30)
        req = SetParameters.Request()
        req.parameters = [ParameterMsg(name="model", value=ParameterValue(
            type=ParameterType.PARAMETER_STRING, string_value=tiny_onnx(32, 64, folder=str(tmp_path))))]
        fut = cli.call_async(req)
        rclpy.spin_until_future_complete(client, fut, timeout_sec=60)
        assert fut.result().results[0].successful, fut.result().results[0].reason
        outs = Outputs(client, "nomodel", ["anomaly_mask"])
        pub = client.create_publisher(Image, "/nomodel/image_raw", BEST_EFFORT)
        img = pixels(32, 64, 3)
        assert spin_until(client, lambda: len(outs.got) > 0, 60,
                          step=lambda: pub.publish(image_msg(img, "rgb8", (5, 0)))), "no output after recovery"
        outs.close()
    finally:
        took, out = _stop(proc)
    assert proc.returncode == 0 and "Traceback" not in out, out[-3000:]


def test_bad_params_file_refused_with_one_line(tmp_path):
    params = tmp_path / "bad.yaml"
    params.write_text("/**:\n  ros__parameters:\n    output_resolution: full\n")
    proc = subprocess.run([str(EXE), "--ros-args", "--params-file", str(params)], env=os.environ.copy(),
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "output_resolution must be one of" in out and "Traceback" not in out, out
