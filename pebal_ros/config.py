"""Every setting of pebal_ros in one place: dataclasses, loaded from and saved to YAML.

One ``Config`` holds a section per concern. The CLI loads ``--config file.yaml`` into it and then
applies explicit flags; the ROS node maps its parameters onto ``inference`` and ``node``. Unknown
keys are errors (a typo in a YAML file must not silently fall back to a default).

Every command layers, lowest to highest priority: the defaults, ``--preset NAME``
(``pebal_ros/configs/NAME.yaml``), ``--config FILE.yaml``, ``--set section.key=value`` (YAML values,
repeatable), then its dedicated flags (:func:`resolve_config`).

Sections are owned by the module that consumes them; add a field to the section you need rather
than a module-level constant elsewhere.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from .safe_yaml import load_file, load_text

T = TypeVar("T")

# The anomaly score is the free energy of the network's logits (|score| stays below about 1e3 for a
# trained network, and an FP16 network cannot exceed 65504); the runtimes compare it with the
# threshold in float32, where 1e39 is already infinity and every frame fails. One range for every
# place a threshold enters (flags, --set, YAML, node parameters, calibration records, ONNX metadata,
# engine sidecars): it holds every score a network can produce, with a wide margin, and is exact in
# float32. NaN is not a threshold: where a tool accepts it, it means "the model's own".
THRESHOLD_LIMIT = 1.0e6


def threshold_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a threshold (None: it can); the reason names the allowed range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"must be a number, got {short_repr(value)}"
    if not (math.isfinite(value) and -THRESHOLD_LIMIT <= value <= THRESHOLD_LIMIT):
        return (f"must be a finite number between {-THRESHOLD_LIMIT:g} and {THRESHOLD_LIMIT:g} (scores are "
                f"compared in float32), got {value:g}")
    return None


def short_repr(value: Any, limit: int = 60) -> str:
    """repr() of a value from a file, cut short: an error message must not quote a huge value."""
    text = reprlib.repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass
class LossConfig:
    """PEBAL loss hyper-parameters; defaults are the official code's (see losses.py)."""
    m_in: float = -12.0
    m_out: float = -6.0
    ebm_weight: float = 0.1          # lambda in eq. 2 (0.01 for the LostAndFound setting)
    outlier_pal_weight: float = 0.1  # weight of the anomaly-pixel PAL term on mixed images
    smooth_weight: float = 3e-6      # official: 3e-6 on squared energy differences
    sparse_weight: float = 5e-4      # official: 5e-4 on ||E_out||_2
    penalty_kernel: int = 7
    penalty_sigma: float = 1.0
    num_classes: int = 19
    temperature: float = 1.0         # energy temperature T (official: 1)
    outlier_log_clamp: float = 1e-7  # official clamp inside log of the anomaly-pixel PAL term


@dataclass
class AnomalyMixConfig:
    enabled: bool = True
    # Official: int(0.1 * #frames) outlier images are appended to the frames, each pasted into a
    # random frame (about 9 % of the items of an epoch are mixed); see data/anomalymix.py.
    outlier_fraction: float = 0.1
    probability: float = 0.0          # extra (not official): chance an ordinary frame also gets an object
    crop_size: tuple[int, int] = (900, 900)   # (height, width)
    scale_range: tuple[float, float] = (0.5, 2.0)   # uniform, used when scale_choices is None
    scale_choices: tuple[float, ...] | None = (0.5, 0.75, 1.0, 1.5, 1.75, 2.0)  # official
    flip: bool = True
    flip_probability: float = 0.8     # official: random.random() >= 0.2
    # Paper-suggested extras, off by default (the official code does none of them).
    object_scale_range: tuple[float, float] | None = None
    object_rotation_deg: float = 0.0
    seam_blur_sigma: float = 0.0


@dataclass
class TrainConfig:
    """``pebal finetune`` (PEBAL fine-tuning of the final block); see train/finetune.py."""
    epochs: int = 40                  # official code; the paper says 20
    batch_size: int = 8               # per process (official: per GPU); the paper says 16
    lr: float = 1e-5                  # Adam (official); the paper uses 1e-6 for the LostAndFound setting
    poly_power: float = 0.9
    weight_decay: float = 0.0         # official Adam has none (its config's 1e-4 is never passed)
    num_workers: int = 2
    seed: int = 0
    log_every: int = 10               # optimiser steps between log records
    checkpoint_every: int = 1         # epochs
    keep_checkpoints: int = 3         # epoch_NNN.pt files kept (0 = all); last.pt is always written
    steps_per_epoch: int = 0          # 0 = one pass over the data; > 0 caps an epoch (smoke runs)
    device: str = "auto"
    # Module-name globs to train instead of the final block (empty = the architecture's final block).
    trainable: tuple[str, ...] = ()
    # Keep the BatchNorm layers of the trainable blocks in eval mode (running statistics fixed at the
    # pre-trained values; their scale/shift still train). Not official; pebal finetune-cached only.
    bn_eval: bool = False


