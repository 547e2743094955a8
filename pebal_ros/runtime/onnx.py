"""ONNX Runtime backend for fused graphs written by ``pebal export`` (CPU or CUDA execution provider).

Per frame, ONNX Runtime reads the caller's image buffer in place (``bind_cpu_input``) and writes
straight into the output arrays (``bind_output`` on their memory), so there is no Python-side copy
in either direction. With ``reuse_outputs=True`` the same three arrays are returned every frame
(zero allocations; a caller that keeps a result must copy it before the next ``infer``).

No batch dimension: the fused graph takes one HxWx3 frame, so N cameras are N calls
(``supports_batch = False``; ``runtime.base.infer_many`` loops and copies reused outputs).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import FrameOutputs
from .common import RuntimeUnavailable, check_file, check_image


def _providers(device: str, cuda_graph: bool = False) -> list:
    import onnxruntime as ort
    available = ort.get_available_providers()
    if cuda_graph:
        if device not in ("cuda", "gpu"):
            raise ValueError("cuda_graph=True needs device='cuda'")
        if "CUDAExecutionProvider" not in available:
            raise RuntimeUnavailable(
                f"ONNX Runtime here has no CUDA execution provider (available: {available}); "
                "install onnxruntime-gpu, or use device='cpu'")
        # the whole graph is captured once and replayed per frame (all I/O at fixed device addresses)
        return [("CUDAExecutionProvider", {"enable_cuda_graph": "1"}), "CPUExecutionProvider"]
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device in ("cuda", "gpu"):
        if "CUDAExecutionProvider" not in available:
            raise RuntimeUnavailable(
                f"ONNX Runtime here has no CUDA execution provider (available: {available}); "
                "install onnxruntime-gpu, or use device='cpu'")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "auto":
        return (["CUDAExecutionProvider", "CPUExecutionProvider"]
                if "CUDAExecutionProvider" in available else ["CPUExecutionProvider"])
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")


def _first_sentence(exc: BaseException, limit: int = 300) -> str:
    """ONNX Runtime's message on one line, without its "[ONNXRuntimeError] : 10 : INVALID_GRAPH :" prefix."""
    text = " ".join(str(exc).split())
    if text.startswith("[ONNXRuntimeError]"):
        text = text.split(" : ", 3)[-1]
    return text if len(text) <= limit else text[:limit] + "…"


# How long an idle intra-op worker spins waiting for work before it sleeps (ONNX Runtime's
# ``session.intra_op.spin_duration_us``, 1.26 and later; older versions ignore the key). By default a
# worker spins far longer, holding a core the rest of the process (replay's writer, the node's
# callbacks) and every other program on the machine need: beside one other busy process on two
# cores inference ran at 18-23 frames/s and replay at 16-17. Bounded at 50 us: 22-37 and 28-35,
# and on an otherwise idle machine the same as unbounded (68-72 frames/s); not spinning at all
# (``allow_spinning`` 0) costs 16-20 % there (docs/replay.md, throughput and CPU contention).
SPIN_US = 50


