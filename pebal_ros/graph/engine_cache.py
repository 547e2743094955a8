"""Which TensorRT engine may be loaded where: keys, sidecar files and the cache directory.

A serialized engine is only valid for the exact ONNX graph, TensorRT version, GPU model/compute
capability, precision and input shapes it was built with; loading it elsewhere fails in obscure
ways or silently runs a different model. Every engine ``pebal build-engine`` writes therefore gets
a JSON sidecar (``x.engine.json``) holding its ``EngineKey``. Before deserializing, the runtime
compares the sidecar with the machine it runs on and refuses a mismatch with a message saying
what differs and how to rebuild; the builder reuses a cached engine only when the keys match.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

SIDECAR_SUFFIX = ".json"
KEY_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")


class StaleEngineError(RuntimeError):
    """The engine does not belong to this ONNX file / TensorRT / GPU / precision / shape set."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


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
    path = sidecar_path(engine_path)
    payload = {"key_version": KEY_VERSION, **asdict(key), "digest": key.digest(), **extra}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_sidecar(engine_path: str | Path) -> dict[str, Any]:
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise StaleEngineError(
            f"{engine_path} has no {path.name} beside it, so nothing says which ONNX file, "
            "TensorRT version and GPU it was built for; refusing to load it blindly. Rebuild it with "
            "`pebal build-engine --onnx MODEL.onnx --output ENGINE` (or pass allow_unverified=True "
            "if you built it yourself with trtexec for this exact machine)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StaleEngineError(f"{path}: unreadable engine sidecar ({exc})") from None


def verify_engine(engine_path: str | Path, tensorrt_version: str, gpu_name: str,
                  compute_capability: str, onnx_path: str | Path | None = None) -> dict[str, Any]:
    """Refuse an engine built for another TensorRT/GPU (or another ONNX file, if given).

    Returns the sidecar on success; raises StaleEngineError naming every mismatch otherwise.
    """
    meta = read_sidecar(engine_path)
    key = EngineKey.from_dict(meta)
    problems = []
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
    """A directory of engines named by their key digest; a lookup hits only on an exact key."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    def path_for(self, key: EngineKey, stem: str = "pebal") -> Path:
        return self.dir / f"{stem}.{key.precision}.{key.digest()[:16]}.engine"

    def lookup(self, key: EngineKey, stem: str = "pebal") -> Path | None:
        path = self.path_for(key, stem)
        if not path.is_file():
            return None
        try:
            stored = EngineKey.from_dict(read_sidecar(path))
        except StaleEngineError:
            return None
        return path if stored == key else None
