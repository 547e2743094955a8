"""Shared helpers of the bench/ scripts: building the network, timing, machine description."""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {cores} cores usable, {gpu}; torch {torch.__version__}, Python {platform.python_version()}"


def network(arch: str, model: str | None = None, s: float = 2.0) -> torch.nn.Module:
    """A checkpoint if given, else a freshly initialised network (speed does not depend on weights)."""
    from pebal_ros.models import build_model, load_model
    if model:
        return load_model(model, map_location="cpu").eval()
    torch.manual_seed(0)
    kwargs = {"s": s} if arch == "espnetv2" else {}
    net = build_model(arch, **kwargs)
    if not getattr(net, "has_abstention", False):
        from pebal_ros.models import add_abstention
        net = add_abstention(net)
    return net.eval()


def timeit(fn: Callable[[], object], iters: int, warmup: int = 1, sync: Callable[[], None] | None = None) -> dict:
    """Median/min wall time of ``fn`` in milliseconds over ``iters`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "iters": iters}


def parse_hw(text: str) -> tuple[int, int]:
    from pebal_ros.export.onnx import parse_hw as p
    return p(text)
