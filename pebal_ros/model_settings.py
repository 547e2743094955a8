"""One resolution of a model's run-time settings, with where each value came from.

Every tool that runs a model (``pebal infer``, ``replay``, ``demo``, ``export`` and the ROS node)
calls :func:`resolve_settings`, so one model file gives the same input size, normalisation,
smoothing and threshold everywhere. Layers, lowest to highest priority:

1. the defaults of ``pebal_ros.config.InferenceConfig``;
2. the model file's own settings: a checkpoint's stored config (``meta``), an ONNX file's
   ``ExportSpec`` metadata, an engine's sidecar; for the bundled model, its preset;
3. the model's calibration record (``pebal calibrate``; threshold only);
4. the user's files: ``--preset``, ``--config``, a params file;
5. explicit overrides: ``--set``, dedicated flags (``--threshold``, ``--precision``), node parameters.

Only the keys a layer actually sets are applied: a preset or ``--set`` changes what it names and
nothing else (a ``--set inference.threshold`` once replaced the bundled model's whole preset).

An ONNX graph or engine has its input size, channel order, normalisation and smoothing baked in.
A file layer (preset, config, params file) naming a different value is ignored with a warning; an
explicit override is refused (re-export instead). Threshold and ``min_region_area`` are free.

The ``runtime`` section (precision, CUDA graph, torch.compile, threads: how the backend runs, not
what it computes) layers the same way and is checked against the chosen backend and device
(:func:`validate_runtime`): a combination that cannot work is a SettingsError naming the setting
and where it came from, never silently dropped.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence, TextIO

from .config import Config, InferenceConfig, RuntimeConfig, from_dict, threshold_problem, to_dict
from .model_info import (BAKED_FIELDS, BUNDLED_CALIBRATED, KINDS, ModelFileError, ModelInfo,  # noqa: F401
                         model_format, read_model_info, sub_mapping)

RUNTIMES = ("onnxruntime", "torch", "tensorrt")
RUNTIME_ALIASES = {"trt": "tensorrt", "onnx": "onnxruntime", "ort": "onnxruntime", "pytorch": "torch"}
RUNTIMES_BY_FORMAT = {"checkpoint": "torch", "onnx": "onnxruntime", "engine": "tensorrt"}
CALIBRATE_HINT = "run `pebal calibrate` on normal frames of your camera to pick one"


class SettingsError(ValueError):
    """Settings that cannot be used (bad value, bad file, a baked field overridden); one line."""


@dataclass
class Layer:
    """One source of settings: a nested dict like a config file's, and how much it may do."""
    source: str                    # shown to the user: "--set", "config my.yaml", "node parameter" ...
    values: dict[str, Any]
    explicit: bool = True          # an explicit override (refused on baked fields) vs a file (ignored)
    vouches_threshold: bool = True  # the user chose this threshold on purpose (no "uncalibrated" warning)


@dataclass
class ModelSettings:
    """The resolved settings of one model file and where every value came from."""
    model: Path
    info: ModelInfo
    config: Config
    sources: dict[str, str]        # "input_size" -> "checkpoint meta", "--set", ...
    runtime: str                   # "onnxruntime" | "torch" | "tensorrt"
    device: str
    bundled: bool
    threshold_calibrated: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def inference(self) -> InferenceConfig:
        return self.config.inference

    @property
    def threshold(self) -> float:
        return float(self.config.inference.threshold)

    @property
    def options(self) -> RuntimeConfig:
        """The ``runtime`` section: how the backend runs (``self.runtime`` names the backend)."""
        return self.config.runtime

    def source(self, name: str) -> str:
        return self.sources.get(name, "default")

    def summary(self) -> str:
        """One line: what runs and with which settings, each with its origin."""
        inf = self.inference
        size = f"{inf.input_size[0]}x{inf.input_size[1]}"
        return (f"model {self.info.summary()}; running {size} ({self.source('input_size')}), "
                f"{inf.channel_order}, threshold {inf.threshold:.4g} ({self.source('threshold')}"
                f"{'' if self.threshold_calibrated else ', NOT calibrated for this model'}), "
                f"runtime {self.runtime} on {self.device}{self._options_summary()}")

    def _options_summary(self) -> str:
        """The runtime options someone set (the defaults say nothing), each with its origin."""
        default = RuntimeConfig()
        set_ = [f"{f.name} {getattr(self.options, f.name)} ({self.source('runtime.' + f.name)})"
                for f in fields(RuntimeConfig) if getattr(self.options, f.name) != getattr(default, f.name)]
        return f" [{', '.join(set_)}]" if set_ else ""

    def as_key_values(self) -> list[tuple[str, str]]:
        """(key, value) pairs for /diagnostics and reports: each setting and its origin."""
        inf = self.inference
        kv = [("model_file", str(self.model)), ("model_summary", self.info.summary()),
              ("model_kind", self.info.kind or "unknown"), ("model_arch", self.info.arch or "unknown"),
              ("settings_runtime", self.runtime),
              ("threshold_calibrated", "yes" if self.threshold_calibrated else "no")]
        for f in fields(InferenceConfig):
            value = getattr(inf, f.name)
            if isinstance(value, tuple):
                value = "x".join(str(v) for v in value) if f.name == "input_size" else list(value)
            kv.append((f"setting_{f.name}", f"{value} ({self.source(f.name)})"))
        for f in fields(RuntimeConfig):
            kv.append((f"setting_runtime_{f.name}", f"{getattr(self.options, f.name)} "
                                                    f"({self.source('runtime.' + f.name)})"))
        for i, w in enumerate(self.warnings):
            kv.append((f"settings_warning_{i}", w))
        return kv


