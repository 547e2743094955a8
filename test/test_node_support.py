"""The node's ROS-free parts: parameter validation, the latest-frame slot, statistics, CameraInfo scaling."""
from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.typesys import Stores, get_typestore

from pebal_ros.node.camera_info import CameraInfoScaleError, camera_info_for_output, scaled_intrinsics
from pebal_ros.node.params import DEFAULT_THRESHOLD, PARAMS, defaults, pipeline_config, validate
from pebal_ros.node.worker import LatestFrames, RunningStats, SlotCounts, diagnostic_values
from pebal_ros.pipeline.messages import OUTPUT_NAMES

REPO = Path(__file__).resolve().parents[1]


# --- parameters ----------------------------------------------------------------------------

def test_defaults_are_valid_and_match_yaml():
    for name, value in defaults().items():
        assert validate(name, value) is None, name
    data = yaml.safe_load((REPO / "config" / "detector.yaml").read_text())["/**"]["ros__parameters"]
    assert set(data) == set(PARAMS)
    for name, value in data.items():
        d = PARAMS[name].default
        assert (math.isnan(value) and math.isnan(d)) if isinstance(d, float) and math.isnan(d) else value == d, name


@pytest.mark.parametrize("name,value,reason", [
    ("threshold", math.inf, "finite"),
    ("threshold", "high", "must be a double"),
    ("outputs", ["overlay", "semantics"], "unknown output"),
    ("outputs", ["overlay", "overlay"], "twice"),
    ("output_resolution", "full", "must be one of"),
    ("runtime", "tflite", "must be one of"),
    ("overlay_alpha", 1.5, r"in \[0.0, 1.0\]"),
    ("min_region_area", 0, r"in \[1,"),
    ("max_regions", 2.5, "must be a integer"),
    ("input_encoding_override", "8UC3", "not a supported encoding"),
    ("overlay_boxes", 1, "must be a bool"),
    ("cameras", [], "at least one"),
    ("cameras", ["front", "/front/"], "twice"),
    ("cameras", ["front", "rear-left"], "invalid namespace"),
    ("cameras", "front", "must be a string array"),
])
def test_bad_values_rejected_with_reason(name, value, reason):
    msg = validate(name, value)
    assert msg is not None and name in msg
    assert __import__("re").search(reason, msg), msg


def test_good_values_and_foreign_params():
    assert validate("threshold", -3) is None          # an integer for a double is fine
    assert validate("threshold", math.nan) is None    # = the model's own threshold
    assert validate("outputs", ["status"]) is None
    assert validate("outputs", []) is None
    assert validate("use_sim_time", True) is None     # not ours
    assert validate("cameras", ["front", "vehicle/rear"]) is None


def test_pipeline_config_from_params():
    v = defaults()
    assert pipeline_config(v).threshold == DEFAULT_THRESHOLD
    assert pipeline_config(v, model_threshold=-7.5).threshold == -7.5
    v.update(threshold=-2.0, outputs=["status", "overlay"], output_resolution="network", input_encoding_override="bgr8")
    cfg = pipeline_config(v, model_threshold=-7.5)
    assert cfg.threshold == -2.0 and cfg.outputs == ("overlay", "status") and cfg.output_resolution == "network"
    assert cfg.encoding_override == "bgr8"
    assert set(OUTPUT_NAMES) == set(defaults()["outputs"])


def test_read_only_parameters_are_the_startup_ones():
    ro = {n for n, s in PARAMS.items() if s.read_only}
    assert ro == {"input_type", "use_camera_info", "cameras", "input_qos", "output_qos", "qos_depth",
                  "diagnostics_period"}
    for spec in PARAMS.values():
        assert len(spec.description) > 20


# --- latest-frame slot -------------------------------------------------------------------------

def test_slot_keeps_only_the_newest_and_counts_drops():
    slot = LatestFrames()
    assert slot.put("", "a", 1.0) is True
    assert slot.put("", "b", 2.0) is False     # "a" never taken: dropped
    assert slot.put("", "c", 3.0) is False
    assert slot.take_all(0) == [("", "c", 3.0)]
    assert slot.take_all(0.01) == []
    assert slot.counts() == SlotCounts(received=3, dropped=2)


