"""Live = replay, with real ROS 2 tools: a camera bag is played with ``ros2 bag play`` into the
running detector node, its outputs recorded with ``ros2 bag record``; ``pebal replay`` runs on the
same input bag. For every frame both processed the semantic and mask images must be identical and
the score equal within 1e-5: the claim that replay validates what runs on the vehicle. The bag plays
in a loop until the node has answered every frame (twice), so a frame lost to DDS discovery or
dropped by a loaded node is sent again instead of failing the test.

Uses an ONNX model (both sides then load the very same graph; for a .pt checkpoint the model
settings must also be resolved the same way, which is the model-settings library's job).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rclpy
import rosbag2_py
from ament_index_python.packages import get_package_prefix
from pebal_msgs.msg import PebalStatus
from rclpy.serialization import deserialize_message, serialize_message
from rosidl_runtime_py.utilities import get_message

from _common import RVIZ_QOS, Diagnostics, image_msg, pixels, spin_until, stamp_of, tiny_onnx

H, W = 96, 160
FRAMES = 8
OUT_TOPICS = ["/pebal/semantic", "/pebal/anomaly_mask", "/pebal/anomaly_score", "/pebal/status"]


def _camera_frames(real: bool) -> list[np.ndarray]:
    """Random pixels for the tiny test model; for the real-road default model, real road frames with
    objects on the road (the demo's bundled clip), which it flags in part: random pixels it leaves alone."""
    if not real:
        return [pixels(H, W, 100 + i) for i in range(FRAMES)]
    from pebal_ros.demo_road import open_road_clip, road_frames
    return [rgb for rgb, label in road_frames(open_road_clip()) if label.any()][:FRAMES]


def _write_camera_bag(path: Path, frames: list[np.ndarray]) -> None:
    writer = rosbag2_py.SequentialWriter()
    writer.open(rosbag2_py.StorageOptions(uri=str(path), storage_id="mcap"),
                rosbag2_py.ConverterOptions("cdr", "cdr"))
    meta = dict(name="/camera/image_raw", type="sensor_msgs/msg/Image", serialization_format="cdr")
    try:
        topic = rosbag2_py.TopicMetadata(id=0, **meta)   # Jazzy
    except TypeError:
        topic = rosbag2_py.TopicMetadata(**meta)         # Humble
    writer.create_topic(topic)
    for i in range(FRAMES):
        stamp = (1_700_000_000 + i, 5_000_000 * i)
        # a mix of encodings the node converts (rgb8 and bgr8), as a real driver could send
        enc = "rgb8" if i % 2 == 0 else "bgr8"
        rgb = frames[i]
        msg = image_msg(rgb if enc == "rgb8" else np.ascontiguousarray(rgb[..., ::-1]), enc, stamp, frame_id="cam")
        writer.write("/camera/image_raw", serialize_message(msg), stamp[0] * 10**9 + stamp[1])
    del writer


def _read(path: Path, topics: list[str]) -> dict[str, dict[tuple[int, int], object]]:
    reader = rosbag2_py.SequentialReader()
    reader.open(rosbag2_py.StorageOptions(uri=str(path), storage_id=""), rosbag2_py.ConverterOptions("", ""))
    types = {t.name: t.type for t in reader.get_all_topics_and_types()}
    out: dict[str, dict[tuple[int, int], object]] = {t: {} for t in topics}
    while reader.has_next():
        topic, data, _ = reader.read_next()
        if topic in out:
            msg = deserialize_message(data, get_message(types[topic]))
            out[topic][(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg
    return out


def _arr(msg, dtype=np.uint8) -> np.ndarray:
    return np.frombuffer(bytes(msg.data), dtype).reshape(msg.height, msg.width)


def test_live_equals_replay(tmp_path: Path) -> None:
    _live_vs_replay(tmp_path, tiny_onnx(48, 80, seed=3, folder=str(tmp_path)))


def test_live_equals_replay_bundled_default_model(tmp_path: Path) -> None:
    """No model anywhere: node and replay resolve the bundled .pt through the one settings resolution."""
    _live_vs_replay(tmp_path, None)


def _live_vs_replay(tmp_path: Path, model: str | None) -> None:
    in_bag, live_bag, replay_out = tmp_path / "camera", tmp_path / "live", tmp_path / "replay"
    frames = _camera_frames(real=model is None)
    assert len(frames) == FRAMES
    _write_camera_bag(in_bag, frames)
    env = os.environ.copy()
    exe = Path(get_package_prefix("pebal_ros")) / "lib" / "pebal_ros" / "detector_node"
    params = ["-p", f"model:={model}"] if model else []   # none: both sides use the bundled default
    node = subprocess.Popen([str(exe), "--ros-args", *params, "-p", "device:=cpu",
                             "-r", "image:=/camera/image_raw"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    rec = subprocess.Popen(["ros2", "bag", "record", "-s", "mcap", "-o", str(live_bag), *OUT_TOPICS], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rclpy.init()
    client = rclpy.create_node("live_replay_probe")
    answers: Counter[tuple[int, int]] = Counter()
    client.create_subscription(PebalStatus, "/pebal/status", lambda m: answers.update([stamp_of(m)]), RVIZ_QOS)
    diag = Diagnostics(client, "pebal_detector")
    play, play_out, done = None, "", False
    try:
        # play only once the node listens and the recorder is subscribed to every output
        ready = spin_until(client, lambda: client.count_subscribers("/camera/image_raw") > 0 and all(
            client.count_subscribers(t) > 0 for t in OUT_TOPICS), 60)
        assert ready, "detector or recorder did not come up"
        # The bag plays in a loop until the node has answered every frame twice. A fresh player's
        # first frames can go out before DDS discovery has matched it to the node (seconds on a
        # loaded machine), and a loaded node may drop a frame (newest frame only): the second pass
        # runs long after discovery, between player, node and recorder alike. The same frame gives
        # the same outputs, so repeats are harmless. Counted, not timed.
        play = subprocess.Popen(["ros2", "bag", "play", str(in_bag), "--loop"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        done = spin_until(client, lambda: len(answers) == FRAMES and min(answers.values()) >= 2, 600)
    finally:
        if play is not None:
            play.send_signal(signal.SIGINT)
            play_out = play.communicate(timeout=30)[0]
        if play is not None and done:
            diag.settled()   # the node finished with every frame it received
        client.destroy_node()
        rclpy.shutdown()
        rec.send_signal(signal.SIGINT)
        rec_out = rec.communicate(timeout=30)[0]
        node.send_signal(signal.SIGINT)
        node_out = node.communicate(timeout=30)[0]
    assert done, f"the node answered {dict(answers)} of {FRAMES} frames\n{play_out[-2000:]}\n{node_out[-2000:]}"
    assert rec.returncode == 0, rec_out
    assert node.returncode == 0 and "Traceback" not in node_out, node_out

    rep = subprocess.run([sys.executable, "-m", "pebal_ros.cli", "replay", str(in_bag), *(["--model", model] if model
                                                                                          else []),
                          "--device", "cpu", "--out", str(replay_out), "--no-progress", "--reproducible"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stdout[-3000:] + rep.stderr[-3000:]

    live = _read(live_bag, OUT_TOPICS)
    replay = _read(replay_out / "result_bag", OUT_TOPICS)
    both = sorted(set(live["/pebal/status"]) & set(replay["/pebal/status"]))
    assert len(replay["/pebal/status"]) == FRAMES
    assert len(both) == FRAMES, (f"live recorded {len(live['/pebal/status'])} frames, "
                                 f"{len(both)} in common with replay\n{node_out[-2000:]}")
    for stamp in both:
        lv = {t: live[t][stamp] for t in OUT_TOPICS}
        rp = {t: replay[t][stamp] for t in OUT_TOPICS}
        np.testing.assert_array_equal(_arr(lv["/pebal/semantic"]), _arr(rp["/pebal/semantic"]), err_msg=str(stamp))
        np.testing.assert_array_equal(_arr(lv["/pebal/anomaly_mask"]), _arr(rp["/pebal/anomaly_mask"]))
        np.testing.assert_allclose(_arr(lv["/pebal/anomaly_score"], np.float32),
                                   _arr(rp["/pebal/anomaly_score"], np.float32), rtol=0, atol=1e-5)
        ls, rs = lv["/pebal/status"], rp["/pebal/status"]
        assert (ls.threshold, ls.anomaly_fraction, len(ls.regions)) == (rs.threshold, rs.anomaly_fraction,
                                                                          len(rs.regions)), stamp
        assert (ls.header.frame_id, lv["/pebal/semantic"].header.frame_id) == ("cam", "cam")
    # not vacuous: the model marks some pixels anomalous and leaves others
    fractions = [live["/pebal/status"][s].anomaly_fraction for s in both]
    assert 0.0 < max(fractions) and min(fractions) < 1.0, fractions