# -- layering --------------------------------------------------------------------------------------
def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    import yaml

    from .safe_yaml import YAMLLimitError, load_file
    try:
        data = load_file(path) or {}
    except FileNotFoundError:
        raise SettingsError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise SettingsError(f"{what} {path}: is a folder, not a YAML file") from None
    except PermissionError:
        raise SettingsError(f"{what} {path}: permission denied") from None
    except YAMLLimitError as exc:
        raise SettingsError(f"{what} {path}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise SettingsError(f"{what} {path}: not valid YAML{at}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{what} {path}: expected a mapping of config sections, got {type(data).__name__}")
    return data


def preset_values(name: str) -> dict[str, Any]:
    from .config import PRESET_DIR, list_presets
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise SettingsError(f"unknown preset {name!r}; available: {', '.join(list_presets()) or 'none'}")
    return _read_yaml(path, "preset")


def parse_set(text: str) -> dict[str, Any]:
    import re

    import yaml

    from .safe_yaml import load_text
    m = re.fullmatch(r"([A-Za-z_][\w.]*)=(.*)", text.strip(), flags=re.S)
    if not m:
        raise SettingsError(f"--set expects SECTION.KEY=VALUE, got {text!r}")
    try:
        value = load_text(m.group(2), "--set")
    except yaml.YAMLError:
        value = m.group(2)
    out: dict[str, Any] = {}
    node = out
    keys = m.group(1).split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return out


RUNTIME_FLAGS = ("precision", "cuda_graph", "compile", "threads", "batch")   # batch: the node's only


def add_runtime_arguments(p: argparse.ArgumentParser, threads: bool = True) -> None:
    """``--precision/--cuda-graph/--compile/--threads``: the ``runtime`` section as flags, read back by
    :func:`cli_layers` (``threads=False``: the command declares its own ``--threads``)."""
    p.add_argument("--precision", choices=RuntimeConfig.PRECISIONS, default=None,
                   help="network precision: auto (FP16 for PyTorch on CUDA, else the model file's own), fp32 "
                        "or fp16; an .onnx/.engine has its precision baked in (= runtime.precision)")
    p.add_argument("--cuda-graph", choices=RuntimeConfig.SWITCHES, default=None,
                   help="capture the whole step in a CUDA graph: auto (on for PyTorch on CUDA, off for ONNX "
                        "Runtime), on (needs CUDA) or off (= runtime.cuda_graph)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the PyTorch model (minutes at start-up; --runtime torch only) "
                        "(= runtime.compile)")
    if threads:
        p.add_argument("--threads", type=int, default=None, metavar="N",
                       help="ONNX Runtime intra-op threads (default: all cores) (= runtime.threads)")


def _pixel_count(text: str) -> int:
    """``--max-decoded-pixels``: N pixels or WIDTHxHEIGHT, within InputConfig's range."""
    from .config import MAX_DECODED_PIXELS_LIMIT

    w, x, h = text.strip().lower().partition("x")
    try:
        sides = (int(w), int(h)) if x else (int(text), 1)
        n = sides[0] * sides[1] if min(sides) >= 1 else 0
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a pixel count or WIDTHxHEIGHT (e.g. 8192x8192), got {text!r}") \
            from None
    if not 1 <= n <= MAX_DECODED_PIXELS_LIMIT:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_DECODED_PIXELS_LIMIT} pixels (OpenCV's own "
                                         f"limit), got {text!r}")
    return n


