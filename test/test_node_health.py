"""The node's ROS-free health and background loading: the level comes from the recent frames only;
a load runs on its own thread, one at a time, and its result (or one-line error) waits to be taken."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pebal_ros.node.health import ERROR, OK, WARN, Health, OutcomeWindow, assess
from pebal_ros.node.loader import BackgroundLoader, LoaderBusy, quick_model_check
from pebal_ros.node.worker import RunningStats, SlotCounts, diagnostic_values
from pebal_ros.textcap import MAX_ECHO_CHARS


def test_window_counts_only_the_last_seconds():
    w = OutcomeWindow(seconds=10.0)
    w.add("bad", now=100.0)
    for t in range(101, 106):
        w.add("ok", now=float(t))
    assert w.counts(now=105.5) == {"ok": 5, "bad": 1, "failed": 0, "idle": 0}
    assert w.counts(now=111.5) == {"ok": 4, "bad": 0, "failed": 0, "idle": 0}   # 100..101 left the window
    assert w.counts(now=200.0) == {"ok": 0, "bad": 0, "failed": 0, "idle": 0}
    with pytest.raises(ValueError):
        w.add("lost")


def test_window_memory_does_not_grow_with_the_frame_rate():
    w = OutcomeWindow(seconds=10.0, buckets=10)
    for i in range(100_000):       # 1 kHz of bad frames for 100 s
        w.add("bad", now=i / 1000)
    assert len(w._slices) <= 22
    assert w.counts(now=99.999)["bad"] == 10_000


def test_levels_follow_the_recent_frames():
    def level(recent, **kw):
        args = dict(received=100, window_s=10.0, rate_hz=30.0)
        args.update(kw)
        return assess({"ok": 0, "bad": 0, "failed": 0, "idle": 0, **recent}, **args)

    # one bad frame long ago: the totals remember it, the level does not
    assert level({"ok": 300}) == Health(OK, "30.0 Hz")
    h = level({"ok": 290, "bad": 10}, last_error="wrong step")
    assert h.level == WARN and "10 of 300" in h.message and "wrong step" in h.message
    h = level({"bad": 3, "failed": 2})
    assert h.level == ERROR and "no frame succeeded" in h.message
    assert level({"failed": 1, "idle": 5}).level == ERROR
    assert level({"idle": 5}).level == OK and "no subscribers" in level({"idle": 5}).message
    assert level({}).level == WARN and "no frames in the last 10 s" in level({}).message
    assert level({}, received=0).level == WARN
    h = level({"ok": 5}, model_error="model file not found: /x.onnx")
    assert h.level == ERROR and "no model loaded" in h.message
    h = level({"ok": 5}, uncalibrated_threshold=-3.5)
    assert h.level == WARN and "pebal calibrate" in h.message
    h = level({"ok": 5}, loading="/m.pt (3 s)")
    assert h.level == OK and "loading /m.pt (3 s)" in h.message


def test_running_stats_report_the_window_and_keep_the_totals():
    stats = RunningStats(health_window_s=10.0)
    stats.record_bad("wrong step", now=0.0)
    for t in range(15, 20):
        stats.record(5.0, 4.0, now=float(t))
    snap = stats.snapshot(SlotCounts(6, 0), now=20.0)
    assert snap.bad_frames == 1 and snap.recent == {"ok": 5, "bad": 0, "failed": 0, "idle": 0}
    values = dict(diagnostic_values(snap, {}))
    assert values["frames_bad"] == "1" and values["recent_frames_bad"] == "0" and values["health_window_s"] == "10"
    assert assess(snap.recent, 6, snap.window_s, snap.rate_hz, last_error=snap.last_error).level == OK


def test_loader_runs_in_the_background_one_at_a_time():
    release = threading.Event()
    done = threading.Event()
    loader = BackgroundLoader(on_done=done.set)
    loader.start("/models/a.onnx", {"model": "a"}, lambda: (release.wait(30), "pipeline A")[1])
    assert "/models/a.onnx" in loader.loading and loader.busy
    assert loader.take() is None                         # still loading: nothing to swap yet
    with pytest.raises(LoaderBusy, match="a.onnx"):
        loader.start("/models/b.onnx", {}, lambda: "B")
    release.set()
    assert done.wait(30)
    assert loader.loading                                # done, but its result was not taken yet
    result = loader.take()
    assert result.value == "pipeline A" and result.request == {"model": "a"} and not result.error
    assert loader.loading == "" and loader.take() is None

    def fail():
        raise RuntimeError("x" * 10_000_000)
    done.clear()
    loader.start("/models/c.pt", None, fail)
    assert done.wait(30)
    result = loader.take()
    assert result.value is None and len(result.error) < MAX_ECHO_CHARS + 40


def test_quick_model_check(tmp_path: Path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not checked here")
    bundled = lambda: onnx   # noqa: E731
    assert quick_model_check(str(onnx), bundled) is None
    assert quick_model_check("", bundled) is None
    assert "not found" in quick_model_check(str(tmp_path / "missing.onnx"), bundled)
    assert "not found" in quick_model_check(str(tmp_path), bundled)          # a folder
    (tmp_path / "m.txt").write_text("x")
    assert "unknown model file type" in quick_model_check(str(tmp_path / "m.txt"), bundled)
    assert len(quick_model_check("/" + "d" * 10_000_000 + ".onnx", bundled)) < MAX_ECHO_CHARS + 80
