"""Real-time plumbing of the node, ROS-free: the latest-frame mailboxes and the running statistics.

Inference never builds a backlog: the subscription callback only drops the frame into a one-deep
mailbox per camera (replacing, and counting as dropped, a frame the worker has not taken yet) and
the worker thread always takes the newest frame of each camera.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..textcap import capped
from .health import OutcomeWindow


@dataclass(frozen=True)
class SlotCounts:
    received: int
    dropped: int


class LatestFrames:
    """One-deep, thread-safe mailboxes, one per camera, behind one condition.

    ``put`` never blocks; ``take_all`` waits until any camera has a frame and returns the newest
    frame of every camera that has one, so a worker serving several cameras runs them together
    (one batched inference per tick) and each camera's frames are never more than one tick old.
    """

    def __init__(self, cameras: Sequence[str] = ("",)) -> None:
        if len(set(cameras)) != len(cameras) or not cameras:
            raise ValueError(f"cameras must be distinct and at least one, got {list(cameras)}")
        self._cond = threading.Condition()
        self._items: dict[str, tuple[Any, float]] = {}
        self._received = dict.fromkeys(cameras, 0)
        self._dropped = dict.fromkeys(cameras, 0)
        self._closed = False
        self.cameras = tuple(cameras)

    def put(self, camera: str, msg: Any, received_at: float | None = None) -> bool:
        """Store ``msg`` for ``camera``; False when it replaced a frame nobody took (that one is dropped)."""
        with self._cond:
            replaced = camera in self._items
            if replaced:
                self._dropped[camera] += 1
            self._received[camera] += 1
            self._items[camera] = (msg, time.perf_counter() if received_at is None else received_at)
            self._cond.notify()
            return not replaced

    def take_all(self, timeout: float | None = None) -> list[tuple[str, Any, float]]:
        """[(camera, msg, received_at)] in camera order; [] on timeout or after ``close``."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._items) or self._closed, timeout) or self._closed:
                return []
            items, self._items = self._items, {}
        return [(c, *items[c]) for c in self.cameras if c in items]

    def counts(self, camera: str = "") -> SlotCounts:
        with self._cond:
            return SlotCounts(self._received[camera], self._dropped[camera])

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


@dataclass
class StatsSnapshot:
    received: int
    processed: int
    dropped: int
    bad_frames: int
    failed: int
    skipped_idle: int
    rate_hz: float                 # processed frames per second over the window
    e2e_ms: dict[str, float]       # p50/p90/p99/max of end-to-end latency over the window
    inference_ms: dict[str, float]
    last_error: str
    stages_ms: dict[str, float] = field(default_factory=dict)   # median per non-inference stage
    non_inference_ms: float = 0.0   # median of the node's own work besides inference, per frame
    frames_per_inference: float = 0.0   # mean number of frames (cameras) that shared an inference call
    recent: dict[str, int] = field(default_factory=dict)   # frames per outcome in the last window_s
    window_s: float = 0.0


