"""launch_testing, real ROS 2 and real RViz 2: ``detector.launch.py rviz:=true`` in a virtual X display
(Xvfb, Mesa's software OpenGL), fed a real road frame (a LostAndFound frame from ../shared/data,
else the demo's bundled real road frame with an object) with the default model. From screenshots of the
display it checks what a user would look at:

* each of the camera, overlay, semantic-colour and mask images is shown in its own image panel --
  the panel's pixels match the image the test published or received from the node, scaled the way
  RViz scales it -- and each is large (a quarter of the window's width or more), while the unused
  3D view is a sliver;
* nothing in RViz's own widgets is drawn in its warning or error colour (Global Status OK: no
  "Fixed Frame" warning), and a frame RViz cannot show turns the Camera display red in the same
  check, so the check does see the Displays panel;
* the screenshot is kept (its path is printed) to be looked at.

The panels are found as RViz draws them, not at fixed coordinates: each OGRE render panel is a
native X window, listed by ``xwininfo``. Needs rviz2, Xvfb, xwininfo and ImageMagick's ``import``
(../shared/ros2/README.md); test/test_ros.py fails with the install commands where the RViz overlay
is available but not installed, and skips where it is not available at all.
"""
from __future__ import annotations

import atexit
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
import unittest
from dataclasses import dataclass
from pathlib import Path

import cv2
import launch
import launch.actions
import launch_testing
import launch_testing.actions
import numpy as np
import pytest
import rclpy
from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch.launch_description_sources import PythonLaunchDescriptionSource
from sensor_msgs.msg import Image

from _common import Outputs, assert_clean_exit, image_msg, patient_shutdown, spin_until

TOOLS = ("Xvfb", "xwininfo", "import")
NS = "pebal_rviz_test"
CAMERA = f"/{NS}/image_raw"
SCREEN = (1920, 1080)        # the shipped layout is made for a 1920x1080 window
FRAME = (512, 1024)          # camera frame (h, w) sent to the node and RViz
SHARED_DATA = Path(os.environ.get("PEBAL_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))
REAL_FRAME = SHARED_DATA / "anomaly" / "lostandfound_example.png"
OUT_DIR = Path(os.environ.get("PEBAL_TEST_OUTPUT") or tempfile.mkdtemp(prefix="pebal_rviz_test_"))
# StatusProperty colours of rviz_common 14 (status_property.cpp): Warn, Error; Ok draws in the default colour
WARN_RGB, ERROR_RGB = (192, 128, 0), (192, 32, 32)
MATCH_MAD = 16.0             # mean |difference| (0-255, after a light blur) below which a panel shows an image


def _missing() -> str:
    try:
        get_package_share_directory("rviz2")
    except PackageNotFoundError:
        return "rviz2 is not installed (../shared/ros2/README.md, 'RViz 2')"
    tools = [t for t in TOOLS if shutil.which(t) is None]
    return f"missing {', '.join(tools)} (apt-get install xvfb x11-utils imagemagick)" if tools else ""


if _missing():
    pytest.skip(_missing(), allow_module_level=True)


def _start_xvfb() -> str:
    """A virtual display on a free display number (Xvfb picks it: -displayfd); stopped at exit."""
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24",
                             "-nolisten", "tcp"], pass_fds=(write_fd,), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    os.close(write_fd)
    atexit.register(lambda: (proc.terminate(), proc.wait(timeout=10)))
    text = b""
    while not text.endswith(b"\n"):
        ready, _, _ = select.select([read_fd], [], [], 60)
        chunk = os.read(read_fd, 16) if ready else b""
        if not chunk:
            raise RuntimeError(f"Xvfb gave no display number (exit {proc.poll()})")
        text += chunk
    os.close(read_fd)
    return f":{int(text)}"


def _frame() -> tuple[np.ndarray, str]:
    """The camera frame (RGB) and where it comes from."""
    if REAL_FRAME.is_file():
        bgr = cv2.imread(str(REAL_FRAME), cv2.IMREAD_COLOR)
        rgb = np.ascontiguousarray(cv2.resize(bgr, FRAME[::-1], interpolation=cv2.INTER_AREA)[..., ::-1])
        return rgb, f"real LostAndFound frame {REAL_FRAME.name}"
    # the demo's bundled real road frame with an object pasted on the road, which the default
    # (real-road) model flags; a synthetic scene it would leave unflagged, and the mask panel black
    from pebal_ros.demo_road import open_road_clip, road_frames
    clip_rgb, _ = next(road_frames(open_road_clip(), 1))
    rgb = np.ascontiguousarray(cv2.resize(clip_rgb, FRAME[::-1], interpolation=cv2.INTER_LINEAR))
    return rgb, "the demo's real road clip, frame 0 (no ../shared/data here)"


@pytest.mark.launch_test
def generate_test_description():
    os.environ["DISPLAY"] = _start_xvfb()
    os.environ["LIBGL_ALWAYS_SOFTWARE"] = "1"     # Mesa llvmpipe: no GPU in CI
    launch_file = os.path.join(get_package_share_directory("pebal_ros"), "launch", "detector.launch.py")
    detector = launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(launch_file),
        launch_arguments={"namespace": NS, "camera_topic": CAMERA, "rviz": "true", "device": "cpu"}.items(),
    )
    return launch.LaunchDescription([*patient_shutdown(), detector, launch_testing.actions.ReadyToTest()])


