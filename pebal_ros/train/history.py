"""Training log: per-step and per-epoch records, written as CSV + JSON and drawn as a loss curve.

The whole history travels inside each training checkpoint, so a resumed run continues the same
files instead of starting new ones.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class History:
    steps: list[dict[str, float]] = field(default_factory=list)
    epochs: list[dict[str, float]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def log_step(self, record: dict[str, float]) -> None:
        self.steps.append({k: float(v) for k, v in record.items()})

    def log_epoch(self, record: dict[str, float]) -> None:
        self.epochs.append({k: float(v) for k, v in record.items()})

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "epochs": self.epochs, "info": self.info}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any] | None) -> "History":
        state = state or {}
        return cls(list(state.get("steps", [])), list(state.get("epochs", [])), dict(state.get("info", {})))

    def write(self, out_dir: str | Path, prefix: str = "train") -> None:
        """``<prefix>_steps.csv``, ``<prefix>_epochs.csv`` and ``<prefix>_log.json`` in ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _write_csv(out / f"{prefix}_steps.csv", self.steps)
        _write_csv(out / f"{prefix}_epochs.csv", self.epochs)
        with open(out / f"{prefix}_log.json", "w", encoding="utf-8") as fh:
            json.dump(self.state_dict(), fh, indent=1, default=_json_default)

    def plot(self, path: str | Path, keys: list[str] | None = None, title: str = "") -> Path | None:
        """Loss curve(s) over optimiser steps (per-step points and per-epoch means); None if nothing to draw."""
        if not self.steps:
            return None
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys = keys or [k for k in self.steps[0] if k not in ("step", "epoch", "lr")]
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        xs = [r["step"] for r in self.steps]
        for key in keys:
            ys = [r.get(key, math.nan) for r in self.steps]
            ax.plot(xs, ys, lw=1, alpha=0.8, label=key)
        if self.epochs and "total" in self.epochs[0]:
            ax.plot([r["step"] for r in self.epochs], [r["total"] for r in self.epochs], "ko-", ms=3,
                    lw=1.5, label="total (epoch mean)")
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("loss")
        ax.set_yscale("symlog", linthresh=1e-2)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        if title:
            ax.set_title(title)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path)
        plt.close(fig)
        return path


def _write_csv(path: Path, rows: list[dict[str, float]]) -> None:
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    return str(obj)
