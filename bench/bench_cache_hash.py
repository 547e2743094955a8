#!/usr/bin/env python3
"""What the verified cache costs at start-up (issue 17): hashing the source model for the cache key
and verifying the cached entry against its recorded SHA-256, every time a tool or the node opens a
checkpoint on ONNX Runtime.

Measured in one run: SHA-256 of the bundled checkpoint and of a ``--size-mb`` file of random bytes
(a large real checkpoint, e.g. WRN38 is ~530 MB), the first time in a process and again (remembered
while the file is unchanged); and the whole verified lookup of the bundled model's cached export
(manifest read, entry opened without following links, its SHA-256 compared), the part every start
pays. Nothing is exported: run ``pebal infer`` or ``pebal demo`` once first to fill the cache.

    python3 bench/bench_cache_hash.py
    python3 bench/bench_cache_hash.py --size-mb 530 --repeat 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import machine   # noqa: E402  (bench/ on sys.path)


def _timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mb", type=int, default=300, help="size of the large file to hash (MB)")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    args = p.parse_args()

    from pebal_ros import cache
    from pebal_ros.model_settings import resolve_settings
    from pebal_ros.open_model import export_key
    from pebal_ros.paths import bundled_model

    print(machine())
    bundled = bundled_model()

    def fresh(path: Path) -> None:      # what a new process pays: nothing remembered
        cache._DIGESTS.clear()
        cache.file_sha256(path)

    size = bundled.stat().st_size / 1e6
    print(f"sha256 of the bundled model ({size:.1f} MB): {_timed(lambda: fresh(bundled), args.repeat) * 1e3:.2f} ms "
          f"first in a process, {_timed(lambda: cache.file_sha256(bundled), args.repeat) * 1e6:.1f} µs again")
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big.pt"
        with open(big, "wb") as fh:
            for _ in range(args.size_mb):
                fh.write(os.urandom(1 << 20))
        s = _timed(lambda: fresh(big), args.repeat)
        print(f"sha256 of a {args.size_mb} MB file: {s:.3f} s first in a process ({args.size_mb / s:.0f} MB/s), "
              f"{_timed(lambda: cache.file_sha256(big), args.repeat) * 1e6:.1f} µs again")
    settings = resolve_settings(None, runtime="onnxruntime")
    key = export_key(settings, tuple(settings.inference.input_size))
    entry = cache.lookup("onnx", key)
    if entry is None:
        print(f"no cached export of {bundled.name} in {cache.cache_dir()}: run `pebal infer` or `pebal demo` once, "
              "then run this again for the lookup figure")
        return
    mb = entry.stat().st_size / 1e6
    t = _timed(lambda: (cache._DIGESTS.clear(), cache.lookup("onnx", export_key(settings, (128, 256)))), args.repeat)
    print(f"verified lookup of the cached export ({mb:.1f} MB, key from the model's sha256): {t * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
