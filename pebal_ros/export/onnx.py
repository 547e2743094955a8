"""Export a PEBAL checkpoint as one fused ONNX graph (uint8 image in; semantic, score, mask out).

The graph does all per-frame numeric work (see pebal_ros/export/fused.py): feed it the camera
image as uint8 HxWx3 and a threshold, read back semantic (uint8), score (float32) and mask
(uint8). Static shapes by default (the fastest TensorRT engines); --dynamic exports symbolic
height/width and records the optimisation-profile range for `pebal build-engine`.

Exporter: torch.onnx's torch.export-based ("dynamo") exporter at opset 18, the path PyTorch
maintains (the TorchScript exporter is deprecated since 2.9). TensorRT 10 parses opset 18.
`--exporter torchscript` (opset 17) remains for TensorRT 8.6 (JetPack 6.0 and older).

Examples:
  pebal export --model models/pebal_synthetic_espnetv2.pt --preset synthetic --output out/pebal_synth.onnx
  pebal export --model m.pt --output out/pebal_512x1024.onnx --size 512x1024
  pebal export --model m.pt --output m_bgr_fast.onnx --channel-order bgr --fast
  pebal export --model m.pt --output m_dyn.onnx --dynamic --min-hw 256x512 --max-hw 1024x2048
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..graph.fused import FusedPebal, NetworkOnly, build_fused
from ..graph.contract import (FORMAT_TAG, INPUT_NAMES, META_PREFIX, OUTPUT_NAMES, ExportSpec, _hw2,  # noqa: F401
                              parse_hw, read_spec)

if TYPE_CHECKING:
    from ..config import Config

DEFAULT_OPSET = {"dynamo": 18, "torchscript": 17}

# Operators the TensorRT 10 ONNX parser imports (onnx-tensorrt docs/operators.md, 10.x branch),
# restricted to those a segmentation CNN plus this post-processing can plausibly produce. A graph
# with anything else is refused at export time rather than at engine-build time on the vehicle.
TENSORRT10_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast
Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater
GreaterOrEqual GroupNormalization HardSigmoid HardSwish Identity If InstanceNormalization IsInf
IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax LpNormalization LRN MatMul
Max MaxPool Mean Min Mish Mod Mul Neg NonZero Not Or Pad Pow PRelu QuantizeLinear Range
Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin
ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize Round ScatterElements ScatterND Selu
Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())


def _tag_post_nodes(model) -> int:
    """Prefix the post-processing nodes' names with ``post/`` (from the dynamo exporter's scope
    metadata) so the TensorRT builder can find and pin them to FP32. Returns how many."""
    import ast
    n = 0
    for node in model.graph.node:
        raw = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "[]")
        try:
            scopes = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            continue
        in_post = any(s == "post" or str(s).endswith(".post") for s in scopes)
        if in_post and not node.name.startswith("post/"):
            node.name = "post/" + node.name
            n += 1
    return n


def check_onnx(path: str | Path, allowed_ops: frozenset[str] = TENSORRT10_OPS) -> dict[str, Any]:
    """onnx.checker (full, with shape inference) plus the TensorRT-10 operator allow-list."""
    import onnx
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    domains = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    ops = sorted({n.op_type for n in model.graph.node})
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    unsupported = sorted(set(ops) - allowed_ops)
    if foreign or unsupported:
        raise ValueError(f"{path}: operators TensorRT 10 cannot parse: {unsupported + foreign}")
    return {"opset": domains.get("ai.onnx"), "ops": ops, "nodes": len(model.graph.node)}


class _TorchvisionNotice(logging.Filter):
    """Drops the "torchvision is not installed. Skipping torchvision::nms" notices.

    torch's dynamo exporter builds its operator registry on every export and logs one warning per
    torchvision detection op (nms, roi_align, roi_pool, deform_conv2d) when torchvision is absent.
    No PEBAL graph uses them, and torchvision is not a dependency, so to a user they are four lines
    of noise per export that read like a missing install.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("torchvision is not installed")


# The logger that emits them (torch/onnx/_internal/exporter/_registration.py, torch 2.5+).
_REGISTRY_LOGGER = "torch.onnx._internal.exporter._registration"


@contextlib.contextmanager
def _without_torchvision_notices() -> Any:
    """Filter those notices on their own logger for the duration of one export (nothing global)."""
    logger, notice = logging.getLogger(_REGISTRY_LOGGER), _TorchvisionNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def _export_dynamo(module: nn.Module, args: tuple, path: Path, opset: int, input_names, output_names,
                   dynamic: dict | None, verbose: bool) -> None:
    kwargs: dict[str, Any] = dict(dynamo=True, opset_version=opset, input_names=list(input_names),
                                  output_names=list(output_names), external_data=False,
                                  optimize=True, verbose=verbose)
    if dynamic is not None:
        kwargs["dynamic_shapes"] = dynamic
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink, warnings.catch_warnings(), _without_torchvision_notices():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, args, **kwargs)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(path))


