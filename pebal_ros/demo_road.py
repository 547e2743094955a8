"""The bundled real-road clip of ``pebal demo``: where it is, and its frames read back verified.

The asset (``pebal_ros/demo_data/road_clip``, installed with the package) is written by
``pebal build-demo-road`` (``pebal_ros.road.demo_clip``)::

    frames/NNN.jpg     a frame of a real drive with held-out objects pasted on the road (RGB JPEG)
    labels/NNN.png     its ground truth, mono8: 0 normal, 1 pasted object
    manifest.json      per frame: the two files' SHA-256, the clip frame, the objects pasted
    SOURCES.md         the clip's and every object's licence

Every file is checked against the manifest's SHA-256 before it is used, and every label against
the frame's size and the 0/1 convention: a damaged or edited install is one clear error, never
wrong metrics.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

FORMAT = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20
ROAD_CLIP = Path(__file__).resolve().parent / "demo_data" / "road_clip"


class RoadClipError(ValueError):
    """The bundled clip is missing or does not match its manifest (one line)."""


@dataclass(frozen=True)
class RoadClip:
    folder: Path
    manifest: dict[str, Any]

    @property
    def frames(self) -> list[dict[str, Any]]:
        return self.manifest["frames"]

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of every frame."""
        w, h = self.manifest["size"]
        return int(w), int(h)

    @property
    def period_ns(self) -> int:
        """Time between two frames of the asset in the original drive (the recording's stamps)."""
        return int(self.manifest["period_ns"])

    def describe(self) -> str:
        clip = self.manifest["clip"]
        kinds = sorted({o["kind"] for f in self.frames for o in f["objects"]})
        return (f"{len(self.frames)} frames of {clip['name']} ({clip['repository']}, {clip['licence']}) with "
                f"held-out {', '.join(kinds)} pasted on the road")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _inside(folder: Path, name: Any) -> Path:
    rel = Path(str(name))
    if rel.is_absolute() or ".." in rel.parts:
        raise RoadClipError(f"road clip: {name!r} in {folder / MANIFEST} points outside the clip folder")
    return folder / rel


def open_road_clip(folder: str | Path | None = None) -> RoadClip:
    """The clip's manifest (default: the bundled clip), checked for shape (not yet the files:
    :func:`road_frames` does that)."""
    folder = Path(folder) if folder is not None else ROAD_CLIP
    path = folder / MANIFEST
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise RoadClipError(f"road clip: {path} is larger than {MAX_MANIFEST_BYTES} bytes")
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RoadClipError(f"road clip: {path} not found (reinstall pebal_ros, or rebuild it with "
                            "`pebal build-demo-road`)") from None
    except (OSError, ValueError) as exc:
        raise RoadClipError(f"road clip: {path} cannot be read: {exc}") from None
    try:
        ok = (manifest["format"] == FORMAT and len(manifest["size"]) == 2 and int(manifest["period_ns"]) > 0
              and all(isinstance(f["frame"], str) and isinstance(f["label"], str) and len(f["sha256"]) == 2
                      and isinstance(f["objects"], list) for f in manifest["frames"])
              and len(manifest["frames"]) > 0)
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise RoadClipError(f"road clip: {path} is not a road-clip manifest of format {FORMAT}")
    return RoadClip(folder, manifest)


def road_frames(clip: RoadClip, limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(RGB uint8 HxWx3, label uint8 HxW 0/1) of the first ``limit`` frames (all when None), each
    file checked against the manifest first."""
    w, h = clip.size
    for entry in clip.frames[:limit]:
        files = (_inside(clip.folder, entry["frame"]), _inside(clip.folder, entry["label"]))
        for file, want in zip(files, entry["sha256"]):
            try:
                got = _sha256(file)
            except OSError as exc:
                raise RoadClipError(f"road clip: {file}: {exc.strerror or exc}") from None
            if got != want:
                raise RoadClipError(f"road clip: {file} does not match its SHA-256 in the manifest (damaged or "
                                    "edited; reinstall pebal_ros or rebuild it with `pebal build-demo-road`)")
        bgr = cv2.imread(str(files[0]), cv2.IMREAD_COLOR)
        label = cv2.imread(str(files[1]), cv2.IMREAD_UNCHANGED)
        if bgr is None or label is None or bgr.shape[:2] != (h, w) or label.shape != (h, w) \
                or label.dtype != np.uint8 or int(label.max(initial=0)) > 1:
            raise RoadClipError(f"road clip: {files[0].name} / {files[1].name} are not a {w}x{h} frame and "
                                "its 0/1 mono8 label")
        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), label
