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
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import cache
from .config import short_repr, threshold_problem
from .paths import cache_dir
from .safe_yaml import YAMLLimitError, load_text

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


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of the model file (remembered per process while the file is unchanged)."""
    return cache.file_sha256(path)


def sidecar_path(model: str | os.PathLike) -> Path:
    model = Path(model)
    return model.with_name(model.name + SUFFIX)


def cache_path(model_sha256: str) -> Path:
    """Where the record of a model in a read-only folder goes (the folder is not checked here)."""
    return cache_dir() / "calibration" / f"{model_sha256}.yaml"


def write_calibration(model: str | os.PathLike, cal: Calibration, path: str | os.PathLike | None = None) -> Path:
    """Write ``cal`` beside ``model`` (or to ``path``; the user cache when the folder is read-only)."""
    if not cal.date:
        cal.date = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    target = Path(path) if path is not None else sidecar_path(model)
    if path is None and not os.access(target.parent, os.W_OK):
        target = cache_path(cal.model_sha256)
    if _in_cache(target):
        cache.cache_folder("calibration")     # a private cache folder, or one line saying why not
    target.parent.mkdir(parents=True, exist_ok=True)
    data = dataclasses.asdict(cal)
    if data["input_size"] is not None:
        data["input_size"] = list(data["input_size"])
    text = (f"# written by {cal.tool}; the model's threshold for every pebal tool and the ROS node\n"
            + yaml.safe_dump(data, sort_keys=False))
    return cache.write_atomic(target, text.encode("utf-8"), mode=0o644)


def _in_cache(path: Path) -> bool:
    try:
        return path.absolute().parent == (cache_dir() / "calibration").absolute()
    except OSError:
        return False


MAX_RECORD_BYTES = 64 * 1024


def read_calibration(path: str | os.PathLike, text: bytes | None = None) -> Calibration:
    """The record in ``path`` (``text``: its content, already read), every field checked; raises
    CalibrationError (one line) for anything that is not a well-formed record."""
    try:
        if text is None:
            with open(path, "rb") as fh:
                text = fh.read(MAX_RECORD_BYTES + 1)
        if len(text) > MAX_RECORD_BYTES:
            raise CalibrationError(f"{path}: larger than {MAX_RECORD_BYTES} bytes; not a calibration record")
        data = load_text(text, str(path))
    except YAMLLimitError as exc:
        raise CalibrationError(f"{path}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise CalibrationError(f"{path}: not valid YAML ({_one_line(exc)})") from None
    if not isinstance(data, dict):
        raise CalibrationError(f"{path}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(Calibration)}
    unknown = sorted(set(map(str, data)) - known)
    if unknown:
        raise CalibrationError(f"{path}: unknown key(s) {short_repr(unknown)}")
    missing = sorted({"threshold", "target", "target_value", "model_sha256"} - set(data))
    if missing:
        raise CalibrationError(f"{path}: missing key(s) {missing}")
    for key in ("threshold", "target_value"):      # YAML 1.1 reads 1e-3 (no dot) as text
        if isinstance(data[key], str):
            try:
                data[key] = float(data[key])
            except ValueError:
                pass
    problems = [f"{key} {why}" for key, value in data.items() if (why := _field_problem(key, value))]
    if problems:
        raise CalibrationError(f"{path}: not a valid calibration record: " + "; ".join(problems))
    cal = Calibration(**data)
    cal.threshold, cal.target_value = float(cal.threshold), float(cal.target_value)
    cal.achieved = {str(k): float(v) for k, v in cal.achieved.items()}
    if not isinstance(cal.date, str):
        cal.date = cal.date.isoformat()
    if cal.input_size is not None:
        cal.input_size = (int(cal.input_size[0]), int(cal.input_size[1]))
    return cal


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _field_problem(key: str, value: Any) -> str | None:
    """Why ``value`` cannot be the record's ``key`` (None: it can)."""
    if key == "threshold":
        return threshold_problem(value)
    if key == "target":
        return None if value in TARGETS else f"must be one of {TARGETS}, got {short_repr(value)}"
    if key == "target_value":
        return None if _number(value) and 0 <= value <= 1 else f"must be a rate between 0 and 1, got {short_repr(value)}"
    if key == "model_sha256":
        return None if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) else \
            f"must be a SHA-256 (64 hexadecimal digits), got {short_repr(value)}"
    if key == "achieved":
        ok = isinstance(value, dict) and all(isinstance(k, str) and _number(v) for k, v in value.items())
        return None if ok else f"must map names to numbers, got {short_repr(value)}"
    if key in ("frames", "anomaly_frames"):
        return None if _count(value) else f"must be a whole number, got {short_repr(value)}"
    if key == "input_size":
        ok = value is None or (isinstance(value, (list, tuple)) and len(value) == 2
                               and all(_count(v) and 1 <= v <= 16384 for v in value))
        return None if ok else f"must be [HEIGHT, WIDTH], got {short_repr(value)}"
    if key == "min_region_area":
        return None if value is None or (_count(value) and value >= 1) else \
            f"must be a whole number of pixels, got {short_repr(value)}"
    if key == "format":
        return None if value == FORMAT else f"must be {FORMAT} (written by another version?), got {short_repr(value)}"
    if key == "date" and isinstance(value, (_dt.date, _dt.datetime)):
        return None                     # an unquoted ISO date in a hand-written record
    if key in ("data", "date", "tool"):
        return None if isinstance(value, str) else f"must be text, got {short_repr(value)}"
    return None


def find_calibration(model: str | os.PathLike, digest: str | None = None
                     ) -> tuple[Calibration | None, Path | None, str]:
    """The calibration record of ``model``: (record, its file, '') when one matches the model file;
    (None, file, reason) when a record exists but is unusable; (None, None, '') when there is none.

    The record beside the model comes first; the cache copy (for a model in a read-only folder) is
    looked for only when there is none, under the cache's rules (raises cache.CacheError for a cache
    folder others can write)."""
    model = Path(model)
    side = sidecar_path(model)
    if side.is_file():
        return _matching(model, side, None, digest)
    digest = digest or file_sha256(model)
    try:
        path = cache.cache_folder("calibration", create=False) / f"{digest}.yaml"
    except FileNotFoundError:
        return None, None, ""              # no cache folder yet: nothing was ever cached
    try:
        text = cache.read_verified(path, MAX_RECORD_BYTES)
    except FileNotFoundError:
        return None, None, ""
    except cache.UntrustedFile as exc:
        return None, path, f"{path} is {exc.strerror}: ignored (the cache only trusts your own regular files)"
    return _matching(model, path, text, digest)


def _matching(model: Path, path: Path, text: bytes | None, digest: str | None
              ) -> tuple[Calibration | None, Path | None, str]:
    try:
        cal = read_calibration(path, text)
    except CalibrationError as exc:
        return None, path, f"{exc}: ignored"
    digest = digest or file_sha256(model)
    if cal.model_sha256 != digest:
        return None, path, (f"{path} was made for another model file (sha256 {cal.model_sha256[:12]}…, "
                            f"this one is {digest[:12]}…): ignored; re-run pebal calibrate")
    return cal, path, ""


def to_dict(cal: Calibration) -> dict[str, Any]:
    return dataclasses.asdict(cal)
