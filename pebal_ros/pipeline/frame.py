"""The per-frame core shared by the ROS 2 node and rosbag replay.

``FramePipeline.process(msg)`` takes an incoming ``sensor_msgs/Image`` or ``CompressedImage``
(rclpy or rosbags object) and returns a :class:`FrameResult`: the network outputs, the requested
output messages (input header copied), the status summary and per-stage timings.

Per frame: decode (zero-copy view when the encoding already is the runtime's channel order) ->
resize to the runtime's input size (into a reused buffer) -> ``runtime.infer`` -> optionally
resize the outputs back to camera size -> build only the requested messages. Output arrays are
fresh every frame (callers may keep them); only internal scratch buffers are reused, so one
pipeline must not be used from two threads at once.

Several cameras per tick: ``process_batch(msgs)`` decodes and pre-processes each frame (into one
reused [N, H, W, 3] buffer), makes one ``runtime.base.infer_many`` call (one network call where the
runtime has a batch dimension, N calls otherwise), then post-processes each frame as ``process``.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Collection, Sequence

import cv2
import numpy as np

from ..config import InferenceConfig, InputConfig, threshold_problem
from ..runtime.base import FrameOutputs, Runtime, infer_many, supports_batch
from .convert import (SUPPORTED_ENCODINGS, FrameError, compressed_to_array, is_compressed, jpeg_reduction,
                      jpeg_size, msg_to_array)
from .messages import OUTPUT_ENCODINGS, OUTPUT_NAMES, MessageFactory, StatusFields
from .regions import Region, find_regions, min_area_at_scale
from .visualize import colorize, overlay

OUTPUT_RESOLUTIONS = ("camera", "network")
Emit = Callable[[str, Any], None]    # (output name, message), called as each message is ready


class RuntimeOutputError(RuntimeError):
    """The runtime returned arrays of the wrong shape or type (an incompatible model)."""


@dataclass
class PipelineConfig:
    """Per-frame settings (the node's parameters map onto these one to one)."""
    threshold: float = -10.0
    output_resolution: str = "camera"        # "camera": outputs at camera size; "network": at input_size
    outputs: tuple[str, ...] = OUTPUT_NAMES   # which messages process() builds by default
    min_region_area: int = 50                 # camera pixels
    max_regions: int = 32
    overlay_alpha: float = 0.5
    overlay_boxes: bool = True
    encoding_override: str = ""               # treat raw images as this encoding ("" = the message's)
    max_decoded_pixels: int = InputConfig.max_decoded_pixels   # larger frames are refused from the header

    def validate(self) -> "PipelineConfig":
        reason = threshold_problem(self.threshold)
        if reason:      # e.g. 1e39: infinity in the runtimes' float32, every frame would fail
            raise ValueError(f"threshold {reason}")
        if self.output_resolution not in OUTPUT_RESOLUTIONS:
            raise ValueError(f"output_resolution must be one of {OUTPUT_RESOLUTIONS}, got {self.output_resolution!r}")
        check_outputs(self.outputs)
        if self.min_region_area < 1:
            raise ValueError(f"min_region_area must be >= 1, got {self.min_region_area}")
        if self.max_regions < 0:
            raise ValueError(f"max_regions must be >= 0, got {self.max_regions}")
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise ValueError(f"overlay_alpha must be in [0, 1], got {self.overlay_alpha}")
        if self.encoding_override and self.encoding_override not in SUPPORTED_ENCODINGS:
            raise ValueError(f"encoding_override {self.encoding_override!r} is not a supported encoding")
        InputConfig(self.max_decoded_pixels)   # its own range check
        return self

    @classmethod
    def from_inference(cls, inf: InferenceConfig, **overrides: Any) -> "PipelineConfig":
        base = cls(
            threshold=float(inf.threshold),
            output_resolution="network" if inf.score_at_network_resolution else "camera",
            min_region_area=int(inf.min_region_area),
        )
        return replace(base, **overrides).validate()


def check_outputs(outputs: Collection[str]) -> tuple[str, ...]:
    unknown = sorted(set(outputs) - set(OUTPUT_NAMES))
    if unknown:
        raise ValueError(f"unknown output(s) {unknown}; known: {list(OUTPUT_NAMES)}")
    return tuple(o for o in OUTPUT_NAMES if o in set(outputs))


class CameraOutputs(FrameOutputs):
    """The network's outputs upsampled to the camera size, each map on first use: a frame whose
    subscribers want only the status (computed at network resolution) never pays for upsampling."""

    def __init__(self, net: FrameOutputs, size: tuple[int, int], threshold: float):  # noqa: D107
        self._net, self._size, self._threshold = net, size, threshold

    @functools.cached_property
    def semantic(self) -> np.ndarray:  # type: ignore[override]
        h, w = self._size
        return cv2.resize(self._net.semantic, (w, h), interpolation=cv2.INTER_NEAREST)

    @functools.cached_property
    def score(self) -> np.ndarray:  # type: ignore[override]
        h, w = self._size
        return cv2.resize(self._net.score, (w, h), interpolation=cv2.INTER_LINEAR)

    @functools.cached_property
    def mask(self) -> np.ndarray:  # type: ignore[override]
        # the upsampled score thresholded, so the published mask agrees with the published score
        return (self.score > self._threshold).view(np.uint8)

    @property
    def size(self) -> tuple[int, int]:
        return self._size


@dataclass
class _Prepared:
    """One camera frame ready for the network: the camera size, the network input, and the whole
    camera-size image, decoded on demand where the network input came from a reduced JPEG decode."""
    size: tuple[int, int]
    net_in: np.ndarray
    full: Callable[[], np.ndarray]


@dataclass
class FrameResult:
    header: Any
    camera_size: tuple[int, int]            # (H, W) of the input frame
    outputs: FrameOutputs                   # at the output resolution; mask 0/1
    status: StatusFields
    messages: dict[str, Any] = field(default_factory=dict)   # output name -> message
    timings: dict[str, float] = field(default_factory=dict)  # ms: decode, preprocess, inference,
    #                                             postprocess, encode, publish (in emit), total, end_to_end


class _Relabelled:
    """An Image message seen with another encoding (fields read through, nothing copied)."""

    def __init__(self, msg: Any, encoding: str):
        self._msg = msg
        self.encoding = encoding

    def __getattr__(self, name: str) -> Any:
        return getattr(self._msg, name)


class FramePipeline:
    """Message in, output messages out; one instance per worker thread (scratch buffers are reused)."""

    def __init__(self, runtime: Runtime, cfg: PipelineConfig | InferenceConfig | None = None,
                 factory: MessageFactory | None = None):
        if isinstance(cfg, InferenceConfig):
            cfg = PipelineConfig.from_inference(cfg)
        self.cfg = (cfg or PipelineConfig()).validate()
        if getattr(runtime, "channel_order", None) not in ("rgb", "bgr"):
            raise ValueError(f"runtime.channel_order must be 'rgb' or 'bgr', got {getattr(runtime, 'channel_order', None)!r}")
        self.runtime = runtime
        self.factory = factory if factory is not None else MessageFactory.for_rosbags()
        self._decode_buf: np.ndarray | None = None
        self._input_buf: np.ndarray | None = None
        self._slot_decode_bufs: list[np.ndarray | None] = []   # process_batch: one per frame of a tick
        self._batch_buf: np.ndarray | None = None              # process_batch: [N, H, W, 3] network inputs

    # -- stages -------------------------------------------------------------------------------
    def decode(self, msg: Any) -> np.ndarray:
        """Image/CompressedImage -> uint8 HxWx3 in the runtime's channel order.

        The result may be a view of the message or a scratch buffer overwritten by the next call.
        """
        if self.cfg.encoding_override and not is_compressed(msg):
            msg = _Relabelled(msg, self.cfg.encoding_override)
        img = msg_to_array(msg, self.runtime.channel_order, out=self._decode_buf,
                           max_pixels=self.cfg.max_decoded_pixels)
        if img.flags.owndata and img is not self._decode_buf:
            self._decode_buf = img   # converted into a new array: reuse it next frame (same size)
        return img

    def _network_input(self, image: np.ndarray) -> np.ndarray:
        size = self.runtime.input_size
        h, w = image.shape[:2]
        if size is None or tuple(size) == (h, w):
            return np.ascontiguousarray(image)
        nh, nw = int(size[0]), int(size[1])
        if self._input_buf is None or self._input_buf.shape != (nh, nw, 3):
            self._input_buf = np.empty((nh, nw, 3), np.uint8)
        interp = cv2.INTER_AREA if (h > 2 * nh and w > 2 * nw) else cv2.INTER_LINEAR
        return cv2.resize(image, (nw, nh), dst=self._input_buf, interpolation=interp)

    def _check_outputs(self, out: FrameOutputs, shape: tuple[int, int]) -> None:
        for name, arr, dtype in (("semantic", out.semantic, np.uint8), ("score", out.score, np.float32),
                                 ("mask", out.mask, np.uint8)):
            if not isinstance(arr, np.ndarray) or arr.shape != shape or arr.dtype != dtype:
                got = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
                raise RuntimeOutputError(
                    f"runtime {self.runtime.name!r} returned {name} as {got}; expected {np.dtype(dtype)} {shape}"
                )

    def _to_camera(self, out: FrameOutputs, cam: tuple[int, int]) -> FrameOutputs:
        # the runtime may overwrite its output arrays on the next call, before these are upsampled
        keep = out.copy() if getattr(self.runtime, "reuse_outputs", False) else out
        return CameraOutputs(keep, cam, self.cfg.threshold)

    # -- the frame ----------------------------------------------------------------------------
    def process(self, msg: Any, outputs: Collection[str] | None = None, received_at: float | None = None,
                emit: Emit | None = None, before_inference: Callable[[], None] | None = None) -> FrameResult:
        """Run one Image/CompressedImage message through the detector.

        ``outputs``: names from ``OUTPUT_NAMES`` to build messages for (default ``cfg.outputs``);
        the arrays and status fields are always returned. ``received_at``: ``time.perf_counter()``
        when the frame arrived (end-to-end latency includes the wait before processing).
        ``emit(name, message)``: called for each message as soon as it is built, the status first
        (the node publishes from it; its time is reported as ``timings["publish"]``).
        ``before_inference()``: called once the frame is decoded and pre-processed, just before the
        runtime call (replay starts writing the previous frame's results then: see
        :class:`~pebal_ros.replay.bag.BagWriter`); not called for a frame that fails before it.
        Raises a :class:`~pebal_ros.pipeline.convert.FrameError` subclass for a bad frame.
        """
        t0 = time.perf_counter()
        frame, timings = self._prepare(msg)
        return self._run(frame, msg.header, outputs, received_at if received_at is not None else t0,
                         t0, timings, emit, before_inference)

    def process_image(self, image: np.ndarray, header: Any = None, order: str = "rgb",
                      outputs: Collection[str] | None = None, received_at: float | None = None,
                      emit: Emit | None = None) -> FrameResult:
        """Same as :meth:`process` for an array (uint8 HxWx3 in ``order``); header defaults to zero/empty."""
        t0 = time.perf_counter()
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise FrameError(f"expected a uint8 HxWx3 image, got {image.dtype} {image.shape}")
        if order not in ("rgb", "bgr"):
            raise ValueError(f"order must be 'rgb' or 'bgr', got {order!r}")
        if order != self.runtime.channel_order:
            image = image[..., ::-1]
        if header is None:
            header = self.factory.header()
        ta = time.perf_counter()
        net_in = self._network_input(image)
        frame = _Prepared((int(image.shape[0]), int(image.shape[1])), net_in, lambda: image)
        timings = {"decode": 0.0, "preprocess": (time.perf_counter() - ta) * 1e3}
        return self._run(frame, header, outputs, received_at if received_at is not None else t0, t0, timings, emit)

    def _prepare(self, msg: Any, slot: int | None = None, batch: np.ndarray | None = None
                 ) -> tuple[_Prepared, dict[str, float]]:
        """Decode and pre-process one message: (the frame, its decode/preprocess timings in ms).

        A JPEG larger than the network input is decoded at 1/2, 1/4 or 1/8 scale in libjpeg's DCT
        (:func:`~pebal_ros.pipeline.convert.jpeg_reduction`): at 2048x1024 for a 128x256 network
        that is 3 ms instead of 17 ms, and the result differs from a full decode averaged down by a
        fraction of a grey level. The rule depends only on the frame and the network, never on the
        outputs asked for, so the node and replay feed the network the same pixels. ``slot``/``batch``:
        process_batch's per-frame decode buffer and [N, H, W, 3] network input buffer.
        """
        t0 = time.perf_counter()
        size = self.runtime.input_size
        cam = jpeg_size(msg) if size is not None and is_compressed(msg) else None
        factor = jpeg_reduction(cam, (int(size[0]), int(size[1]))) if cam is not None and size is not None else 1
        if cam is not None and factor > 1:
            small = compressed_to_array(msg, self.runtime.channel_order, reduce=factor,
                                        max_pixels=self.cfg.max_decoded_pixels)
            if small.shape[:2] == (-(-cam[0] // factor), -(-cam[1] // factor)):
                t1 = time.perf_counter()
                net_in = self._network_input_slot(small, batch, slot) if slot is not None else self._network_input(small)
                # the whole image only for outputs at camera size that show it (the overlay)
                frame = _Prepared(cam, net_in, functools.partial(self.decode, msg))
                return frame, {"decode": (t1 - t0) * 1e3, "preprocess": (time.perf_counter() - t1) * 1e3}
            # a header that disagrees with the pixels (e.g. an EXIF rotation): decode it whole
        image = self._decode_slot(msg, slot) if slot is not None else self.decode(msg)
        t1 = time.perf_counter()
        net_in = self._network_input_slot(image, batch, slot) if slot is not None else self._network_input(image)
        frame = _Prepared((int(image.shape[0]), int(image.shape[1])), net_in, lambda: image)
        return frame, {"decode": (t1 - t0) * 1e3, "preprocess": (time.perf_counter() - t1) * 1e3}

    def _run(self, frame: _Prepared, header: Any, outputs: Collection[str] | None, received_at: float,
             t0: float, timings: dict[str, float], emit: Emit | None = None,
             before_inference: Callable[[], None] | None = None) -> FrameResult:
        cfg = self.cfg
        wanted = check_outputs(cfg.outputs if outputs is None else outputs)
        if before_inference is not None:
            before_inference()
        tb = time.perf_counter()
        raw = self.runtime.infer(frame.net_in, cfg.threshold)
        tc = time.perf_counter()
        timings["inference"] = (tc - tb) * 1e3
        return self._finish(frame, raw, header, wanted, received_at, t0, tc, timings, emit)

    def _finish(self, frame: _Prepared, raw: FrameOutputs, header: Any,
                wanted: tuple[str, ...], received_at: float, t0: float, tc: float,
                timings: dict[str, float], emit: Emit | None = None) -> FrameResult:
        """One frame's runtime outputs -> its FrameResult (shared by process and process_batch).
        ``timings`` already holds decode, preprocess and inference; ``tc``: when inference ended."""
        cfg = self.cfg
        cam = frame.size
        net = (int(frame.net_in.shape[0]), int(frame.net_in.shape[1]))
        self._check_outputs(raw, net)
        at_camera = cfg.output_resolution == "camera" and net != cam
        res = self._to_camera(raw, cam) if at_camera else raw
        oh, ow = res.size
        upsampled = res is not raw     # then the output arrays are this frame's own, else the runtime's

        # The status (fraction, max/mean score, regions) describes the network-resolution outputs
        # (what the model computed; 4x fewer pixels than a 2x camera); region geometry is scaled
        # to camera pixels for the status and to output pixels for the overlay boxes.
        fraction = float(np.count_nonzero(raw.mask)) / raw.mask.size
        regions: list[Region] = []          # in camera pixels
        need_regions = "status" in wanted or ("overlay" in wanted and cfg.overlay_boxes)
        rsx, rsy = cam[1] / net[1], cam[0] / net[0]
        if need_regions and fraction > 0.0 and cfg.max_regions > 0:
            # the smallest network region whose camera-pixel area reaches min_region_area
            min_area = min_area_at_scale(cfg.min_region_area, rsx * rsy)
            regions = [r.scaled(rsx, rsy) for r in find_regions(raw.mask, raw.score, min_area, cfg.max_regions)]
        td = time.perf_counter()

        status = StatusFields(
            image_width=cam[1], image_height=cam[0], threshold=cfg.threshold, anomaly_fraction=fraction,
            max_score=float(raw.score.max()), mean_score=float(raw.score.mean(dtype=np.float64)),
            inference_latency_ms=timings["inference"], end_to_end_latency_ms=0.0,
            regions=regions,
        )
        msgs: dict[str, Any] = {}
        f = self.factory
        spent_emitting = 0.0

        def put(name: str, message: Any) -> None:
            nonlocal spent_emitting
            msgs[name] = message
            if emit is not None:
                t = time.perf_counter()
                emit(name, message)
                spent_emitting += time.perf_counter() - t

        # The status first: it is what a planner reads, and it must not wait for the images.
        if "status" in wanted:
            status.end_to_end_latency_ms = (time.perf_counter() - received_at) * 1e3
            put("status", f.status(header, status))

        if "semantic_color" in wanted or "overlay" in wanted:
            # Colour at network resolution, then nearest-neighbour upsampling: identical to colouring the
            # upsampled ids (a lookup commutes with nearest-neighbour), and the lookup runs on 16x fewer pixels.
            sem_rgb = colorize(raw.semantic)
            if sem_rgb.shape[:2] != (oh, ow):
                sem_rgb = cv2.resize(sem_rgb, (ow, oh), interpolation=cv2.INTER_NEAREST)
        else:
            sem_rgb = None
        if "semantic" in wanted:
            put("semantic", f.image(header, res.semantic, OUTPUT_ENCODINGS["semantic"], fresh=upsampled))
        if "semantic_color" in wanted and sem_rgb is not None:
            put("semantic_color", f.image(header, sem_rgb, "rgb8", fresh=True))
        if "anomaly_score" in wanted:
            put("anomaly_score", f.image(header, res.score, "32FC1", fresh=upsampled))
        if "anomaly_mask" in wanted:
            put("anomaly_mask", f.image(header, res.mask * np.uint8(255), "mono8", fresh=True))
        if "overlay" in wanted:
            base_img = frame.full() if at_camera else frame.net_in
            rgb = base_img if self.runtime.channel_order == "rgb" else cv2.cvtColor(base_img, cv2.COLOR_BGR2RGB)
            bx, by = ow / cam[1], oh / cam[0]
            boxes = ([(r.x_offset * bx, r.y_offset * by, r.width * bx, r.height * by) for r in regions]
                     if cfg.overlay_boxes else [])
            put("overlay", f.image(header, overlay(rgb, sem_rgb, res.mask, cfg.overlay_alpha, boxes=boxes), "rgb8",
                                   fresh=True))
        te = time.perf_counter()

        if "status" not in wanted:
            status.end_to_end_latency_ms = (te - received_at) * 1e3
        timings.update(postprocess=(td - tc) * 1e3, encode=(te - td - spent_emitting) * 1e3,
                       publish=spent_emitting * 1e3)
        t_end = time.perf_counter()
        timings["total"] = (t_end - t0) * 1e3
        timings["end_to_end"] = (t_end - received_at) * 1e3
        return FrameResult(header=header, camera_size=cam, outputs=res, status=status, messages=msgs, timings=timings)

    # -- several cameras per tick -------------------------------------------------------------
    def process_batch(self, msgs: Sequence[Any], outputs: Sequence[Collection[str] | None] | None = None,
                      received_at: float | Sequence[float | None] | None = None,
                      emit: Sequence[Emit | None] | None = None) -> list[FrameResult | Exception]:
        """Run several Image/CompressedImage messages (e.g. the newest frame of each camera) with
        one inference call per network input size (one in all when the runtime has a fixed
        ``input_size``); see :func:`~pebal_ros.runtime.base.infer_many`.

        ``outputs``: None (``cfg.outputs`` for all) or one entry per message (None or names).
        ``received_at``: one time for all or one per message (None: when the batch started).
        Returns one entry per message, in order: its :class:`FrameResult`, or the exception
        ``process`` would have raised for that frame alone (a ``FrameError`` for a bad frame, a
        ``ValueError`` from the runtime for a frame it refuses, a ``RuntimeOutputError``), so one
        bad frame does not cost the others their results. Timings are per frame except
        ``inference``, the shared call's time, and ``total``, from the start of the batch;
        ``timings["batch"]`` is the number of frames that shared the call (1 where the runtime
        has no batch dimension and ran them one by one; ``inference`` is then the frame's share). ``emit``: None or one
        callable (or None) per message, as in :meth:`process`; an exception it raises becomes that
        frame's entry.
        """
        t0 = time.perf_counter()
        n = len(msgs)
        if outputs is not None and (isinstance(outputs, str) or len(outputs) != n
                                    or any(isinstance(o, str) for o in outputs)):
            raise ValueError(f"outputs must be None or one entry (None or a list of names) per message; "
                             f"got {outputs!r} for {n} messages")
        if received_at is None or isinstance(received_at, (int, float)):
            recv = [t0 if received_at is None else float(received_at)] * n
        else:
            if len(received_at) != n:
                raise ValueError(f"received_at has {len(received_at)} entries for {n} messages")
            recv = [t0 if r is None else float(r) for r in received_at]
        if emit is not None and len(emit) != n:
            raise ValueError(f"emit has {len(emit)} entries for {n} messages")
        default = check_outputs(self.cfg.outputs)
        wanted = [default if outputs is None or outputs[i] is None else check_outputs(outputs[i])  # type: ignore[arg-type]
                  for i in range(n)]

        results: list[FrameResult | Exception | None] = [None] * n
        frames: dict[int, _Prepared] = {}
        timings: dict[int, dict[str, float]] = {}
        self._slot_decode_bufs += [None] * (n - len(self._slot_decode_bufs))
        batch = self._batch_inputs(n)
        for i, msg in enumerate(msgs):
            try:
                frames[i], timings[i] = self._prepare(msg, i, batch)
            except FrameError as exc:
                results[i] = exc

        # frames of one network input size share a call (all of them when input_size is fixed)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, f in frames.items():
            groups.setdefault(f.net_in.shape, []).append(i)
        raw: dict[int, FrameOutputs] = {}
        batched = supports_batch(self.runtime)
        for idx in groups.values():
            tb = time.perf_counter()
            outs = infer_many(self.runtime, [frames[i].net_in for i in idx], self.cfg.threshold, errors="return")
            ms = (time.perf_counter() - tb) * 1e3
            # frames that really shared one network call, and each frame's part of the time spent
            shared = len(idx) if batched else 1
            for i, out in zip(idx, outs):
                timings[i].update(inference=ms if batched else ms / len(idx), batch=float(shared))
                if isinstance(out, ValueError):
                    results[i] = out
                else:
                    raw[i] = out

        for i in sorted(raw):
            try:
                results[i] = self._finish(frames[i], raw[i], msgs[i].header, wanted[i], recv[i], t0,
                                          time.perf_counter(), timings[i], None if emit is None else emit[i])
            except Exception as exc:  # noqa: BLE001 - RuntimeOutputError, or emit's (e.g. publishing) error
                results[i] = exc
        return results  # type: ignore[return-value]  # every slot is filled above

    def _batch_inputs(self, n: int) -> np.ndarray | None:
        """The reused [>=n, H, W, 3] buffer frames are resized into (None: the runtime takes any size)."""
        size = self.runtime.input_size
        if size is None:
            return None
        shape = (int(size[0]), int(size[1]), 3)
        buf = self._batch_buf
        if buf is None or buf.shape[1:] != shape or buf.shape[0] < n:
            buf = self._batch_buf = np.empty((n, *shape), np.uint8)
        return buf

    def _decode_slot(self, msg: Any, i: int) -> np.ndarray:
        """``decode`` with frame i's own scratch buffer: every decoded frame of a batch must stay
        intact until the shared inference call (and the overlay after it), whereas ``decode``
        overwrites one buffer per call. Borrowing the attribute keeps the decoding itself the
        same code as ``process``."""
        saved, self._decode_buf = self._decode_buf, self._slot_decode_bufs[i]
        try:
            return self.decode(msg)
        finally:
            self._slot_decode_bufs[i], self._decode_buf = self._decode_buf, saved

    def _network_input_slot(self, image: np.ndarray, batch: np.ndarray | None, i: int) -> np.ndarray:
        """``_network_input`` resizing into row i of the batch buffer (same borrowing as above)."""
        if batch is None:
            return self._network_input(image)
        saved, self._input_buf = self._input_buf, batch[i]
        try:
            return self._network_input(image)
        finally:
            self._input_buf = saved