def add_input_arguments(p: argparse.ArgumentParser) -> None:
    """``--max-decoded-pixels``: the ``input`` section as a flag, read back by :func:`cli_layers`."""
    p.add_argument("--max-decoded-pixels", type=_pixel_count, default=None, metavar="N|WxH",
                   help="largest image decoded (frames, image files, label PNGs), as pixels or WIDTHxHEIGHT; "
                        "a larger one is refused from its header, before decoding, and skipped with the "
                        "reason (default 8192x8192) (= input.max_decoded_pixels)")


def cli_layers(args: argparse.Namespace, flags: dict[str, Any] | None = None) -> list[Layer]:
    """The layers a command line gives: --preset < --config < --set < dedicated flags (``flags``:
    inference values; the runtime flags of :func:`add_runtime_arguments` are read from ``args``)."""
    layers = []
    if getattr(args, "preset", None):
        layers.append(Layer(f"preset {args.preset}", preset_values(args.preset), explicit=False,
                            vouches_threshold=False))
    if getattr(args, "config", None):
        layers.append(Layer(f"config {args.config}", _read_yaml(Path(args.config), "--config"), explicit=False))
    for text in getattr(args, "overrides", None) or []:
        layers.append(Layer("--set", parse_set(text)))
    values: dict[str, Any] = {}
    inference = {k: v for k, v in (flags or {}).items() if v is not None}
    if inference:
        values["inference"] = inference
    runtime = {k: getattr(args, k) for k in RUNTIME_FLAGS if getattr(args, k, None) is not None}
    if runtime:
        values["runtime"] = runtime
    if getattr(args, "max_decoded_pixels", None) is not None:
        values["input"] = {"max_decoded_pixels": args.max_decoded_pixels}
    if values:
        layers.append(Layer("command-line flag", values))
    return layers


