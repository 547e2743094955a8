"""The fused graph's contract: its inputs and outputs, and what it is (``ExportSpec``, stored in the
ONNX metadata); readable without torch.

    inputs   image      uint8   [H, W, 3]  camera frame, RGB or BGR (``channel_order``)
             threshold  float32 [1]        score > threshold is anomalous
    outputs  semantic   uint8   [H, W]     Cityscapes train id 0-18
             score      float32 [H, W]     inlier free energy, Gaussian-smoothed (higher = more anomalous)
             mask       uint8   [H, W]     1 where score > threshold

Kept apart from the exporter so that reading a model's own settings (pebal_ros.model_settings)
needs neither torch nor the exporter, and the exporter can use that resolution without a circle.
Files written by older versions lack the newer keys (``model_kind``, ``threshold_calibrated``,
``input_size``...): they read back with the defaults, which say "unknown" rather than guess.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INPUT_NAMES = ("image", "threshold")
OUTPUT_NAMES = ("semantic", "score", "mask")
FORMAT_TAG = "pebal-fused-v1"
META_PREFIX = "pebal."


@dataclass
class ExportSpec:
    """What the exported graph is; stored in the ONNX metadata and read back by the runtimes."""
    image_size: tuple[int, int] | None            # (H, W); None = dynamic
    channel_order: str = "rgb"
    net_size: tuple[int, int] | None = None       # None = the network runs at the image size
    fast: bool = False
    threshold: float = -10.0                      # the config's default, a hint for runtimes
    min_hw: tuple[int, int] | None = None         # dynamic-shape profile range
    opt_hw: tuple[int, int] | None = None
    max_hw: tuple[int, int] | None = None
    network_only: bool = False
    net_dtype: str = "float32"                    # "float16": network typed FP16 in the graph (--half)
    exporter: str = "dynamo"
    opset: int = 18
    arch: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # What the model is (issue: every model carries it): "pebal" (abstention channel trained),
    # "segmentation" (a plain network scored with PEBAL's energy = the Energy baseline), "" unknown.
    model_kind: str = ""
    threshold_calibrated: bool = False            # threshold was calibrated for this model
    threshold_source: str = ""                    # where the threshold came from at export time

    def to_metadata(self) -> dict[str, str]:
        def hw(v):
            return "" if v is None else f"{v[0]}x{v[1]}"
        meta = {
            "format": FORMAT_TAG if not self.network_only else "pebal-network-only-v1",
            "image_size": hw(self.image_size) or "dynamic",
            "channel_order": self.channel_order,
            "net_size": hw(self.net_size),
            "fast": str(int(self.fast)),
            "threshold": repr(float(self.threshold)),
            "min_hw": hw(self.min_hw), "opt_hw": hw(self.opt_hw), "max_hw": hw(self.max_hw),
            "exporter": self.exporter, "opset": str(self.opset), "arch": self.arch,
            "net_dtype": self.net_dtype,
            "extra": json.dumps(self.extra, sort_keys=True),
            "model_kind": self.model_kind,
            "threshold_calibrated": str(int(self.threshold_calibrated)),
            "threshold_source": self.threshold_source,
        }
        return {META_PREFIX + k: v for k, v in meta.items()}

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> "ExportSpec":
        m = {k[len(META_PREFIX):]: v for k, v in meta.items() if k.startswith(META_PREFIX)}
        if m.get("format") not in (FORMAT_TAG, "pebal-network-only-v1"):
            raise ValueError(
                f"not a pebal export (metadata format={m.get('format')!r}); "
                "make the .onnx with `pebal export`")
        return cls(
            image_size=None if m.get("image_size") in (None, "", "dynamic") else parse_hw(m["image_size"]),
            channel_order=m.get("channel_order", "rgb"),
            net_size=parse_hw(m["net_size"]) if m.get("net_size") else None,
            fast=m.get("fast", "0") == "1",
            threshold=float(m.get("threshold", "-10.0")),
            min_hw=parse_hw(m["min_hw"]) if m.get("min_hw") else None,
            opt_hw=parse_hw(m["opt_hw"]) if m.get("opt_hw") else None,
            max_hw=parse_hw(m["max_hw"]) if m.get("max_hw") else None,
            network_only=m.get("format") == "pebal-network-only-v1",
            exporter=m.get("exporter", ""), opset=int(m.get("opset", "0") or 0),
            arch=m.get("arch", ""), extra=json.loads(m.get("extra") or "{}"),
            net_dtype=m.get("net_dtype", "float32"),
            model_kind=m.get("model_kind", ""),
            threshold_calibrated=m.get("threshold_calibrated", "0") == "1",
            threshold_source=m.get("threshold_source", ""),
        )


def parse_hw(text: str) -> tuple[int, int]:
    """'512x1024' (height x width) -> (512, 1024)."""
    try:
        h, w = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"expected HEIGHTxWIDTH such as 512x1024, got {text!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"height and width must be positive, got {text!r}")
    return h, w


def _hw2(v) -> tuple[int, int]:
    return int(v[0]), int(v[1])


def read_spec(path: str | Path) -> ExportSpec:
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    return ExportSpec.from_metadata({p.key: p.value for p in model.metadata_props})


