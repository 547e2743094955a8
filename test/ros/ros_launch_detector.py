"""launch_testing, real ROS 2: one detector started through launch/detector.launch.py with a small
ONNX model, checked as a vehicle team would: every output's header and size, the status against
the mask, both QoS kinds of camera publisher, RViz's default subscription, /diagnostics, lazy
outputs, bad frames, `ros2 param set` (good, bad, read-only, model swap at run time) and a clean
SIGINT shutdown.

Run by test/test_ros.py (which finds or builds the workspace); by hand, in a sourced workspace:
    python3 -m pytest -q test/ros/ros_launch_detector.py     # or: launch_test <this file>
"""
from __future__ import annotations

import math
import os
import time
import unittest

import launch
import launch.actions
import launch_testing
import launch_testing.actions
import numpy as np
import pytest
import rclpy
from ament_index_python.packages import get_package_share_directory
from launch.launch_description_sources import PythonLaunchDescriptionSource
from rclpy.node import Node
from sensor_msgs.msg import Image

from _common import (BEST_EFFORT, IMAGE_OUTPUTS, RVIZ_QOS, Diagnostics, Outputs, assert_clean_exit, delta, image_msg,
                     patient_shutdown, pixels, ros2, send_and_wait, spin_until, tiny_onnx)

NS = "pebal_test"
NODE = f"/{NS}/pebal_detector"
CAMERA = f"/{NS}/image_raw"
H, W = 64, 128           # the camera
NET = (H, W)             # the model's input; the swapped-in MODEL_B runs at 48x96 and is resized back
MODEL = tiny_onnx(*NET, seed=0)
MODEL_B = tiny_onnx(48, 96, seed=1, folder=os.path.dirname(MODEL))


@pytest.mark.launch_test
def generate_test_description():
    launch_file = os.path.join(get_package_share_directory("pebal_ros"), "launch", "detector.launch.py")
    detector = launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(launch_file),
        launch_arguments={"model": MODEL, "device": "cpu", "namespace": NS, "camera_topic": CAMERA}.items(),
    )
    return launch.LaunchDescription([*patient_shutdown(), detector, launch_testing.actions.ReadyToTest()])


