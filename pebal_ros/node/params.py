"""The detector node's parameters: defaults, descriptions and validation, without ROS.

The rclpy node declares one parameter per :data:`PARAMS` entry (description, read-only flag and
ranges become the ``ParameterDescriptor``) and runs :func:`validate` in its set-parameters
callback: a bad value is rejected with the returned reason and the node keeps the previous value.
``config/detector.yaml`` lists the same names (checked by the tests).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from ..config import MAX_DECODED_PIXELS_LIMIT, InferenceConfig, InputConfig, RuntimeConfig, threshold_problem
from ..pipeline.convert import SUPPORTED_ENCODINGS
from ..pipeline.frame import OUTPUT_RESOLUTIONS, PipelineConfig
from ..pipeline.messages import OUTPUT_NAMES
from ..ros_names import RULE, namespace_problem

DEFAULT_THRESHOLD = InferenceConfig().threshold
RUNTIMES = ("auto", "onnxruntime", "tensorrt", "torch")
DEVICES = ("auto", "cpu", "cuda")
INPUT_TYPES = ("raw", "compressed")
QOS_CHOICES = ("sensor_data", "reliable", "best_effort")


@dataclass(frozen=True)
class ParamSpec:
    default: Any
    description: str
    read_only: bool = False                       # fixed after start-up (set from launch / YAML)
    choices: tuple[str, ...] | None = None
    float_range: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = None
    check: Callable[[Any], str | None] | None = None   # extra check: reason or None
    numeric_text: bool = False                    # a double that may arrive as text ("NaN")


def _threshold(v: Any) -> str | None:
    if math.isnan(v):
        return None
    reason = threshold_problem(v)
    return f"{reason}; or NaN for the model's own" if reason else None


def parse_number(value: Any) -> Any:
    """A numeric parameter given as text ("NaN", "-3.5") as its number; anything else unchanged.

    ``ros2 param set`` and ``-p`` read values as YAML, where ``NaN`` and ``1e3`` (no dot) are
    strings: the documented ``threshold NaN`` must not be refused as "not a double"."""
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value
    return value


def _input_size(v: Any) -> str | None:
    if v == "":
        return None
    from ..graph.contract import parse_hw
    try:
        parse_hw(v)
    except ValueError as exc:
        return f"{exc} (or '' for the model's own)"
    return None


def _outputs(v: Any) -> str | None:
    unknown = sorted(set(v) - set(OUTPUT_NAMES))
    if unknown:
        return f"unknown output(s) {unknown}; choose from {list(OUTPUT_NAMES)}"
    if len(set(v)) != len(v):
        return "lists an output twice"
    return None


def _cameras(v: Any) -> str | None:
    if not v:
        return "must list at least one camera ('' = the node's own topics)"
    names = [str(c).strip("/") for c in v]
    if len(set(names)) != len(names):
        return f"lists a camera twice: {list(v)}"
    bad = [c for c in names if c and namespace_problem(c)]
    if bad:
        return f"has invalid namespace(s) {bad}: {namespace_problem(bad[0])} ({RULE})"
    return None


def _encoding(v: Any) -> str | None:
    if v == "" or v in SUPPORTED_ENCODINGS:
        return None
    return f"'{v}' is not a supported encoding; use '' (trust the message) or one of {list(SUPPORTED_ENCODINGS)}"


PARAMS: dict[str, ParamSpec] = {
    "model": ParamSpec(
        "", "Model artefact: fused .onnx (ONNX Runtime), .engine/.plan (TensorRT) or .pt (PyTorch, loaded "
            "weights-only: pickled code is refused). Empty: the bundled real-road PEBAL model "
            "pebal_espnetv2_road.pt through ONNX Runtime, as pebal replay runs it. Its settings (input size, normalisation, "
            "threshold) come from the model file, its preset or calibration record. Changing it at run time "
            "loads the new model first and keeps the old one if loading fails."),
    "runtime": ParamSpec("auto", "Inference backend; 'auto' picks it from the model file's suffix.", choices=RUNTIMES),
    "device": ParamSpec("auto", "Where the runtime runs: 'auto' (GPU if the backend can use one), 'cpu' or 'cuda'.",
                        choices=DEVICES),
    "precision": ParamSpec("auto", "Network precision: 'auto' (FP16 for a .pt on CUDA, FP32 on the CPU; an .onnx/"
                                   ".engine runs as exported), 'fp32' or 'fp16' (needs CUDA). An .onnx/.engine has "
                                   "its precision baked in: asking for another one is refused (re-export).",
                           choices=RuntimeConfig.PRECISIONS),
    "cuda_graph": ParamSpec("auto", "Replay the whole inference step as one CUDA graph: 'auto' (on for a .pt on "
                                    "CUDA, off for ONNX Runtime), 'on' (needs CUDA; a static-size .onnx) or 'off'. "
                                    "Quote the value on the command line (ros2 param set ... cuda_graph \"'on'\"): "
                                    "bare on/off are YAML booleans.",
                            choices=RuntimeConfig.SWITCHES),
    "compile": ParamSpec(False, "torch.compile the PyTorch model (runtime torch only; compiling takes minutes "
                                "at every (re)load)."),
    "threads": ParamSpec(0, "ONNX Runtime intra-op threads; 0: the library's default (all cores).",
                         int_range=(0, 1024)),
    "batch": ParamSpec("auto", "With several cameras: run their frames in one network call. 'auto' (on for a "
                               ".pt on CUDA, off on the CPU, where it pays only for small frames), 'on' (PyTorch "
                               "only: the fused .onnx/.engine graphs take one frame) or 'off'. Quote on/off on "
                               "the command line, as for cuda_graph.", choices=RuntimeConfig.SWITCHES),
    "input_type": ParamSpec("raw", "Subscribe to sensor_msgs/Image ('raw', topic 'image') or sensor_msgs/"
                                   "CompressedImage ('compressed', topic 'image/compressed').",
                            read_only=True, choices=INPUT_TYPES),
    "input_encoding_override": ParamSpec(
        "", "Treat incoming raw images as this encoding instead of the message's (for drivers that label "
            "frames wrongly, e.g. 'bgr8' sent as '8UC3'). Empty: use the message's encoding.", check=_encoding),
    "max_decoded_pixels": ParamSpec(
        InputConfig.max_decoded_pixels, "Largest frame decoded, in pixels (width x height; default 8192x8192). "
        "A larger frame (e.g. a 140 KB PNG declaring 12000x12000, a decompression bomb) is refused from its "
        "header before anything is decoded, counted as a bad frame with the reason, and the next frame runs.",
        int_range=(1, MAX_DECODED_PIXELS_LIMIT)),
    "use_camera_info": ParamSpec(False, "Subscribe to 'camera_info' and republish it, scaled to the output "
                                        "resolution and stamped like the outputs, on pebal/camera_info.",
                                 read_only=True),
    "cameras": ParamSpec([""], "Cameras this node serves, as namespaces relative to the node: for each, it "
                               "subscribes <camera>/image (or image/compressed, camera_info) and publishes "
                               "<camera>/pebal/...; the newest frame of every camera runs in one batched "
                               "inference per tick where the runtime has a batch dimension. [\"\"]: one camera "
                               "on the node's own topics.", read_only=True, check=_cameras),
    "threshold": ParamSpec(math.nan, "Anomaly threshold on the PEBAL score (free energy): score > threshold is "
                                     "anomalous, between -1e6 and 1e6. NaN (also the text 'NaN'): the model's "
                                     "own (its calibration record, the threshold stored in the model file or its "
                                     "preset; a warning when none was calibrated for it). The threshold that "
                                     "runs is the read-only parameter effective_threshold.",
                           check=_threshold, numeric_text=True),
    "input_size": ParamSpec("", "Network input size HEIGHTxWIDTH (e.g. 512x1024) for a .pt model. Empty: the "
                                "model's own (stored in the file; baked into .onnx/.engine files, which refuse "
                                "another size).", check=_input_size),
    "outputs": ParamSpec(list(OUTPUT_NAMES), "Outputs to publish (pebal/<name>); any of "
                         + ", ".join(OUTPUT_NAMES) + ". Outputs without subscribers are never encoded.",
                         check=_outputs),
    "output_resolution": ParamSpec("camera", "'camera': outputs at the camera image size; 'network': at the "
                                             "model's input size (cheaper).", choices=OUTPUT_RESOLUTIONS),
    "min_region_area": ParamSpec(50, "Smallest anomalous region reported in the status message, in camera "
                                     "pixels.", int_range=(1, 10_000_000)),
    "max_regions": ParamSpec(32, "Most regions reported in the status message (largest first).",
                             int_range=(0, 10_000)),
    "overlay_alpha": ParamSpec(0.5, "Weight of the semantic colours in the overlay image.", float_range=(0.0, 1.0)),
    "overlay_boxes": ParamSpec(True, "Draw the anomalous regions' bounding boxes on the overlay."),
    "idle_without_subscribers": ParamSpec(True, "Skip inference entirely while no output (images, status) has "
                                                "a subscriber; diagnostics keep running."),
    "input_qos": ParamSpec("sensor_data", "Subscription QoS: 'sensor_data' (best effort, keep last 5: accepts "
                                          "both reliable and best-effort cameras), 'reliable' or 'best_effort'.",
                           read_only=True, choices=QOS_CHOICES),
    "output_qos": ParamSpec("reliable", "Publisher QoS: 'reliable' (keep last, works with RViz's default "
                                        "reliable image subscriptions and with best-effort ones), "
                                        "'sensor_data' or 'best_effort' (RViz must then be set to Best Effort).",
                            read_only=True, choices=QOS_CHOICES),
    "qos_depth": ParamSpec(1, "History depth of the input subscription and the publishers (only the newest "
                              "frame matters).", read_only=True, int_range=(1, 100)),
    "diagnostics_period": ParamSpec(1.0, "Seconds between /diagnostics messages.", read_only=True,
                                    float_range=(0.1, 60.0)),
    "warn_throttle_s": ParamSpec(5.0, "Minimum seconds between repeated warnings about bad frames.",
                                 float_range=(0.0, 3600.0)),
}


# Not in PARAMS (nothing to configure): the threshold that runs, for `ros2 param get`, where
# `threshold` says NaN ("the model's own"). The node refuses any attempt to set it.
EFFECTIVE_THRESHOLD = "effective_threshold"
EFFECTIVE_THRESHOLD_DESCRIPTION = ("Read-only: the anomaly threshold the node runs with, after resolving threshold NaN to "
                                   "the model's own (its calibration record, file or preset). NaN while no model is "
                                   "loaded. Set `threshold` to change it.")


def _type_name(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "double"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "string array"
    return type(v).__name__


def validate(name: str, value: Any) -> str | None:
    """The reason ``value`` is not acceptable for parameter ``name``, or None if it is."""
    spec = PARAMS.get(name)
    if spec is None:
        return None   # not ours (e.g. use_sim_time): leave it to rclpy
    if spec.numeric_text:
        value = parse_number(value)
    want = _type_name(spec.default)
    got = _type_name(value)
    if want == "double" and got == "integer":
        value = float(value)
        got = "double"
    if want != got:
        return f"{name} must be a {want}, got {got} {value!r}"
    if want == "string array" and not all(isinstance(v, str) for v in value):
        return f"{name} must be a list of strings"
    if spec.choices is not None and value not in spec.choices:
        return f"{name} must be one of {list(spec.choices)}, got {value!r}"
    if spec.float_range is not None and not spec.float_range[0] <= value <= spec.float_range[1]:
        return f"{name} must be in [{spec.float_range[0]}, {spec.float_range[1]}], got {value}"
    if spec.int_range is not None and not spec.int_range[0] <= value <= spec.int_range[1]:
        return f"{name} must be in [{spec.int_range[0]}, {spec.int_range[1]}], got {value}"
    if spec.check is not None:
        reason = spec.check(value)
        if reason:
            return f"{name} {reason}" if not reason.startswith("'") else f"{name}: {reason}"
    return None


def pipeline_config(values: dict[str, Any], model_threshold: float | None = None) -> PipelineConfig:
    """The per-frame settings from (validated) parameter values.

    A NaN ``threshold`` parameter means the model's own (``model_threshold``), else the default.
    """
    threshold = float(values["threshold"])
    if math.isnan(threshold):
        threshold = float(model_threshold) if model_threshold is not None else DEFAULT_THRESHOLD
    return PipelineConfig(
        threshold=threshold,
        output_resolution=str(values["output_resolution"]),
        outputs=tuple(o for o in OUTPUT_NAMES if o in set(values["outputs"])),
        min_region_area=int(values["min_region_area"]),
        max_regions=int(values["max_regions"]),
        overlay_alpha=float(values["overlay_alpha"]),
        overlay_boxes=bool(values["overlay_boxes"]),
        encoding_override=str(values["input_encoding_override"]),
        max_decoded_pixels=int(values["max_decoded_pixels"]),
    ).validate()


def settings_layers(values: dict[str, Any]) -> list[Any]:
    """The node parameters that override the model's own settings (threshold NaN and input_size ''
    mean "the model's own"); one explicit layer for pebal_ros.model_settings.resolve_settings."""
    from ..graph.contract import parse_hw
    from ..model_settings import RUNTIME_FLAGS, Layer

    inference: dict[str, Any] = {"min_region_area": int(values["min_region_area"])}
    threshold = float(values["threshold"])
    if not math.isnan(threshold):
        inference["threshold"] = threshold
    if values.get("input_size"):
        inference["input_size"] = list(parse_hw(str(values["input_size"])))
    runtime = {k: values[k] for k in RUNTIME_FLAGS}   # the parameters share the runtime section's names
    return [Layer("node parameter", {"inference": inference, "runtime": runtime})]


def resolve_node_settings(values: dict[str, Any], info: Any = None) -> Any:
    """The model settings the node runs with: the same resolution as pebal infer/replay, with the
    node parameters as the explicit layer. Never unpickles code (the ``model`` parameter can be set
    by anyone on the DDS domain). ``info``: the model's ModelInfo, when already read."""
    from ..model_settings import resolve_settings

    runtime = None if values["runtime"] == "auto" else str(values["runtime"])
    return resolve_settings(str(values["model"]) or None, settings_layers(values), runtime=runtime,
                            device=str(values["device"]), allow_unsafe=False, info=info)


def defaults() -> dict[str, Any]:
    return {k: (list(s.default) if isinstance(s.default, list) else s.default) for k, s in PARAMS.items()}
