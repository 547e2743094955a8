"""The rclpy node's own logic, run here without ROS 2 against stand-in rclpy modules.

The stand-ins implement the small part of the rclpy API the node uses (parameters with
callbacks, publishers with subscription counts, subscriptions, timers, throttled logging) and
rclpy-like message classes generated from the rosbags typestore: keyword constructors, defaults,
and rclpy's type checks on assignment (Python int/float/str, ``bytes`` for ``byte`` fields,
``array.array`` payloads), so numpy scalars or per-element lists would fail here as they do in
rclpy. The real thing runs in test_launch_detector_ros.py where ROS 2 is installed; this test
covers the node's worker, parameter, diagnostics and error paths with a real ONNX model.
"""
from __future__ import annotations

import array
import enum
import importlib
import sys
import time
import types
from typing import Any

import numpy as np
import pytest

from pebal_ros.pipeline.messages import default_typestore

H, W = 48, 64


# --- rclpy-like message classes ------------------------------------------------------------

_INT = {"int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"}
_ARRAY_CODES = {"uint8": "B", "int8": "b", "uint16": "H", "int16": "h", "uint32": "I", "int32": "i",
                "uint64": "Q", "int64": "q", "float32": "f", "float64": "d"}


def _make_message_modules() -> dict[str, types.ModuleType]:
    from rosbags.typesys.base import Nodetype

    ts = default_typestore("humble")
    classes: dict[str, type] = {}

    def base_default(t: str) -> Any:
        return {"bool": False, "byte": b"\x00", "char": "", "float32": 0.0, "float64": 0.0, "string": ""}.get(t, 0)

    def check_base(t: str, v: Any, where: str) -> None:
        ok = {"bool": isinstance(v, bool), "byte": isinstance(v, bytes) and len(v) == 1,
              "string": isinstance(v, str), "char": isinstance(v, str),
              "float32": isinstance(v, float), "float64": isinstance(v, float)}.get(t)
        if ok is None:   # integer types
            ok = isinstance(v, int) and not isinstance(v, bool)
        if not ok:
            raise AssertionError(f"The '{where}' field must be of type {t}, got {type(v).__name__}")

    def make(typename: str) -> type:
        consts, fields = ts.fielddefs[typename]
        spec = dict(fields)

        def default(node):
            kind, detail = node
            if kind == Nodetype.BASE:
                return base_default(detail[0])
            if kind == Nodetype.NAME:
                return classes[detail]()
            inner, size = detail
            if kind == Nodetype.ARRAY and inner[0] == Nodetype.BASE and detail[0][1][0] in _ARRAY_CODES:
                return np.zeros(size, dtype=np.float64 if "float" in inner[1][0] else np.int64)
            if inner[0] == Nodetype.BASE and inner[1][0] in _ARRAY_CODES:
                return array.array(_ARRAY_CODES[inner[1][0]])
            return []

        def check(name, value):
            kind, detail = spec[name]
            if kind == Nodetype.BASE:
                check_base(detail[0], value, name)
            elif kind == Nodetype.NAME:
                assert type(value).__name__ == detail.split("/")[-1], f"{name}: wrong message type"
            else:
                inner, _ = detail
                if inner[0] == Nodetype.BASE and inner[1][0] in _ARRAY_CODES and kind == Nodetype.SEQUENCE:
                    # rclpy accepts array.array of the right typecode fast; anything else is checked
                    # element by element (the slow path the node must avoid for images).
                    assert isinstance(value, array.array) and value.typecode == _ARRAY_CODES[inner[1][0]], \
                        f"{name}: pass array.array('{_ARRAY_CODES[inner[1][0]]}'), got {type(value).__name__}"
                elif inner[0] == Nodetype.NAME:
                    assert isinstance(value, list), name

        def __init__(self, **kwargs):
            unknown = set(kwargs) - set(spec)
            assert not unknown, f"Invalid arguments passed to constructor: {sorted(unknown)}"
            for name, node in spec.items():
                object.__setattr__(self, name, default(node))
            for k, v in kwargs.items():
                setattr(self, k, v)

        def __setattr__(self, name, value):
            if name not in spec:
                raise AttributeError(f"{type(self).__name__} has no field {name!r}")
            check(name, value)
            object.__setattr__(self, name, value)

        ns: dict[str, Any] = {"__init__": __init__, "__setattr__": __setattr__, "__slots__": ()}
        for cname, ctype, cval in consts:
            ns[cname] = bytes([cval]) if ctype == "byte" else cval
        cls = type(typename.split("/")[-1], (), {**ns, "__slots__": tuple(spec)})
        cls.__init__ = __init__
        cls.__setattr__ = __setattr__
        return cls

    names = sorted(ts.fielddefs)
    pending = list(names)
    while pending:   # define dependencies first
        for t in list(pending):
            deps = [d for _, (k, d) in ts.fielddefs[t][1] if k == Nodetype.NAME] + \
                   [d[0][1] for _, (k, d) in ts.fielddefs[t][1] if k in (Nodetype.ARRAY, Nodetype.SEQUENCE)
                    and d[0][0] == Nodetype.NAME]
            if all(d in classes for d in deps):
                classes[t] = make(t)
                pending.remove(t)
    mods: dict[str, types.ModuleType] = {}
    for t, cls in classes.items():
        pkg, kind, name = t.split("/")
        if kind != "msg":
            continue
        mods.setdefault(pkg, types.ModuleType(pkg))
        m = mods.setdefault(f"{pkg}.msg", types.ModuleType(f"{pkg}.msg"))
        setattr(m, name, cls)
        setattr(mods[pkg], "msg", m)
    return mods


