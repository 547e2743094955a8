"""A Runtime for resolved model settings: the one place every tool and the node open a model.

It sits above both ``export`` (a checkpoint run on ONNX Runtime is exported first) and ``runtime``.

A checkpoint run with ONNX Runtime is exported to the fused graph once and kept in the verified
user cache (:mod:`pebal_ros.cache`, ``$PEBAL_CACHE``). The entry's key is the checkpoint's SHA-256
(its content, not its path: the bundled model installed in a clone, a pip prefix and a colcon
install tree is exported once) and every setting the graph bakes in, so a retrained checkpoint or a
changed setting is re-exported; the entry is checked against its recorded SHA-256 before every use.
The graph's metadata says what the model is and where its threshold came from.
``runtime.precision: fp16`` exports it with an FP16 network (``--half``).

The ``runtime`` options (:class:`pebal_ros.config.RuntimeConfig`, already checked against the
backend and device by the settings resolution) become the backend's keyword options here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import cache
from .config import to_dict
from .graph.contract import ExportSpec
from .model_settings import ModelSettings
from .runtime import load_runtime
from .runtime.base import Runtime
from .runtime.common import RuntimeUnavailable

_SWITCH = {"auto": None, "on": True, "off": False}
# Bump when the exporter's output changes for the same checkpoint and settings: old entries then
# stop matching and are rebuilt.
EXPORT_FORMAT = "fused-onnx-1"


def export_key(settings: ModelSettings, size: tuple[int, int]) -> dict[str, Any]:
    """What the cached export of ``settings``' checkpoint at ``size`` is made from."""
    # Threshold, region size and picture scale are run-time inputs, not part of the graph: changing
    # them must not cost a re-export (the cached file's metadata keeps the first export's threshold as a hint;
    # a checkpoint's threshold always comes from resolve_settings, never from the cache).
    baked = {k: v for k, v in to_dict(settings.inference).items()
             if k not in ("threshold", "min_region_area", "heatmap_span")}
    spec = ExportSpec(image_size=None)
    return {"entry": EXPORT_FORMAT, "source_sha256": cache.file_sha256(settings.model),
            "image_size": [int(size[0]), int(size[1])], "inference": baked, "arch": settings.config.arch,
            "kind": settings.info.kind, "net_dtype": "float16" if _half_export(settings) else "float32",
            "exporter": spec.exporter, "opset": spec.opset}


def cached_onnx(settings: ModelSettings, image_size: tuple[int, int] | None = None, quiet: bool = False) -> Path:
    """The fused ONNX export of the settings' checkpoint (at ``image_size``, default the resolved
    input size), exported on first use, verified on every use."""
    checkpoint = settings.model
    size: tuple[int, int] = tuple(image_size or settings.inference.input_size)  # type: ignore[assignment]

    def build(path: Path) -> None:
        from .export.onnx import export_checkpoint
        export_checkpoint(checkpoint, path, image_size=size, config=settings.config,
                          model_kind=settings.info.kind, threshold_calibrated=settings.threshold_calibrated,
                          threshold_source=settings.source("threshold"), half=_half_export(settings))

    def announce() -> None:
        if not quiet:
            # One user cache, never the model's own folder: that may be a package's share/ or install tree.
            print(f"exporting {checkpoint.name} to ONNX (into {cache.cache_folder('onnx')}); done once, then "
                  "cached", flush=True)

    return cache.get_or_build("onnx", export_key(settings, size), f"{checkpoint.stem}_{size[0]}x{size[1]}",
                              ".onnx", build, announce)


def runtime_path(settings: ModelSettings, image_size: tuple[int, int] | None = None, quiet: bool = False) -> Path:
    """The file the backend loads: the cached export for a checkpoint on ONNX Runtime, else the model."""
    if settings.runtime == "onnxruntime" and settings.info.format == "checkpoint":
        return cached_onnx(settings, image_size, quiet=quiet)
    return settings.model


def _half_export(settings: ModelSettings) -> bool:
    return settings.options.precision == "fp16" and settings.info.format == "checkpoint"


def backend_options(settings: ModelSettings, threads: int | None = None) -> tuple[str, dict[str, Any], str]:
    """(device, load_runtime keyword options, why CUDA is required or "") for ``settings``.

    ``threads``: the caller's default for ONNX Runtime (e.g. cores per replay worker), used when
    ``runtime.threads`` is 0. FP16 from a checkpoint and ``cuda_graph: on`` are GPU paths: with
    device auto they ask for CUDA, so a machine without it says so instead of running something else.
    """
    o = settings.options
    device = settings.device
    opts: dict[str, Any] = {}
    needs_cuda = [f"runtime.{k}={getattr(o, k)} ({settings.source('runtime.' + k)})"
                  for k, on in (("precision", _half_export(settings)), ("cuda_graph", o.cuda_graph == "on")) if on]
    if settings.runtime == "torch":
        opts.update(config=settings.config, channel_order=settings.inference.channel_order,
                    half={"auto": None, "fp32": False, "fp16": True}[o.precision],
                    cuda_graph=_SWITCH[o.cuda_graph], compile=o.compile, batch=_SWITCH[o.batch])
    elif settings.runtime == "onnxruntime":
        # ONNX Runtime's CUDA graph needs every node on the CUDA provider: opt-in ("auto" = off)
        opts["cuda_graph"] = o.cuda_graph == "on"
        if o.threads or threads:
            opts["threads"] = o.threads or threads
    if needs_cuda and device == "auto":
        device = "cuda"
    return device, opts, " and ".join(needs_cuda)


def open_runtime(settings: ModelSettings, threads: int | None = None, image_size: tuple[int, int] | None = None,
                 quiet: bool = False, path: Path | None = None) -> Runtime:
    """The backend for ``settings`` (``path``: an already exported file to load instead;
    ``threads``: see :func:`backend_options`)."""
    device, opts, needs_cuda = backend_options(settings, threads)
    path = path or runtime_path(settings, image_size, quiet)
    try:
        return load_runtime(path, kind=settings.runtime, device=device, **opts)
    except RuntimeUnavailable as exc:
        if needs_cuda and settings.device == "auto":
            raise RuntimeUnavailable(f"{needs_cuda} needs CUDA, which is not available here ({exc}); "
                                     "leave it at auto to run on the CPU") from None
        raise
