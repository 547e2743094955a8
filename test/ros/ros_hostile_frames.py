"""Hostile frames over real DDS, into the detector node as a process: a decompression bomb (a valid
140 KB PNG declaring 12000x12000) is refused from its header, counted as a bad frame with the reason
on /diagnostics, and the node keeps publishing the next frames; its peak memory (VmHWM) stays where it
was (decoding the bomb took it past 5 GB and left 750 MB resident).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rclpy
from ament_index_python.packages import get_package_prefix
from sensor_msgs.msg import CompressedImage

from _common import RVIZ_QOS, Diagnostics, Outputs, jpeg_msg, pixels, spin_until, tiny_onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # test/: the bomb maker
from hostile_images import png_bomb  # noqa: E402

EXE = Path(get_package_prefix("pebal_ros")) / "lib" / "pebal_ros" / "detector_node"
NS = "hostile"


@pytest.fixture(scope="module")
def client():
    rclpy.init()
    node = rclpy.create_node("pebal_hostile_probe")
    yield node
    node.destroy_node()
    rclpy.shutdown()


def _memory_mb(pid: int) -> dict[str, float]:
    """VmHWM (peak resident) and VmRSS of a process, MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) / 1024
    return out


def test_bomb_is_a_bad_frame_and_the_node_keeps_publishing(client, tmp_path):
    model = tiny_onnx(64, 128, folder=str(tmp_path))
    proc = subprocess.Popen([str(EXE), "--ros-args", "-r", f"__ns:=/{NS}", "-r",
                             f"image/compressed:=/{NS}/image_raw/compressed", "-p", "device:=cpu",
                             "-p", f"model:={model}", "-p", "input_type:=compressed", "-p", "diagnostics_period:=0.5"],
                            env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outs = Outputs(client, NS, ["status", "overlay"])     # the overlay: the camera-size decode path too
    pub = client.create_publisher(CompressedImage, f"/{NS}/image_raw/compressed", RVIZ_QOS)
    good = pixels(256, 512, 1)
    bomb = png_bomb(12000, 12000)

    def send_good(sec: int):
        return lambda: pub.publish(jpeg_msg(good, (sec, 0)))

    def answered(sec: int) -> bool:
        return len(outs.for_stamp((sec, 0))) == 2

    try:
        assert spin_until(client, lambda: answered(1), 90, step=send_good(1), period=0.2), "node never answered"
        spin_until(client, lambda: False, 1.0, step=send_good(1), period=0.2)
        before = _memory_mb(proc.pid)

        bomb_msg = CompressedImage()
        bomb_msg.header.stamp.sec, bomb_msg.header.frame_id = 2, "test_camera"
        bomb_msg.format = "png"
        bomb_msg.data.frombytes(bomb)
        diag = Diagnostics(client, NS)
        last = [0.0]

        def send_bomb() -> None:   # best-effort input: resend until the node has seen it
            if time.time() - last[0] > 1.0:
                pub.publish(bomb_msg)
                last[0] = time.time()

        assert spin_until(client, lambda: int(diag.latest.get("frames_bad", "0")) >= 1, 60, step=send_bomb), \
            f"the bomb was never counted: {diag.latest}"
        values, level, message = dict(diag.latest), diag.level, diag.message
        # the next frames are processed and published
        for sec in (3, 4):
            assert spin_until(client, lambda: answered(sec), 60, step=send_good(sec), period=0.2), \
                f"no output for frame {sec} after the bomb"
        after = _memory_mb(proc.pid)
    finally:
        outs.close()
        proc.send_signal(signal.SIGINT)
        try:
            out = proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0]
    assert not answered(2), "the bomb produced outputs"
    assert "12000x12000" in values.get("last_error", "") and "8192x8192" in values["last_error"], values
    assert level == 1 and "1 bad" in message, (level, message)
    warnings = [line for line in out.splitlines() if "bad frame skipped" in line]
    assert warnings and "declares 12000x12000" in warnings[0], out[-3000:]
    print(f"node memory: before the bomb VmHWM {before['VmHWM']:.0f} MB, VmRSS {before['VmRSS']:.0f} MB; after it "
          f"and two good frames VmHWM {after['VmHWM']:.0f} MB, VmRSS {after['VmRSS']:.0f} MB")
    assert after["VmHWM"] < before["VmHWM"] + 100, (before, after)
    assert after["VmRSS"] < before["VmRSS"] + 100, (before, after)
    assert proc.returncode == 0 and "Traceback" not in out, out[-3000:]