def _export_torchscript(module: nn.Module, args: tuple, path: Path, opset: int, input_names,
                        output_names, dynamic_axes: dict | None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset,
                          input_names=list(input_names), output_names=list(output_names),
                          dynamic_axes=dynamic_axes, do_constant_folding=True)


def export_fused(fused: FusedPebal, path: str | Path, image_size: tuple[int, int] | None,
                 spec: ExportSpec | None = None, dynamic: bool = False,
                 min_hw: tuple[int, int] = (256, 512), max_hw: tuple[int, int] = (1024, 2048),
                 exporter: str = "dynamo", opset: int | None = None, verbose: bool = False,
                 check: bool = True, half: bool = False) -> ExportSpec:
    """Write ``fused`` as ONNX. ``image_size`` = (H, W) of the camera image (the sample size when
    dynamic). Returns the spec written into the graph's metadata.

    ``half=True`` types the network FP16 inside the graph (input handling and scoring stay FP32):
    a strongly typed FP16 graph, which is how TensorRT >= 11 builds FP16 engines (it removed the
    weakly-typed FP16 builder flag); TensorRT 10 builds it too, with the same typing."""
    import onnx
    if exporter not in DEFAULT_OPSET:
        raise ValueError(f"exporter must be one of {sorted(DEFAULT_OPSET)}, got {exporter!r}")
    opset = opset or DEFAULT_OPSET[exporter]
    if image_size is None:
        if not dynamic:
            raise ValueError("a static export needs image_size=(H, W)")
        image_size = max_hw
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    want = torch.float16 if half else torch.float32
    if any(t.device.type != "cpu" for t in list(fused.parameters()) + list(fused.buffers())) or \
            any(t.dtype != want for t in fused.net.parameters()):
        import copy
        fused = copy.deepcopy(fused).float().cpu()   # leave the caller's module alone
        if half:
            fused.net.half()
    fused = fused.eval()
    h, w = image_size
    sample = (torch.randint(0, 256, (h, w, 3), dtype=torch.uint8), torch.tensor([0.0]))
    dyn_axes = None
    dyn_shapes = None
    if dynamic:
        dim_h = torch.export.Dim("height", min=min_hw[0], max=max_hw[0])
        dim_w = torch.export.Dim("width", min=min_hw[1], max=max_hw[1])
        dyn_shapes = {"image": {0: dim_h, 1: dim_w}, "threshold": None}
        dyn_axes = {"image": {0: "height", 1: "width"}, "semantic": {0: "height", 1: "width"},
                    "score": {0: "height", 1: "width"}, "mask": {0: "height", 1: "width"}}
    with torch.inference_mode(False), torch.no_grad():
        if exporter == "dynamo":
            _export_dynamo(_Named(fused), sample, path, opset, INPUT_NAMES, OUTPUT_NAMES, dyn_shapes, verbose)
        else:
            _export_torchscript(fused, sample, path, opset, INPUT_NAMES, OUTPUT_NAMES, dyn_axes)
    spec = spec or ExportSpec(image_size=None)
    spec.image_size = None if dynamic else (h, w)
    spec.channel_order = fused.channel_order
    spec.net_size = _hw2(fused.pre.net_size) if fused.pre.net_size is not None else None
    spec.fast = fused.fast
    spec.net_dtype = "float16" if half else "float32"
    spec.exporter, spec.opset = exporter, opset
    if dynamic:
        spec.min_hw, spec.max_hw = _hw2(min_hw), _hw2(max_hw)
        inside = min_hw[0] <= h <= max_hw[0] and min_hw[1] <= w <= max_hw[1]
        spec.opt_hw = (h, w) if inside else _hw2(max_hw)
    model = onnx.load(str(path))
    if dynamic:
        dims = model.graph.input[0].type.tensor_type.shape.dim
        if any(d.HasField("dim_value") for d in list(dims)[:2]):
            path.unlink()
            raise ValueError(
                f"the {exporter} exporter specialised the image height/width to {h}x{w}: the network "
                "computes sizes with Python integers, so this graph cannot take other sizes. Export "
                "with static shapes (one file per camera size; also the fastest engines)"
                + ("" if exporter == "torchscript" else ", or try --exporter torchscript"))
    _tag_post_nodes(model)
    _set_metadata(model, spec.to_metadata())
    onnx.save(model, str(path))
    if check:
        check_onnx(path)
    return spec


