"""Build a bank of real object cut-outs for AnomalyMix (RGBA + a manifest with sources and licences).

COCO cannot be downloaded here, so the real outlier objects come from small public sources that
ship objects with masks, or objects cut cleanly from plain backgrounds:

* ``rembg`` -- danielgatis/rembg ``examples/*.out.png`` (RGBA cut-outs; repository MIT),
* ``u2net`` -- xuebinqin/U-2-Net ``test_data/test_images`` with the masks U^2-Net predicted for them
  in ``test_data/u2net_results`` (repository Apache-2.0),
* ``skimage`` -- scikit-image's bundled sample images (``skimage/data`` in the wheel; CC0 / public
  domain per scikit-image's own notes), cut with OpenCV GrabCut (a hand-set box) or, for the coins on
  a plain background, Otsu thresholding.

Every object has a *kind*; the bank splits by kind, never by image: ``train`` objects (animals,
household things) are for AnomalyMix, ``eval`` objects (boats, aircraft, rifles, a rocket) only
for the held-out evaluation, so the evaluation measures objects of kinds the model never saw.
Things that are inlier classes in Cityscapes (people, cars, bicycles) are not used.

Layout written by ``pebal build-objects --out DIR``::

    DIR/objects/<id>.png     RGBA, tightly cropped, alpha = the object's mask (soft edges kept)
    DIR/manifest.json        {"objects": [{id, file, kind, split, origin, source, licence, cut, size}], ...}
    DIR/SOURCES.md           the same as a table (what the objects are and where they came from)

``ObjectBank(DIR, split)`` reads it back as outlier items (``{"image", "target" (254 on the
object), "alpha", "name", "kind"}``, the interface AnomalyMix takes), verifying the manifest
against the files. ``ProceduralObjects`` renders the project's procedural objects (all families
of ``synthetic_outliers``) with the same interface, seeded per item.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
from torch.utils.data import Dataset

from pebal_ros.config import RoadConfig
from pebal_ros.labels import ANOMALY_LABEL

SPLITS = ("train", "eval")
ALPHA_MASK = 128      # alpha >= this is the object's mask (its label); softer edges only blend colour

LICENCES = {
    "rembg": "MIT (danielgatis/rembg repository licence; the example photos' own provenance is not stated)",
    "u2net": "Apache-2.0 (xuebinqin/U-2-Net repository licence; masks are U^2-Net outputs shipped in the "
             "repository; the test photos' own provenance is not stated)",
    "skimage": "see 'note' (scikit-image sample data, BSD-3-Clause package)",
}


@dataclass(frozen=True)
class Source:
    id: str
    kind: str
    split: str
    origin: str              # rembg | u2net | skimage
    file: str                # path inside the origin folder
    cut: str                 # alpha | mask | grabcut | components
    mask: str = ""           # mask file (cut = mask)
    rect: tuple[int, int, int, int] = (0, 0, 0, 0)    # x, y, w, h (cut = grabcut)
    note: str = ""


SOURCES: tuple[Source, ...] = (
    # ---- train: animals and household things --------------------------------------------------
    Source("tiger", "animal", "train", "rembg", "animal-1.out.png", "alpha"),
    Source("elephant", "animal", "train", "rembg", "animal-2.out.png", "alpha"),
    Source("lion", "animal", "train", "rembg", "animal-3.out.png", "alpha"),
    Source("alpaca", "animal", "train", "u2net", "test_images/0003.jpg", "mask", "u2net_results/0003.png"),
    Source("horse", "animal", "train", "u2net", "test_images/horse.jpg", "mask", "u2net_results/horse.png"),
    Source("monkey", "animal", "train", "u2net", "test_images/im_21.png", "mask", "u2net_results/im_21.png"),
    Source("ant", "animal", "train", "u2net", "test_images/im_27.png", "mask", "u2net_results/im_27.png"),
    Source("meerkat", "animal", "train", "u2net", "test_images/whisk.png", "mask", "u2net_results/whisk.png"),
    Source("lamp", "household", "train", "u2net", "test_images/lamp2_meitu_1.jpg", "mask",
           "u2net_results/lamp2_meitu_1.png"),
    Source("coffee_cup", "household", "train", "skimage", "coffee.png", "grabcut", rect=(70, 8, 440, 385),
           note="CC0 (photo by Rachel Michetti, per scikit-image)"),
    Source("coin", "household", "train", "skimage", "coins.png", "components",
           note="no known copyright restrictions (Brooklyn Museum, per scikit-image); grey, one object per coin"),
    # ---- eval only: vehicles off the road, equipment ----------------------------------------------
    Source("motorboat", "boat", "eval", "u2net", "test_images/boat.jpg", "mask", "u2net_results/boat.png"),
    Source("sailboat", "boat", "eval", "u2net", "test_images/sailboat3.jpg", "mask", "u2net_results/sailboat3.png"),
    Source("aircraft", "aircraft", "eval", "u2net", "test_images/im_01.png", "mask", "u2net_results/im_01.png"),
    Source("rifle_1", "rifle", "eval", "u2net", "test_images/rifle1.jpg", "mask", "u2net_results/rifle1.png"),
    Source("rifle_2", "rifle", "eval", "u2net", "test_images/rifle2.jpeg", "mask", "u2net_results/rifle2.png"),
    Source("rocket", "rocket", "eval", "skimage", "rocket.jpg", "grabcut", rect=(280, 95, 70, 330),
           note="public domain (SpaceX launch photo, per scikit-image)"),
)

COIN_AREA = (800, 4000)   # coins.png: each coin's pixel area (the background blob is larger)


def _read(path: Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    img = cv2.imread(str(path), flags)
    if img is None:
        raise FileNotFoundError(f"build-objects: cannot read {path}")
    return img


def cut(src: Source, root: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(BGR uint8 h x w x 3, alpha uint8 h x w) cut-outs of one source (several for ``components``)."""
    path = root / src.file
    if src.cut == "alpha":
        rgba = _read(path, cv2.IMREAD_UNCHANGED)
        if rgba.ndim != 3 or rgba.shape[2] != 4:
            raise ValueError(f"build-objects: {path} has no alpha channel")
        return [(rgba[..., :3], rgba[..., 3])]
    if src.cut == "mask":
        img = _read(path)
        mask = _read(root / src.mask, cv2.IMREAD_GRAYSCALE)
        mask = cv2.resize(mask, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
        return [(img, mask)]
    if src.cut == "grabcut":
        img = _read(path)
        gc = np.zeros(img.shape[:2], np.uint8)
        cv2.setRNGSeed(0)
        cv2.grabCut(img, gc, src.rect, np.zeros((1, 65)), np.zeros((1, 65)), 8, cv2.GC_INIT_WITH_RECT)
        mask = np.isin(gc, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8) * 255
        return [(img, _largest(mask))]
    if src.cut == "components":
        grey = _read(path, cv2.IMREAD_GRAYSCALE)
        _, fg = cv2.threshold(cv2.GaussianBlur(grey, (5, 5), 0), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        n, lab, stats, _ = cv2.connectedComponentsWithStats(fg)
        img = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
        out = []
        for i in range(1, n):
            if COIN_AREA[0] <= stats[i, cv2.CC_STAT_AREA] <= COIN_AREA[1]:
                out.append((img, _fill_holes((lab == i).astype(np.uint8) * 255)))
        return out
    raise ValueError(f"build-objects: unknown cut method {src.cut!r}")


def _largest(mask: np.ndarray) -> np.ndarray:
    n, lab, stats, _ = cv2.connectedComponentsWithStats((mask >= ALPHA_MASK).astype(np.uint8))
    if n <= 1:
        return mask
    keep = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return np.where(lab == keep, mask, 0).astype(np.uint8)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.zeros_like(mask)
    cv2.drawContours(out, contours, -1, 255, thickness=cv2.FILLED)
    return out


def tight_rgba(bgr: np.ndarray, alpha: np.ndarray) -> np.ndarray | None:
    """BGRA cropped to the box of alpha >= ALPHA_MASK; colour outside alpha > 0 zeroed; None if empty."""
    on = alpha >= ALPHA_MASK
    rows, cols = np.flatnonzero(on.any(1)), np.flatnonzero(on.any(0))
    if rows.size == 0:
        return None
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    bgra = np.dstack([bgr[y0:y1, x0:x1], alpha[y0:y1, x0:x1]]).copy()
    bgra[bgra[..., 3] == 0, :3] = 0
    return bgra


def build(roots: dict[str, Path], out: Path, sources: Sequence[Source] = SOURCES) -> dict[str, Any]:
    """Cut every source into ``out``; returns the manifest (also written to ``out/manifest.json``)."""
    (out / "objects").mkdir(parents=True, exist_ok=True)
    entries = []
    for src in sources:
        if src.origin not in roots:
            raise SystemExit(f"build-objects: no folder given for origin {src.origin!r} (needed by {src.id})")
        cuts = cut(src, roots[src.origin])
        if not cuts:
            raise ValueError(f"build-objects: {src.id}: nothing was cut from {roots[src.origin] / src.file}")
        for k, (bgr, alpha) in enumerate(cuts):
            bgra = tight_rgba(bgr, alpha)
            if bgra is None or min(bgra.shape[:2]) < 8:
                raise ValueError(f"build-objects: {src.id}: the cut-out is empty or smaller than 8 pixels")
            oid = src.id if len(cuts) == 1 else f"{src.id}_{k:02d}"
            name = f"objects/{oid}.png"
            cv2.imwrite(str(out / name), bgra)
            licence = src.note if src.origin == "skimage" else LICENCES[src.origin]
            entries.append({"id": oid, "file": name, "kind": src.kind, "split": src.split, "origin": src.origin,
                            "source": src.file, "mask": src.mask or None, "cut": src.cut, "licence": licence,
                            "size": [int(bgra.shape[1]), int(bgra.shape[0])]})
    kinds = {s: sorted({e["kind"] for e in entries if e["split"] == s}) for s in SPLITS}
    overlap = set(kinds["train"]) & set(kinds["eval"])
    if overlap:
        raise ValueError(f"build-objects: kinds {sorted(overlap)} are in both splits")
    manifest = {"format": 1, "alpha_mask_threshold": ALPHA_MASK, "kinds": kinds, "objects": entries,
                "sources": [asdict(s) for s in sources]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (out / "SOURCES.md").write_text(_sources_md(entries))
    return manifest


def _sources_md(entries: list[dict[str, Any]]) -> str:
    lines = ["# Object bank: sources and licences", "",
             "| id | kind | split | origin | source file | cut | licence |", "|---|---|---|---|---|---|---|"]
    for e in entries:
        lines.append(f"| {e['id']} | {e['kind']} | {e['split']} | {e['origin']} | {e['source']} | {e['cut']} | "
                     f"{e['licence']} |")
    return "\n".join(lines) + "\n"


class ObjectBank(Dataset):
    """The cut-outs of one split as AnomalyMix outlier items (colour RGB, target 254 on the mask)."""

    def __init__(self, root: str | Path, split: str = "train") -> None:
        if split not in SPLITS:
            raise ValueError(f"object bank: unknown split {split!r}; choose from {SPLITS}")
        self.root = Path(root)
        path = self.root / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(f"object bank: {path} not found (build it with `pebal build-objects`)")
        try:
            manifest = json.loads(path.read_text())
            entries = [e for e in manifest["objects"] if e["split"] == split]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"object bank: {path} is not a valid manifest ({exc})") from None
        for e in entries:
            f = self.root / e["file"]
            if not f.is_file() or Path(e["file"]).is_absolute() or ".." in Path(e["file"]).parts:
                raise FileNotFoundError(f"object bank: {e.get('id')}: file {e['file']!r} missing or outside the bank")
        if not entries:
            raise ValueError(f"object bank: no {split!r} objects in {path}")
        self.entries = entries
        self.split = split

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        e = self.entries[index]
        bgra = cv2.imread(str(self.root / e["file"]), cv2.IMREAD_UNCHANGED)
        if bgra is None or bgra.ndim != 3 or bgra.shape[2] != 4:
            raise ValueError(f"object bank: {e['file']} is not an RGBA image")
        alpha = bgra[..., 3]
        target = np.where(alpha >= ALPHA_MASK, ANOMALY_LABEL, 0).astype(np.uint8)
        return {"image": cv2.cvtColor(bgra[..., :3], cv2.COLOR_BGR2RGB), "target": target, "alpha": alpha,
                "name": e["id"], "kind": e["kind"]}

    @property
    def kinds(self) -> list[str]:
        return sorted({e["kind"] for e in self.entries})


class ProceduralObjects(Dataset):
    """``n`` procedural objects (``synthetic_outliers.render_outlier``), item i drawn from
    ``default_rng([seed, i])``: family uniform over ``families``, natural aspect, longest side
    ``size`` pixels."""

    def __init__(self, n: int, seed: int = 0, families: Sequence[str] | None = None, size: int = 160) -> None:
        from pebal_ros.data.synthetic_outliers import TEST_FAMILIES, TRAIN_FAMILIES
        self.n, self.seed, self.size = int(n), int(seed), int(size)
        self.families = tuple(families) if families else TRAIN_FAMILIES + TEST_FAMILIES

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        from pebal_ros.data.synthetic_outliers import natural_aspect, render_outlier
        if not 0 <= index < self.n:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, int(index)])
        family = self.families[int(rng.integers(len(self.families)))]
        aspect = natural_aspect(rng, family)
        w, h = (self.size, max(4, int(self.size / aspect))) if aspect >= 1 else (max(4, int(self.size * aspect)), self.size)
        rgb, mask = render_outlier(rng, family, (w, h))
        alpha = mask.astype(np.uint8) * 255
        return {"image": rgb, "target": np.where(mask, ANOMALY_LABEL, 0).astype(np.uint8), "alpha": alpha,
                "name": f"procedural_{family}_{index}", "kind": f"procedural:{family}"}


