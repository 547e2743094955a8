"""Replay throughput relative to pure inference throughput on the same frames.

    python3 bench/bench_replay.py                       # default model, 60 frames of 512x256
    python3 bench/bench_replay.py --model m.onnx --frames 100 --size 1024x512 --repeats 3

Pure inference: ``runtime.infer`` on the frames already decoded and at the network's input size,
back to back (the floor any replay can reach). Replay: ``replay_bag`` on an MCAP recording of the
same frames with every output the node publishes (read + CDR decode, pipeline incl. overlay and
regions, CDR encode of 6 messages per frame, MCAP write). The runs alternate and the best of
``--repeats`` is kept for each, so a busy machine penalises both alike. Prints the overhead of
replay over inference (aim: under 10 %) and where the extra time goes.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pebal_ros.replay.model import default_threshold, open_runtime  # noqa: E402
from pebal_ros.replay.recording import write_recording  # noqa: E402
from pebal_ros.replay.replay import ReplayOptions, replay_bag  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: the bundled model via ONNX Runtime")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--size", default="512x256", help="camera WxH (default 512x256)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto (GPU: ONNX Runtime CUDA EP or a .engine)")
    ap.add_argument("--threshold", type=float, default=None, help="default: the model's")
    ap.add_argument("--no-writer-thread", action="store_true", help="write the result bag inline")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))

    from pebal_ros.data.synthetic_scene import drive_sequence

    frames = [f.image for f in drive_sequence(0, args.frames, (w, h))]
    kind = "onnxruntime" if args.model is None or args.model.endswith((".pt", ".pth", ".onnx")) else None
    rt = open_runtime(args.model, kind=kind, device=args.device, threads=args.threads)
    thr = default_threshold(rt) if args.threshold is None else args.threshold
    size = rt.input_size
    import cv2
    net_frames = [f if not size or tuple(size) == (h, w) else cv2.resize(f, (size[1], size[0])) for f in frames]
    tmp = Path(tempfile.mkdtemp(prefix="pebal_bench_"))
    try:
        write_recording(tmp / "bag", ((f, None) for f in frames), label_topic=None)
        for f in net_frames[:3]:
            rt.infer(f, thr)                                   # warm-up
        infer_s, replay_s, loop_s, infer_cpu, replay_cpu = [], [], [], [], []
        summary = None
        for r in range(args.repeats):
            t, c = time.perf_counter(), time.process_time()
            for f in net_frames:
                rt.infer(f, thr)
            infer_s.append(time.perf_counter() - t)
            infer_cpu.append(time.process_time() - c)
            out = tmp / f"out{r}"
            t, c = time.perf_counter(), time.process_time()
            res = replay_bag(tmp / "bag", rt, out, ReplayOptions(threshold=thr, progress=False,
                                                                   writer_thread=not args.no_writer_thread))
            replay_s.append(time.perf_counter() - t)
            replay_cpu.append(time.process_time() - c)
            loop_s.append(res.summary["timing"]["wall_s"])
            summary = res.summary
            shutil.rmtree(out)
        n = len(frames)
        fi, fr, fl = n / min(infer_s), n / min(replay_s), n / min(loop_s)
        overhead_loop = min(loop_s) / min(infer_s) - 1
        overhead_all = min(replay_s) / min(infer_s) - 1
        # CPU seconds of this process (all its threads): far less disturbed by other load on the machine.
        overhead_cpu = min(replay_cpu) / min(infer_cpu) - 1
        lat = summary["timing"]["latency_ms"]
        inf = summary["timing"]["inference_ms"]
        figures = {
            "frames": n, "camera": f"{w}x{h}", "network_input": list(size) if size else None,
            "model": summary["deterministic"]["runtime"]["model"], "threads": args.threads,
            "inference_fps": fi, "replay_loop_fps": fl, "replay_total_fps": fr,
            "overhead_loop": overhead_loop, "overhead_with_report": overhead_all,
            "overhead_cpu_time_with_report": overhead_cpu,
            "anomaly_fraction_mean": summary["deterministic"]["anomaly"]["mean_fraction"],
            "per_frame_ms": {"inference_p50": inf.get("p50"), "replay_frame_p50": lat.get("p50")},
        }
        print(f"model {figures['model']}, {n} frames {w}x{h}, network input {size}, best of {args.repeats}")
        print(f"  pure inference         {fi:7.2f} frames/s")
        print(f"  replay (read, pipeline, encode, write)  {fl:7.2f} frames/s  -> overhead {100 * overhead_loop:+.1f} %")
        print(f"  replay incl. report    {fr:7.2f} frames/s  -> overhead {100 * overhead_all:+.1f} %")
        print(f"  CPU time, replay incl. report vs inference: overhead {100 * overhead_cpu:+.1f} %")
        print(f"  ratio replay/inference throughput: {fl / fi:.3f}  (mean anomalous fraction "
              f"{100 * figures['anomaly_fraction_mean']:.1f} %)")
        st = summary["timing"]["stages_ms_per_frame"]
        inf_ms = st.get("pipeline_inference", 0.0)
        bag_io = st.get("cdr_decode_input", 0) + st.get("cdr_encode_and_write", 0) + st.get("bag_read_and_other", 0)
        node_work = sum(st.get(f"pipeline_{k}", 0) for k in ("decode", "preprocess", "postprocess", "encode"))
        figures["stages_ms_per_frame"] = st
        figures["bag_io_cdr_over_inference"] = bag_io / inf_ms if inf_ms else None
        figures["pipeline_non_inference_over_inference"] = node_work / inf_ms if inf_ms else None
        print("  per frame (last replay): " + ", ".join(f"{k} {v:.2f} ms" for k, v in st.items()))
        print(f"  bag I/O + CDR decode/encode + write: {100 * figures['bag_io_cdr_over_inference']:.1f} % of "
              f"inference; the node's own pre/post-processing and message building: "
              f"{100 * figures['pipeline_non_inference_over_inference']:.1f} %")
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