@dataclass
class RoadConfig:
    """Real-road fine-tuning from a feature cache (``pebal build-road-cache``, ``pebal finetune-cached``,
    ``pebal build-mixed-set``): the AnomalyMix pool of real frames and how objects are placed."""
    input_size: tuple[int, int] = (256, 512)          # (height, width): the node's inference.input_size
    mixes_per_frame: int = 4                          # pool items per training frame (each its own mix)
    extra_repeats: int = 8                            # pool items per frame of the extra (Cityscapes) frames
    objects: str = "both"                             # outlier sources: real | procedural | both | none
    procedural_count: int = 4000                      # procedural objects to draw from
    procedural_size: int = 160                        # their longest side in pixels before scaling
    min_objects: int = 1
    max_objects: int = 3                              # objects per mixed item: uniform in [min, max]
    clean_fraction: float = 0.2                       # items without any object
    p_ground: float = 0.8                             # an object stands on road/sidewalk (else anywhere)
    height_range: tuple[float, float] = (0.12, 0.8)   # object height / camera height, on the ground
    free_height_range: tuple[float, float] = (0.04, 0.35)   # object height / frame height, anywhere
    brightness_range: tuple[float, float] = (0.6, 1.15)
    zoom_range: tuple[float, float] = (1.0, 1.5)      # frame resized to input_size, zoomed, cropped back
    flip_probability: float = 0.5
    feature_dtype: str = "float16"                    # cached encoder outputs: float16 | float32
    seed: int = 0


@dataclass
class PretrainConfig:
    """``pebal train``: supervised cross-entropy training of an inlier network from scratch."""
    arch: str = "espnetv2"
    arch_kwargs: dict[str, Any] = field(default_factory=lambda: {"s": 1.0})
    epochs: int = 100
    batch_size: int = 8               # per process
    lr: float = 2e-3                  # Adam
    poly_power: float = 0.9
    weight_decay: float = 1e-4
    crop_size: tuple[int, int] = (512, 1024)      # (height, width)
    scale_choices: tuple[float, ...] | None = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
    flip_probability: float = 0.5
    num_workers: int = 2
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 1
    keep_checkpoints: int = 2
    steps_per_epoch: int = 0
    device: str = "auto"


@dataclass
class InferenceConfig:
    """Per-frame numeric settings shared by evaluate, export, the node and replay."""
    input_size: tuple[int, int] = (512, 1024)   # (height, width) the network sees
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channel_order: str = "rgb"        # of the camera images the model is fed ("rgb" | "bgr")
    smooth_kernel: int = 7
    smooth_sigma: float = 1.0
    # Energy above this is anomalous. Model-specific: a model's own stored/calibrated threshold
    # (pebal_ros.model_settings) replaces this placeholder, which only ever runs with a warning.
    threshold: float = -10.0
    score_at_network_resolution: bool = False   # the "fast" variant
    min_region_area: int = 50         # pixels, for the regions in the status message
    # Pictures only (infer's heat maps, replay's contact sheets): colours run from threshold - span
    # (blue) to threshold + span (red), one scale for every frame, in score units.
    heatmap_span: float = 3.0


@dataclass
class RuntimeConfig:
    """How the backend runs the model, not what it computes (pebal_ros.open_model hands these to
    load_runtime; pebal_ros.model_settings validates them against the backend and device).

    "auto" means the backend's fast default: PyTorch on CUDA runs FP16 in a CUDA graph, on the CPU
    FP32 eager; ONNX Runtime and TensorRT run the precision their file was exported/built with."""
    PRECISIONS: ClassVar[tuple[str, ...]] = ("auto", "fp32", "fp16")
    SWITCHES: ClassVar[tuple[str, ...]] = ("auto", "on", "off")
    precision: str = "auto"
    # YAML 1.1 reads a bare on/off as true/false: "switch" fields take either spelling
    cuda_graph: str = field(default="auto", metadata={"switch": True})
    compile: bool = False             # torch.compile (PyTorch only; minutes at load)
    threads: int = 0                  # ONNX Runtime intra-op threads; 0 = the library's default
    # several cameras' frames in one network call (PyTorch: on for CUDA, off on the CPU where it
    # pays only for small frames; the fused ONNX/TensorRT graphs take one frame)
    batch: str = field(default="auto", metadata={"switch": True})


# OpenCV's own ceiling (CV_IO_MAX_IMAGE_PIXELS): it refuses to decode more pixels than this anyway
MAX_DECODED_PIXELS_LIMIT = 1 << 30


@dataclass
class InputConfig:
    """Limits on what is decoded from outside: camera frames (Image, CompressedImage), image files
    and label PNGs. Checked on the encoded header before a pixel is decoded (pebal_ros.image_limits)."""
    # width x height above this is refused: a 140 KB PNG can declare 12000x12000 (a decompression
    # bomb); 8192x8192 is well above any vehicle camera and still bounds one frame to 192 MiB of RGB
    max_decoded_pixels: int = 8192 * 8192

    def __post_init__(self) -> None:
        v = self.max_decoded_pixels
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_DECODED_PIXELS_LIMIT:
            raise ValueError(f"input.max_decoded_pixels must be an integer from 1 to {MAX_DECODED_PIXELS_LIMIT} "
                             f"(OpenCV's own limit), got {v!r}")


