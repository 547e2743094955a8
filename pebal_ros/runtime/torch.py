"""PyTorch backend: a checkpoint (or a network) wrapped in the fused module, fast on CUDA.

The same ``FusedPebal`` that is exported to ONNX runs here, so the three runtimes compute the same
thing by construction. On CUDA, by default:

- the network runs in FP16 while the post-processing stays FP32 (``FusedPebal`` casts the logits);
- the network's weights and activations are ``channels_last`` (NHWC), the layout cuDNN's tensor-core
  convolution kernels want, so no layout transposes run around every convolution;
- the whole fused step (normalise → network → energy → blur → mask) is captured once per input size
  in a **CUDA graph** and replayed per frame: a small real-time network such as ESPNetv2 is
  launch-bound (hundreds of small kernels, each costing a few microseconds of CPU to launch), and a
  graph replay launches all of them with one call;
- frames go host → device through a pinned buffer with a non-blocking copy, and the outputs come
  back into pinned buffers on the same stream, with one synchronisation per frame.

``compile=True`` runs the fused module through ``torch.compile`` instead of the hand-made graph
(mode ``max-autotune-no-cudagraphs`` + our graph on CUDA); it is off by default because compiling
takes minutes and its speed-up depends on the network. On the CPU none of this applies except
``channels_last`` (off by default there) and ``compile``.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .base import FrameOutputs
from .common import RuntimeUnavailable, check_file, check_image

# The fused step only reads its input, and frames straight from a received message are read-only
# views of its bytes: torch's warning about non-writable arrays says nothing useful here.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning,
                        module=__name__)


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeUnavailable("device='cuda' asked for but torch sees no CUDA device; use device='cpu'")
    return dev


def _make_room(cache: dict, keep: int = 4) -> None:
    """Drop the oldest entries of a per-shape cache so that it holds at most ``keep`` after an insert
    (a camera whose size keeps changing must not pin ever more memory)."""
    while len(cache) >= keep:
        cache.pop(next(iter(cache)))


class _ChannelsLast(nn.Module):
    """Hands the network its input in channels_last layout (the weights were converted once)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.inner = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.contiguous(memory_format=torch.channels_last))


class _GraphedStep:
    """The fused step captured in a CUDA graph for one input size, with its static buffers."""

    def __init__(self, fused: nn.Module, shape: tuple[int, ...], device: torch.device, warmup: int = 3):
        self.input = torch.zeros(shape, dtype=torch.uint8, device=device)
        self.threshold = torch.zeros(1, dtype=torch.float32, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):       # warm-up off the capture stream: cuDNN picks its kernels
            for _ in range(warmup):
                fused(self.input, self.threshold)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fused(self.input, self.threshold)

    def __call__(self) -> tuple[torch.Tensor, ...]:
        self.graph.replay()
        return self.outputs


