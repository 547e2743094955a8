"""How fast the detector node stops, and how long it goes silent while it loads another model.

Over real DDS (loopback), with a real rclpy camera publishing at 30 Hz into a ``detector_node``
process that runs the bundled model (or ``--model``) with its status subscribed, so the worker is
busy when the signal comes:

* stop: SIGINT and SIGTERM, ``--repeats`` times each, a fresh node each time: seconds from the
  signal to the process's exit, its exit code, and whether it logged an ERROR or a traceback;
* reload gap: a node started on the bundled model's ONNX export (so that the reload is the
  process's first export, as after a start on any .onnx) streams; its ``model`` parameter is set
  (through the parameter service, as ``ros2 param set`` does) to a fresh copy of the bundled
  checkpoint, which it must export to ONNX first (the slow case), then to the ``.onnx`` again: the
  longest interval without a ``/diagnostics`` message and without a ``pebal/status`` message from
  the request until the new model answers, and how long the parameter call took.

Needs a sourced workspace (or test/ros_env.py's environment):
    python3 bench/bench_node_stop.py [--repeats 3] [--model M]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rclpy
from ament_index_python.packages import get_package_prefix
from diagnostic_msgs.msg import DiagnosticArray
from pebal_msgs.msg import PebalStatus
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from sensor_msgs.msg import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test" / "ros"))
from _common import RVIZ_QOS, image_msg, pixels, spin_until  # noqa: E402

EXE = Path(get_package_prefix("pebal_ros")) / "lib" / "pebal_ros" / "detector_node"
NS = "stopbench"


def start(model: str, extra: tuple[str, ...] = (), env: dict[str, str] | None = None) -> subprocess.Popen:
    args = [str(EXE), "--ros-args", "-r", f"__ns:=/{NS}", "-r", f"image:=/{NS}/image_raw", "-p", "device:=cpu",
            "-p", "outputs:=[status]"]
    if model:
        args += ["-p", f"model:={model}"]
    for p in extra:
        args += ["-p", p]
    return subprocess.Popen(args, env=env or os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


class Camera:
    """A 30 Hz camera plus listeners for the node's status and diagnostics (arrival times)."""

    def __init__(self, node):
        self.node = node
        self.pub = node.create_publisher(Image, f"/{NS}/image_raw", RVIZ_QOS)
        self.status: list[float] = []
        self.diag: list[tuple[float, dict[str, str], str]] = []
        self.subs = [node.create_subscription(PebalStatus, f"/{NS}/pebal/status",
                                              lambda m: self.status.append(time.monotonic()), RVIZ_QOS),
                     node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)]
        self.img = pixels(480, 640, 1)
        self.seq = 0
        self.last = 0.0

    def _on_diag(self, arr) -> None:
        for st in arr.status:
            if NS in st.name:
                self.diag.append((time.monotonic(), {kv.key: kv.value for kv in st.values}, st.message))

    def tick(self) -> None:
        if time.monotonic() - self.last >= 1 / 30:
            self.seq += 1
            self.pub.publish(image_msg(self.img, "rgb8", (self.seq, 0)))
            self.last = time.monotonic()

    def run(self, done, timeout: float) -> bool:
        return spin_until(self.node, done, timeout, step=self.tick, period=0.005)

    def close(self) -> None:
        for s in self.subs:
            self.node.destroy_subscription(s)
        self.node.destroy_publisher(self.pub)


def stop_once(node, model: str, sig: int) -> tuple[float, int, bool]:
    proc = start(model)
    cam = Camera(node)
    try:
        if not cam.run(lambda: len(cam.status) >= 10, 180):
            raise SystemExit("the node did not answer: " + (proc.kill() or proc.communicate()[0])[-2000:])
        cam.run(lambda: False, 2.0)                 # busy: a 30 Hz camera, status subscribed
        t0 = time.monotonic()
        proc.send_signal(sig)
        cam.run(lambda: proc.poll() is not None, 30)  # the camera keeps streaming while it stops
        took = time.monotonic() - t0
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate()[0]
    finally:
        cam.close()
    bad = "[ERROR]" in out or "Traceback" in out
    return took, int(proc.returncode), bad