@dataclass
class Config:
    model: str = "models/pebal_espnetv2_road.pt"
    arch: str | None = None
    loss: LossConfig = field(default_factory=LossConfig)
    anomalymix: AnomalyMixConfig = field(default_factory=AnomalyMixConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    road: RoadConfig = field(default_factory=RoadConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    input: InputConfig = field(default_factory=InputConfig)


def _build(cls: type[T], data: dict[str, Any], where: str) -> T:
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where or 'config'}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = getattr(cls(), name)  # type: ignore[call-arg]
        if fields[name].metadata.get("switch") and isinstance(value, bool):
            value = "on" if value else "off"
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}".lstrip("."))
        elif isinstance(default, tuple) and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = _coerce(value, default, f"{where}.{name}".lstrip("."))
    return cls(**kwargs)


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Check a scalar against its default's type; fix the one YAML trap that bites here.

    PyYAML follows YAML 1.1, where ``1e-3`` (no dot) is a *string*; a learning rate written that
    way must not reach Adam as text. Ints are accepted where floats are expected. Fields whose
    default is None (optional) or a container are passed through unchecked.
    """
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true/false, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{where}: expected a number, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if isinstance(default, str) and default and not isinstance(value, str):
        raise ValueError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(data: dict[str, Any], cls: type[T] = Config) -> T:  # type: ignore[assignment]
    return _build(cls, data, "")


def load_config(path: str | Path | None = None, cls: type[T] = Config) -> T:  # type: ignore[assignment]
    """Load a YAML file into ``cls`` (defaults for missing keys); ``None`` gives the defaults."""
    if path is None:
        return cls()
    data = load_file(path) or {}
    return from_dict(data, cls)


def to_dict(cfg: Any) -> dict[str, Any]:
    def conv(v: Any) -> Any:
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return conv(dataclasses.asdict(cfg))


def save_config(cfg: Any, path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)


# --- command-line layering -----------------------------------------------------------------

PRESET_DIR = Path(__file__).resolve().parent / "configs"


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"unknown preset {name!r}; available: {', '.join(list_presets()) or 'none'}")
    return path


def add_config_arguments(p: argparse.ArgumentParser, preset_help: str = "") -> None:
    """``--preset`` / ``--config`` / ``--set``, read back by :func:`resolve_config`."""
    p.add_argument("--preset", default=None,
                   help=f"named config shipped with the package ({', '.join(list_presets()) or 'none'})"
                        + (f": {preset_help}" if preset_help else ""))
    p.add_argument("--config", type=Path, default=None, help="YAML config file (applied after --preset)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set inference.threshold=-8 (repeatable)")
    p.add_argument("--unsafe-load-pickle", action="store_true",
                   help="allow full unpickling of .pt/.pth files the safe (weights-only) loader refuses; that "
                        "can run arbitrary code from the file: only for checkpoints from sources you trust")


def _deep_merge(base: dict[str, Any], extra: dict[str, Any], where: str = "") -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "arch_kwargs":
            _deep_merge(base[key], value, f"{where}{key}.")
        else:
            base[key] = value
    return base


def _read_yaml(path: Path) -> dict[str, Any]:
    data = load_file(path) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a mapping of config sections, got {type(data).__name__}")
    return data


def parse_override(text: str) -> dict[str, Any]:
    """``a.b.c=value`` -> {"a": {"b": {"c": value}}} with the value parsed as YAML."""
    m = re.fullmatch(r"([A-Za-z_][\w.]*)=(.*)", text.strip(), flags=re.S)
    if not m:
        raise SystemExit(f"--set expects SECTION.KEY=VALUE, got {text!r}")
    keys, value = m.group(1).split("."), load_text(m.group(2), "--set")
    out: dict[str, Any] = {}
    node = out
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return out


def resolve_config(args: argparse.Namespace, flags: dict[str, Any] | None = None) -> Config:
    """Defaults < preset < --config < --set < ``flags`` (a nested dict of values given on the command line)."""
    data = to_dict(Config())
    if getattr(args, "preset", None):
        _deep_merge(data, _read_yaml(preset_path(args.preset)))
    if getattr(args, "config", None):
        _deep_merge(data, _read_yaml(Path(args.config)))
    for text in getattr(args, "overrides", []) or []:
        _deep_merge(data, parse_override(text))
    if flags:
        _deep_merge(data, {sec: {k: v for k, v in vals.items() if v is not None} if isinstance(vals, dict) else vals
                           for sec, vals in flags.items() if vals is not None})
    try:
        return from_dict(data)
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"invalid configuration: {exc}") from None