def export_network_only(network: nn.Module, path: str | Path, net_size: tuple[int, int],
                        exporter: str = "dynamo", opset: int | None = None) -> ExportSpec:
    """The conventional export (normalised float in, logits out), for benchmarks."""
    import onnx
    opset = opset or DEFAULT_OPSET[exporter]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = NetworkOnly(network).eval().float().cpu()
    sample = (torch.randn(1, 3, *net_size),)
    with torch.no_grad():
        if exporter == "dynamo":
            _export_dynamo(module, sample, path, opset, ("input",), ("logits",), None, False)
        else:
            _export_torchscript(module, sample, path, opset, ("input",), ("logits",), None)
    spec = ExportSpec(image_size=_hw2(net_size), network_only=True, exporter=exporter, opset=opset)
    model = onnx.load(str(path))
    _set_metadata(model, spec.to_metadata())
    onnx.save(model, str(path))
    return spec


class _Named(nn.Module):
    """Gives forward() the graph's input names, which torch.export's dynamic_shapes keys on."""

    def __init__(self, fused: FusedPebal):
        super().__init__()
        self.fused = fused

    def forward(self, image: torch.Tensor, threshold: torch.Tensor):
        return self.fused(image, threshold)


def _set_metadata(model, meta: dict[str, str]) -> None:
    keep = [p for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v


def export_checkpoint(model_path: str | Path, output: str | Path, image_size: tuple[int, int] | None = None,
                      config: "str | Path | Config | None" = None, arch: str | None = None,
                      channel_order: str | None = None, net_size: tuple[int, int] | None = None,
                      fast: bool | None = None, dynamic: bool = False,
                      min_hw: tuple[int, int] = (256, 512), max_hw: tuple[int, int] = (1024, 2048),
                      exporter: str = "dynamo", opset: int | None = None,
                      network_only: bool = False, half: bool = False, model_kind: str = "",
                      threshold_calibrated: bool = False, threshold_source: str = "") -> ExportSpec:
    """Checkpoint (``pebal_ros.models.load_model``) -> fused ONNX file.

    ``channel_order`` None: the config's. ``model_kind``/``threshold_*`` describe the model in the
    metadata (from pebal_ros.model_settings), so the graph carries what it is."""
    from ..config import Config, load_config
    from ..models import load_model
    cfg: Config = config if isinstance(config, Config) else load_config(config)
    network = load_model(str(model_path), arch=arch or cfg.arch, map_location="cpu").eval()
    size = _hw2(image_size or cfg.inference.input_size)
    if network_only:
        return export_network_only(network, output, net_size or size, exporter, opset)
    channel_order = channel_order or cfg.inference.channel_order
    fused = build_fused(network, cfg.inference, channel_order, net_size, fast)
    spec = ExportSpec(image_size=size, threshold=cfg.inference.threshold,
                      arch=str(getattr(network, "arch", "")), model_kind=model_kind,
                      threshold_calibrated=threshold_calibrated, threshold_source=threshold_source,
                      extra={"arch_kwargs": getattr(network, "arch_kwargs", {}),
                             "checkpoint": Path(model_path).name,
                             "mean": list(cfg.inference.mean), "std": list(cfg.inference.std),
                             "smooth_kernel": cfg.inference.smooth_kernel,
                             "smooth_sigma": cfg.inference.smooth_sigma})
    return export_fused(fused, output, size, spec, dynamic, min_hw, max_hw, exporter, opset, half=half)


def parity_check(onnx_path: str | Path, fused: FusedPebal, image_size: tuple[int, int],
                 threshold: float | None = None, seed: int = 0) -> dict[str, float]:
    """Run ONNX Runtime and PyTorch on one random image: score max |diff|, agreements."""
    from ..runtime.onnx import OnnxRuntime
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*image_size, 3), dtype=np.uint8)
    with torch.inference_mode():
        sem_t, score_t, _ = fused(torch.from_numpy(image), torch.tensor([0.0]))
    thr = float(np.median(score_t.numpy())) if threshold is None else threshold
    ort = OnnxRuntime(onnx_path, device="cpu").infer(image, thr)
    return {
        "score_max_abs_diff": float(np.abs(ort.score - score_t.numpy()).max()),
        "semantic_agreement": float((ort.semantic == sem_t.numpy()).mean()),
        "mask_agreement": float((ort.mask == (score_t.numpy() > thr)).mean()),
    }


