"""PEBAL road-anomaly detector: the rclpy node (a thin shell around pebal_ros.pipeline).

Subscribes to ``image`` (sensor_msgs/Image) or ``image/compressed`` (CompressedImage), optionally
``camera_info``; publishes ``pebal/semantic``, ``pebal/semantic_color``, ``pebal/anomaly_score``,
``pebal/anomaly_mask``, ``pebal/overlay``, ``pebal/status`` (pebal_msgs/PebalStatus) and
``pebal/camera_info`` with the input header, plus ``/diagnostics``.

With the ``cameras`` parameter (e.g. ``[front, rear]``) one node serves several cameras: it
subscribes ``<camera>/image`` and publishes ``<camera>/pebal/...`` for each, and runs the newest
frame of every camera in one batched inference per tick where the runtime has a batch dimension.

Threading: the subscription callbacks only put the frame into a one-deep mailbox per camera; a
worker thread takes the newest frame of each camera, runs the shared ``FramePipeline`` and
publishes. Frames replaced before the worker took them are counted as dropped, so inference never
builds a backlog. A model (re)load runs on a loader thread (``loader.py``) while the old model
keeps serving, and is swapped in on the executor thread. SIGINT/SIGTERM stop the worker first,
then the node, then the context (``main``), so no frame is published into a dead context.

    ros2 run pebal_ros detector_node --ros-args -r image:=/camera/image_raw -p model:=/path/model.onnx
"""
from __future__ import annotations

import array
import functools
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from pebal_msgs.msg import PebalStatus  # type: ignore[import-not-found]
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, RegionOfInterest

from ..pipeline.convert import FrameError
from ..pipeline.frame import FramePipeline, RuntimeOutputError
from ..pipeline.messages import OUTPUT_NAMES
from ..paths import bundled_model
from ..runtime.base import Runtime
from ..textcap import capped
from .camera_info import CameraInfoScaleError, camera_info_for_output
from .health import ERROR, OK, WARN, assess
from .loader import BackgroundLoader, LoaderBusy, LoadResult, quick_model_check
from .params import (EFFECTIVE_THRESHOLD, EFFECTIVE_THRESHOLD_DESCRIPTION, PARAMS, ParamSpec, pipeline_config,
                     resolve_node_settings, validate)
from .wire import Wire
from .worker import LatestFrames, RunningStats, diagnostic_values

OUTPUT_NAMESPACE = "pebal"
PACKAGE = "pebal_ros"
# parameters whose change means another runtime (loaded in the background)
RELOAD_KEYS = ("model", "runtime", "device", "input_size", "precision", "cuda_graph", "compile", "threads", "batch")
STOP_WAIT_S = 1.0   # how long a stop waits for the frame in progress (Ctrl-C must end the node within 2 s)


def make_qos(kind: str, depth: int) -> QoSProfile:
    """'sensor_data' = best effort + volatile, like rclpy's qos_profile_sensor_data, with our depth."""
    reliability = ReliabilityPolicy.RELIABLE if kind == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=reliability,
                      durability=DurabilityPolicy.VOLATILE)


def _descriptor(name: str, spec: ParamSpec) -> ParameterDescriptor:
    desc = ParameterDescriptor(name=name, description=spec.description, read_only=spec.read_only)
    if isinstance(spec.default, float):
        # accept "threshold: -10" as well as -10.0 (rclpy would refuse the integer); validate()
        # still rejects anything that is not a number
        desc.dynamic_typing = True
    if spec.choices is not None:
        desc.additional_constraints = "one of: " + ", ".join(spec.choices)
    if spec.float_range is not None:
        desc.floating_point_range = [FloatingPointRange(from_value=float(spec.float_range[0]),
                                                        to_value=float(spec.float_range[1]), step=0.0)]
    if spec.int_range is not None:
        desc.integer_range = [IntegerRange(from_value=int(spec.int_range[0]), to_value=int(spec.int_range[1]), step=1)]
    return desc


def default_model_path() -> str:
    """The bundled default model ('' when it is not installed)."""
    try:
        return str(bundled_model())
    except FileNotFoundError:
        return ""