def validate_inference(inf: InferenceConfig, sources: dict[str, str] | None = None) -> list[str]:
    """Problems with run-time settings, each naming the key (and, given ``sources``, where the
    value came from); empty: fine."""
    problems = []
    size = inf.input_size
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
        problems.append(f"inference.input_size must be [HEIGHT, WIDTH] (two integers), got {size!r}")
    elif not all(32 <= v <= 16384 for v in size):
        # Both networks resample internally, so any size runs; below 32 pixels their five
        # stride-2 stages leave nothing to segment.
        problems.append(f"inference.input_size must be between 32 and 16384 pixels per side, got {list(size)}")
    if inf.channel_order not in ("rgb", "bgr"):
        problems.append(f"inference.channel_order must be 'rgb' or 'bgr', got {inf.channel_order!r}")
    for name in ("mean", "std"):
        v = getattr(inf, name)
        if (not isinstance(v, (tuple, list)) or len(v) != 3
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
            problems.append(f"inference.{name} must be three numbers (R, G, B), got {v!r}")
        elif name == "std" and not all(x > 0 for x in v):
            problems.append(f"inference.std must be positive, got {list(v)}")
    if inf.smooth_kernel < 1 or inf.smooth_kernel % 2 == 0:
        problems.append(f"inference.smooth_kernel must be an odd positive integer (1 = no smoothing), "
                        f"got {inf.smooth_kernel}")
    if not (inf.smooth_sigma > 0 and math.isfinite(inf.smooth_sigma)):
        problems.append(f"inference.smooth_sigma must be a positive number, got {inf.smooth_sigma}")
    reason = threshold_problem(inf.threshold)
    if reason:
        origin = f" ({sources.get('threshold', 'default')})" if sources is not None else ""
        problems.append(f"inference.threshold{origin} {reason}")
    if inf.min_region_area < 1:
        problems.append(f"inference.min_region_area must be at least 1 pixel, got {inf.min_region_area}")
    if not (isinstance(inf.heatmap_span, (int, float)) and 0 < inf.heatmap_span < float("inf")):
        problems.append(f"inference.heatmap_span must be a positive number of score units, got {inf.heatmap_span!r}")
    return problems


def validate_runtime(opts: RuntimeConfig, kind: str, device: str, info: ModelInfo,
                     sources: dict[str, str]) -> tuple[list[str], list[str]]:
    """(problems, warnings) of the runtime options for backend ``kind`` on ``device``.

    What cannot work is a problem (a SettingsError): a GPU-only option on ``device=cpu``, an
    option of another backend (torch.compile under ONNX Runtime), a precision other than the one an
    .onnx/.engine was exported/built with (re-export instead). An option that merely has no effect
    (threads outside ONNX Runtime) is a warning."""
    def named(key: str) -> str:
        return f"runtime.{key}={getattr(opts, key)} ({sources.get('runtime.' + key, 'default')})"

    problems: list[str] = []
    warnings: list[str] = []
    if opts.precision not in RuntimeConfig.PRECISIONS:
        problems.append(f"runtime.precision must be one of {', '.join(RuntimeConfig.PRECISIONS)}, "
                        f"got {opts.precision!r}")
    if opts.cuda_graph not in RuntimeConfig.SWITCHES:
        problems.append(f"runtime.cuda_graph must be one of {', '.join(RuntimeConfig.SWITCHES)}, "
                        f"got {opts.cuda_graph!r}")
    if opts.batch not in RuntimeConfig.SWITCHES:
        problems.append(f"runtime.batch must be one of {', '.join(RuntimeConfig.SWITCHES)}, got {opts.batch!r}")
    if opts.threads < 0:
        problems.append(f"runtime.threads must be 0 (the library's default) or a number of threads, "
                        f"got {opts.threads}")
    if problems:
        return problems, warnings
    baked = info.format in ("onnx", "engine")
    if opts.precision != "auto" and baked:
        how = ("re-export it (pebal export" + (" --half)" if opts.precision == "fp16" else " without --half)")
               if info.format == "onnx" else f"rebuild it (pebal build-engine --precision {opts.precision})")
        if info.precision is None:
            warnings.append(f"{named('precision')}: {info.path.name} does not record its precision; it runs "
                            "with whatever it was built with")
        elif info.precision != opts.precision:
            problems.append(f"{named('precision')}, but {info.path.name} has its network in "
                            f"{info.precision.upper()}, baked in when it was made ({info.stored_source}): "
                            f"{how}, or leave runtime.precision at auto")
    elif opts.precision == "fp16" and device == "cpu":
        problems.append(f"{named('precision')} needs a CUDA device, but the device is cpu (FP16 is a GPU "
                        "setting): use device cuda or auto, or precision auto/fp32")
    if opts.cuda_graph == "on":
        if device == "cpu":
            problems.append(f"{named('cuda_graph')} needs a CUDA device, but the device is cpu: use device "
                            "cuda or auto, or cuda_graph auto/off")
        elif kind == "tensorrt":
            problems.append(f"{named('cuda_graph')} is an option of the torch and onnxruntime runtimes; "
                            "the TensorRT runtime runs its engine as built: leave cuda_graph at auto")
        elif kind == "onnxruntime" and info.format == "onnx" and info.input_size is None:
            problems.append(f"{named('cuda_graph')} needs a static-size export; {info.path.name} has "
                            "dynamic height/width: export one graph per camera size")
    if opts.compile and kind != "torch":
        problems.append(f"{named('compile')} is torch.compile, an option of the torch runtime; the {kind} "
                        "runtime runs a compiled graph already: use --runtime torch with a .pt, or "
                        "compile false")
    if opts.batch == "on" and kind != "torch":
        problems.append(f"{named('batch')}: the fused {kind} graph takes one frame per call (no batch "
                        "dimension); several cameras run one after another in the same tick. Use the torch "
                        "runtime with a .pt to batch, or batch auto/off")
    if opts.threads and kind != "onnxruntime":
        warnings.append(f"{named('threads')} sets ONNX Runtime's thread pool; the {kind} runtime does not "
                        "use it (ignored)")
    return problems, warnings


def _merge(data: dict[str, Any], layer: dict[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict) and key != "arch_kwargs":
            _merge(data[key], value)
        else:
            data[key] = value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def resolve_runtime(path: Path, requested: str | None, bundled_default: bool) -> str:
    """The backend: the one asked for, else ONNX Runtime for the bundled model (the tools' and
    the node's default), else the file's own (.pt torch, .onnx onnxruntime, .engine tensorrt)."""
    if requested and requested != "auto":
        kind = RUNTIME_ALIASES.get(requested.lower(), requested.lower())
        if kind not in RUNTIMES:
            raise SettingsError(f"unknown runtime {requested!r}; choose from {', '.join(RUNTIMES)}")
        if model_format(path) != "checkpoint" and kind != RUNTIMES_BY_FORMAT[model_format(path)]:
            raise SettingsError(f"{path.name} runs only with {RUNTIMES_BY_FORMAT[model_format(path)]}, not {kind}")
        return kind
    if bundled_default:
        return "onnxruntime"
    return RUNTIMES_BY_FORMAT[model_format(path)]


def resolve_settings(model: str | Path | None = None, layers: Sequence[Layer] = (), *,
                     runtime: str | None = None, device: str = "cpu",
                     allow_unsafe: bool | None = None, info: ModelInfo | None = None) -> ModelSettings:
    """Resolve ``model``'s settings (None or "": the bundled model) under ``layers`` (lowest first).

    Raises FileNotFoundError (no model), SettingsError (bad values or files; one line) or
    CheckpointError (unreadable checkpoint, pickled code without opt-in).
    """
    from .paths import bundled_model

    path = Path(model) if model else bundled_model()
    info = info or read_model_info(path, allow_unsafe)
    data = to_dict(Config())
    sources: dict[str, str] = {}
    inf_fields = {f.name for f in fields(InferenceConfig)}
    rt_fields = {f.name for f in fields(RuntimeConfig)}
    warnings: list[str] = []
    vouched = False
    calibrated = False

    def apply(layer: Layer) -> None:
        nonlocal vouched, calibrated
        values = layer.values
        inference = sub_mapping(values, "inference")
        for key, value in inference.items():
            if key in info.baked and key in info.stored and not _same(value, info.stored[key]):
                msg = (f"{layer.source} sets inference.{key}={value!r}, but {path.name} has "
                       f"{info.stored[key]!r} baked in ({info.stored_source})")
                if layer.explicit:
                    raise SettingsError(msg + "; re-export the model (pebal export) to change it")
                warnings.append(msg + "; ignored")
                continue
            if key in inf_fields:
                sources[key] = layer.source
                if key == "threshold":
                    vouched, calibrated = layer.vouches_threshold, False
        for key in sub_mapping(values, "runtime"):
            if key in rt_fields:
                sources[f"runtime.{key}"] = layer.source
        rest = dict(values)
        if inference:
            rest["inference"] = {k: v for k, v in inference.items()
                                 if not (k in info.baked and k in info.stored and not _same(v, info.stored[k]))}
        try:
            _merge(data, rest)
        except (TypeError, AttributeError):
            raise SettingsError(f"{layer.source}: expected a mapping of config sections") from None

    # 2. the model's own settings
    if info.stored:
        apply(Layer(info.stored_source, {"inference": info.stored}, explicit=False, vouches_threshold=False))
        if info.calibrated_threshold is not None:
            calibrated = True
            sources["threshold"] = f"{info.stored_source}, calibrated ({info.calibrated_from})"
    if info.bundled_preset:
        preset = preset_values(info.bundled_preset)
        own = {"inference": preset.get("inference", {})}
        if preset.get("arch"):
            own["arch"] = preset["arch"]
        apply(Layer(f"preset {info.bundled_preset}, bundled model's own", own, explicit=False,
                    vouches_threshold=False))
        if path.name in BUNDLED_CALIBRATED and "threshold" in own["inference"]:
            calibrated = True
            info.calibrated_threshold = float(own["inference"]["threshold"])
            info.calibrated_from = f"preset {info.bundled_preset}"
            sources["threshold"] = f"preset {info.bundled_preset}, bundled model's own, calibrated"
    # 3. the calibration record
    from .cache import CacheError
    from .calibration import find_calibration
    try:
        cal, cal_path, reason = find_calibration(path)
    except CacheError:
        raise          # an unsafe cache folder is the user's to fix, not a missing record
    except OSError as exc:
        cal, cal_path, reason = None, None, f"calibration record unreadable ({exc})"
    if reason:
        warnings.append(reason)
    if cal is not None:
        apply(Layer(f"calibration file {cal_path}", {"inference": {"threshold": cal.threshold}}, explicit=False))
        calibrated, vouched = True, False
        info.calibrated_threshold, info.calibrated_from = cal.threshold, cal.describe()
    # 4./5. the user's
    for layer in layers:
        apply(layer)
    if not isinstance(data.get("runtime"), dict):
        # `--set runtime=torch` reads like choosing the backend, which is --runtime / the runtime parameter
        raise SettingsError(f"runtime is the section of the runtime options (runtime.precision, "
                            f"runtime.cuda_graph, runtime.compile, runtime.threads), got {data.get('runtime')!r}; "
                            "choose the backend with --runtime (node: the runtime parameter)")
    try:
        config: Config = from_dict(data)
    except (ValueError, TypeError) as exc:
        raise SettingsError(f"invalid model settings: {exc}") from None
    problems = validate_inference(config.inference, sources)
    if problems:
        raise SettingsError("invalid model settings: " + "; ".join(problems))
    config.model = str(path)
    kind = resolve_runtime(path, runtime, bundled_default=not model)
    problems, rt_warnings = validate_runtime(config.runtime, kind, device, info, sources)
    if problems:
        raise SettingsError("invalid runtime settings: " + "; ".join(problems))
    warnings.extend(rt_warnings)
    if cal is not None and cal.input_size is not None and tuple(cal.input_size) != tuple(config.inference.input_size):
        warnings.append(f"the calibration in {cal_path} was made at {cal.input_size[0]}x{cal.input_size[1]}, "
                        f"the model now runs at {config.inference.input_size[0]}x{config.inference.input_size[1]}: "
                        "the threshold may not hold; re-run pebal calibrate")
    is_calibrated = calibrated or vouched
    if not is_calibrated:
        warnings.append(f"threshold {config.inference.threshold:.4g} ({sources.get('threshold', 'default')}) was "
                        f"not calibrated for {path.name}: the anomaly mask may flag far too much or too "
                        f"little; {CALIBRATE_HINT}, or set it explicitly (--threshold / threshold parameter)")
    if info.kind == "segmentation":
        warnings.append(f"{path.name} is a plain segmentation network, not PEBAL-fine-tuned: its anomaly score "
                        "is the free energy of its 19 class logits without abstention training (the paper's "
                        "Energy baseline); expect weaker anomaly masks than from a PEBAL-fine-tuned model")
    return ModelSettings(model=path, info=info, config=config, sources=sources, runtime=kind, device=device,
                         bundled=not model, threshold_calibrated=is_calibrated, warnings=warnings)


def settings_from_args(args: argparse.Namespace, model: str | Path | None = None,
                       flags: dict[str, Any] | None = None, runtime: str | None = None,
                       device: str = "cpu") -> ModelSettings:
    """resolve_settings for a command line (``--preset/--config/--set`` plus ``flags``)."""
    return resolve_settings(model, cli_layers(args, flags), runtime=runtime, device=device)


def announce(settings: ModelSettings, prog: str, out: TextIO | None = None, err: TextIO | None = None) -> None:
    """The one-line summary (stdout) and every warning once (stderr)."""
    print(f"{prog}: {settings.summary()}", file=out or sys.stdout, flush=True)
    for w in settings.warnings:
        print(f"{prog}: warning: {w}", file=err or sys.stderr, flush=True)


def command_settings(args: argparse.Namespace, prog: str, model: str | Path | None, *,
                     flags: dict[str, Any] | None = None, runtime: str | None = None,
                     device: str = "cpu", quiet: bool = False) -> ModelSettings:
    """Resolve and announce; raises SettingsError / FileNotFoundError / CheckpointError."""
    settings = settings_from_args(args, model, flags, runtime=runtime, device=device)
    if not quiet:
        announce(settings, prog)
    return settings


def model_problem(exc: BaseException) -> str:
    """The one line for a failed resolution: a settings or cache-folder problem says so, anything
    else is the model's."""
    from .cache import CacheError
    return str(exc) if isinstance(exc, (SettingsError, CacheError)) else f"cannot load the model: {exc}"