class OnnxRuntime:
    name = "onnxruntime"
    supports_batch = False      # the fused graph's input is one uint8 HxWx3 frame

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None,
                 reuse_outputs: bool = False, optimized_model_path: str | None = None,
                 cuda_graph: bool = False, spin_us: int | None = SPIN_US):
        """``spin_us``: how long idle intra-op workers spin before sleeping (:data:`SPIN_US`);
        0: never (``allow_spinning`` 0), None: ONNX Runtime's own default."""
        import onnxruntime as ort

        from ..graph.contract import INPUT_NAMES, OUTPUT_NAMES, read_spec

        self.path = check_file(path, "ONNX model", (".onnx",))
        try:
            self.spec = read_spec(self.path)
        except ValueError as exc:
            raise ValueError(f"{self.path}: {exc}") from None
        except Exception as exc:  # a truncated or foreign file: name it
            raise ValueError(f"{self.path}: not a readable ONNX file ({exc})") from None
        if self.spec.network_only:
            raise ValueError(f"{self.path} is a network-only export (float input, logits output); "
                             "runtimes need the fused graph: run `pebal export` without --network-only")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = int(threads)
        self.threads = int(threads or 0)
        if spin_us is not None:
            if isinstance(spin_us, bool) or not isinstance(spin_us, int) or spin_us < 0:
                raise ValueError(f"spin_us must be None or an integer >= 0, got {spin_us!r}")
            if spin_us == 0:
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            else:
                so.add_session_config_entry("session.intra_op.spin_duration_us", str(spin_us))
        self.spin_us = spin_us
        if optimized_model_path:
            so.optimized_model_filepath = optimized_model_path
        self.providers = _providers(device, cuda_graph)
        if cuda_graph and self.spec.image_size is None:
            raise ValueError(f"{self.path}: cuda_graph needs a static-size export (this one has dynamic H/W)")
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=self.providers)
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's errors are plain Exceptions
            # A graph it cannot load (an unknown operator, external data pointing outside the model's
            # folder, a corrupt file) is the file's problem: one line, not a 26-line traceback.
            raise ValueError(f"{self.path}: ONNX Runtime cannot load it: {_first_sentence(exc)}") from None
        names_in = tuple(i.name for i in self.session.get_inputs())
        names_out = tuple(o.name for o in self.session.get_outputs())
        if names_in != INPUT_NAMES or names_out != OUTPUT_NAMES:
            raise ValueError(f"{self.path}: graph has inputs {names_in} / outputs {names_out}, expected "
                             f"{INPUT_NAMES} / {OUTPUT_NAMES}; re-export with this version of pebal")
        self.input_size = self.spec.image_size
        self.channel_order = self.spec.channel_order
        self.reuse_outputs = reuse_outputs
        self._io = self.session.io_binding()
        self._threshold = np.zeros(1, dtype=np.float32)
        self._outputs: FrameOutputs | None = None
        self.cuda_graph = cuda_graph
        self._device_io = self._bind_device_io() if cuda_graph else None

    def _output_arrays(self, hw: tuple[int, int]) -> FrameOutputs:
        out = self._outputs
        if (not self.reuse_outputs or out is None or out.semantic.shape != hw):
            out = FrameOutputs(np.empty(hw, np.uint8), np.empty(hw, np.float32), np.empty(hw, np.uint8))
            if self.reuse_outputs:
                self._outputs = out
        return out

    def _bind_device_io(self) -> dict:
        """Inputs and outputs as CUDA OrtValues bound once: a captured CUDA graph replays against
        fixed device addresses, so each frame is copied into the same input buffer."""
        import onnxruntime as ort
        h, w = self.spec.image_size
        values = {"image": ort.OrtValue.ortvalue_from_shape_and_type((h, w, 3), np.uint8, "cuda", 0),
                  "threshold": ort.OrtValue.ortvalue_from_shape_and_type((1,), np.float32, "cuda", 0),
                  "semantic": ort.OrtValue.ortvalue_from_shape_and_type((h, w), np.uint8, "cuda", 0),
                  "score": ort.OrtValue.ortvalue_from_shape_and_type((h, w), np.float32, "cuda", 0),
                  "mask": ort.OrtValue.ortvalue_from_shape_and_type((h, w), np.uint8, "cuda", 0)}
        for name in ("image", "threshold"):
            self._io.bind_ortvalue_input(name, values[name])
        for name in ("semantic", "score", "mask"):
            self._io.bind_ortvalue_output(name, values[name])
        return values

    def _infer_graph(self, image: np.ndarray, threshold: float) -> FrameOutputs:
        v = self._device_io
        assert v is not None
        self._threshold[0] = threshold
        v["image"].update_inplace(np.ascontiguousarray(image))
        v["threshold"].update_inplace(self._threshold)
        self.session.run_with_iobinding(self._io)
        return FrameOutputs(v["semantic"].numpy(), v["score"].numpy(), v["mask"].numpy())

    def infer(self, image: np.ndarray, threshold: float) -> FrameOutputs:
        if self.cuda_graph:
            return self._infer_graph(check_image(image, self.input_size), threshold)
        image = check_image(image, self.input_size, self.spec.min_hw, self.spec.max_hw)
        hw = image.shape[:2]
        self._threshold[0] = threshold
        out = self._output_arrays(hw)
        io = self._io
        io.bind_cpu_input("image", image)
        io.bind_cpu_input("threshold", self._threshold)
        for name, arr in (("semantic", out.semantic), ("score", out.score), ("mask", out.mask)):
            io.bind_output(name, "cpu", 0, arr.dtype, arr.shape, arr.ctypes.data)
        self.session.run_with_iobinding(io)
        return out

    def describe(self) -> dict:
        s = self.spec
        return {"runtime": self.name, "model": str(self.path), "providers": self.session.get_providers(),
                "cuda_graph": self.cuda_graph, "supports_batch": self.supports_batch,
                "threads": self.threads or "default",
                "spin_us": "default" if self.spin_us is None else self.spin_us, "precision": "fp16" if s.net_dtype == "float16" else "fp32",
                "input_size": self.input_size, "dynamic_range": (s.min_hw, s.max_hw) if s.image_size is None else None,
                "channel_order": self.channel_order, "fast": s.fast, "net_size": s.net_size,
                "default_threshold": s.threshold, "opset": s.opset, "exporter": s.exporter, "arch": s.arch}


def require_onnxruntime() -> None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:  # pragma: no cover - onnxruntime is a hard dependency
        raise RuntimeUnavailable(f"onnxruntime is not installed ({exc}); pip install onnxruntime") from None