def test_slot_with_a_slow_worker_never_backs_up():
    """While the worker is busy with a frame, the camera sends bursts: the worker then gets the
    newest frame of each burst, every other one is counted as dropped, nothing queues. The worker's
    "inference" lasts exactly until the test releases it, so no count depends on the machine's speed."""
    slot = LatestFrames()
    seen: list[int] = []
    started, finish = threading.Semaphore(0), threading.Semaphore(0)

    def worker():
        while items := slot.take_all(30.0):
            seen.append(items[0][1])
            started.release()       # busy with this frame ...
            finish.acquire()        # ... until the test says it is done

    t = threading.Thread(target=worker)
    t.start()
    slot.put("", 0)
    assert started.acquire(timeout=30)
    n = 1
    for _ in range(5):              # five bursts of ten frames while the worker is busy
        for _ in range(10):
            slot.put("", n)
            n += 1
        finish.release()
        assert started.acquire(timeout=30)
    slot.close()
    finish.release()
    t.join(30)
    assert not t.is_alive()
    assert seen == [0, 10, 20, 30, 40, 50]                   # the newest of each burst, in order
    assert slot.counts() == SlotCounts(received=51, dropped=45)   # nine of each burst of ten


def test_several_cameras_are_taken_together_newest_each():
    frames = LatestFrames(["front", "rear", "left"])
    frames.put("rear", "r1", 1.0)
    frames.put("front", "f1", 2.0)
    frames.put("rear", "r2", 3.0)                            # r1 dropped
    assert frames.take_all(0) == [("front", "f1", 2.0), ("rear", "r2", 3.0)]   # camera order, left had none
    assert frames.counts("rear") == SlotCounts(2, 1) and frames.counts("left") == SlotCounts(0, 0)
    got: list = []
    t = threading.Thread(target=lambda: got.extend(frames.take_all(5.0)))
    t.start()
    time.sleep(0.05)
    frames.put("left", "l1", 4.0)                            # wakes the waiting worker
    t.join(2)
    assert got == [("left", "l1", 4.0)]
    with pytest.raises(ValueError, match="distinct"):
        LatestFrames(["a", "a"])


# --- statistics ------------------------------------------------------------------------------

def test_running_stats_percentiles_and_rate():
    stats = RunningStats(window=100)
    slot = SlotCounts(101, 0)
    for i in range(101):   # 101 frames at 20 Hz; the window keeps the last 100
        stats.record(e2e_ms=float(i), inference_ms=float(i) / 2, now=100.0 + i * 0.05)
    stats.record_bad("unsupported encoding")
    snap = stats.snapshot(slot, now=105.0, rate_window_s=5.0)
    assert snap.rate_hz == pytest.approx(20.0)
    assert snap.e2e_ms["p50"] == pytest.approx(np.percentile(np.arange(1, 101), 50))
    assert snap.e2e_ms["max"] == 100.0 and snap.inference_ms["p99"] == pytest.approx(np.percentile(np.arange(1, 101) / 2, 99))
    kv = dict(diagnostic_values(snap, {"name": "onnxruntime"}))
    assert kv["frames_processed"] == "101" and kv["frames_bad"] == "1" and kv["runtime_name"] == "onnxruntime"
    assert kv["last_error"] == "unsupported encoding" and kv["rate_hz"] == "20.00"
    assert stats.snapshot(slot, now=200.0).rate_hz == 0.0     # nothing recent



