"""CUDA device probing, pinned/device buffers and a stream through cuda-python (``cuda.bindings``).

Nothing here is imported at package import time. ``probe_cuda()`` is the gate every GPU path goes
through *before* TensorRT is touched: TensorRT's (lean) runtime segfaults on first use where there
is no GPU, whereas the CUDA runtime API answers "no device" as an error code we can report.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

from .common import RuntimeUnavailable

ALTERNATIVE = ("Use the fused .onnx with ONNX Runtime instead (load_runtime('model.onnx'), "
               "or point the node/replay at the .onnx file)")


def cudart() -> Any:
    """The cuda-python runtime module (new ``cuda.bindings`` layout, or the pre-12.6 ``cuda`` one)."""
    try:
        from cuda.bindings import runtime
        return runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # cuda-python < 12.6
            return runtime
        except ImportError:
            raise RuntimeUnavailable(
                "cuda-python is not installed (pip install cuda-python); it provides the CUDA "
                f"memory and streams the TensorRT runtime uses. {ALTERNATIVE}") from None


def check(result: Any) -> Any:
    """Unwrap a cuda-python call's (err, *values) tuple, raising on any error code."""
    err, *values = result if isinstance(result, tuple) else (result,)
    rt = cudart()
    if int(err) != int(rt.cudaError_t.cudaSuccess):
        _, name = rt.cudaGetErrorName(err)
        _, text = rt.cudaGetErrorString(err)
        raise RuntimeError(f"CUDA error {name.decode() if isinstance(name, bytes) else name}: "
                           f"{text.decode() if isinstance(text, bytes) else text}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: str   # "8.7" (Orin), "9.0" (H100), ...
    total_memory_mib: int


def probe_cuda(device: int = 0) -> GpuInfo:
    """Describe CUDA device ``device`` or raise RuntimeUnavailable saying why there is none."""
    rt = cudart()
    err, count = rt.cudaGetDeviceCount()
    if int(err) != int(rt.cudaError_t.cudaSuccess) or count == 0:
        _, name = rt.cudaGetErrorName(err)
        name = name.decode() if isinstance(name, bytes) else str(name)
        why = {"cudaErrorNoDevice": "no CUDA device found",
               "cudaErrorInsufficientDriver": "no usable NVIDIA driver (no GPU on this machine?)"}.get(
                   name, f"CUDA unavailable ({name})") if int(err) else "no CUDA device found"
        raise RuntimeUnavailable(f"{why}: TensorRT needs an NVIDIA GPU. {ALTERNATIVE}")
    if not 0 <= device < count:
        raise RuntimeUnavailable(f"CUDA device {device} asked for, but only {count} present")
    props = check(rt.cudaGetDeviceProperties(device))
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(device, name.rstrip("\x00").strip(), f"{props.major}.{props.minor}",
                   int(props.totalGlobalMem) // 2**20)


class PinnedBuffer:
    """Page-locked host memory seen as a numpy array (async copies need pinned memory)."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype):
        self.dtype = np.dtype(dtype)
        self.nbytes = max(1, int(np.prod(shape)) * self.dtype.itemsize)
        self.ptr = int(check(cudart().cudaMallocHost(self.nbytes)))
        raw = (ctypes.c_byte * self.nbytes).from_address(self.ptr)
        count = int(np.prod(shape))
        self.array = np.frombuffer(memoryview(raw).cast("B"), dtype=self.dtype, count=count).reshape(shape)

    def view(self, shape: tuple[int, ...]) -> np.ndarray:
        """The first prod(shape) elements as ``shape`` (dynamic shapes reuse the max-size buffer)."""
        n = int(np.prod(shape))
        return self.array.reshape(-1)[:n].reshape(shape)

    def free(self) -> None:
        if self.ptr:
            check(cudart().cudaFreeHost(self.ptr))
            self.ptr = 0

    def __del__(self):
        try:
            self.free()
        except Exception:
            pass


class DeviceBuffer:
    def __init__(self, nbytes: int):
        self.nbytes = max(1, int(nbytes))
        self.ptr = int(check(cudart().cudaMalloc(self.nbytes)))

    def free(self) -> None:
        if self.ptr:
            check(cudart().cudaFree(self.ptr))
            self.ptr = 0

    def __del__(self):
        try:
            self.free()
        except Exception:
            pass


class Stream:
    def __init__(self):
        rt = cudart()
        self._rt = rt
        self.handle = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))

    @property
    def ptr(self) -> int:
        return int(self.handle)

    def h2d(self, dst: DeviceBuffer, src: PinnedBuffer, nbytes: int) -> None:
        check(self._rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes,
                                       self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.handle))

    def d2h(self, dst: PinnedBuffer, src: DeviceBuffer, nbytes: int) -> None:
        check(self._rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes,
                                       self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.handle))

    def synchronize(self) -> None:
        check(self._rt.cudaStreamSynchronize(self.handle))

    def destroy(self) -> None:
        if self.handle is not None:
            check(self._rt.cudaStreamDestroy(self.handle))
            self.handle = None

    def __del__(self):
        try:
            self.destroy()
        except Exception:
            pass