@dataclass
class CameraChannel:
    """One camera the node serves: its topics' publishers, latest CameraInfo and statistics."""
    name: str                                   # "" (the node's own topics) or a relative namespace
    pubs: dict[str, Publisher] = field(default_factory=dict)
    info_pub: Publisher | None = None
    camera_info: CameraInfo | None = None
    stats: RunningStats = field(default_factory=RunningStats)
    logger: Any = None                          # its own logger: one camera's warnings never throttle another's

    def topic(self, relative: str) -> str:
        return f"{self.name}/{relative}" if self.name else relative


class PebalDetector(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("pebal_detector", **kwargs)
        self._values: dict[str, Any] = {}
        for name, spec in PARAMS.items():
            value = self.declare_parameter(name, spec.default, _descriptor(name, spec)).value
            reason = validate(name, value)
            if reason:   # a bad params file: refuse to start rather than run with a surprise
                raise ValueError(f"parameter {capped(reason)}")
            self._values[name] = float(value) if isinstance(spec.default, float) else value

        # Frames arrive and outputs leave as serialized bytes, handled with rosbags' message classes
        # (the same as replay); rclpy's classes only name the topics' types.
        self.wire = Wire(compressed_input=self._values["input_type"] == "compressed")
        self.factory = self.wire.factory
        self._topic_types = {name: PebalStatus if name == "status" else Image for name in OUTPUT_NAMES}
        self.cameras = [CameraChannel(str(c).strip("/")) for c in self._values["cameras"]]
        for cam in self.cameras:
            cam.logger = self.get_logger().get_child(cam.name.replace("/", ".")) if cam.name else self.get_logger()
        self.frames = LatestFrames([c.name for c in self.cameras])
        self._lock = threading.Lock()   # guards pipeline / publisher swaps against the worker
        self._pipeline: FramePipeline | None = None
        self._runtime_info: dict[str, Any] = {}
        self._model_error = ""
        self._model_threshold: float | None = None
        self._settings: Any = None          # pebal_ros.model_settings.ModelSettings in use
        self._warned: set[str] = set()
        self._stopping = False              # set by stop(): nothing is published any more
        self._load_error = ""               # why the last background load failed ('' once one succeeds)
        self._reverting = False             # set while a failed load's parameters are put back
        # the loader thread only wakes the executor; the swap runs there (_finish_load)
        self._load_done = self.create_guard_condition(self._finish_load)
        self._loader = BackgroundLoader(on_done=self._load_done.trigger)

        # Load the model; a missing or incompatible file is reported and the node stays up
        # (diagnostics say ERROR; setting a good `model` parameter recovers).
        try:
            self._pipeline, self._runtime_info, self._settings = self._build_pipeline(self._values)
            self._model_threshold = self._settings.threshold
        except Exception as exc:  # noqa: BLE001 - every loading failure is reported the same way
            self._model_error = capped(exc) or type(exc).__name__
            self.get_logger().error(f"no model loaded: {self._model_error}")

        depth = int(self._values["qos_depth"])
        self._out_qos = make_qos(str(self._values["output_qos"]), depth)
        self._update_publishers(list(self._values["outputs"]))
        in_qos = make_qos(str(self._values["input_qos"]), max(depth, 1))
        compressed = self._values["input_type"] == "compressed"
        for cam in self.cameras:
            on_image = functools.partial(self._on_image, cam.name)
            if compressed:
                self.create_subscription(CompressedImage, cam.topic("image/compressed"), on_image, in_qos, raw=True)
            else:
                self.create_subscription(Image, cam.topic("image"), on_image, in_qos, raw=True)
            if self._values["use_camera_info"]:
                self.create_subscription(CameraInfo, cam.topic("camera_info"),
                                         functools.partial(self._on_camera_info, cam), in_qos)
                cam.info_pub = self.create_publisher(CameraInfo, cam.topic(f"{OUTPUT_NAMESPACE}/camera_info"),
                                                     self._out_qos)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(float(self._values["diagnostics_period"]), self._publish_diagnostics)
        self._own_set = False     # the node itself updating effective_threshold
        self.declare_parameter(EFFECTIVE_THRESHOLD, math.nan,
                               ParameterDescriptor(name=EFFECTIVE_THRESHOLD, description=EFFECTIVE_THRESHOLD_DESCRIPTION))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._show_effective_threshold()

        self._worker = threading.Thread(target=self._work, name="pebal_worker", daemon=True)
        self._worker.start()
        inputs = ", ".join(self.resolve_topic_name(c.topic("image/compressed" if compressed else "image"))
                           for c in self.cameras)
        outputs = ", ".join(self.resolve_topic_name(c.topic(OUTPUT_NAMESPACE)) for c in self.cameras)
        self.get_logger().info(f"pebal detector ready: input {self._values['input_type']} on {inputs}, outputs "
                               f"under {outputs}, runtime {capped(self._runtime_info or 'none', 1024)}")

    # -- model / parameters -------------------------------------------------------------------
    def _build_pipeline(self, values: dict[str, Any], settings: Any = None) -> tuple[FramePipeline, dict[str, Any], Any]:
        """(pipeline, runtime description for diagnostics, resolved model settings).

        The settings come from the same resolution as pebal infer/replay (model file, preset,
        calibration record, then the node parameters), so live and replay run the same model alike.
        """
        from ..open_model import open_runtime

        settings = settings or resolve_node_settings(values)
        runtime: Runtime = open_runtime(settings, quiet=True)
        info = dict(runtime.describe())
        pipeline = FramePipeline(runtime, pipeline_config(values, settings.threshold), self.factory)
        info.setdefault("name", runtime.name)
        info["model"] = str(settings.model)
        info = {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, tuple, list))}
        self.get_logger().info(f"loaded {capped(settings.summary(), 1024)}")
        self._log_warnings(settings)
        return pipeline, info, settings

    def _log_warnings(self, settings: Any) -> None:
        for w in settings.warnings:
            if w not in self._warned:   # once per distinct warning, not per parameter change
                self._warned.add(w)
                self.get_logger().warning(w)

    def _show_effective_threshold(self) -> None:
        """Publish the threshold that runs as the effective_threshold parameter."""
        pipeline = self._pipeline
        value = float(pipeline.cfg.threshold) if pipeline is not None else math.nan
        old = self.get_parameter(EFFECTIVE_THRESHOLD).value
        if value == old or (math.isnan(value) and math.isnan(old)):
            return
        self._own_set = True
        try:
            self.set_parameters([Parameter(EFFECTIVE_THRESHOLD, Parameter.Type.DOUBLE, value)])
        finally:
            self._own_set = False

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Validate and apply a parameter change. Settings that need another runtime (RELOAD_KEYS)
        are checked as far as that is cheap (the file exists, the settings resolve) and then loaded
        in the background: the answer comes at once and the current model keeps serving; a load
        that fails later is logged, shown in /diagnostics and its parameters are set back."""
        if any(p.name == EFFECTIVE_THRESHOLD for p in params):
            if self._own_set:
                return SetParametersResult(successful=True)
            return SetParametersResult(successful=False, reason=f"{EFFECTIVE_THRESHOLD} is read-only: it shows the "
                                                                "threshold that runs; set threshold instead")
        new = dict(self._values)
        for p in params:
            if p.name not in PARAMS:
                continue
            if PARAMS[p.name].read_only:
                return SetParametersResult(successful=False, reason=f"{p.name} is read-only (set it at start-up)")
            reason = validate(p.name, p.value)
            if reason:
                return SetParametersResult(successful=False, reason=capped(reason))
            new[p.name] = float(p.value) if isinstance(PARAMS[p.name].default, float) else p.value
        if self._reverting:   # a failed load's own parameters going back to what runs
            return SetParametersResult(successful=True)
        # a reload: another value, or any reload parameter set while no model is loaded (a retry)
        reload = any(p.name in RELOAD_KEYS and (new[p.name] != self._values[p.name] or self._pipeline is None)
                     for p in params)
        if reload and self._loader.loading:
            return SetParametersResult(successful=False, reason=f"a model is loading: {self._loader.loading}; "
                                                                "set it again when /diagnostics says it is done")
        load_settings = None
        if reload:
            model_changed = new["model"] != self._values["model"] or self._settings is None
            try:
                if model_changed:
                    reason = quick_model_check(str(new["model"]), bundled_model)
                    if reason:
                        return SetParametersResult(successful=False, reason=f"cannot load model: {reason}")
                else:   # the same file with other settings: resolving them is cheap and says what is wrong
                    load_settings = resolve_node_settings(new, self._settings.info)
                pipeline_config(new, load_settings.threshold if load_settings is not None else None)
            except Exception as exc:  # noqa: BLE001 - settings, runtime or device refused: the reason, old model kept
                return SetParametersResult(successful=False, reason=f"cannot load model: {capped(exc)}")
        # everything else applies to the model in use now (and to the one loading, at the swap)
        current = {k: (self._values[k] if k in RELOAD_KEYS else v) for k, v in new.items()}
        settings = self._settings
        if settings is not None and any(current[k] != self._values[k] for k in ("threshold", "min_region_area")):
            try:   # the model file was read already: only the layers change
                settings = resolve_node_settings(current, self._settings.info)
            except ValueError as exc:
                return SetParametersResult(successful=False, reason=capped(exc))
        try:
            cfg = pipeline_config(current, settings.threshold if settings is not None else None)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=capped(exc))
        if settings is not self._settings:
            self._log_warnings(settings)
        with self._lock:
            if self._pipeline is not None:
                self._pipeline.cfg = cfg
            if settings is not None:
                self._settings, self._model_threshold = settings, settings.threshold
            self._values = current
            self._update_publishers(list(current["outputs"]))
        self._show_effective_threshold()
        if reload:
            request = {k: new[k] for k in RELOAD_KEYS}
            what = str(new["model"]) or "the bundled model"
            try:
                self._loader.start(what, request, functools.partial(self._build_pipeline, new, load_settings))
            except LoaderBusy as exc:   # only the executor thread starts loads: cannot happen, but say so
                return SetParametersResult(successful=False, reason=f"a model is loading: {exc}")
            running = self._runtime_info.get("model", "no model")
            self.get_logger().info(f"loading {capped(what)} in the background; {capped(running)} keeps running")
        return SetParametersResult(successful=True)

    def _finish_load(self) -> None:
        """On the executor thread, when the loader is done: swap the new pipeline in, in one step, or
        report why it failed and set its parameters back to what runs."""
        result: LoadResult | None = self._loader.take()
        if result is None:
            return
        request = result.request
        values = {**self._values, **request}
        error = result.error
        if not error:
            pipeline, info, settings = result.value
            try:   # parameters set while it loaded (threshold, outputs, ...) apply to it too
                settings = resolve_node_settings(values, settings.info)
                pipeline.cfg = pipeline_config(values, settings.threshold)
            except ValueError as exc:
                error = capped(exc)
        if error:
            what = str(request["model"]) or "the bundled model"
            running = self._runtime_info.get("model", "no model")
            self._load_error = capped(f"{what}: {error}")
            self.get_logger().error(f"cannot load model {capped(what)}: {error}; {capped(running)} keeps running")
            back = [Parameter(k, value=self._values[k]) for k in RELOAD_KEYS
                    if self.get_parameter(k).value != self._values[k]]
            if back:
                self._reverting = True
                try:
                    self.set_parameters(back)
                finally:
                    self._reverting = False
            return
        self._log_warnings(settings)
        with self._lock:
            self._pipeline, self._runtime_info = pipeline, info
            self._settings, self._model_threshold = settings, settings.threshold
            self._model_error = self._load_error = ""
            self._values = values
            self._update_publishers(list(values["outputs"]))
        self._show_effective_threshold()
        self.get_logger().info(f"now running {capped(info.get('model', ''))} (loaded in {result.seconds:.1f} s)")

    def _update_publishers(self, outputs: list[str]) -> None:
        for cam in self.cameras:
            for name in OUTPUT_NAMES:
                if name in outputs and name not in cam.pubs:
                    cam.pubs[name] = self.create_publisher(self._topic_types[name],
                                                           cam.topic(f"{OUTPUT_NAMESPACE}/{name}"), self._out_qos)
                elif name not in outputs and name in cam.pubs:
                    self.destroy_publisher(cam.pubs.pop(name))

    # -- callbacks: only hand over, never work (the executor must keep up with every camera) ----
    def _on_image(self, camera: str, raw: bytes) -> None:
        self.frames.put(camera, raw, time.perf_counter())

    def _on_camera_info(self, cam: CameraChannel, msg: CameraInfo) -> None:
        cam.camera_info = msg

    # -- the worker ---------------------------------------------------------------------------
    def _work(self) -> None:
        while not self.frames.closed and self.context.ok():
            items = self.frames.take_all(timeout=0.5)
            if items and not self._stopping:
                self._tick(items)

    def _tick(self, items: list[tuple[str, bytes, float]]) -> None:
        """The newest frame of each camera that sent one: one (batched) inference, then publish."""
        throttle = float(self._values["warn_throttle_s"])
        with self._lock:
            pipeline = self._pipeline
            pubs = {c.name: dict(c.pubs) for c in self.cameras}
        by_name = {c.name: c for c in self.cameras}
        jobs: list[tuple[CameraChannel, Any, float, list[str], bool, float]] = []
        for name, raw, received_at in items:
            cam = by_name[name]
            if pipeline is None:
                cam.stats.record_failure(f"no model loaded: {self._model_error}")
                cam.logger.error(f"frame skipped, no model loaded: {capped(self._model_error)}",
                                 throttle_duration_sec=throttle)
                continue
            wanted = [n for n, pub in pubs[name].items() if pub.get_subscription_count() > 0]
            want_info = cam.info_pub is not None and cam.info_pub.get_subscription_count() > 0
            if not wanted and not want_info and self._values["idle_without_subscribers"]:
                cam.stats.record_idle()
                continue
            try:
                t0 = time.perf_counter()
                msg = self.wire.take(raw)
            except FrameError as exc:
                self._frame_failed(cam, exc)
                continue
            jobs.append((cam, msg, received_at, wanted, want_info, (time.perf_counter() - t0) * 1e3))
        if not jobs or pipeline is None:
            return

        def publisher(cam: CameraChannel) -> Any:
            cam_pubs, wire = pubs[cam.name], self.wire

            def emit(name: str, out: Any) -> None:
                # each output leaves as soon as it is built, the status first; none once stopping
                if not self._stopping:
                    cam_pubs[name].publish(wire.serialize(name, out))
            return emit

        results: list[Any]
        try:
            if len(jobs) == 1:
                cam, msg, received_at, wanted, _, _ = jobs[0]
                results = [pipeline.process(msg, outputs=wanted, received_at=received_at, emit=publisher(cam))]
            else:
                results = pipeline.process_batch([j[1] for j in jobs], outputs=[j[3] for j in jobs],
                                                 received_at=[j[2] for j in jobs],
                                                 emit=[publisher(j[0]) for j in jobs])
        except Exception as exc:  # noqa: BLE001 - one frame's error (single camera) or the batch call's
            results = [exc] * len(jobs)
        for (cam, _, _, _, want_info, deserialize_ms), result in zip(jobs, results):
            if isinstance(result, Exception):
                self._frame_failed(cam, result)
                continue
            if want_info and cam.info_pub is not None and not self._stopping:
                try:
                    self._publish_camera_info(cam, result.header, result.outputs.size)
                except Exception as exc:  # noqa: BLE001 - e.g. a publisher destroyed by a parameter change
                    self._frame_failed(cam, exc)
                    continue
            stages = {k: result.timings[k] for k in ("decode", "preprocess", "postprocess", "encode", "publish")}
            stages["deserialize"] = deserialize_ms
            cam.stats.record(result.timings["end_to_end"], result.timings["inference"], stages,
                             batch=int(result.timings.get("batch", 1)))

    def _frame_failed(self, cam: CameraChannel, exc: Exception) -> None:
        """Count and report a frame that produced no result; the node goes on with the next one."""
        if self._stopping:   # e.g. the context went while the last frame was published: not an error
            return
        throttle = float(self._values["warn_throttle_s"])
        text = capped(exc)   # may quote what the sender chose (a 10 MB format...)
        if isinstance(exc, FrameError):
            cam.stats.record_bad(text)
            cam.logger.warning(f"bad frame skipped: {text}", throttle_duration_sec=throttle)
        elif isinstance(exc, RuntimeOutputError):
            cam.stats.record_failure(text)
            cam.logger.error(text, throttle_duration_sec=throttle)
        else:   # anything else, e.g. a publisher destroyed by a parameter change while publishing
            cam.stats.record_failure(f"{type(exc).__name__}: {text}")
            cam.logger.error(f"frame failed: {type(exc).__name__}: {text}", throttle_duration_sec=throttle)

    def _publish_camera_info(self, cam: CameraChannel, header: Any, shape: tuple[int, ...]) -> None:
        info, pub = cam.camera_info, cam.info_pub
        if info is None or pub is None:
            return
        try:
            out = camera_info_for_output(info, header, int(shape[1]), int(shape[0]), CameraInfo, RegionOfInterest,
                                         float_seq=lambda v: array.array("d", v.tobytes()))
        except CameraInfoScaleError as exc:
            self.get_logger().warning(capped(exc), throttle_duration_sec=60.0)
            return
        pub.publish(out)

    def _publish_diagnostics(self) -> None:
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [self._camera_status(cam) for cam in self.cameras]
        self._diag_pub.publish(arr)

    def _camera_status(self, cam: CameraChannel) -> DiagnosticStatus:
        snap = cam.stats.snapshot(self.frames.counts(cam.name))
        st = DiagnosticStatus()
        st.name = f"{self.get_fully_qualified_name()}: PEBAL anomaly detector" + (f" ({cam.name})" if cam.name else "")
        st.hardware_id = str(self._runtime_info.get("name", "none"))
        settings, pipeline, loading = self._settings, self._pipeline, self._loader.loading
        uncalibrated = settings is not None and not settings.threshold_calibrated
        health = assess(snap.recent, snap.received, snap.window_s, snap.rate_hz,
                        model_error=None if pipeline is not None else self._model_error,
                        last_error=snap.last_error, loading=loading,
                        uncalibrated_threshold=settings.threshold if uncalibrated else None)
        st.level = {OK: DiagnosticStatus.OK, WARN: DiagnosticStatus.WARN, ERROR: DiagnosticStatus.ERROR}[health.level]
        st.message = capped(health.message, 1024)
        kv = diagnostic_values(snap, self._runtime_info)
        if settings is not None:
            kv += settings.as_key_values()
        if pipeline is not None:   # the threshold in use (parameter or the model's), not just the model's default
            kv.append(("threshold", f"{pipeline.cfg.threshold:g}"))
        if loading:
            kv.append(("model_loading", loading))
        if self._load_error:
            kv.append(("model_load_error", self._load_error))
        if len(self.cameras) > 1:
            kv.append(("cameras", ",".join(c.name for c in self.cameras)))   # served together, one batch per tick
        # paths and errors come from parameters and senders: bounded, one line each
        st.values = [KeyValue(key=k, value=capped(v)) for k, v in kv]
        return st

    def stop(self, timeout: float = STOP_WAIT_S) -> bool:
        """Stop taking and publishing frames and wait (up to ``timeout``) for the frame in progress:
        called before the context goes, so nothing is published into a dead one. True when the
        worker has ended."""
        self._stopping = True
        self.frames.close()
        if self._worker.is_alive():
            self._worker.join(timeout=timeout)
        return not self._worker.is_alive()

    def destroy_node(self) -> None:
        self.stop()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    # Our own SIGINT/SIGTERM handling instead of rclpy's: rclpy's handler shuts the context down at
    # once, under a worker that is still publishing ("publisher's context is invalid"). Here a
    # signal only ends the spin loop; then the worker stops, the node is destroyed, and only then
    # the context goes.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    phase = ["starting"]

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()
        if phase[0] == "starting":
            # Still loading the model or setting up: nothing was published, nothing is to save, so
            # leave at once. Raising KeyboardInterrupt here instead lands in whatever runs, e.g.
            # inside the executor's add_node holding its lock, and the stop then hung (seen once:
            # SIGINT right after "ready", killed after 60 s).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    node: PebalDetector | None = None
    code = 0
    try:
        node = PebalDetector()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        phase[0] = "spinning"
        while not stop.is_set() and rclpy.ok():
            # a Python signal handler runs between callbacks: wake up at least every 0.1 s for it
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ValueError as exc:   # a bad parameter at start-up: one clear line, not a traceback
        rclpy.logging.get_logger("pebal_detector").fatal(capped(exc, 1024))
        code = 1
    finally:
        phase[0] = "stopping"    # a second signal now changes nothing
        if node is not None:
            node.destroy_node()      # the worker first, while the context is still valid
        if rclpy.ok():
            rclpy.shutdown()
    # Everything is shut down in order (worker, node, context, logging). What is left is the
    # interpreter's own teardown of torch, ONNX Runtime and their thread pools: 1.3-1.8 s of a stop
    # measured here, and where the worker is still in native code (a slow frame) or a model still
    # loads, it would destroy those threads under them and abort ("terminate called without an
    # active exception", exit -6). Nothing is left to save: leave at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