def test_running_stats_report_the_non_inference_work_by_stage():
    stats = RunningStats(window=10)
    rng = np.random.default_rng(0)
    rows = [{"decode": float(a), "encode": float(b), "publish": float(c)} for a, b, c in rng.uniform(0, 5, (15, 3))]
    for i, st in enumerate(rows):
        stats.record(e2e_ms=30.0, inference_ms=20.0 + i, stages=st, now=float(i))
    snap = stats.snapshot(SlotCounts(15, 0), now=15.0)
    last = rows[-10:]                                       # the window
    for k in ("decode", "encode", "publish"):
        assert snap.stages_ms[k] == pytest.approx(np.median([r[k] for r in last]))
    assert snap.non_inference_ms == pytest.approx(np.median([sum(r.values()) for r in last]))
    kv = dict(diagnostic_values(snap, {}))
    assert float(kv["stage_publish_ms_p50"]) == pytest.approx(snap.stages_ms["publish"], abs=0.01)
    share = snap.non_inference_ms / np.percentile(np.arange(25, 35, dtype=float), 50)
    assert float(kv["non_inference_share"]) == pytest.approx(share, abs=1e-3)
    assert "non_inference_share" not in dict(diagnostic_values(RunningStats().snapshot(SlotCounts(0, 0)), {}))
    stats.record(30.0, 20.0, batch=3)
    assert stats.snapshot(SlotCounts(16, 0)).frames_per_inference == pytest.approx((9 * 1 + 3) / 10)


# --- CameraInfo ------------------------------------------------------------------------------

def test_scaled_intrinsics_match_scaled_projection():
    K = np.array([[800.0, 0, 640.5], [0, 810.0, 359.5], [0, 0, 1]])
    P = np.hstack([K, [[-40.0], [0], [0]]])
    sx, sy = 512 / 1280, 256 / 720
    K2, P2 = scaled_intrinsics(K.reshape(-1), P.reshape(-1), sx, sy)
    X = np.array([[1.5, -0.3, 7.0], [-2.0, 1.0, 20.0]])
    for M, M2 in ((K, K2.reshape(3, 3)), (P[:, :3], P2.reshape(3, 4)[:, :3])):
        uv = (M @ X.T).T
        uv = uv[:, :2] / uv[:, 2:]
        uv2 = (M2 @ X.T).T
        uv2 = uv2[:, :2] / uv2[:, 2:]
        # pixel centres: x' = (x + 0.5) * s - 0.5
        np.testing.assert_allclose(uv2, (uv + 0.5) * [sx, sy] - 0.5, rtol=1e-12)
    assert P2[3] == pytest.approx(-40.0 * sx)


def test_camera_info_for_output_with_rosbags_types():
    ts = get_typestore(Stores.ROS2_HUMBLE)
    CI, ROI = ts.types["sensor_msgs/msg/CameraInfo"], ts.types["sensor_msgs/msg/RegionOfInterest"]
    H = ts.types["std_msgs/msg/Header"]
    T = ts.types["builtin_interfaces/msg/Time"]
    hdr = H(stamp=T(sec=3, nanosec=4), frame_id="cam")
    K = np.array([800.0, 0, 640, 0, 800, 360, 0, 0, 1])
    info = CI(header=hdr, height=720, width=1280, distortion_model="plumb_bob", d=np.zeros(5), k=K,
              r=np.eye(3).reshape(-1), p=np.array([800.0, 0, 640, 0, 0, 800, 360, 0, 0, 0, 1, 0]),
              binning_x=0, binning_y=0, roi=ROI(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
    out = camera_info_for_output(info, hdr, 640, 360, CI, ROI)
    back = ts.deserialize_cdr(ts.serialize_cdr(out, CI.__msgtype__), CI.__msgtype__)
    assert (back.width, back.height) == (640, 360) and back.k[0] == 400.0 and back.k[2] == pytest.approx(319.75)
    same = camera_info_for_output(info, hdr, 1280, 720, CI, ROI)
    np.testing.assert_array_equal(same.k, K)
    binned = CI(header=hdr, height=720, width=1280, distortion_model="plumb_bob", d=np.zeros(5), k=K,
                r=np.eye(3).reshape(-1), p=np.zeros(12), binning_x=2, binning_y=2, roi=info.roi)
    with pytest.raises(CameraInfoScaleError, match="binning"):
        camera_info_for_output(binned, hdr, 640, 360, CI, ROI)
