#!/usr/bin/env python3
"""Benchmark: the detector node's per-frame work besides inference, as a fraction of inference.

Per frame the node decodes the camera message, pre-processes (resize to the network size if
needed), runs the runtime, post-processes (upsampling to camera size, regions, colours, overlay)
and encodes every output into message objects. This script times exactly that code
(``FramePipeline.process`` with every output requested, each serialised to CDR bytes as the node
publishes it, see pebal_ros/node/wire.py) against ``runtime.infer`` alone on the same frames, using
the fused ONNX model with ONNX Runtime. Handing the bytes to DDS is measured over real DDS by
bench/bench_ros_dds.py.

  python3 bench/bench_node_overhead.py                         # 1024x512 camera, bgr8, ESPNetv2 s=2
  python3 bench/bench_node_overhead.py --camera 1920x1080 --encoding bayer_rggb8
  python3 bench/bench_node_overhead.py --model models/pebal.onnx   # an exported model as is
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from common import machine, network, parse_hw

ENCODE = {
    "bgr8": lambda rgb: np.ascontiguousarray(rgb[..., ::-1]),
    "rgb8": lambda rgb: rgb,
    "mono8": lambda rgb: np.ascontiguousarray(rgb[..., 1]),
    "bayer_rggb8": lambda rgb: _mosaic(rgb),
}


def _mosaic(rgb: np.ndarray) -> np.ndarray:
    out = np.empty(rgb.shape[:2], np.uint8)
    out[0::2, 0::2] = rgb[0::2, 0::2, 0]
    out[0::2, 1::2] = rgb[0::2, 1::2, 1]
    out[1::2, 0::2] = rgb[1::2, 0::2, 1]
    out[1::2, 1::2] = rgb[1::2, 1::2, 2]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="fused .onnx to use as is (default: export ESPNetv2 at --network size)")
    ap.add_argument("--arch", default="espnetv2")
    ap.add_argument("--s", type=float, default=2.0, help="ESPNetv2 width multiplier")
    ap.add_argument("--network", type=parse_hw, default=(512, 1024), help="HEIGHTxWIDTH the model takes")
    ap.add_argument("--camera", type=parse_hw, default=None, help="camera HEIGHTxWIDTH (default: = network)")
    ap.add_argument("--encoding", default="bgr8", choices=sorted(ENCODE))
    ap.add_argument("--compressed", action="store_true", help="camera sends JPEG (CompressedImage)")
    ap.add_argument("--output-resolution", default="camera", choices=("camera", "network"))
    ap.add_argument("--anomaly-fraction", type=float, default=0.02,
                    help="set the threshold so this fraction of pixels is anomalous (an untrained network "
                         "flags almost everything at the default threshold; 1 = worst case for the regions)")
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()


    from pebal_ros.pipeline import FramePipeline, PipelineConfig
    from pebal_ros.pipeline.convert import encode_compressed
    from pebal_ros.node.wire import Wire
    from pebal_ros.pipeline.messages import OUTPUT_NAMES
    from pebal_ros.runtime.onnx import OnnxRuntime

    if args.model:
        path = Path(args.model)
    else:
        from pebal_ros.graph.fused import build_fused
        from pebal_ros.export.onnx import export_fused
        h, w = args.network
        path = Path(tempfile.mkdtemp(prefix="pebal_bench_")) / f"{args.arch}_{h}x{w}.onnx"
        print(f"exporting {args.arch} (s={args.s}) fused at {h}x{w} ...", flush=True)
        export_fused(build_fused(network(args.arch, None, args.s)), path, (h, w))
    rt = OnnxRuntime(path, device=args.device, threads=args.threads)
    net_hw = rt.input_size or args.network
    cam_h, cam_w = args.camera or net_hw

    wire = Wire(compressed_input=args.compressed)
    store = wire.factory.typestore
    rosbags_factory = wire.factory
    pipe = FramePipeline(rt, PipelineConfig(threshold=float(rt.describe().get("default_threshold", -10.0)),
                                            output_resolution=args.output_resolution), wire.factory)

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:cam_h, 0:cam_w]
    rgb = np.stack([(x * 255 // cam_w), (y * 255 // cam_h), ((x + y) % 256)], -1).astype(np.uint8)
    rgb = np.clip(rgb.astype(int) + rng.integers(-20, 20, rgb.shape), 0, 255).astype(np.uint8)
    hdr = rosbags_factory.header(1, 2, "camera")
    if args.compressed:
        fmt, payload = encode_compressed(rgb, "jpeg", quality=90)
        msg = store.types["sensor_msgs/msg/CompressedImage"](header=hdr, format=fmt, data=payload)
        in_desc = f"CompressedImage JPEG {payload.size / 1e3:.0f} kB"
    else:
        msg = rosbags_factory.image(hdr, ENCODE[args.encoding](rgb), args.encoding)
        in_desc = f"Image {args.encoding}"
    # what arrives at the node: the serialized frame
    raw_in = bytes(store.serialize_cdr(msg, wire.input_type))
    net_input = pipe._network_input(pipe.decode(msg)).copy()
    if args.anomaly_fraction < 1.0:
        score = rt.infer(net_input, 0.0).score
        pipe.cfg.threshold = float(np.quantile(score, 1.0 - args.anomaly_fraction))
    else:
        pipe.cfg.threshold = -1e30
    thr = pipe.cfg.threshold
    sent: list[bytes] = []

    def node_frame():
        """The node's worker for one frame, without DDS: bytes in, every output serialised to bytes."""
        sent.clear()
        t0 = time.perf_counter()
        m = wire.take(raw_in)
        t1 = time.perf_counter()
        res = pipe.process(m, outputs=OUTPUT_NAMES, emit=lambda name, out: sent.append(wire.serialize(name, out)))
        res.timings["deserialize"] = (t1 - t0) * 1e3
        return res

    # warm-up, then interleave so both see the same machine state
    for _ in range(2):
        rt.infer(net_input, thr)
        node_frame()
    t_inf, t_all, t_over = [], [], []
    stages: dict[str, list[float]] = {k: [] for k in ("deserialize", "decode", "preprocess", "postprocess",
                                                      "encode", "publish")}
    for _ in range(args.iters):
        t0 = time.perf_counter()
        rt.infer(net_input, thr)
        t_inf.append((time.perf_counter() - t0) * 1e3)
        res = node_frame()
        t_all.append(res.timings["total"] + res.timings["deserialize"])
        t_over.append(t_all[-1] - res.timings["inference"])
        for k in stages:
            stages[k].append(res.timings[k])

    med = statistics.median
    inf = med(t_inf)
    total = med(t_all)
    overhead = med(t_over)
    print(f"\nmachine: {machine()}")
    print(f"model {path.name} ({rt.name}, {args.threads} threads), network {net_hw[0]}x{net_hw[1]}, "
          f"camera {cam_h}x{cam_w} {in_desc}, outputs at {args.output_resolution} size, all 6 outputs, "
          f"{100 * args.anomaly_fraction:g} % anomalous pixels")
    print(f"{'inference alone (runtime.infer)':44s} {inf:8.2f} ms")
    print(f"{'node per-frame work (bytes in -> bytes out)':44s} {total:8.2f} ms")
    for k, v in stages.items():
        print(f"  {k:42s} {med(v):8.2f} ms")
    print(f"{'non-inference work':44s} {overhead:8.2f} ms = {100 * overhead / inf:5.1f} % of inference")
    print(f"({sum(len(b) for b in sent) / 1e6:.1f} MB of CDR per frame; 'publish' here is serialisation only)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
