"""Datasets: Cityscapes, the COCO outlier set, anomaly benchmarks, AnomalyMix training set.

Every reader yields dicts with ``"image"`` (uint8 HxWx3 RGB), ``"target"`` (training sets, uint8
train ids / 254 / 255) or ``"label"`` (benchmarks, 0 inlier / 1 anomaly / 255 void) and ``"name"``.
"""
from pebal_ros.data.anomalymix import PebalTrainSet, anomaly_mix, cut_object, paste_object, transform_object
from pebal_ros.data.benchmarks import BENCHMARKS, BenchmarkDataset, load_benchmark
from pebal_ros.data.cityscapes import CityscapesDataset
from pebal_ros.data.coco_ood import CocoOutlierDataset

__all__ = ["BENCHMARKS", "BenchmarkDataset", "CityscapesDataset", "CocoOutlierDataset", "PebalTrainSet",
           "anomaly_mix", "cut_object", "load_benchmark", "paste_object", "transform_object"]
