"""Which TensorRT engine may be loaded where: keys, sidecar files and the cache directory.

A serialized engine is only valid for the exact ONNX graph, TensorRT version, GPU model/compute
capability, precision and input shapes it was built with; loading it elsewhere fails in obscure
ways or silently runs a different model. Every engine ``pebal build-engine`` writes therefore gets
a JSON sidecar (``x.engine.json``) holding its ``EngineKey``. Before deserializing, the runtime
compares the sidecar with the machine it runs on and refuses a mismatch with a message saying
what differs and how to rebuild; the builder reuses a cached engine only when the keys match.

The sidecar also records the engine file's own SHA-256, checked before the engine is used (a
truncated copy or a swapped file is refused, not deserialized). An engine cache folder follows the
user cache's rules (:mod:`pebal_ros.cache`): it must be private (owned by the user, not writable by
others), its engines and sidecars are regular files of this user, never symbolic links, and are
written through ``mkstemp`` names and ``os.replace``.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .. import cache

SIDECAR_SUFFIX = ".json"
KEY_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")


class StaleEngineError(RuntimeError):
    """The engine does not belong to this ONNX file / TensorRT / GPU / precision / shape set."""


def sha256_file(path: str | Path) -> str:
    return cache.file_sha256(path)


@dataclass(frozen=True)
class EngineKey:
    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    shapes: str                 # "image:512x1024x3" or "image:min=..,opt=..,max=.."

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def digest(self) -> str:
        blob = json.dumps({"v": KEY_VERSION, **asdict(self)}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def differences(self, other: "EngineKey") -> list[str]:
        out = []
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a != b:
                if f.name == "onnx_sha256":
                    a, b = a[:12] + "…", b[:12] + "…"
                out.append(f"{f.name}: engine has {a!r}, expected {b!r}")
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EngineKey":
        names = {f.name for f in fields(cls)}
        missing = names - set(d)
        if missing:
            raise StaleEngineError(f"engine sidecar lacks {sorted(missing)}")
        return cls(**{k: str(d[k]) for k in names})


def shapes_string(image_size: tuple[int, int] | None, min_hw=None, opt_hw=None, max_hw=None) -> str:
    if image_size is not None:
        return f"image:{image_size[0]}x{image_size[1]}x3"
    if min_hw is None or max_hw is None:
        raise ValueError("a dynamic-shape engine needs min/max height x width")
    opt_hw = opt_hw or max_hw
    return ("image:min={}x{}x3,opt={}x{}x3,max={}x{}x3"
            .format(*min_hw, *opt_hw, *max_hw))


def sidecar_path(engine_path: str | Path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def write_sidecar(engine_path: str | Path, key: EngineKey, **extra: Any) -> Path:
    """The sidecar of ``engine_path`` (written atomically), with the engine file's SHA-256."""
    path = sidecar_path(engine_path)
    payload = {"key_version": KEY_VERSION, **asdict(key), "digest": key.digest(),
               "engine_sha256": sha256_file(engine_path), **extra}
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    return cache.write_atomic(path, text.encode("utf-8"), mode=0o644)


MAX_SIDECAR_BYTES = 1 << 20


def read_sidecar(engine_path: str | Path, text: bytes | None = None) -> dict[str, Any]:
    """The sidecar of ``engine_path`` as a dict (``text``: its content, already read)."""
    path = sidecar_path(engine_path)
    if text is None and not path.is_file():
        raise StaleEngineError(
            f"{engine_path} has no {path.name} beside it, so nothing says which ONNX file, "
            "TensorRT version and GPU it was built for; refusing to load it blindly. Rebuild it with "
            "`pebal build-engine --onnx MODEL.onnx --output ENGINE` (or pass allow_unverified=True "
            "if you built it yourself with trtexec for this exact machine)")
    try:
        if text is None:
            with open(path, "rb") as fh:
                text = fh.read(MAX_SIDECAR_BYTES + 1)
        if len(text) > MAX_SIDECAR_BYTES:
            raise ValueError(f"larger than {MAX_SIDECAR_BYTES} bytes")
        meta = json.loads(text)
    except (OSError, ValueError) as exc:
        raise StaleEngineError(f"{path}: unreadable engine sidecar ({exc})") from None
    if not isinstance(meta, dict):
        raise StaleEngineError(f"{path}: unreadable engine sidecar (not a JSON object)")
    return meta