@dataclass
class Rect:
    x: int
    y: int
    w: int
    h: int

    @property
    def area(self) -> int:
        return self.w * self.h


# xwininfo -children: '     0x200106 "pebal.rviz - RViz": ("rviz2" "rviz2")  1600x1000+0+0  +0+0'
_GEOMETRY = re.compile(r'^\s*(0x[0-9a-f]+) (?:"(.*?)":|\(has no name\):).*\s(\d+)x(\d+)\+-?\d+\+-?\d+\s+\+(-?\d+)\+(-?\d+)\s*$')


def _children(display: str, window: str = "-root") -> list[tuple[str, str, Rect]]:
    """(id, name, absolute rectangle) of the direct child windows, from ``xwininfo -children``."""
    args = ["-root"] if window == "-root" else ["-id", window]
    out = subprocess.run(["xwininfo", "-display", display, *args, "-children"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    found = []
    for line in out.splitlines():
        m = _GEOMETRY.match(line)
        if m:
            wid, name, w, h, x, y = m.groups()
            found.append((wid, name or "", Rect(int(x), int(y), int(w), int(h))))
    return found


def _rviz_window(display: str) -> tuple[Rect, list[Rect]] | None:
    """RViz's main window and its render panels (each OGRE render window is a native X window)."""
    for wid, name, rect in _children(display):
        if name.endswith("RViz"):
            panels = [r for _, _, r in _children(display, wid) if r.area > 1]   # not 1x1 helper windows
            return rect, panels
    return None


def _screenshot(display: str, path: Path) -> np.ndarray:
    subprocess.run(["import", "-display", display, "-window", "root", str(path)], check=True, timeout=60,
                   capture_output=True)
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f"unreadable screenshot {path}"
    return np.ascontiguousarray(img[..., ::-1])


def _drawn(panel: Rect, shape: tuple[int, ...]) -> Rect:
    """Where RViz's Image display draws an image in a panel: scaled to fit, aspect kept, centred
    (rviz_default_plugins ImageDisplay::update)."""
    ih, iw = shape[:2]
    if iw / ih > panel.w / panel.h:
        h = round(panel.w * ih / iw)
        return Rect(panel.x, panel.y + (panel.h - h) // 2, panel.w, h)
    w = round(panel.h * iw / ih)
    return Rect(panel.x + (panel.w - w) // 2, panel.y, w, panel.h)


def _difference(shot: np.ndarray, panel: Rect, expected: np.ndarray) -> float:
    """Mean |difference| between a panel and an image as RViz would draw it there."""
    r = _drawn(panel, expected.shape)
    if r.w < 16 or r.h < 16:
        return float("inf")
    want = cv2.resize(expected, (r.w, r.h), interpolation=cv2.INTER_AREA)
    got = shot[r.y:r.y + r.h, r.x:r.x + r.w]
    m = 3                                        # edge pixels depend on the texture sampler
    want, got = (cv2.GaussianBlur(a[m:-m, m:-m], (5, 5), 0).astype(np.float32) for a in (want, got))
    return float(np.abs(want - got).mean())


def _status_pixels(shot: np.ndarray, window: Rect, panels: list[Rect], rgb: tuple[int, int, int]) -> int:
    """Pixels of exactly one status colour in RViz's own widgets (the render panels left out)."""
    ui = shot[window.y:window.y + window.h, window.x:window.x + window.w].copy()
    for p in panels:
        ui[max(p.y - window.y, 0):p.y - window.y + p.h, max(p.x - window.x, 0):p.x - window.x + p.w] = 0
    return int(np.all(ui == np.array(rgb, np.uint8), axis=-1).sum())


class TestRviz(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        rclpy.init()
        cls.node = rclpy.create_node("pebal_rviz_test_client")
        cls.display = os.environ["DISPLAY"]

    @classmethod
    def tearDownClass(cls):
        cls.node.destroy_node()
        rclpy.shutdown()

    def test_rviz_shows_camera_overlay_semantic_mask_large_and_status_ok(self, proc_output):
        node = self.node
        frame, source = _frame()
        print(f"camera frame: {source}; screenshots in {OUT_DIR}", flush=True)
        pub = node.create_publisher(Image, CAMERA, 5)
        outs = Outputs(node, NS, ["overlay", "semantic_color", "anomaly_mask"])
        seq = [0]
        last = [0.0]

        def stream(encoding: str = "rgb8", data: bytes | None = None) -> None:
            if time.time() - last[0] >= 0.5:         # a 2 Hz camera, the same real frame each time
                seq[0] += 1
                pub.publish(image_msg(frame, encoding, (1000 + seq[0], 0), frame_id="camera", data=data,
                                      step=frame.shape[1] * 3 if data is None else frame.shape[1]))
                last[0] = time.time()

        def answered() -> dict | None:
            stamps = {s for (_, s) in outs.got}
            for s in sorted(stamps, reverse=True):
                got = outs.for_stamp(s)
                if len(got) == 3:
                    return got
            return None

        # the bundled model may be exported to ONNX on first use: generous
        self.assertTrue(spin_until(node, lambda: answered() is not None, 300, stream),
                        "the detector never answered the camera")
        got = answered()
        expected = {"Camera": frame}
        for name, msg in (("PEBAL overlay", got["overlay"]), ("Semantic", got["semantic_color"]),
                          ("Anomaly mask", got["anomaly_mask"])):
            arr = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, -1)
            expected[name] = np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr
        outs.close()

        # RViz keeps receiving the stream; look until every image is in a panel (RViz starts slowly
        # on a software renderer), then judge the last screenshot
        shot_path = OUT_DIR / "rviz_pebal.png"
        deadline = time.time() + 180
        report = "no RViz window"
        while True:
            spin_until(node, lambda: False, 3.0, stream)
            found = _rviz_window(self.display)
            if found is None:
                if time.time() > deadline:
                    break
                continue
            window, panels = found
            shot = _screenshot(self.display, shot_path)
            diff = {name: [_difference(shot, p, img) for p in panels] for name, img in expected.items()}
            best = {name: int(np.argmin(d)) for name, d in diff.items()}
            matched = all(diff[n][best[n]] < MATCH_MAD for n in expected) and len(set(best.values())) == len(best)
            report = "; ".join(f"{n}: panel {panels[best[n]]}, differences from each panel "
                               f"{' '.join(f'{d:.1f}' for d in diff[n])}" for n in expected)
            if matched or time.time() > deadline:
                break
        print(f"RViz window {found and found[0]}, {report}\nscreenshot: {shot_path}", flush=True)
        self.assertIsNotNone(found, "RViz's window never appeared")
        self.assertTrue(matched, f"not every image is shown in its own panel ({report}); see {shot_path}")

        # large: every image a quarter of the window wide or more; the 3D view a sliver
        for name, img in expected.items():
            drawn = _drawn(panels[best[name]], img.shape)
            self.assertGreaterEqual(drawn.w, window.w // 4, f"{name} drawn at {drawn}: too small; see {shot_path}")
        unused = [p for i, p in enumerate(panels) if i not in best.values()]
        for p in unused:
            self.assertLess(p.area, 0.05 * window.area, f"the 3D view {p} takes room from the images; see {shot_path}")
        for name, img in expected.items():
            self.assertGreater(float(img.std()), 5.0, f"{name}: the node's image itself is blank")

        # Global Status OK and no display warning: no warning/error colour in RViz's widgets
        self.assertEqual(_status_pixels(shot, window, panels, WARN_RGB), 0, f"a warning is shown; see {shot_path}")
        self.assertEqual(_status_pixels(shot, window, panels, ERROR_RGB), 0, f"an error is shown; see {shot_path}")
        text = "".join(o.text.decode(errors="replace") for o in proc_output)
        self.assertNotIn("Fixed Frame", text)

        # the same check sees an error: nv12 (which the node reads) is an encoding RViz cannot show,
        # so the Camera display turns red
        nv12 = np.zeros((frame.shape[0] * 3 // 2, frame.shape[1]), np.uint8).tobytes()
        control = OUT_DIR / "rviz_error_control.png"
        seen = 0
        deadline = time.time() + 60
        while not seen and time.time() < deadline:
            spin_until(node, lambda: False, 2.0, lambda: stream("nv12", nv12))
            seen = _status_pixels(_screenshot(self.display, control), window, panels, ERROR_RGB)
        self.assertGreater(seen, 0, f"RViz showed no error for a frame it cannot display; see {control}")
        node.destroy_publisher(pub)


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_sigint_exits_cleanly_without_traceback(self, proc_info, proc_output):
        assert_clean_exit(self, proc_info, proc_output)
