"""Datasets: Cityscapes, the COCO outlier set, anomaly benchmarks, AnomalyMix training set.

Every reader yields dicts with ``"image"`` (uint8 HxWx3 RGB), ``"target"`` (training sets, uint8
train ids / 254 / 255) or ``"label"`` (benchmarks, 0 inlier / 1 anomaly / 255 void) and ``"name"``.

Names are resolved lazily (PEP 562) so that ``pebal make-synthetic`` and other torch-free users of
this package do not pay for importing torch through the AnomalyMix training set.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PebalTrainSet": "anomalymix", "anomaly_mix": "anomalymix", "cut_object": "anomalymix",
    "paste_object": "anomalymix", "transform_object": "anomalymix",
    "BENCHMARKS": "benchmarks", "BenchmarkDataset": "benchmarks", "load_benchmark": "benchmarks",
    "CityscapesDataset": "cityscapes", "CocoOutlierDataset": "coco_ood",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