class TorchRuntime:
    """``input_size``: "auto" = the config's ``inference.input_size`` for a checkpoint (what
    ``pebal export`` would bake in), any size for an ``nn.Module``; ``None`` = any size.

    ``half``, ``channels_last``, ``cuda_graph``, ``batch``: None = on for CUDA, off for the CPU (see
    the module doc). ``reuse_outputs``: return the same three arrays every frame (no per-frame
    allocation; a caller that keeps a result copies it before the next ``infer``), as ONNX Runtime's
    option. ``batch``: whether ``runtime.base.infer_many`` (and so ``FramePipeline.process_batch``)
    runs several cameras as one ``infer_batch`` call (``supports_batch``). A GPU running a real-time
    network is launch-bound and idles between small kernels, so a batch of N costs far less than N
    calls. On a CPU, measured with bench/bench_batch.py (1 thread, 2-4 cameras): 0.6-0.8x the speed of
    N calls at 512x1024 (compute-bound; a batch only grows the working set out of cache) but
    1.2-1.4x at 128x256 (eager PyTorch's per-operator overhead dominates small frames). So by default
    ``infer_many`` loops on the CPU; pass ``batch=True`` for small frames. ``infer_batch`` itself
    works either way."""

    name = "torch"

    def __init__(self, model: str | Path | nn.Module, device: str = "auto", half: bool | None = None,
                 channel_order: str = "rgb", input_size: tuple[int, int] | None | str = "auto",
                 net_size: tuple[int, int] | None = None, fast: bool | None = None,
                 config=None, arch: str | None = None, channels_last: bool | None = None,
                 cuda_graph: bool | None = None, compile: bool = False, reuse_outputs: bool = False,
                 batch: bool | None = None):
        from ..config import Config, InferenceConfig
        from ..graph.fused import build_fused

        if isinstance(model, nn.Module):
            # a private copy: .to(device)/.half() below must not change the caller's module (two
            # runtimes over one network, FP32 and FP16, would otherwise share its weights)
            network, self.path = copy.deepcopy(model), None
        else:
            from ..models import load_model
            self.path = check_file(model, "PyTorch checkpoint", (".pt", ".pth"))
            try:
                network = load_model(str(self.path), arch=arch, map_location="cpu")
            except Exception as exc:
                raise ValueError(f"{self.path}: cannot load as a pebal checkpoint ({exc})") from exc
        inf = config.inference if isinstance(config, Config) else (config or InferenceConfig())
        self.device = _pick_device(device)
        self.half = (self.device.type == "cuda") if half is None else bool(half)
        if self.half and self.device.type != "cuda":
            raise ValueError("half=True needs CUDA (FP16 convolutions are not supported on CPU)")
        on_cuda = self.device.type == "cuda"
        self.channels_last = on_cuda if channels_last is None else bool(channels_last)
        self.cuda_graph = on_cuda if cuda_graph is None else bool(cuda_graph)
        if self.cuda_graph and not on_cuda:
            raise ValueError("cuda_graph=True needs CUDA")
        self.compiled = bool(compile)
        self.supports_batch = on_cuda if batch is None else bool(batch)
        self.reuse_outputs = reuse_outputs
        self.fused = build_fused(network.eval(), inf, channel_order, net_size, fast).to(self.device)
        if self.half:
            self.fused.net.half()
        if self.channels_last:
            self.fused.net = _ChannelsLast(self.fused.net.to(memory_format=torch.channels_last))
        self._step: nn.Module = self.fused
        if self.compiled:
            # our own CUDA graph wraps the compiled step; inductor's would capture it a second time
            mode = "max-autotune-no-cudagraphs" if on_cuda else "default"
            self._step = torch.compile(self.fused, mode=mode, dynamic=False, fullgraph=True)  # type: ignore[assignment]
        if input_size == "auto":
            # a checkpoint runs at the config's network size, like the graph exported from it;
            # a bare module (tests, benchmarks) takes any size
            input_size = None if self.path is None else tuple(inf.input_size)
        self.input_size: tuple[int, int] | None = (
            (int(input_size[0]), int(input_size[1])) if input_size is not None else None)
        self.channel_order = channel_order
        self.default_threshold = inf.threshold
        self._thr = torch.zeros(1, dtype=torch.float32, device=self.device)
        # host buffers per shape: a single frame (H, W, 3) and a batch (N, H, W, 3) alternate when
        # cameras come and go or differ in size, and re-pinning memory on every switch costs ms
        self._host_in: dict[tuple[int, ...], torch.Tensor] = {}
        self._graphs: dict[tuple[int, ...], _GraphedStep] = {}
        self._host_out: dict[tuple[int, ...], tuple[torch.Tensor, ...]] = {}

    def _host_input(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The (pinned, on CUDA) host buffer frames of this shape are gathered into."""
        host = self._host_in.get(shape)
        if host is None:
            _make_room(self._host_in)
            host = self._host_in[shape] = torch.empty(shape, dtype=torch.uint8,
                                                      pin_memory=self.device.type == "cuda")
        return host

    def _graphed(self, shape: tuple[int, ...]) -> _GraphedStep:
        step = self._graphs.get(shape)
        if step is None:
            # one graph per input size (a dynamic-size camera re-captures once per new size); a
            # graph holds its own static buffers, so only the most recent few are kept
            _make_room(self._graphs)
            with torch.inference_mode():
                step = self._graphs[shape] = _GraphedStep(self._step, shape, self.device)
        return step

    def _to_host(self, outs: tuple[torch.Tensor, ...]) -> tuple[np.ndarray, ...]:
        """Device outputs -> host arrays: async copies into pinned buffers, one sync per frame."""
        key = tuple(outs[0].shape)
        host = self._host_out.get(key)
        if host is None:
            _make_room(self._host_out)
            host = self._host_out[key] = tuple(torch.empty(o.shape, dtype=o.dtype, pin_memory=True) for o in outs)
        for h, o in zip(host, outs):
            h.copy_(o, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return tuple(h.numpy() if self.reuse_outputs else h.numpy().copy() for h in host)

    @torch.inference_mode()
    def infer(self, image: np.ndarray, threshold: float) -> FrameOutputs:
        image = check_image(image, self.input_size)
        if self.device.type == "cpu":       # no copy at all: the network reads the caller's array
            return self._run(torch.from_numpy(image), threshold)[0]
        host = self._host_input(image.shape)
        host.copy_(torch.from_numpy(image))
        return self._run(host, threshold)[0]

    @torch.inference_mode()
    def infer_batch(self, images: list[np.ndarray], threshold: float) -> list[FrameOutputs]:
        """Several frames of one size (one per camera) in one network call: on a GPU a batch of N
        costs far less than N calls, because a real-time network alone leaves the GPU mostly idle."""
        if not images:
            return []
        images = [check_image(im, self.input_size) for im in images]
        if len({im.shape for im in images}) != 1:
            raise ValueError(f"infer_batch needs frames of one size, got {sorted({im.shape for im in images})}")
        host = self._host_input((len(images), *images[0].shape))
        for slot, im in zip(host, images):
            slot.copy_(torch.from_numpy(im))
        return self._run(host, threshold)

    def _run(self, src: torch.Tensor, threshold: float) -> list[FrameOutputs]:
        """src: host uint8 [H, W, 3] or [N, H, W, 3] -> one FrameOutputs per frame."""
        if self.cuda_graph:
            step = self._graphed(tuple(src.shape))
            step.input.copy_(src, non_blocking=True)
            step.threshold.fill_(float(threshold))
            outs = step()
        else:
            self._thr.fill_(float(threshold))
            x = src.to(self.device, non_blocking=True) if self.device.type == "cuda" else src
            outs = self._step(x, self._thr)
        if self.device.type == "cuda":
            outs = self._to_host(outs)
        else:
            outs = tuple(o.numpy() for o in outs)
        if src.dim() == 3:
            return [FrameOutputs(outs[0], outs[1], outs[2])]
        return [FrameOutputs(outs[0][i], outs[1][i], outs[2][i]) for i in range(src.shape[0])]

    def describe(self) -> dict:
        net = self.fused.net.inner if isinstance(self.fused.net, _ChannelsLast) else self.fused.net
        return {"runtime": self.name, "model": str(self.path) if self.path else type(net).__name__,
                "device": str(self.device), "precision": "fp16" if self.half else "fp32",
                "channels_last": self.channels_last, "cuda_graph": self.cuda_graph, "compiled": self.compiled,
                "supports_batch": self.supports_batch, "input_size": self.input_size, "channel_order": self.channel_order,
                "fast": self.fused.fast, "net_size": self.fused.pre.net_size,
                "default_threshold": self.default_threshold, "arch": getattr(net, "arch", "")}