class TestDetector(unittest.TestCase):
    node: Node

    @classmethod
    def setUpClass(cls):
        rclpy.init()
        cls.node = rclpy.create_node("pebal_launch_test_client")
        cls.seq = 0

    @classmethod
    def tearDownClass(cls):
        cls.node.destroy_node()
        rclpy.shutdown()

    def _next(self) -> int:
        type(self).seq += 1
        return type(self).seq

    def _roundtrip(self, names=None, qos=BEST_EFFORT, out_qos=RVIZ_QOS, encoding="bgr8", timeout=60.0):
        outs = Outputs(self.node, NS, names, out_qos)
        pub = self.node.create_publisher(Image, CAMERA, qos)
        seq = self._next()
        img = pixels(H, W, seq)
        try:
            got = send_and_wait(self.node, pub, lambda st: image_msg(img, encoding, st), outs, seq, timeout)
        finally:
            outs.close()
            self.node.destroy_publisher(pub)
        self.assertEqual(set(got), set(outs.names), f"no answer on some outputs for frame {seq}")
        return got, (1000 + seq, 123)

    def test_outputs_keep_header_and_size_and_status_matches_mask(self):
        got, _ = self._roundtrip(["anomaly_score"])
        # a threshold at the median score gives both kinds of pixel, whatever the random test net does
        median = float(np.median(np.frombuffer(bytes(got["anomaly_score"].data), np.float32)))
        res = ros2("param", "set", NODE, "threshold", repr(median))
        self.assertIn("Set parameter successful", res.stdout, res.stdout + res.stderr)
        try:
            got, stamp = self._roundtrip()
        finally:
            ros2("param", "set", NODE, "threshold", ".nan")
        for name, enc in IMAGE_OUTPUTS.items():
            m = got[name]
            self.assertEqual((m.encoding, m.height, m.width), (enc, H, W), name)
            self.assertEqual((m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id),
                             (*stamp, "test_camera"), name)
            bpp = {"mono8": 1, "rgb8": 3, "32FC1": 4}[enc]
            self.assertEqual((m.step, len(m.data)), (W * bpp, H * W * bpp), name)
        score = np.frombuffer(bytes(got["anomaly_score"].data), np.float32).reshape(H, W)
        mask = np.frombuffer(bytes(got["anomaly_mask"].data), np.uint8).reshape(H, W)
        semantic = np.frombuffer(bytes(got["semantic"].data), np.uint8)
        self.assertTrue(np.isfinite(score).all())
        self.assertTrue(set(np.unique(mask)) <= {0, 255})
        self.assertLess(int(semantic.max()), 19)
        st = got["status"]
        self.assertEqual((st.header.stamp.sec, st.header.frame_id), (stamp[0], "test_camera"))
        self.assertEqual((st.image_width, st.image_height), (W, H))
        # the status is computed from the same maps the image topics carry (at network resolution,
        # which is the camera's here)
        self.assertAlmostEqual(st.anomaly_fraction, float((mask == 255).mean()), places=5)
        self.assertAlmostEqual(st.max_score, float(score.max()), places=3)
        np.testing.assert_array_equal(mask == 255, score > st.threshold)
        self.assertTrue(0.0 < st.anomaly_fraction < 1.0, "the test model should give both kinds of pixel")
        for r in st.regions:
            box = mask[r.y_offset:r.y_offset + r.height, r.x_offset:r.x_offset + r.width]
            self.assertGreaterEqual(int((box == 255).sum()), r.area)
        self.assertGreater(st.inference_latency_ms, 0.0)
        self.assertGreaterEqual(st.end_to_end_latency_ms, st.inference_latency_ms)

    def test_reliable_and_best_effort_cameras_are_received(self):
        for qos in (RVIZ_QOS, BEST_EFFORT):   # RVIZ_QOS is reliable, like most camera drivers' default
            got, _ = self._roundtrip(["overlay"], qos=qos)
            self.assertIn("overlay", got)

    def test_best_effort_subscriber_receives_outputs(self):
        got, _ = self._roundtrip(["semantic", "status"], out_qos=BEST_EFFORT)
        self.assertEqual(set(got), {"semantic", "status"})

    def test_bad_frames_warned_once_then_next_good_frame_processed(self, proc_output):
        # one warning per throttle period (warn_throttle_s): a long one, so that the three frames
        # fall into it however slowly this machine gets through them
        res = ros2("param", "set", NODE, "warn_throttle_s", "600")
        self.assertIn("Set parameter successful", res.stdout, res.stdout + res.stderr)
        diag = Diagnostics(self.node, NS)
        outs = Outputs(self.node, NS, ["status"])   # with no subscriber the node would not even decode
        pub = self.node.create_publisher(Image, CAMERA, RVIZ_QOS)
        try:
            spin_until(self.node, lambda: pub.get_subscription_count() > 0, 10)
            before = int(diag.settled().get("frames_bad", "0"))
            img = pixels(H, W, 0)
            bad = [image_msg(img, "yuv444_unknown", (1, 0)),                        # unsupported encoding
                   image_msg(img, "bgr8", (2, 0), step=W * 3 - 7),                    # wrong step
                   image_msg(img, "bgr8", (3, 0), data=img.tobytes()[: W * 3 * 10]),  # truncated data
                   ]
            for i, msg in enumerate(bad, 1):   # each counted before the next is sent (re-sent if lost)
                last = [0.0]

                def send(msg=msg, last=last):
                    if time.time() - last[0] > 5.0:
                        pub.publish(msg)
                        last[0] = time.time()

                self.assertTrue(spin_until(self.node, lambda i=i: int(diag.latest.get("frames_bad", "0")) >= before + i,
                                           60, send), diag.latest)
        finally:
            self.node.destroy_publisher(pub)
            outs.close()
        got, _ = self._roundtrip(["anomaly_mask"], qos=RVIZ_QOS)
        self.assertIn("anomaly_mask", got)
        values = diag.settled()
        self.node.destroy_subscription(diag.sub)
        self.assertGreaterEqual(int(values.get("frames_bad", "0")), before + 3, values)
        proc_output.assertWaitFor("bad frame skipped", timeout=60, stream="stderr")
        res = ros2("param", "set", NODE, "warn_throttle_s", "5.0")
        self.assertIn("Set parameter successful", res.stdout, res.stdout + res.stderr)
        text = "".join(o.text.decode(errors="replace") for o in proc_output)
        self.assertEqual(text.count("bad frame skipped"), 1, text[-3000:])

    def test_diagnostics_report_rates_latency_drops_model_threshold(self):
        self._roundtrip(["overlay"])
        diag = Diagnostics(self.node, NS)
        values = diag.wait(lambda v: int(v.get("frames_processed", "0")) > 0)
        self.node.destroy_subscription(diag.sub)
        self.assertTrue({"rate_hz", "frames_received", "frames_dropped", "latency_ms_p50", "latency_ms_p99",
                         "inference_ms_p99", "runtime_name", "runtime_model", "threshold"} <= set(values), values)
        self.assertEqual(values["runtime_name"], "onnxruntime")
        self.assertTrue(values["runtime_model"].endswith(".onnx"), values)
        self.assertTrue(math.isfinite(float(values["threshold"])))

    def test_lazy_outputs_without_subscribers_skip_inference(self):
        # nobody listens to any output (the other tests' subscriptions are gone from the graph)
        outputs = [f"/{NS}/pebal/{n}" for n in (*IMAGE_OUTPUTS, "status")]
        self.assertTrue(spin_until(self.node, lambda: all(self.node.count_subscribers(t) == 0 for t in outputs), 30))
        diag = Diagnostics(self.node, NS)
        pub = self.node.create_publisher(Image, CAMERA, RVIZ_QOS)
        spin_until(self.node, lambda: pub.get_subscription_count() > 0, 10)
        start = diag.settled()
        img = pixels(H, W, 0)
        for i in range(5):
            pub.publish(image_msg(img, "bgr8", (2000 + i, 0)))
            spin_until(self.node, lambda: False, 0.3)
        end = diag.settled()   # the node has finished with every frame it got
        self.node.destroy_subscription(diag.sub)
        self.node.destroy_publisher(pub)
        received, skipped = delta(end, start, "frames_received"), delta(end, start, "frames_skipped_no_subscribers")
        self.assertGreater(skipped, 0, (start, end))
        self.assertEqual(delta(end, start, "frames_processed"), 0, (start, end))
        # each frame skipped, or dropped when a newer one replaced it before the worker looked
        self.assertEqual(skipped + delta(end, start, "frames_dropped"), received, (start, end))

    def test_ros2_param_set_good_bad_readonly_and_model_swap(self):
        ok = ros2("param", "set", NODE, "threshold", "-4.25")
        self.assertIn("Set parameter successful", ok.stdout, ok.stdout + ok.stderr)
        got, _ = self._roundtrip(["status"])
        self.assertAlmostEqual(got["status"].threshold, -4.25, places=5)

        for name, value, why in (("output_resolution", "full", "output_resolution"),
                                 ("overlay_alpha", "1.5", "overlay_alpha"),
                                 ("outputs", "[overlay, nonsense]", "nonsense"),
                                 ("qos_depth", "3", "read-only"),
                                 ("threshold", "abc", "")):
            bad = ros2("param", "set", NODE, name, value)
            self.assertIn("Setting parameter failed", bad.stdout + bad.stderr, (name, bad.stdout, bad.stderr))
            self.assertIn(why, bad.stdout + bad.stderr, name)
        kept = ros2("param", "get", NODE, "output_resolution")
        self.assertIn("camera", kept.stdout)
        kept = ros2("param", "get", NODE, "threshold")
        self.assertIn("-4.25", kept.stdout)

        # swap the model at run time: the node stays up and answers with the new one
        swap = ros2("param", "set", NODE, "model", MODEL_B)
        self.assertIn("Set parameter successful", swap.stdout, swap.stdout + swap.stderr)
        diag = Diagnostics(self.node, NS)
        values = diag.wait(lambda v: v.get("runtime_model") == MODEL_B)
        self.assertEqual(values.get("runtime_input_size"), "(48, 96)", values)
        got, _ = self._roundtrip(["anomaly_mask"])
        self.assertEqual((got["anomaly_mask"].height, got["anomaly_mask"].width), (H, W))
        # a model that cannot load is refused with the reason, and the current one keeps serving
        bad = ros2("param", "set", NODE, "model", "/nonexistent/model.onnx")
        self.assertIn("Setting parameter failed", bad.stdout + bad.stderr)
        self.assertIn("cannot load model", bad.stdout + bad.stderr)
        values = diag.wait(lambda v: "runtime_model" in v)
        self.node.destroy_subscription(diag.sub)
        self.assertEqual(values["runtime_model"], MODEL_B)
        self.assertIn("overlay", self._roundtrip(["overlay"])[0])
        for name, value in (("model", MODEL), ("threshold", ".nan")):
            res = ros2("param", "set", NODE, name, value)
            self.assertIn("Set parameter successful", res.stdout, res.stdout + res.stderr)


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_sigint_exits_cleanly_without_traceback(self, proc_info, proc_output):
        assert_clean_exit(self, proc_info, proc_output)
