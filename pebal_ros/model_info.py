"""What a model file says about itself: architecture, kind, stored settings, calibrated threshold.

Read from a checkpoint's stored ``arch``/``meta`` (or inferred from its weights), an ONNX file's
``pebal.*`` metadata or an engine's sidecar. ``pebal_ros.model_settings`` layers the user's
settings on top of this; nothing here prints or decides.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .config import InferenceConfig, threshold_problem

CHECKPOINT_SUFFIXES = (".pt", ".pth")
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan")
# Bundled models whose preset holds their own, calibrated settings (see configs/synthetic.yaml).
BUNDLED_PRESETS = {"pebal_synthetic_espnetv2.pt": "synthetic", "inlier_synthetic_espnetv2.pt": "synthetic",
                   "pebal_espnetv2_road.pt": "road"}
# The preset's threshold was calibrated for this bundled model only (models/make_default_model.sh).
BUNDLED_CALIBRATED = {"pebal_synthetic_espnetv2.pt"}
# Fields an exported graph fixes: the graph itself resizes, normalises and smooths.
BAKED_FIELDS = ("input_size", "channel_order", "mean", "std", "smooth_kernel", "smooth_sigma",
                "score_at_network_resolution")
# short: the summary is a /diagnostics value, and `ros2 topic echo` cuts strings at 128 characters
KINDS = {"pebal": "PEBAL-fine-tuned",
         "segmentation": "plain segmentation network (no PEBAL fine-tuning)",
         "": "unknown kind"}


class ModelFileError(ValueError):
    """A model file whose own description cannot be read (one line)."""


@dataclass
class ModelInfo:
    """What a model file is, as far as the file itself says."""
    path: Path
    format: str                                   # "checkpoint" | "onnx" | "engine"
    arch: str = ""
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    kind: str = ""                                # see KINDS
    input_size: tuple[int, int] | None = None     # the size it was trained / exported at
    channel_order: str | None = None
    calibrated_threshold: float | None = None     # a threshold calibrated for exactly this model
    calibrated_from: str = ""                     # how that threshold was chosen
    stored: dict[str, Any] = field(default_factory=dict)   # the inference settings the file stores
    stored_source: str = ""                       # "checkpoint meta", "ONNX metadata", "engine sidecar"
    baked: tuple[str, ...] = ()                   # inference fields the file fixes
    precision: str | None = None                  # an export's/engine's network precision (fixed in the file)
    bundled_preset: str | None = None

    def summary(self) -> str:
        size = f"{self.input_size[0]}x{self.input_size[1]}" if self.input_size else "any size"
        arch = self.arch or "unknown architecture"
        if self.arch == "espnetv2" and "s" in self.arch_kwargs:
            arch += f" s={self.arch_kwargs['s']:g}"
        thr = (f"calibrated threshold {self.calibrated_threshold:.4g}" if self.calibrated_threshold is not None
               else "no calibrated threshold")
        return (f"{self.path.name}: {arch}, {KINDS.get(self.kind, self.kind)}, {size}, "
                f"{self.channel_order or 'rgb'}, {thr} [{self.format}]")


# -- what the file says ----------------------------------------------------------------------------
def model_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "engine"
    raise ModelFileError(f"{Path(path).name}: unknown model file type {suffix!r}; expected "
                        f"{', '.join(CHECKPOINT_SUFFIXES + ONNX_SUFFIXES + ENGINE_SUFFIXES)}")


def is_bundled(path: Path) -> str | None:
    """The preset of a bundled model file (by name and location), else None."""
    from .paths import model_dirs
    name = BUNDLED_PRESETS.get(path.name)
    if name is None:
        return None
    try:
        here = path.resolve()
        return name if any((d / path.name).resolve() == here for d in model_dirs()) else None
    except OSError:
        return None


def checkpoint_kind(arch: str, arch_kwargs: dict[str, Any], meta: dict[str, Any]) -> str:
    """"pebal" when the abstention channel was trained, else "segmentation".

    A stored ``model_info.kind`` wins; a ``pebal finetune`` meta says pebal; an ESPNetv2 knows it
    (``abstention``); a 20-output WRN38 is the official PEBAL head (NVIDIA's network has 19).
    EdgeNets/NVIDIA layouts without stored information are plain segmentation networks.
    """
    mi = sub_mapping(meta, "model_info")
    if mi.get("kind") in ("pebal", "segmentation"):
        return str(mi["kind"])
    if meta.get("kind") == "pebal_finetune":
        return "pebal"
    if arch == "espnetv2":
        return "pebal" if arch_kwargs.get("abstention") else "segmentation"
    if arch == "wrn38_deeplabv3plus":
        return "pebal" if int(arch_kwargs.get("num_classes", 0)) == 20 else "segmentation"
    return ""


def sub_mapping(d: Any, key: str) -> dict[str, Any]:
    """``d[key]`` when both are mappings, else {} (stored metadata may be anything)."""
    value = d.get(key) if isinstance(d, dict) else None
    return value if isinstance(value, dict) else {}


def _hw_or_none(value: Any) -> tuple[int, int] | None:
    try:
        h, w = (int(v) for v in value)
        return (h, w)
    except (TypeError, ValueError):
        return None


def read_model_info(path: str | Path, allow_unsafe: bool | None = None) -> ModelInfo:
    """What ``path`` says about itself. Raises FileNotFoundError / ModelFileError / CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    fmt = model_format(path)
    info = ModelInfo(path=path, format=fmt, bundled_preset=is_bundled(path))
    if fmt == "checkpoint":
        _checkpoint_info(info, allow_unsafe)
    elif fmt == "onnx":
        from .graph.contract import read_spec
        try:
            spec = read_spec(path)
        except Exception as exc:  # noqa: BLE001 - a foreign or truncated file: say which
            raise ModelFileError(f"{path}: {exc}") from None
        _spec_info(info, spec, "ONNX metadata", f"{path}: its ONNX metadata")
    else:
        _engine_info(info)
    return info


def _checkpoint_info(info: ModelInfo, allow_unsafe: bool | None) -> None:
    from .models.checkpoint import extract_state_dict, infer_architecture, read_checkpoint

    obj = read_checkpoint(info.path, allow_unsafe=allow_unsafe)
    state, stored = extract_state_dict(obj, source=str(info.path))
    meta = sub_mapping(stored, "meta")
    if stored.get("arch"):
        info.arch, info.arch_kwargs = str(stored["arch"]), dict(stored.get("arch_kwargs") or {})
    else:
        info.arch, info.arch_kwargs = infer_architecture(state)
    info.kind = checkpoint_kind(info.arch, info.arch_kwargs, meta)
    cfg = sub_mapping(meta, "config")
    inference = sub_mapping(cfg, "inference") or sub_mapping(meta, "inference")
    if isinstance(inference, dict):
        known = {f.name for f in fields(InferenceConfig)}
        info.stored = {k: v for k, v in inference.items() if k in known}
        info.stored_source = "checkpoint meta"
    mi = sub_mapping(meta, "model_info")
    info.input_size = _hw_or_none(mi.get("input_size") or info.stored.get("input_size"))
    info.channel_order = mi.get("channel_order") or info.stored.get("channel_order")
    if mi.get("calibrated_threshold") is not None:
        info.calibrated_threshold = stored_threshold(mi["calibrated_threshold"], f"{info.path}: its checkpoint meta")
        info.calibrated_from = str(mi.get("calibration") or "checkpoint meta")
        info.stored["threshold"] = info.calibrated_threshold


def stored_threshold(value: Any, where: str) -> float:
    """A threshold a model file stores, within the range every threshold must be in
    (:func:`pebal_ros.config.threshold_problem`); ModelFileError naming the file otherwise."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    reason = threshold_problem(value)
    if reason:
        raise ModelFileError(f"{where} has a threshold that {reason}; re-export or rebuild the model")
    return float(value)


def _spec_info(info: ModelInfo, spec: Any, source: str, where: str) -> None:
    """Fill ``info`` from an ExportSpec; ``where`` names the file in errors ("<file>: its ONNX metadata")."""
    spec.threshold = stored_threshold(spec.threshold, where)
    extra = spec.extra if isinstance(spec.extra, dict) else {}
    info.arch = spec.arch
    info.arch_kwargs = dict(extra.get("arch_kwargs") or {})
    info.kind = spec.model_kind or (checkpoint_kind(spec.arch, info.arch_kwargs, {}) if info.arch_kwargs else "")
    info.input_size = spec.image_size
    info.channel_order = spec.channel_order
    stored: dict[str, Any] = {"channel_order": spec.channel_order, "threshold": spec.threshold,
                              "score_at_network_resolution": bool(spec.fast)}
    if spec.image_size is not None:
        stored["input_size"] = list(spec.image_size)
    for key in ("mean", "std", "smooth_kernel", "smooth_sigma"):
        if key in extra:
            stored[key] = extra[key]
    info.stored, info.stored_source = stored, source
    info.baked = tuple(k for k in BAKED_FIELDS if k in stored)
    info.precision = "fp16" if spec.net_dtype == "float16" else "fp32"
    if spec.threshold_calibrated:
        info.calibrated_threshold = float(spec.threshold)
        info.calibrated_from = spec.threshold_source or source


def _engine_info(info: ModelInfo) -> None:
    from .graph.engine_cache import sidecar_path
    from .graph.contract import ExportSpec
    import json

    side = sidecar_path(info.path)
    if not side.is_file():
        info.stored_source = "engine (no sidecar)"
        return
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{side}: unreadable engine sidecar ({exc})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{side}: unreadable engine sidecar (not a JSON object)")
    if isinstance(meta.get("model"), dict):     # the ONNX metadata, copied by pebal build-engine
        try:
            spec = ExportSpec.from_metadata(meta["model"])
        except ValueError:
            spec = None
        if spec is not None:
            _spec_info(info, spec, "engine sidecar", f"{side}: its engine sidecar")
            # the builder's precision, not the graph's: an FP32 graph builds FP16 or INT8 engines
            info.precision = str(meta["precision"]) if meta.get("precision") else None
            return
    info.channel_order = str(meta.get("channel_order", "rgb"))   # sidecars of older versions
    info.stored = {"channel_order": info.channel_order}
    if "threshold" in meta:
        info.stored["threshold"] = stored_threshold(meta["threshold"], f"{side}: the engine sidecar")
    info.stored_source = "engine sidecar"
    info.baked = ("channel_order",)
    info.precision = str(meta["precision"]) if meta.get("precision") else None
