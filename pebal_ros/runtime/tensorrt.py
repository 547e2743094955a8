"""TensorRT backend for engines built by ``pebal build-engine`` (``.engine`` / ``.plan``).

Order of events matters on machines without a GPU: the CUDA device is probed through cuda-python
first (a clean error), TensorRT is imported second (its lean runtime segfaults on first use
without a GPU), and the engine's sidecar is checked against this TensorRT version and GPU before
deserializing (a foreign engine is refused, never loaded blindly).

Per frame: the image is copied into a pinned host buffer, then H2D copy, ``execute_async_v3`` and
the three D2H copies are queued on one CUDA stream and synchronised once. All buffers are
allocated at load time (at the profile's maximum size for dynamic engines).

No batch dimension: the engine is built from the fused ONNX graph (one HxWx3 frame), so N cameras
are N calls (``supports_batch = False``; ``runtime.base.infer_many`` loops).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import FrameOutputs
from .common import RuntimeUnavailable, check_file, check_image
from .cuda import ALTERNATIVE, DeviceBuffer, PinnedBuffer, Stream, probe_cuda


def import_tensorrt():
    """Import TensorRT or raise RuntimeUnavailable naming the alternative. Probe CUDA first!"""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise RuntimeUnavailable(
            f"TensorRT is not installed here ({exc}); install it with JetPack or "
            f"`pip install tensorrt` on an NVIDIA GPU machine. {ALTERNATIVE}") from None
    return trt


class TensorRTRuntime:
    name = "tensorrt"
    supports_batch = False      # built from the fused graph: one uint8 HxWx3 frame per call

    def __init__(self, path: str | Path, device: int | str = 0, reuse_outputs: bool = False,
                 allow_unverified: bool = False, verbose: bool = False):
        from ..graph.engine_cache import read_sidecar, verify_engine

        self.path = check_file(path, "TensorRT engine", (".engine", ".plan"))
        index = 0 if device in ("auto", "cuda", None) else int(str(device).replace("cuda:", ""))
        self.gpu = probe_cuda(index)                      # before TensorRT is touched
        trt = import_tensorrt()
        from .cuda import check, cudart
        check(cudart().cudaSetDevice(index))
        if allow_unverified:
            try:
                self.meta: dict[str, Any] = read_sidecar(self.path)
            except Exception:
                self.meta = {}
        else:
            self.meta = verify_engine(self.path, trt.__version__, self.gpu.name,
                                      self.gpu.compute_capability)
        self._logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ValueError(f"{self.path}: TensorRT could not deserialize this engine (corrupt, or "
                             f"built by another TensorRT version); rebuild it with pebal build-engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        expected = {"image", "threshold", "semantic", "score", "mask"}
        if set(names) != expected:
            raise ValueError(f"{self.path}: engine tensors {names} are not a pebal fused graph's {sorted(expected)}")
        self.channel_order = str(self.meta.get("channel_order", "rgb"))
        self.default_threshold = float(self.meta.get("threshold", -10.0))
        shape = tuple(self.engine.get_tensor_shape("image"))
        self.input_size: tuple[int, int] | None
        self.min_hw: tuple[int, int] | None
        self.max_hw: tuple[int, int] | None
        if -1 in shape:
            mn, _, mx = (tuple(s) for s in self.engine.get_tensor_profile_shape("image", 0))
            self.input_size, self.min_hw, self.max_hw = None, (mn[0], mn[1]), (mx[0], mx[1])
            max_shape = mx
        else:
            self.input_size, self.min_hw, self.max_hw = (shape[0], shape[1]), None, None
            max_shape = shape
        self.stream = Stream()
        self.reuse_outputs = reuse_outputs
        self._host: dict[str, PinnedBuffer] = {}
        self._dev: dict[str, DeviceBuffer] = {}
        hw_max = tuple(max_shape[:2])
        shapes = {"image": max_shape, "threshold": (1,), "semantic": hw_max, "score": hw_max, "mask": hw_max}
        for name in names:
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            self._host[name] = PinnedBuffer(shapes[name], dtype)
            self._dev[name] = DeviceBuffer(self._host[name].nbytes)
            self.context.set_tensor_address(name, self._dev[name].ptr)
        for name, want in (("image", np.uint8), ("semantic", np.uint8), ("score", np.float32), ("mask", np.uint8)):
            if self._host[name].dtype != want:
                raise ValueError(f"{self.path}: tensor {name} is {self._host[name].dtype}, expected {np.dtype(want)}")
        self._shape: tuple[int, ...] | None = None
        if self.input_size is not None:
            self._set_shape(shape)

    def _set_shape(self, shape: tuple[int, ...]) -> None:
        if shape != self._shape:
            if not self.context.set_input_shape("image", shape):
                raise ValueError(f"TensorRT refused input shape {shape} (profile {self.min_hw}..{self.max_hw})")
            self.context.set_input_shape("threshold", (1,)) if -1 in tuple(
                self.engine.get_tensor_shape("threshold")) else None
            self._shape = shape

    def infer(self, image: np.ndarray, threshold: float) -> FrameOutputs:
        image = check_image(image, self.input_size, self.min_hw, self.max_hw)
        hw = image.shape[:2]
        self._set_shape(image.shape)
        np.copyto(self._host["image"].view(image.shape), image)
        self._host["threshold"].array[0] = threshold
        s = self.stream
        s.h2d(self._dev["image"], self._host["image"], image.nbytes)
        s.h2d(self._dev["threshold"], self._host["threshold"], 4)
        if not self.context.execute_async_v3(s.ptr):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        n = hw[0] * hw[1]
        for name, itemsize in (("semantic", 1), ("score", 4), ("mask", 1)):
            s.d2h(self._host[name], self._dev[name], n * itemsize)
        s.synchronize()
        out = FrameOutputs(self._host["semantic"].view(hw), self._host["score"].view(hw),
                           self._host["mask"].view(hw))
        if not self.reuse_outputs:
            out = FrameOutputs(out.semantic.copy(), out.score.copy(), out.mask.copy())
        return out

    def describe(self) -> dict:
        return {"runtime": self.name, "model": str(self.path), "gpu": self.gpu.name,
                "compute_capability": self.gpu.compute_capability,
                "precision": self.meta.get("precision"), "tensorrt": self.meta.get("tensorrt_version"),
                "input_size": self.input_size, "supports_batch": self.supports_batch,
                "dynamic_range": (self.min_hw, self.max_hw) if self.min_hw else None,
                "channel_order": self.channel_order, "default_threshold": self.default_threshold,
                "onnx_sha256": self.meta.get("onnx_sha256")}
