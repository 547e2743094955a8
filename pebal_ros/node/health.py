"""The node's health, ROS-free: what happened to its recent frames, and the level that follows.

The totals in /diagnostics count since start-up, so one bad frame an hour ago would keep a node
at WARN forever and a node whose every frame fails now would look no worse. The level therefore
comes from a recent window only (:class:`OutcomeWindow`, default 10 s): OK while the recent frames
succeed, WARN when some of them failed, ERROR when none succeeded or no model is loaded
(:func:`assess`). The totals stay in the diagnostics as values.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

# diagnostic_msgs/DiagnosticStatus levels
OK, WARN, ERROR = 0, 1, 2
OUTCOMES = ("ok", "bad", "failed", "idle")   # processed / bad frame / processing failed / skipped, nobody listens


class OutcomeWindow:
    """How many frames ended each way in the last ``seconds`` (thread-safe, O(1) memory).

    Counts are kept in ``buckets`` time slices, so the window's far edge is exact to one slice
    (a tenth of the window by default) whatever the frame rate."""

    def __init__(self, seconds: float = 10.0, buckets: int = 10):
        if seconds <= 0 or buckets < 1:
            raise ValueError(f"need seconds > 0 and buckets >= 1, got {seconds}, {buckets}")
        self.seconds = float(seconds)
        self._width = self.seconds / buckets
        self._slices: dict[int, list[int]] = {}     # slice index -> counts per outcome
        self._lock = threading.Lock()

    def add(self, outcome: str, now: float | None = None) -> None:
        i = OUTCOMES.index(outcome)
        k = math.floor((time.perf_counter() if now is None else now) / self._width)
        with self._lock:
            self._slices.setdefault(k, [0] * len(OUTCOMES))[i] += 1
            if len(self._slices) > 2 * (self.seconds / self._width) + 2:
                self._prune(k)

    def _prune(self, k: int) -> None:
        oldest = k - round(self.seconds / self._width) + 1
        for key in [key for key in self._slices if key < oldest]:
            del self._slices[key]

    def counts(self, now: float | None = None) -> dict[str, int]:
        """Frames per outcome whose slice lies within the last ``seconds``."""
        k = math.floor((time.perf_counter() if now is None else now) / self._width)
        oldest = k - round(self.seconds / self._width) + 1
        out = [0] * len(OUTCOMES)
        with self._lock:
            self._prune(k)
            for key, c in self._slices.items():
                if oldest <= key <= k:
                    out = [a + b for a, b in zip(out, c)]
        return dict(zip(OUTCOMES, out))


@dataclass(frozen=True)
class Health:
    level: int
    message: str


def assess(recent: dict[str, int], received: int, window_s: float, rate_hz: float, *,
           model_error: str | None = None, last_error: str = "", loading: str = "",
           uncalibrated_threshold: float | None = None) -> Health:
    """The level and one-line message of one camera's diagnostics status.

    ``recent``: :meth:`OutcomeWindow.counts`; ``received``: frames received since start-up;
    ``model_error``: why no model is loaded (None: one is); ``loading``: the model being loaded in
    the background, if any (the frames still run on the current one); ``uncalibrated_threshold``:
    the threshold in use when it was never calibrated for the model (a WARN on an otherwise OK node).
    """
    suffix = f"; loading {loading}" if loading else ""
    if model_error is not None:
        return Health(ERROR, f"no model loaded: {model_error}{suffix}")
    ok, bad, failed, idle = (recent.get(k, 0) for k in OUTCOMES)
    span = f"the last {window_s:g} s"
    if received == 0:
        return Health(WARN, f"no frames received yet{suffix}")
    if ok + bad + failed + idle == 0:
        return Health(WARN, f"no frames in {span}{suffix}")
    last = f"; last: {last_error}" if last_error else ""
    if bad + failed and not ok:
        return Health(ERROR, f"no frame succeeded in {span}: {bad} bad, {failed} failed{last}{suffix}")
    if bad + failed:
        return Health(WARN, f"{bad + failed} of {ok + bad + failed} frames in {span} failed "
                            f"({bad} bad, {failed} failed){last}{suffix}")
    message = f"{rate_hz:.1f} Hz" if ok else "idle: no subscribers"
    if uncalibrated_threshold is not None:
        return Health(WARN, f"{message}; threshold {uncalibrated_threshold:.4g} not calibrated for this model "
                            f"(run pebal calibrate){suffix}")
    return Health(OK, message + suffix)
