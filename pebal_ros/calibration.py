"""The calibration record of a model: the threshold chosen for it and how it was chosen.

``pebal calibrate`` writes it; every tool that runs a model (infer, replay, export, the node) reads it
through the model-settings resolution, so a threshold calibrated once is used everywhere. It is a small
YAML file beside the model, ``<model file>.calibration.yaml`` (``model.onnx.calibration.yaml``); where
the model's folder is read-only (a package's share/ tree) it goes to the user cache instead,
``<cache>/calibration/<sha256 of the model>.yaml``. The record names the SHA-256 of the model file it
was made for: a record whose digest does not match (the model was retrained or replaced) is ignored,
and the reason is reported, never silently applied.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .paths import cache_dir

SUFFIX = ".calibration.yaml"
FORMAT = 1
TARGETS = ("pixel_fpr", "frame_alarm_rate", "tpr")


class CalibrationError(ValueError):
    """A calibration file that cannot be read or does not belong to the model."""


@dataclass
class Calibration:
    threshold: float
    target: str                      # one of TARGETS
    target_value: float              # e.g. 0.001 for a 0.1 % pixel false-positive rate
    model_sha256: str
    achieved: dict[str, float] = field(default_factory=dict)   # pixel_fpr, frame_alarm_rate, tpr, ap ...
    data: str = ""                   # what it was calibrated on (paths, bag topics)
    frames: int = 0                  # normal frames used
    anomaly_frames: int = 0          # labelled anomaly frames used (0: none)
    input_size: tuple[int, int] | None = None   # (H, W) the model ran at while calibrating
    min_region_area: int | None = None          # for the frame alarm rate
    date: str = ""                   # ISO 8601, UTC
    tool: str = "pebal calibrate"
    format: int = FORMAT

    def describe(self) -> str:
        return (f"threshold {self.threshold:.4g} for {self.target}={self.target_value:g} on {self.frames} frames"
                f" of {self.data or '?'} ({self.date[:10] or 'undated'})")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sidecar_path(model: str | os.PathLike) -> Path:
    model = Path(model)
    return model.with_name(model.name + SUFFIX)


def cache_path(model_sha256: str) -> Path:
    return cache_dir() / "calibration" / f"{model_sha256}.yaml"


def write_calibration(model: str | os.PathLike, cal: Calibration, path: str | os.PathLike | None = None) -> Path:
    """Write ``cal`` beside ``model`` (or to ``path``; the user cache when the folder is read-only)."""
    if not cal.date:
        cal.date = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    target = Path(path) if path is not None else sidecar_path(model)
    if path is None and not os.access(target.parent, os.W_OK):
        target = cache_path(cal.model_sha256)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = dataclasses.asdict(cal)
    if data["input_size"] is not None:
        data["input_size"] = list(data["input_size"])
    tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(f"# written by {cal.tool}; the model's threshold for every pebal tool and the ROS node\n")
        yaml.safe_dump(data, fh, sort_keys=False)
    os.replace(tmp, target)
    return target


def read_calibration(path: str | os.PathLike) -> Calibration:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise CalibrationError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise CalibrationError(f"{path}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(Calibration)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CalibrationError(f"{path}: unknown key(s) {unknown}")
    try:
        cal = Calibration(**data)
        cal.threshold = float(cal.threshold)
        cal.target_value = float(cal.target_value)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{path}: {exc}") from None
    if cal.input_size is not None:
        cal.input_size = (int(cal.input_size[0]), int(cal.input_size[1]))
    if cal.target not in TARGETS:
        raise CalibrationError(f"{path}: target must be one of {TARGETS}, got {cal.target!r}")
    return cal


def find_calibration(model: str | os.PathLike, digest: str | None = None
                     ) -> tuple[Calibration | None, Path | None, str]:
    """The calibration record of ``model``: (record, its file, '') when one matches the model file;
    (None, file, reason) when a record exists but is unusable; (None, None, '') when there is none."""
    model = Path(model)
    candidates = [sidecar_path(model)]
    if digest is None and not candidates[0].is_file():
        digest = file_sha256(model)
    if digest is not None:
        candidates.append(cache_path(digest))
    for path in candidates:
        if not path.is_file():
            continue
        try:
            cal = read_calibration(path)
        except CalibrationError as exc:
            return None, path, str(exc)
        digest = digest or file_sha256(model)
        if cal.model_sha256 != digest:
            return None, path, (f"{path} was made for another model file (sha256 {cal.model_sha256[:12]}…, "
                                f"this one is {digest[:12]}…): ignored; re-run pebal calibrate")
        return cal, path, ""
    return None, None, ""


def to_dict(cal: Calibration) -> dict[str, Any]:
    return dataclasses.asdict(cal)
