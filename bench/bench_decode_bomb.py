"""Peak memory of `pebal replay` on a recording with one decompression bomb among good frames.

    python3 bench/bench_decode_bomb.py                      # a 12000x12000 PNG bomb (140 KB)
    python3 bench/bench_decode_bomb.py --bomb 20000x20000 --frames 10

Writes two MCAP recordings of the same good PNG frames (CompressedImage, 512x256), one of them with
a PNG bomb in the middle (a valid 140 KB PNG declaring 12000x12000 grey pixels), replays each with
the bundled model in its own `pebal replay` process and prints, for each, the peak RSS of that
process (getrusage of the child), the size of the result bag and what replay did with the bomb
frame; then the ratios bomb / clean. With the decode cap (input.max_decoded_pixels, 8192x8192 by
default) the bomb is refused from its header and both runs cost the same.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "test"))

from hostile_images import png_bomb  # noqa: E402
from pebal_ros.replay.bag import BagWriter, make_typestore  # noqa: E402
from pebal_ros.replay.recording import COMPRESSED, START_NS, _header, compressed_message  # noqa: E402

TOPIC = "/camera/image_raw/compressed"


def write_bag(path: Path, frames: int, bomb: bytes | None) -> None:
    store = make_typestore()
    rng = np.random.default_rng(0)
    with BagWriter(path, store) as bag:
        bag.add_topic(TOPIC, COMPRESSED)
        for i in range(frames):
            stamp = START_NS + i * 100_000_000
            if bomb is not None and i == frames // 2:
                msg = store.types[COMPRESSED](header=_header(store, stamp, "camera"), format="png",
                                              data=np.frombuffer(bomb, np.uint8))
            else:
                img = np.clip(rng.normal(100, 30, (256, 512, 3)), 0, 255).astype(np.uint8)
                msg = compressed_message(store, img, stamp, "camera", "png")
            bag.write(TOPIC, stamp, msg)


def replay(bag: Path, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "pebal_ros.cli", "replay", str(bag), "--out", str(out), "--no-progress",
           "--threads", "1", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    text = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    result = out / "result_bag"
    size = sum(f.stat().st_size for f in result.rglob("*") if f.is_file()) if result.exists() else 0
    summary = out / "report" / "summary.json"
    det = json.loads(summary.read_text())["deterministic"] if summary.is_file() else {}
    topic = (det.get("topics") or [{}])[0]
    return {"exit": proc.returncode, "peak_rss_mb": usage.ru_maxrss / 1024, "result_bag_mb": size / 2**20,
            "processed": topic.get("processed"), "skipped": topic.get("skip_reasons"), "tail": text[-600:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bomb", default="12000x12000", help="declared HxW of the PNG bomb")
    ap.add_argument("--frames", type=int, default=9, help="frames in each recording (the bomb replaces the middle one)")
    ap.add_argument("replay_args", nargs="*", help="extra `pebal replay` arguments (after --)")
    args = ap.parse_args()
    h, w = (int(v) for v in args.bomb.lower().split("x"))
    bomb = png_bomb(h, w)
    with tempfile.TemporaryDirectory(prefix="pebal_bomb_") as tmp:
        root = Path(tmp)
        write_bag(root / "clean", args.frames, None)
        write_bag(root / "bomb", args.frames, bomb)
        runs = {name: replay(root / name, root / f"out_{name}", args.replay_args) for name in ("clean", "bomb")}
    print(f"PNG bomb: {len(bomb) / 1024:.0f} KB declaring {w}x{h}; {args.frames} frames of 512x256 per recording")
    for name, r in runs.items():
        print(f"{name:6s} exit {r['exit']}  peak RSS {r['peak_rss_mb']:7.0f} MB  result bag {r['result_bag_mb']:7.1f} MB  "
              f"processed {r['processed']}  skipped {r['skipped']}")
        if r["exit"] not in (0, 1):
            print(r["tail"])
    c, b = runs["clean"], runs["bomb"]
    print(f"bomb / clean: peak RSS x{b['peak_rss_mb'] / c['peak_rss_mb']:.2f}, "
          f"result bag x{b['result_bag_mb'] / max(c['result_bag_mb'], 1e-9):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