# --- CLI ------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint (.pt/.pth) written by pebal train/finetune")
    p.add_argument("--output", "-o", required=True, help="the .onnx file to write")
    from ..train.common import add_config_arguments
    add_config_arguments(p)   # --preset/--config/--set: inference input_size, mean, std, threshold, blur
    p.add_argument("--arch", help="architecture, if the checkpoint does not record it")
    p.add_argument("--size", type=parse_hw, help="camera image HEIGHTxWIDTH (default: the model's "
                   "inference.input_size)")
    p.add_argument("--net-size", type=parse_hw, help="resize to this HEIGHTxWIDTH inside the graph before "
                   "the network (default: run the network at the image size)")
    p.add_argument("--channel-order", choices=("rgb", "bgr"), default=None,
                   help="channel order of the images the graph will be fed (default: the model's settings, rgb)")
    p.add_argument("--fast", action="store_true", default=None,
                   help="score at the network resolution and upsample the score (see docs/deployment.md)")
    p.add_argument("--dynamic", action="store_true", help="symbolic height/width (TensorRT profile = --min-hw..--max-hw)")
    p.add_argument("--min-hw", type=parse_hw, default=(256, 512), help="smallest HEIGHTxWIDTH when --dynamic")
    p.add_argument("--max-hw", type=parse_hw, default=(1024, 2048), help="largest HEIGHTxWIDTH when --dynamic")
    p.add_argument("--exporter", choices=sorted(DEFAULT_OPSET), default="dynamo",
                   help="dynamo (opset 18, default) or torchscript (opset 17, for TensorRT 8.6)")
    p.add_argument("--opset", type=int, help="override the exporter's opset")
    p.add_argument("--network-only", action="store_true",
                   help="export just the network (float input, logits output), for benchmarks")
    p.add_argument("--half", action="store_true",
                   help="type the network FP16 inside the graph (strongly typed; what TensorRT >= 11 needs "
                   "for FP16 engines, since it removed weakly-typed FP16). Scoring stays FP32")
    p.add_argument("--no-parity", action="store_true", help="skip the ONNX Runtime vs PyTorch check")


def main(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    from ..train.common import apply_threads
    apply_threads(args.threads)
    from ..model_settings import command_settings, model_format, model_problem
    try:
        if model_format(args.model) != "checkpoint":
            raise ValueError(f"{args.model}: pebal export takes a checkpoint (.pt/.pth); this is already "
                             "an exported model")
        settings = command_settings(args, "pebal export", args.model, runtime="torch", flags={
            "input_size": list(args.size) if args.size else None, "channel_order": args.channel_order,
            "score_at_network_resolution": args.fast})
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"pebal export: {model_problem(exc)}", file=sys.stderr)
        return 2
    cfg: Config = settings.config
    spec = export_checkpoint(args.model, args.output, None, cfg, args.arch,
                             None, args.net_size, None, args.dynamic,
                             args.min_hw, args.max_hw, args.exporter, args.opset, args.network_only,
                             args.half, model_kind=settings.info.kind,
                             threshold_calibrated=settings.threshold_calibrated,
                             threshold_source=settings.source("threshold"))
    info = check_onnx(args.output) if not args.network_only else {"opset": spec.opset}
    size_mb = Path(args.output).stat().st_size / 2**20
    print(f"wrote {args.output} ({size_mb:.1f} MiB) in {time.perf_counter() - t0:.1f} s: "
          f"opset {info['opset']}, exporter {spec.exporter}, "
          f"image {'dynamic ' + str(spec.min_hw) + '..' + str(spec.max_hw) if spec.image_size is None else spec.image_size}, "
          f"{spec.channel_order}, {'fast' if spec.fast else 'full-resolution'} scoring, network "
          f"{spec.net_dtype}; onnx.checker OK, "
          f"all operators parse in TensorRT 10")
    if not args.network_only and not args.no_parity:
        from ..models import load_model
        net = load_model(str(args.model), arch=args.arch or cfg.arch).eval()
        fused = build_fused(net, cfg.inference, cfg.inference.channel_order, args.net_size, None)
        if args.half:
            fused.net.half()
        size = spec.image_size or spec.opt_hw or spec.max_hw or (0, 0)
        r = parity_check(args.output, fused, size)
        ok = r["score_max_abs_diff"] <= 1e-3 and r["semantic_agreement"] >= 0.9999 and r["mask_agreement"] >= 0.999
        if args.half:   # two FP16 implementations accumulate differently: report, do not gate
            print("(FP16 graph vs PyTorch FP16 on CPU: the 1e-3 / 99.99 % / 99.9 % gates apply to FP32 graphs)")
            ok = True
        print(f"parity ONNX Runtime vs PyTorch at {size[0]}x{size[1]}: score max|diff| "
              f"{r['score_max_abs_diff']:.2e}, semantic {100 * r['semantic_agreement']:.4f} %, "
              f"mask {100 * r['mask_agreement']:.4f} % -> {'OK' if ok else 'FAILED'}")
        if not ok:
            return 1
    return 0