def gaps(times: list[float], start: float, end: float) -> float:
    """The longest interval without an event in [start, end]."""
    ts = [start] + [t for t in times if start <= t <= end] + [end]
    return float(np.max(np.diff(ts)))


def reload_gap(node, new_model: str, client) -> tuple[float, float, float, float]:
    """(longest gap without /diagnostics, without status, parameter call s, load s until the new model answers)."""
    cam = Camera(node)
    try:
        cam.run(lambda: len(cam.status) >= 10 and len(cam.diag) >= 2, 180)
        cam.run(lambda: False, 2.0)
        req = SetParameters.Request()
        req.parameters = [ParameterMsg(name="model", value=ParameterValue(
            type=ParameterType.PARAMETER_STRING, string_value=new_model))]
        t0 = time.monotonic()
        fut = client.call_async(req)
        answered = [0.0]

        def done() -> bool:
            if fut.done() and not answered[0]:
                answered[0] = time.monotonic()
            return fut.done() and any(d.get("runtime_model") == new_model for t, d, _ in cam.diag if t >= t0)
        if not cam.run(done, 300):
            raise SystemExit(f"the node never ran {new_model}: {fut.result() if fut.done() else 'no answer'}")
        t_new = next(t for t, d, _ in cam.diag if t >= t0 and d.get("runtime_model") == new_model)
        if not fut.result().results[0].successful:
            raise SystemExit(fut.result().results[0].reason)
        end = time.monotonic()
        return gaps([t for t, _, _ in cam.diag], t0, end), gaps(cam.status, t0, end), answered[0] - t0, t_new - t0
    finally:
        cam.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="", help="model the node starts with (default: the bundled one)")
    ap.add_argument("--repeats", type=int, default=3, help="stops per signal")
    ap.add_argument("--skip-stop", action="store_true", help="only the reload gap")
    ap.add_argument("--skip-reload", action="store_true", help="only the stop times")
    args = ap.parse_args()
    rclpy.init()
    node = rclpy.create_node("pebal_stop_bench")
    try:
        if not args.skip_stop:
            for name, sig in (("SIGINT", signal.SIGINT), ("SIGTERM", signal.SIGTERM)):
                rows = [stop_once(node, args.model, sig) for _ in range(args.repeats)]
                print(f"{name} while busy (30 Hz camera): " + ", ".join(f"{t:.2f} s" for t, _, _ in rows)
                      + f"; exit codes {[c for _, c, _ in rows]}; ERROR/traceback logged in "
                      f"{sum(b for _, _, b in rows)} of {len(rows)}", flush=True)
        if not args.skip_reload:
            from pebal_ros.node.params import defaults, resolve_node_settings
            from pebal_ros.open_model import cached_onnx
            from pebal_ros.paths import bundled_model

            tmp = Path(tempfile.mkdtemp(prefix="pebal_stop_bench_"))
            env = {**os.environ, "PEBAL_CACHE": str(tmp / "cache")}
            os.environ["PEBAL_CACHE"] = env["PEBAL_CACHE"]
            # the node starts on the bundled model's ONNX export, so that the reload below is the
            # process's first export (as after a start with any .onnx / .engine)
            onnx = str(cached_onnx(resolve_node_settings(defaults()), quiet=True))
            fresh = tmp / "fresh_copy.pt"        # a path the export cache has never seen: exported at load
            shutil.copy(bundled_model(), fresh)
            proc = start(args.model or onnx, ("diagnostics_period:=1.0",), env=env)
            client = node.create_client(SetParameters, f"/{NS}/pebal_detector/set_parameters")
            try:
                client.wait_for_service(timeout_sec=60)
                for label, new in (("a checkpoint, exported to ONNX at load", str(fresh)), ("an .onnx", onnx)):
                    d, s, call, load = reload_gap(node, new, client)
                    print(f"reload to {label}: longest gap without /diagnostics {d:.2f} s, without status "
                          f"{s:.2f} s; parameter call answered after {call:.2f} s, new model running after "
                          f"{load:.2f} s", flush=True)
            finally:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        node.destroy_node()
        rclpy.shutdown()


if __name__ == "__main__":
    main()
