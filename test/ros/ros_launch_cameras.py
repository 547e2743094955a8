"""launch_testing, real ROS 2: ``detector.launch.py`` with several cameras in namespaces, compressed
(JPEG) input, ``use_camera_info`` and a ``threshold``, running the bundled default ``.pt`` model (no
``model`` argument). Each camera's detector answers in its own namespace with the camera's header and
size; camera_info is republished for the outputs; a corrupt JPEG is skipped and the next frame
processed. (``rviz:=true`` runs for real in ros_rviz.py; the line for an install without rviz2 is
checked in test_ros_package.py with the launch file's stand-ins.)
"""
from __future__ import annotations

import os
import unittest

import launch
import launch.actions
import launch_testing
import launch_testing.actions
import pytest
import rclpy
from ament_index_python.packages import get_package_share_directory
from launch.launch_description_sources import PythonLaunchDescriptionSource
from sensor_msgs.msg import CameraInfo, CompressedImage

from _common import (BEST_EFFORT, RVIZ_QOS, Diagnostics, Outputs, assert_clean_exit, jpeg_msg, patient_shutdown, pixels,
                     send_and_wait, spin_until)

CAMERAS = {"front": "/cam_front/image_raw", "rear": "/cam_rear/image_raw"}
H, W = 120, 200
THRESHOLD = -7.5


@pytest.mark.launch_test
def generate_test_description():
    launch_file = os.path.join(get_package_share_directory("pebal_ros"), "launch", "detector.launch.py")
    detector = launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(launch_file),
        launch_arguments={"cameras": ",".join(f"{ns}:{t}" for ns, t in CAMERAS.items()), "compressed": "true",
                          "use_camera_info": "true", "threshold": str(THRESHOLD),
                          "device": "cpu"}.items(),
    )
    return launch.LaunchDescription([*patient_shutdown(), detector, launch_testing.actions.ReadyToTest()])


def _camera_info(stamp) -> CameraInfo:
    info = CameraInfo()
    info.header.stamp.sec, info.header.stamp.nanosec = stamp
    info.header.frame_id = "cam"
    info.width, info.height = W, H
    info.k = [100.0, 0.0, W / 2, 0.0, 100.0, H / 2, 0.0, 0.0, 1.0]
    info.p = [100.0, 0.0, W / 2, 0.0, 0.0, 100.0, H / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


class TestCameras(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        rclpy.init()
        cls.node = rclpy.create_node("pebal_cameras_test_client")

    @classmethod
    def tearDownClass(cls):
        cls.node.destroy_node()
        rclpy.shutdown()

    def test_each_camera_answers_in_its_namespace(self):
        for i, (ns, topic) in enumerate(CAMERAS.items()):
            info_pub = self.node.create_publisher(CameraInfo, topic.rsplit("/", 1)[0] + "/camera_info", RVIZ_QOS)
            info_out: list = []
            info_sub = self.node.create_subscription(CameraInfo, f"/{ns}/pebal/camera_info", info_out.append,
                                                     RVIZ_QOS)
            outs = Outputs(self.node, ns, ["anomaly_mask", "status"])
            pub = self.node.create_publisher(CompressedImage, topic + "/compressed", BEST_EFFORT)
            img = pixels(H, W, 10 + i)

            def frame(stamp, img=img, info_pub=info_pub):
                info_pub.publish(_camera_info(stamp))
                return jpeg_msg(img, stamp, frame_id=f"{ns}_cam")

            # the bundled model on torch takes a while on CPU: generous timeout, resent each 3 s
            got = send_and_wait(self.node, pub, frame, outs, 50 + i, timeout=240, resend=3.0)
            self.assertEqual(set(got), {"anomaly_mask", "status"}, ns)
            mask, st = got["anomaly_mask"], got["status"]
            self.assertEqual((mask.width, mask.height, mask.header.frame_id), (W, H, f"{ns}_cam"))
            self.assertEqual((st.image_width, st.image_height), (W, H))
            self.assertAlmostEqual(st.threshold, THRESHOLD, places=5)
            spin_until(self.node, lambda: bool(info_out), 20)
            self.assertTrue(info_out, f"no camera_info for {ns}")
            self.assertEqual((info_out[-1].width, info_out[-1].height, info_out[-1].header.frame_id),
                             (W, H, f"{ns}_cam"))   # stamped like the outputs, scaled to their size

            # a corrupt JPEG is skipped; the next good frame is processed
            diag = Diagnostics(self.node, f"/{ns}/")
            before = int(diag.wait(lambda v: "frames_bad" in v, timeout=30).get("frames_bad", "0"))
            corrupt = jpeg_msg(img, (1, 1), data=b"\xff\xd8\xff\xe0garbage" * 10)
            # resent until counted: a corrupt frame arriving while the worker is busy may be replaced
            # (dropped) by the next one before it is looked at
            diag.latest = {}
            tick = [0]

            def resend_corrupt(tick=tick):
                tick[0] += 1
                if tick[0] % 20 == 1:
                    pub.publish(corrupt)

            spin_until(self.node, lambda: int(diag.latest.get("frames_bad", before)) > before, 120,
                       step=resend_corrupt)
            values = dict(diag.latest)
            self.assertGreater(int(values.get("frames_bad", "0")), before, values)
            got = send_and_wait(self.node, pub, frame, outs, 60 + i, timeout=240, resend=3.0)
            self.assertEqual(set(got), {"anomaly_mask", "status"}, ns)
            self.assertTrue(values.get("runtime_model", "").endswith(".pt"), values)
            for thing in (diag.sub, info_sub):
                self.node.destroy_subscription(thing)
            outs.close()
            for p in (pub, info_pub):
                self.node.destroy_publisher(p)


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_clean_exit(self, proc_info, proc_output):
        assert_clean_exit(self, proc_info, proc_output)
