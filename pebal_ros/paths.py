"""Where pebal_ros finds its bundled models and keeps its caches, however it was installed.

The bundled models live in the repository's ``models/`` folder. They reach a user by one of three
routes, and each puts them somewhere else:

- a clone, or ``pip install -e .``: ``<repo>/models`` beside the ``pebal_ros`` package;
- ``pip install .`` or a wheel: setup.py's ``data_files`` put them in ``<prefix>/share/pebal_ros/models``
  (the venv, ``/usr/local`` or ``~/.local``);
- ``colcon build`` (ament_python): ``<install>/share/pebal_ros/models``, found through
  ``AMENT_PREFIX_PATH`` once the workspace is sourced.

Caches (ONNX exports of checkpoints, calibration of read-only models) never go into any of those
trees: colcon installs whatever lies in ``models/``, and an install tree may be read-only. They go
to one user folder, ``$PEBAL_CACHE``, else ``$XDG_CACHE_HOME/pebal_ros``, else ``~/.cache/pebal_ros``.
"""
from __future__ import annotations

import os
import site
import sys
import sysconfig
from pathlib import Path

PACKAGE = "pebal_ros"
# The default: the real-road model (models/make_road_model.sh). The synthetic one drives the synthetic
# demo scene and the tests that need a small, fast model.
DEFAULT_MODEL_NAME = "pebal_espnetv2_road.pt"
SYNTHETIC_MODEL_NAME = "pebal_synthetic_espnetv2.pt"
_SOURCE_ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    """The user cache folder (not created here)."""
    if os.environ.get("PEBAL_CACHE"):
        return Path(os.environ["PEBAL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / PACKAGE


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:          # a prefix the user may not enter (another user's venv): not ours to use
        return False


def model_dirs() -> list[Path]:
    """Candidate folders of the bundled models, most specific first (existing ones only)."""
    candidates = [_SOURCE_ROOT / "models"]                        # clone / editable install
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):   # sourced colcon workspace
        if prefix:
            candidates.append(Path(prefix) / "share" / PACKAGE / "models")
    prefixes = [sysconfig.get_path("data"), sys.prefix, getattr(site, "USER_BASE", None) or ""]
    candidates += [Path(p) / "share" / PACKAGE / "models" for p in prefixes if p]   # pip install . / wheel
    seen: set[Path] = set()
    found = []
    for c in candidates:
        if not _is_dir(c):
            continue
        key = c.resolve()
        if key not in seen:
            seen.add(key)
            found.append(c)
    return found


def bundled_model(name: str = DEFAULT_MODEL_NAME) -> Path:
    """The bundled model ``name``; a clear error saying where it looked when it is not installed."""
    for folder in model_dirs():
        try:
            if (folder / name).is_file():
                return folder / name
        except OSError:
            continue
    looked = [str(_SOURCE_ROOT / "models")] + [
        str(Path(p) / "share" / PACKAGE / "models")
        for p in (os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) + [sysconfig.get_path("data")]) if p]
    raise FileNotFoundError(
        f"the bundled model {name} is not installed (looked in: {', '.join(dict.fromkeys(looked))}); "
        "reinstall pebal_ros (pip install . / colcon build) or pass --model PATH (.onnx / .pt / .engine)")