class RunningStats:
    """Counters plus a sliding window of latencies for /diagnostics (thread-safe); the outcomes of
    the last ``health_window_s`` seconds of frames set the health level (pebal_ros.node.health)."""

    PERCENTILES = (50, 90, 99)

    def __init__(self, window: int = 300, health_window_s: float = 10.0):
        self._lock = threading.Lock()
        self._e2e: deque[float] = deque(maxlen=window)
        self._inf: deque[float] = deque(maxlen=window)
        self._times: deque[float] = deque(maxlen=window)
        self._stages: dict[str, deque[float]] = {}
        self._work: deque[float] = deque(maxlen=window)
        self._batch: deque[int] = deque(maxlen=window)
        self._window = window
        self.processed = 0
        self.bad_frames = 0
        self.failed = 0
        self.skipped_idle = 0
        self.last_error = ""
        self.recent = OutcomeWindow(health_window_s)

    def record(self, e2e_ms: float, inference_ms: float, stages: dict[str, float] | None = None,
               now: float | None = None, batch: int = 1) -> None:
        """One processed frame: its latency, inference time, the node's other work by stage (ms) and
        how many frames shared its inference call."""
        with self._lock:
            self.processed += 1
            self._batch.append(int(batch))
            self._e2e.append(e2e_ms)
            self._inf.append(inference_ms)
            self._times.append(time.perf_counter() if now is None else now)
            self.recent.add("ok", self._times[-1])
            if stages:
                for k, v in stages.items():
                    self._stages.setdefault(k, deque(maxlen=self._window)).append(v)
                self._work.append(sum(stages.values()))

    def record_bad(self, reason: str, now: float | None = None) -> None:
        with self._lock:
            self.bad_frames += 1
            self.last_error = capped(reason)   # a sender's text: never megabytes in every diagnostics message
        self.recent.add("bad", now)

    def record_failure(self, reason: str, now: float | None = None) -> None:
        with self._lock:
            self.failed += 1
            self.last_error = capped(reason)
        self.recent.add("failed", now)

    def record_idle(self, now: float | None = None) -> None:
        with self._lock:
            self.skipped_idle += 1
        self.recent.add("idle", now)

    @classmethod
    def _percentiles(cls, values: list[float]) -> dict[str, float]:
        if not values:
            return {}
        arr = np.asarray(values)
        out = {f"p{p}": float(v) for p, v in zip(cls.PERCENTILES, np.percentile(arr, cls.PERCENTILES))}
        out["max"] = float(arr.max())
        return out

    def snapshot(self, slot: SlotCounts, now: float | None = None, rate_window_s: float = 5.0) -> StatsSnapshot:
        now = time.perf_counter() if now is None else now
        with self._lock:
            recent = [t for t in self._times if now - t <= rate_window_s]
            if len(recent) >= 2:
                rate = (len(recent) - 1) / max(recent[-1] - recent[0], 1e-9)
            else:
                rate = 0.0
            return StatsSnapshot(
                received=slot.received, processed=self.processed, dropped=slot.dropped,
                bad_frames=self.bad_frames, failed=self.failed, skipped_idle=self.skipped_idle, rate_hz=rate,
                e2e_ms=self._percentiles(list(self._e2e)), inference_ms=self._percentiles(list(self._inf)),
                last_error=self.last_error,
                stages_ms={k: float(np.median(v)) for k, v in self._stages.items() if v},
                non_inference_ms=float(np.median(self._work)) if self._work else 0.0,
                frames_per_inference=float(np.mean(self._batch)) if self._batch else 0.0,
                recent=self.recent.counts(now), window_s=self.recent.seconds,
            )


def diagnostic_values(snap: StatsSnapshot, runtime_info: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, value) pairs for a diagnostic_msgs/DiagnosticStatus."""
    kv: list[tuple[str, str]] = [
        ("rate_hz", f"{snap.rate_hz:.2f}"),
        ("frames_received", str(snap.received)),
        ("frames_processed", str(snap.processed)),
        ("frames_dropped", str(snap.dropped)),
        ("frames_bad", str(snap.bad_frames)),
        ("frames_failed", str(snap.failed)),
        ("frames_skipped_no_subscribers", str(snap.skipped_idle)),
    ]
    if snap.window_s:   # what the health level is judged on (the counts above are since start-up)
        kv.append(("health_window_s", f"{snap.window_s:g}"))
        kv += [(f"recent_frames_{k}", str(v)) for k, v in snap.recent.items()]
    for name, d in (("latency_ms", snap.e2e_ms), ("inference_ms", snap.inference_ms)):
        for k, v in d.items():
            kv.append((f"{name}_{k}", f"{v:.2f}"))
    if snap.stages_ms:
        # what the node spends per frame besides inference (medians): where to look when it is slow
        for k, v in snap.stages_ms.items():
            kv.append((f"stage_{k}_ms_p50", f"{v:.2f}"))
        kv.append(("non_inference_ms_p50", f"{snap.non_inference_ms:.2f}"))
    if snap.frames_per_inference:
        kv.append(("frames_per_inference", f"{snap.frames_per_inference:.2f}"))
        inf = snap.inference_ms.get("p50", 0.0)
        if inf > 0:
            kv.append(("non_inference_share", f"{snap.non_inference_ms / inf:.3f}"))
    for k, v in runtime_info.items():
        kv.append((f"runtime_{k}", str(v)))
    if snap.last_error:
        kv.append(("last_error", snap.last_error))
    return kv