# --- stand-in rclpy ------------------------------------------------------------------------

class _Logger:
    def __init__(self):
        self.records: list[tuple[str, str]] = []
        self._last: dict[tuple, float] = {}

    def _log(self, level, msg, throttle_duration_sec=None, **_):
        if throttle_duration_sec:
            key = (level, sys._getframe(2).f_lineno)
            now = time.monotonic()
            if now - self._last.get(key, -1e9) < throttle_duration_sec:
                return
            self._last[key] = now
        self.records.append((level, str(msg)))

    def info(self, msg, **kw):
        self._log("info", msg, **kw)

    def warning(self, msg, **kw):
        self._log("warning", msg, **kw)

    def error(self, msg, **kw):
        self._log("error", msg, **kw)


class _Param:
    def __init__(self, name, value):
        self.name, self.value = name, value


class _Pub:
    def __init__(self, msg_type, topic, qos):
        self.msg_type, self.topic, self.qos = msg_type, topic, qos
        self.sent: list = []
        self.subscribers = 0
        self.destroyed = False

    def publish(self, msg):
        assert not self.destroyed
        assert isinstance(msg, self.msg_type), f"{self.topic}: {type(msg).__name__} is not {self.msg_type.__name__}"
        self.sent.append(msg)

    def get_subscription_count(self):
        return self.subscribers


def _make_rclpy(msg_mods) -> dict[str, types.ModuleType]:
    state = {"ok": True}
    rclpy = types.ModuleType("rclpy")
    rclpy.ok = lambda: state["ok"]
    rclpy.init = lambda args=None: state.update(ok=True)
    rclpy.shutdown = lambda: state.update(ok=False)
    rclpy._state = state

    Time = msg_mods["builtin_interfaces.msg"].Time
    SetParametersResult = msg_mods["rcl_interfaces.msg"].SetParametersResult

    class Node:
        def __init__(self, name, parameter_overrides=None, **_):
            self.name = name
            self.overrides = {p.name: p.value for p in (parameter_overrides or [])}
            self.params: dict[str, Any] = {}
            self.descriptors: dict[str, Any] = {}
            self.callbacks: list = []
            self.pubs: dict[str, _Pub] = {}
            self.subs: dict[str, tuple] = {}
            self.timers: list = []
            self.logger = _Logger()

        def declare_parameter(self, name, value=None, descriptor=None, ignore_override=False):
            v = self.overrides.get(name, value)
            self.params[name], self.descriptors[name] = v, descriptor
            return _Param(name, v)

        def add_on_set_parameters_callback(self, cb):
            self.callbacks.insert(0, cb)

        def set_parameters(self, params):
            for cb in self.callbacks:
                res = cb(params)
                if not res.successful:
                    return [res]
            for p in params:
                self.params[p.name] = p.value
            return [SetParametersResult(successful=True)]

        def create_publisher(self, msg_type, topic, qos):
            pub = _Pub(msg_type, topic, qos)
            self.pubs[topic] = pub
            return pub

        def destroy_publisher(self, pub):
            pub.destroyed = True
            self.pubs.pop(pub.topic, None)
            return True

        def create_subscription(self, msg_type, topic, cb, qos):
            self.subs[topic] = (msg_type, cb, qos)

        def create_timer(self, period, cb):
            self.timers.append((period, cb))

        def get_logger(self):
            return self.logger

        def get_clock(self):
            now = time.time()
            stamp = Time(sec=int(now), nanosec=int((now % 1) * 1e9))
            return types.SimpleNamespace(now=lambda: types.SimpleNamespace(to_msg=lambda: stamp))

        def resolve_topic_name(self, t, only_expand=False):
            return "/" + t

        def get_fully_qualified_name(self):
            return "/" + self.name

        def destroy_node(self):
            pass

    node_mod = types.ModuleType("rclpy.node")
    node_mod.Node = Node
    param_mod = types.ModuleType("rclpy.parameter")
    param_mod.Parameter = _Param
    pub_mod = types.ModuleType("rclpy.publisher")
    pub_mod.Publisher = _Pub
    qos_mod = types.ModuleType("rclpy.qos")
    qos_mod.QoSProfile = lambda **kw: types.SimpleNamespace(**kw)
    qos_mod.HistoryPolicy = enum.Enum("HistoryPolicy", "KEEP_LAST KEEP_ALL")
    qos_mod.ReliabilityPolicy = enum.Enum("ReliabilityPolicy", "RELIABLE BEST_EFFORT")
    qos_mod.DurabilityPolicy = enum.Enum("DurabilityPolicy", "VOLATILE TRANSIENT_LOCAL")
    exe_mod = types.ModuleType("rclpy.executors")
    exe_mod.ExternalShutdownException = type("ExternalShutdownException", (Exception,), {})
    rclpy.node, rclpy.parameter, rclpy.publisher, rclpy.qos, rclpy.executors = \
        node_mod, param_mod, pub_mod, qos_mod, exe_mod
    return {"rclpy": rclpy, "rclpy.node": node_mod, "rclpy.parameter": param_mod, "rclpy.publisher": pub_mod,
            "rclpy.qos": qos_mod, "rclpy.executors": exe_mod}