class OutlierSource:
    """Draws outlier objects: the real bank's ``train`` split (each *source* equally likely, so 22
    coins from one photo weigh like one animal), procedural objects, or both half-and-half."""

    def __init__(self, kind: str, bank: str | Path | None, road: RoadConfig, split: str = "train") -> None:
        if kind not in ("real", "procedural", "both"):
            raise SystemExit(f"road.objects must be real, procedural or both, got {kind!r}")
        self.real = self.procedural = None
        if kind in ("real", "both"):
            if bank is None:
                raise SystemExit("--objects (the object bank) is required for road.objects real/both")
            self.real = ObjectBank(bank, split)
            groups = [e.get("source", e["id"]) for e in self.real.entries]
            counts = {g: groups.count(g) for g in groups}
            w = np.array([1.0 / counts[g] for g in groups])
            self.real_p = w / w.sum()
        if kind in ("procedural", "both"):
            self.procedural = ProceduralObjects(road.procedural_count, seed=road.seed + 7919 * (split != "train"),
                                                size=road.procedural_size)
        self.kind = kind

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        use_real = self.procedural is None or (self.real is not None and rng.random() < 0.5)
        if use_real:
            assert self.real is not None
            return self.real[int(rng.choice(len(self.real), p=self.real_p))]
        assert self.procedural is not None
        return self.procedural[int(rng.integers(len(self.procedural)))]


# --- CLI ------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rembg", type=Path, required=True, help="danielgatis/rembg's examples/ folder")
    p.add_argument("--u2net", type=Path, required=True,
                   help="xuebinqin/U-2-Net's test_data/ folder (test_images/ and u2net_results/)")
    p.add_argument("--skimage", type=Path, required=True,
                   help="scikit-image's data folder (skimage/data in the wheel or an installed package)")
    p.add_argument("--out", type=Path, required=True, help="bank folder to write (objects/, manifest.json)")


def main(args: argparse.Namespace) -> int:
    roots = {"rembg": args.rembg, "u2net": args.u2net, "skimage": args.skimage}
    for name, root in roots.items():
        if not root.is_dir():
            raise SystemExit(f"--{name}: {root} is not a folder")
    manifest = build(roots, args.out)
    n = {s: sum(e["split"] == s for e in manifest["objects"]) for s in SPLITS}
    print(f"wrote {len(manifest['objects'])} objects to {args.out} (train {n['train']}: "
          f"{', '.join(manifest['kinds']['train'])}; eval {n['eval']}: {', '.join(manifest['kinds']['eval'])})",
          file=sys.stderr)
    return 0
