"""The detector node over real DDS (loopback), driven by a real rclpy camera publisher.

Per camera size (640x480, 1024x512, 2048x1024), input (rgb8, JPEG) and set of subscribed outputs
(status; status + mask; all 6), each with a fresh node, in one run: the node's own non-inference
work per frame (deserialize, decode, pre/post-processing, encoding, publishing: medians from its
/diagnostics) as a share of its inference time, end-to-end latency (camera stamp -> status
received) against inference, and throughput with a 30 Hz camera. Also times the ways of filling an
rclpy ``uint8[]`` field from an array (the node uses the fastest correct one).

Needs a sourced workspace (or run it through test/ros_env.py's environment):
    python3 bench/bench_ros_dds.py [--model M] [--frames 10] [--seconds 6]
"""
from __future__ import annotations

import argparse
import array
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rclpy
from ament_index_python.packages import get_package_prefix
from diagnostic_msgs.msg import DiagnosticArray
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


@contextlib.contextmanager
def detector(args, compressed: bool, outputs: list[str]):
    """A fresh detector_node process (so its /diagnostics medians cover this configuration only)."""
    exe = Path(get_package_prefix("pebal_ros")) / "lib" / "pebal_ros" / "detector_node"
    params = ["-p", "device:=cpu", "-p", f"input_type:={'compressed' if compressed else 'raw'}",
              "-r", f"image{'/compressed' if compressed else ''}:=/bench/image_raw{'/compressed' if compressed else ''}",
              "-p", f"input_qos:={args.input_qos}", "-p", "diagnostics_period:=0.5",
              "-p", f"outputs:=[{','.join(outputs)}]", "-p", f"output_resolution:={args.output_resolution}"]
    if args.model:
        params += ["-p", f"model:={args.model}"]
    if args.runtime:
        params += ["-p", f"runtime:={args.runtime}"]
    proc = subprocess.Popen([str(exe), "--ros-args", *params], env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


SHARED_FRAME = Path(__file__).resolve().parents[2] / "shared" / "data" / "cityscapes" / "frankfurt_000000_000294_leftImg8bit.png"


def camera_frame(w: int, h: int) -> tuple[np.ndarray, str]:
    """A real street frame (what JPEG decoding and the status' regions meet on a vehicle), else noise."""
    import cv2

    if SHARED_FRAME.is_file():
        bgr = cv2.imread(str(SHARED_FRAME), cv2.IMREAD_COLOR)
        return np.ascontiguousarray(cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)[..., ::-1]), "a Cityscapes frame"
    # random pixels are the worst case for JPEG (entropy decoding dominates): a few ms more per frame
    return np.random.default_rng(w).integers(0, 256, (h, w, 3), dtype=np.uint8), "random pixels (no ../shared/data)"


def measure(node, args, w: int, h: int, compressed: bool, names: list[str]) -> dict[str, float]:
    """Latency (one frame at a time), throughput (30 Hz camera) and the node's own breakdown."""
    img, _ = camera_frame(w, h)
    raw = img.tobytes()
    pub = node.create_publisher(CompressedImage if compressed else Image,
                                f"/bench/image_raw{'/compressed' if compressed else ''}", QOS)

    def frame():
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

    got: list[tuple[float, PebalStatus]] = []
    diag: list[dict[str, str]] = []
    # image outputs subscribed raw (serialised bytes): the node still builds, serialises and sends
    # them, but this process does not spend its time deserialising them
    subs = [node.create_subscription(OUTPUT_TYPES[n], f"/pebal/{n}",
                                     (lambda m, n=n: got.append((time.time(), m)) if n == "status" else None),
                                     QOS, raw=n != "status") for n in names]
    subs.append(node.create_subscription(
        DiagnosticArray, "/diagnostics",
        lambda m: diag.extend({kv.key: kv.value for kv in st.values} for st in m.status), 10))
    try:
        spin_until(node, lambda: pub.get_subscription_count() > 0, 30)
        # warm up (model load, first-frame allocations), then one frame at a time: latency
        if not spin_until(node, lambda: len(got) >= 2, 120, step=lambda: pub.publish(frame()), period=0.5):
            raise SystemExit(f"the node did not answer at {w}x{h} (does the model load? try --model "
                             "an .onnx from `pebal export`)")
        lat, inf = [], []
        for _ in range(args.frames):
            got.clear()
            pub.publish(frame())
            spin_until(node, lambda: bool(got), 30, period=0.005)
            if got:
                t_recv, st = got[0]
                lat.append((t_recv - (st.header.stamp.sec + st.header.stamp.nanosec * 1e-9)) * 1e3)
                inf.append(st.inference_latency_ms)
        # the node's own accounting of the same frames (medians per stage)
        diag.clear()
        spin_until(node, lambda: any("non_inference_ms_p50" in d for d in diag), 10)
        own = next(d for d in reversed(diag) if "non_inference_ms_p50" in d)
        # throughput: publish as fast as the camera could (30 Hz) for a while
        got.clear()
        t0 = time.time()
        spin_until(node, lambda: False, args.seconds, step=lambda: pub.publish(frame()), period=1 / 30)
        fps = len(got) / (time.time() - t0)
    finally:
        for sub in subs:
            node.destroy_subscription(sub)
        node.destroy_publisher(pub)
    row = {"e2e": float(np.median(lat)), "inf": float(np.median(inf)), "fps": fps,
           "inf_node": float(own["inference_ms_p50"]), "work": float(own["non_inference_ms_p50"])}
    row.update({k[len("stage_"):-len("_ms_p50")]: float(v) for k, v in own.items() if k.startswith("stage_")})
    return row


def run(args) -> None:
    rclpy.init()
    node = rclpy.create_node("pebal_bench_camera")
    sets = {"status": ["status"], "status+mask": ["status", "anomaly_mask"], "all 6": list(OUTPUT_TYPES)}
    print(f"camera: {camera_frame(64, 32)[1]}; node outputs at {args.output_resolution} resolution; 'share' = the "
          "node's own non-inference work "
          "(deserialize, decode, pre/post-processing, encoding, publishing) / inference, from its /diagnostics")
    for compressed in [kind == "jpeg" for kind in args.inputs.split(",")]:
        for w, h in [tuple(int(v) for v in sz.split("x")) for sz in args.sizes.split(",")]:
            for label, names in sets.items():
                with detector(args, compressed, names):
                    r = measure(node, args, w, h, compressed, names)
                stages = ", ".join(f"{k} {r[k]:.1f}" for k in
                                   ("deserialize", "decode", "preprocess", "postprocess", "encode", "publish") if k in r)
                print(f"{w}x{h} {'JPEG' if compressed else 'rgb8':>4} {label:>11}: inference {r['inf_node']:.1f} ms, "
                      f"node's other work {r['work']:.1f} ms = share {100 * r['work'] / r['inf_node']:.0f} % "
                      f"({stages} ms); e2e/inference {r['e2e'] / r['inf']:.2f}; {r['fps']:.1f} fps", flush=True)
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
    ap.add_argument("--output-resolution", default="camera", choices=("camera", "network"))
    ap.add_argument("--inputs", default="rgb8,jpeg", help="camera formats to drive the node with: rgb8, jpeg")
    ap.add_argument("--frames", type=int, default=10, help="frames per latency measurement")
    ap.add_argument("--seconds", type=float, default=6.0, help="seconds per throughput measurement")
    run(ap.parse_args())