def _engine_mismatch(engine_path: str | Path, meta: dict[str, Any], digest: str | None = None) -> str | None:
    """Why the engine file is not the one its sidecar describes (None: it is)."""
    recorded = meta.get("engine_sha256")
    if not isinstance(recorded, str):
        return "its sidecar does not record the engine's SHA-256 (written by an older pebal)"
    digest = digest or sha256_file(engine_path)
    if digest != recorded:
        return (f"the engine file is not the one its sidecar describes (sha256 {digest[:12]}…, recorded "
                f"{recorded[:12]}…): truncated, corrupted or replaced")
    return None


def verify_engine(engine_path: str | Path, tensorrt_version: str, gpu_name: str,
                  compute_capability: str, onnx_path: str | Path | None = None) -> dict[str, Any]:
    """Refuse an engine built for another TensorRT/GPU (or another ONNX file, if given).

    Returns the sidecar on success; raises StaleEngineError naming every mismatch otherwise.
    """
    meta = read_sidecar(engine_path)
    key = EngineKey.from_dict(meta)
    problems = []
    if "engine_sha256" in meta:      # sidecars of older versions lack it: their other checks still apply
        mismatch = _engine_mismatch(engine_path, meta)
        if mismatch:
            problems.append(mismatch)
    if key.tensorrt_version != tensorrt_version:
        problems.append(f"built with TensorRT {key.tensorrt_version}, this is TensorRT {tensorrt_version}")
    if key.gpu_name != gpu_name or key.compute_capability != compute_capability:
        problems.append(f"built for {key.gpu_name} (sm {key.compute_capability}), this GPU is "
                        f"{gpu_name} (sm {compute_capability})")
    if onnx_path is not None:
        digest = sha256_file(onnx_path)
        if digest != key.onnx_sha256:
            problems.append(f"built from a different ONNX file than {Path(onnx_path).name} "
                            f"(sha256 {key.onnx_sha256[:12]}… vs {digest[:12]}…)")
    if problems:
        src = meta.get("onnx_path", "MODEL.onnx")
        raise StaleEngineError(
            f"{engine_path} cannot be used here: " + "; ".join(problems) +
            f". Rebuild it on this machine: pebal build-engine --onnx {src} --precision {key.precision}")
    return meta


class EngineCache:
    """A directory of engines named by their key digest; a lookup hits only on an exact key and an
    engine file whose SHA-256 is the one its sidecar records. The directory must be private
    (:func:`pebal_ros.cache.check_folder`: raises CacheError otherwise)."""

    def __init__(self, directory: str | Path):
        self.dir = cache.check_folder(directory, what="engine cache folder")

    def path_for(self, key: EngineKey, stem: str = "pebal") -> Path:
        return self.dir / f"{stem}.{key.precision}.{key.digest()[:16]}.engine"

    def lookup(self, key: EngineKey, stem: str = "pebal") -> Path | None:
        path = self.path_for(key, stem)
        side = sidecar_path(path)
        try:
            meta = read_sidecar(path, cache.read_verified(side, MAX_SIDECAR_BYTES))
            stored = EngineKey.from_dict(meta)
            fd = cache.open_verified(path)
        except FileNotFoundError:
            return None
        except (OSError, StaleEngineError, ValueError) as exc:
            cache.say_once(f"engine cache entry {path} not used ({exc}); rebuilding it")
            return None
        try:
            digest = cache.sha256_fd(fd)
        finally:
            os.close(fd)
        if stored != key:
            return None
        mismatch = _engine_mismatch(path, meta, digest)
        if mismatch:
            cache.say_once(f"engine cache entry {path} not used: {mismatch}; rebuilding it")
            return None
        return path
