#!/usr/bin/env python3
"""Fleet replay on Ray against the one-machine path, and the per-frame costs for sizing a cluster.

Part 1 (engine): the same folder of bags replayed with the bundled model by
  `pebal replay --jobs 2`, `--ray --ray-workers 2` and `--ray --ray-workers 1` (a local Ray cluster
  that the command starts itself), each in its own process, one after the other in one run; prints
  wall times (start-up included), frames/s and the ratios.
Part 2 (per frame, one core): reading a compressed camera bag and decoding its CDR messages, and
  decoding the JPEG at full size and at the reduced DCT scale the pipeline uses for a network input
  of 512x1024 and 128x256 -- for a real 2048x1024 Cityscapes frame from ../shared/data when present,
  else a synthetic street.

  python3 bench/bench_fleet.py [--bags 6 --frames 60] [--skip-engine] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _run(args: list[str], env: dict[str, str]) -> tuple[float, int]:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pebal_ros.cli", *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"pebal {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return wall, r.returncode


def _frames_and_bag_walls(out: Path) -> tuple[int, float]:
    frames, walls = 0, 0.0
    for s in out.glob("*/report/summary.json"):
        d = json.loads(s.read_text())
        frames += d["deterministic"]["frames"]["processed"]
        walls += d["timing"]["wall_s"]
    return frames, walls


def engine(n_bags: int, n_frames: int, work: Path) -> dict:
    from pebal_ros.demo import write_sample_recording

    bags = work / "bags"
    for i in range(n_bags):
        write_sample_recording(bags / f"drive_{i:02d}", n_frames, (512, 256), fmt="compressed", seed=i, progress=False)
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(REPO))
    runs = {"jobs2": ["--jobs", "2"], "ray2": ["--ray", "--ray-workers", "2"], "ray1": ["--ray", "--ray-workers", "1"]}
    out: dict = {}
    for name, extra in runs.items():
        wall, _ = _run(["replay", str(bags), "--out", str(work / name), "--no-progress", *extra], env)
        frames, bag_walls = _frames_and_bag_walls(work / name)
        out[name] = {"wall_s": wall, "frames": frames, "frames_per_s": frames / wall, "bag_wall_sum_s": bag_walls}
        print(f"{name:6s}: {frames} frames in {wall:6.1f} s wall = {frames / wall:5.1f} frames/s "
              f"(the bags' own replay time summed: {bag_walls:.1f} s)", flush=True)
    out["ratio_ray2_over_jobs2_wall"] = out["ray2"]["wall_s"] / out["jobs2"]["wall_s"]
    out["throughput_ray2_over_ray1"] = out["ray2"]["frames_per_s"] / out["ray1"]["frames_per_s"]
    print(f"Ray (2 workers) / --jobs 2 wall: {out['ratio_ray2_over_jobs2_wall']:.2f}x; "
          f"Ray 2 workers / 1 worker throughput: {out['throughput_ray2_over_ray1']:.2f}x", flush=True)
    return out


def _camera_frame() -> tuple:
    import cv2
    import numpy as np

    shared = Path(os.environ.get("PEBAL_SHARED_DATA", REPO.parent / "shared" / "data")) / "cityscapes"
    real = sorted(shared.glob("*_leftImg8bit.png")) if shared.is_dir() else []
    if real:
        bgr = cv2.imread(str(real[0]), cv2.IMREAD_COLOR)
        return bgr, f"real Cityscapes frame {real[0].name}"
    from pebal_ros.data.synthetic_scene import drive_sequence
    f = next(iter(drive_sequence(0, 1, (2048, 1024))))
    return cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR), "synthetic street 2048x1024"


def per_frame(work: Path, n: int = 60) -> dict:
    import cv2
    import numpy as np

    from pebal_ros.replay.bag import BagReader, BagWriter, make_typestore
    from pebal_ros.replay.recording import START_NS

    bgr, what = _camera_frame()
    h, w = bgr.shape[:2]
    jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    store = make_typestore()
    Compressed = store.types["sensor_msgs/msg/CompressedImage"]
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    bag = work / "camera_bag"
    with BagWriter(bag, store) as wr:
        wr.add_topic("/cam/compressed", "sensor_msgs/msg/CompressedImage")
        for i in range(n):
            t = START_NS + i * 33_333_333
            msg = Compressed(header=Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id="cam"),
                             format="jpeg", data=np.frombuffer(jpeg, np.uint8))
            wr.write("/cam/compressed", t, msg)
    os.sync()

    def best(fn, repeats: int = 3) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    def read_all() -> None:
        with BagReader(bag) as r:
            st = make_typestore(r.topics.values())
            for m in r.messages():
                st.deserialize_cdr(m.data, m.msgtype)

    res = {"frame": what, "size": [w, h], "jpeg_kb": len(jpeg) / 1024, "cv2_threads": cv2.getNumThreads()}
    cv2.setNumThreads(1)
    res["read_and_cdr_ms"] = best(read_all) / n * 1e3
    buf = np.frombuffer(jpeg, np.uint8)
    res["jpeg_full_ms"] = best(lambda: [cv2.imdecode(buf, cv2.IMREAD_COLOR) for _ in range(10)]) / 10 * 1e3
    res["jpeg_half_ms"] = best(lambda: [cv2.imdecode(buf, cv2.IMREAD_REDUCED_COLOR_2) for _ in range(10)]) / 10 * 1e3
    res["jpeg_eighth_ms"] = best(lambda: [cv2.imdecode(buf, cv2.IMREAD_REDUCED_COLOR_8) for _ in range(10)]) / 10 * 1e3
    print(f"per frame, one core ({what}, {w}x{h}, JPEG q90 {res['jpeg_kb']:.0f} kB): bag read + CDR decode "
          f"{res['read_and_cdr_ms']:.2f} ms; JPEG decode full {res['jpeg_full_ms']:.1f} ms, 1/2 scale (network "
          f"512x1024) {res['jpeg_half_ms']:.1f} ms, 1/8 scale (network 128x256) {res['jpeg_eighth_ms']:.1f} ms",
          flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bags", type=int, default=6)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--skip-engine", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from bench.common import machine
    print(machine(), flush=True)
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_fleet_") as tmp:
        if not args.skip_engine:
            out["engine"] = engine(args.bags, args.frames, Path(tmp))
        out["per_frame"] = per_frame(Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