@pytest.fixture(scope="module")
def detector_mod():
    msg_mods = _make_message_modules()
    fake = {**msg_mods, **_make_rclpy(msg_mods)}
    saved = {k: sys.modules.get(k) for k in list(fake) + ["pebal_ros.node.detector"]}
    sys.modules.update(fake)
    sys.modules.pop("pebal_ros.node.detector", None)
    try:
        yield importlib.import_module("pebal_ros.node.detector")
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    from _export_nets import TinySegNet
    from pebal_ros.export.fused import build_fused
    from pebal_ros.export.onnx import export_fused

    path = tmp_path_factory.mktemp("node") / "tiny.onnx"
    export_fused(build_fused(TinySegNet(seed=2).eval()), path, (H, W))
    return str(path)


def _image(mods, encoding="bgr8", seq=1):
    Image = sys.modules["sensor_msgs.msg"].Image
    msg = Image()
    msg.header.stamp.sec = 100 + seq
    msg.header.stamp.nanosec = 5
    msg.header.frame_id = "cam"
    msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step = H, W, encoding, 0, W * 3
    msg.data.frombytes(np.random.default_rng(seq).integers(0, 256, H * W * 3, dtype=np.uint8).tobytes())
    return msg


def _wait(cond, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def _node(detector_mod, **overrides):
    params = [_Param(k, v) for k, v in {"device": "cpu", **overrides}.items()]
    return detector_mod.PebalDetector(parameter_overrides=params)


def test_node_publishes_every_output(detector_mod, onnx_model):
    node = _node(detector_mod, model=onnx_model, threshold=0)    # an integer in a params file is fine
    try:
        outs = {t.split("/")[-1]: p for t, p in node.pubs.items() if t.startswith("pebal/")}
        assert set(outs) == {"semantic", "semantic_color", "anomaly_score", "anomaly_mask", "overlay", "status"}
        assert set(node.subs) == {"image"}
        assert node.subs["image"][2].reliability.name == "BEST_EFFORT"         # sensor data by default
        assert outs["overlay"].qos.reliability.name == "RELIABLE"
        assert node.descriptors["threshold"].description and node.descriptors["threshold"].dynamic_typing
        assert node._values["threshold"] == 0.0 and isinstance(node._values["threshold"], float)
        assert node.descriptors["overlay_alpha"].floating_point_range[0].to_value == 1.0
        for p in outs.values():
            p.subscribers = 1
        cb = node.subs["image"][1]
        cb(_image(detector_mod))
        assert _wait(lambda: all(p.sent for p in outs.values()))
        for name, p in outs.items():
            m = p.sent[0]
            assert m.header.frame_id == "cam" and m.header.stamp.sec == 101, name
            if name != "status":
                assert (m.height, m.width) == (H, W) and isinstance(m.data, array.array)
        assert outs["anomaly_score"].sent[0].encoding == "32FC1"
        st = outs["status"].sent[0]
        assert st.threshold == 0.0 and 0.0 <= st.anomaly_fraction <= 1.0 and st.inference_latency_ms > 0

        # only subscribed outputs are produced
        before = {n: len(p.sent) for n, p in outs.items()}
        for n, p in outs.items():
            p.subscribers = 1 if n == "status" else 0
        cb(_image(detector_mod, seq=2))
        assert _wait(lambda: len(outs["status"].sent) == before["status"] + 1)
        assert all(len(p.sent) == before[n] for n, p in outs.items() if n != "status")

        # a bad frame is counted and warned about, the next one is processed
        cb(_image(detector_mod, encoding="weird8", seq=3))
        assert _wait(lambda: node.stats.bad_frames == 1)
        assert any(lvl == "warning" and "weird8" in msg for lvl, msg in node.logger.records)
        cb(_image(detector_mod, seq=4))
        assert _wait(lambda: len(outs["status"].sent) == before["status"] + 2)

        # nobody listening: no inference at all
        outs["status"].subscribers = 0
        cb(_image(detector_mod, seq=5))
        assert _wait(lambda: node.stats.skipped_idle == 1)

        # diagnostics
        node.timers[0][1]()
        diag = node.pubs["/diagnostics"].sent[-1].status[0]
        values = {kv.key: kv.value for kv in diag.values}
        assert diag.level == sys.modules["diagnostic_msgs.msg"].DiagnosticStatus.WARN   # a bad frame happened
        assert values["frames_processed"] == "3" and values["frames_bad"] == "1" and values["runtime_name"] == "onnxruntime"
        assert "latency_ms_p50" in values and "inference_ms_p90" in values
    finally:
        node.destroy_node()
    assert not node._worker.is_alive()


def test_parameter_changes(detector_mod, onnx_model):
    node = _node(detector_mod, model=onnx_model)
    try:
        rt = node._pipeline.runtime
        assert node._pipeline.cfg.threshold == pytest.approx(rt.describe()["default_threshold"])   # NaN -> model's
        res = node.set_parameters([_Param("output_resolution", "full")])[0]
        assert not res.successful and "output_resolution" in res.reason
        res = node.set_parameters([_Param("input_type", "compressed")])[0]
        assert not res.successful and "read-only" in res.reason
        res = node.set_parameters([_Param("model", "/nonexistent/model.onnx")])[0]
        assert not res.successful and "cannot load model" in res.reason
        assert node._pipeline.runtime is rt and node._values["model"] == onnx_model     # previous kept
        assert node.set_parameters([_Param("threshold", -1.5)])[0].successful
        assert node._pipeline.cfg.threshold == -1.5 and node._pipeline.runtime is rt
        assert node.set_parameters([_Param("outputs", ["status"])])[0].successful
        assert {t for t in node.pubs if t.startswith("pebal/")} == {"pebal/status"}
    finally:
        node.destroy_node()


def test_missing_model_keeps_node_up_and_recovers(detector_mod, onnx_model):
    node = _node(detector_mod, model="/nonexistent/model.onnx", input_type="compressed", use_camera_info=True)
    try:
        assert node._pipeline is None
        assert any(lvl == "error" and "model file not found" in msg for lvl, msg in node.logger.records)
        assert set(node.subs) == {"image/compressed", "camera_info"}
        node.timers[0][1]()
        diag = node.pubs["/diagnostics"].sent[-1].status[0]
        assert diag.level == sys.modules["diagnostic_msgs.msg"].DiagnosticStatus.ERROR
        assert node.set_parameters([_Param("model", onnx_model)])[0].successful
        assert node._pipeline is not None
        # compressed input + camera_info republished for the outputs
        from pebal_ros.pipeline.convert import encode_compressed
        mods = sys.modules
        fmt, payload = encode_compressed(np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8), "png")
        cmsg = mods["sensor_msgs.msg"].CompressedImage(format=fmt, data=array.array("B", payload.tobytes()))
        cmsg.header.frame_id = "cam"
        info = mods["sensor_msgs.msg"].CameraInfo(height=H, width=W, k=np.array([50.0, 0, 32, 0, 50, 24, 0, 0, 1]),
                                                   p=np.array([50.0, 0, 32, 0, 0, 50, 24, 0, 0, 0, 1, 0]))
        node.subs["camera_info"][1](info)
        node.pubs["pebal/camera_info"].subscribers = 1
        node.subs["image/compressed"][1](cmsg)
        assert _wait(lambda: node.pubs["pebal/camera_info"].sent)
        out = node.pubs["pebal/camera_info"].sent[0]
        assert out.header.frame_id == "cam" and (out.width, out.height) == (W, H) and out.k[0] == 50.0
    finally:
        node.destroy_node()


def test_bad_params_file_refused(detector_mod):
    with pytest.raises(ValueError, match="overlay_alpha"):
        _node(detector_mod, overlay_alpha=3.0)
