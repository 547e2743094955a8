"""The detector node over real DDS (loopback), driven by a real rclpy camera publisher.

Per camera size (640x480, 1024x512, 2048x1024) and input (rgb8, JPEG), in one run, as ratios:
end-to-end latency (camera stamp -> output received) against the node's own inference time, the
non-inference share (decode, conversion, message building, rclpy publish/serialise, DDS), and
throughput with 1 (status) and all 6 outputs subscribed. Also times the ways of filling an
rclpy ``uint8[]`` field from an array (the node uses the fastest correct one).

Needs a sourced workspace (or run it through test/ros_env.py's environment):
    python3 bench/bench_ros_dds.py [--model M] [--frames 10] [--seconds 6]
"""
from __future__ import annotations

import argparse
import array
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rclpy
from ament_index_python.packages import get_package_prefix
from pebal_msgs.msg import PebalStatus
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test" / "ros"))
from _common import OUTPUT_TYPES, jpeg_msg, spin_until  # noqa: E402

QOS = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)


def fill_paths(w: int, h: int) -> dict[str, float]:
    """ms to set Image.data from an HxWx3 uint8 array, per method (median of 5)."""
    img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)

    def t(fn) -> float:
        out = []
        for _ in range(5):
            m = Image()
            t0 = time.perf_counter()
            fn(m)
            out.append((time.perf_counter() - t0) * 1e3)
        return float(np.median(out))

    def frombytes(m):
        a = array.array("B")
        a.frombytes(img.tobytes())
        m.data = a

    def memview(m):
        a = array.array("B")
        a.frombytes(memoryview(np.ascontiguousarray(img)).cast("B"))
        m.data = a

    res = {"array.frombytes(tobytes)": t(frombytes), "array.frombytes(memoryview)": t(memview),
           "bytes": t(lambda m: setattr(m, "data", img.tobytes()))}
    if w * h <= 640 * 480:   # per-element paths are far too slow at the larger sizes
        res["list"] = t(lambda m: setattr(m, "data", img.ravel().tolist()))
    return res


def run(args) -> None:
    exe = Path(get_package_prefix("pebal_ros")) / "lib" / "pebal_ros" / "detector_node"
    rclpy.init()
    node = rclpy.create_node("pebal_bench_camera")
    rows = []
    for compressed in (False, True):
        params = ["-p", "device:=cpu", "-p", f"input_type:={'compressed' if compressed else 'raw'}",
                  "-r", f"image{'/compressed' if compressed else ''}:=/bench/image_raw{'/compressed' if compressed else ''}"]
        if args.model:
            params += ["-p", f"model:={args.model}"]
        params += ["-p", f"input_qos:={args.input_qos}"]
        if args.runtime:
            params += ["-p", f"runtime:={args.runtime}"]
        proc = subprocess.Popen([str(exe), "--ros-args", *params], env=os.environ.copy(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for w, h in [tuple(int(v) for v in sz.split("x")) for sz in args.sizes.split(",")]:
                img = np.random.default_rng(w).integers(0, 256, (h, w, 3), dtype=np.uint8)
                raw = img.tobytes()
                pub = node.create_publisher(CompressedImage if compressed else Image,
                                            f"/bench/image_raw{'/compressed' if compressed else ''}", QOS)

                def frame(seq: int):
                    stamp_ns = time.time_ns()
                    st = (stamp_ns // 10**9, stamp_ns % 10**9)
                    if compressed:
                        return jpeg_msg(img, st, data=None)
                    m = Image()
                    m.header.stamp.sec, m.header.stamp.nanosec = st
                    m.height, m.width, m.encoding, m.step = h, w, "rgb8", w * 3
                    a = array.array("B")
                    a.frombytes(raw)
                    m.data = a
                    return m

                row = {"size": f"{w}x{h}", "input": "JPEG" if compressed else "rgb8"}
                for label, names in (("1", ["status"]), ("6", list(OUTPUT_TYPES))):
                    got: list[tuple[float, PebalStatus]] = []
                    # image outputs subscribed raw (serialised bytes): the node still builds, serialises
                    # and sends them, but this process does not spend its time deserialising them
                    subs = [node.create_subscription(OUTPUT_TYPES[n], f"/pebal/{n}",
                                                     (lambda m, n=n: got.append((time.time(), m)) if n == "status"
                                                      else None), QOS, raw=n != "status") for n in names]
                    spin_until(node, lambda: pub.get_subscription_count() > 0, 30)
                    # warm up (model load, first-frame allocations), then one frame at a time: latency
                    if not spin_until(node, lambda: len(got) >= 2, 120, step=lambda: pub.publish(frame(0)),
                                      period=0.5):
                        raise SystemExit(f"the node did not answer at {w}x{h} (does the model load? try --model "
                                         "an .onnx from `pebal export`)")
                    lat, inf, node_e2e = [], [], []
                    for i in range(args.frames):
                        got.clear()
                        m = frame(i)
                        pub.publish(m)
                        spin_until(node, lambda: bool(got), 30, period=0.005)
                        if got:
                            t_recv, st = got[0]
                            stamp = st.header.stamp.sec + st.header.stamp.nanosec * 1e-9
                            lat.append((t_recv - stamp) * 1e3)
                            inf.append(st.inference_latency_ms)
                            node_e2e.append(st.end_to_end_latency_ms)
                    # throughput: publish as fast as the camera could (30 Hz) for a while
                    got.clear()
                    t0 = time.time()
                    spin_until(node, lambda: False, args.seconds, step=lambda: pub.publish(frame(0)), period=1 / 30)
                    fps = len(got) / (time.time() - t0)
                    for s in subs:
                        node.destroy_subscription(s)
                    e2e, infm = float(np.median(lat)), float(np.median(inf))
                    row[f"e2e_{label}"], row[f"inf_{label}"], row[f"fps_{label}"] = e2e, infm, fps
                    row[f"node_{label}"] = float(np.median(node_e2e))
                rows.append(row)
                node.destroy_publisher(pub)
                r = row
                print(f"{r['size']:>10} {r['input']:>5}: inference {r['inf_6']:.0f} ms; e2e/inference "
                      f"1 output {r['e2e_1'] / r['inf_1']:.2f}, 6 outputs {r['e2e_6'] / r['inf_6']:.2f}; "
                      f"non-inference share (6 outputs) {(r['e2e_6'] - r['inf_6']) / r['inf_6'] * 100:.0f} % "
                      f"(inside the node {(r['node_6'] - r['inf_6']) / r['inf_6'] * 100:.0f} %); "
                      f"throughput 1 output {r['fps_1']:.1f} fps, 6 outputs {r['fps_6']:.1f} fps", flush=True)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    node.destroy_node()
    rclpy.shutdown()
    for w, h in [tuple(int(v) for v in sz.split("x")) for sz in args.sizes.split(",")]:
        print(f"array -> Image.data at {w}x{h} (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in fill_paths(w, h).items()))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="", help="model file (default: the bundled one)")
    ap.add_argument("--runtime", default="onnxruntime", help="runtime parameter of the node")
    ap.add_argument("--input-qos", default="reliable",
                    help="node's input_qos: large best-effort frames need bigger DDS socket buffers (docs/ros2.md)")
    ap.add_argument("--sizes", default="640x480,1024x512,2048x1024")
    ap.add_argument("--frames", type=int, default=10, help="frames per latency measurement")
    ap.add_argument("--seconds", type=float, default=6.0, help="seconds per throughput measurement")
    run(ap.parse_args())
