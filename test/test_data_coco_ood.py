"""`pebal build-coco-ood` on a tiny generated COCO (instances JSON + JPEGs)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("pycocotools", reason="build-coco-ood needs pycocotools")

from pebal_ros.cli import main as cli_main  # noqa: E402
from pebal_ros.data import CocoOutlierDataset  # noqa: E402
from pebal_ros.data.coco_ood import EXCLUDE_CLASSES, build  # noqa: E402

# pycocotools' mask decoding trips NumPy 2's copy-keyword deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# real COCO category ids and names (a subset)
CATEGORIES = [(1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (6, "bus"), (8, "truck"),
              (10, "traffic light"), (13, "stop sign"), (18, "dog"), (38, "kite"), (62, "chair")]


def _rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE (column-major runs, starting with a run of zeros), written by hand."""
    flat = mask.flatten(order="F").astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return {"counts": runs, "size": list(mask.shape)}


def _rect(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def _make_coco(root: Path) -> dict[int, np.ndarray | None]:
    """Images and the expected outlier mask (None = must be excluded)."""
    spec = {
        # id: (h, w, [(category, mask, iscrowd)], on_disk)
        1: (490, 500, [(18, _rect(490, 500, 10, 100, 20, 200), 0)], True),                    # dog: kept
        2: (500, 500, [(18, _rect(500, 500, 0, 50, 0, 50), 0), (1, _rect(500, 500, 60, 90, 60, 90), 0)], True),  # person
        3: (400, 640, [(18, _rect(400, 640, 0, 50, 0, 50), 0)], True),                        # too small (h < 480)
        4: (480, 481, [(38, _rect(480, 481, 5, 60, 7, 70), 1), (62, _rect(480, 481, 40, 200, 50, 300), 0)], True),  # crowd kite + chair
        5: (500, 500, [], True),                                                              # no annotation
        6: (500, 500, [(18, _rect(500, 500, 1, 2, 1, 2), 0)], False),                         # not on disk
        7: (520, 530, [(62, _rect(520, 530, 0, 10, 0, 10), 0), (13, _rect(520, 530, 100, 120, 100, 120), 1)], True),  # crowd stop sign
    }
    images, anns, expected = [], [], {}
    (root / "train2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    ann_id = 1
    for img_id, (h, w, objs, on_disk) in spec.items():
        fname = f"{img_id:012d}.jpg"
        images.append({"id": img_id, "file_name": fname, "height": h, "width": w})
        union = np.zeros((h, w), bool)
        for cat, m, crowd in objs:
            ys, xs = np.nonzero(m)
            anns.append({"id": ann_id, "image_id": img_id, "category_id": cat, "iscrowd": crowd,
                         "segmentation": _rle(m), "area": float(m.sum()),
                         "bbox": [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)]})
            ann_id += 1
            union |= m
        if on_disk:
            img = np.zeros((h, w, 3), np.uint8)
            img[..., 1] = img_id * 20
            cv2.imwrite(str(root / "train2017" / fname), img)
        expected[img_id] = union.astype(np.uint8) * 254
    # a polygon annotation on image 1 as well (COCO's common encoding)
    anns.append({"id": ann_id, "image_id": 1, "category_id": 18, "iscrowd": 0, "area": 1.0, "bbox": [300, 300, 50, 50],
                 "segmentation": [[300.0, 300.0, 350.0, 300.0, 350.0, 350.0, 300.0, 350.0]]})
    data = {"images": images, "annotations": anns, "categories": [{"id": i, "name": n} for i, n in CATEGORIES]}
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    return expected


def test_build_coco_ood_selection_masks_and_layout(tmp_path: Path) -> None:
    coco = tmp_path / "coco"
    expected = _make_coco(coco)
    out = tmp_path / "ood"
    rc = cli_main(["build-coco-ood", "--coco-root", str(coco), "--out", str(out)])
    assert rc == 0
    ds = CocoOutlierDataset(out)
    assert [ds[i]["name"] for i in range(len(ds))] == ["000000000001", "000000000004"]
    m1, m4 = ds[0]["target"], ds[1]["target"]
    assert set(np.unique(m1)) == {0, 254} and set(np.unique(m4)) == {0, 254}
    np.testing.assert_array_equal(m4, expected[4])                  # crowd RLE + chair, union
    # image 1: the RLE dog exactly, plus the polygon square (pycocotools rasterises its edges)
    np.testing.assert_array_equal(m1[:290], expected[1][:290])
    poly = m1[290:, 290:] == 254                                     # square at 300..350
    assert poly[15:55, 15:55].all() and abs(int(poly.sum()) - 50 * 50) < 2 * 50 + 2
    assert (out / "train2017" / "000000000001.jpg").is_symlink()
    assert ds[0]["image"].shape == (490, 500, 3) and abs(int(ds[0]["image"][..., 1].mean()) - 20) <= 2


def test_build_counts_keep_empty_copy_and_limit(tmp_path: Path) -> None:
    coco = tmp_path / "coco"
    _make_coco(coco)
    counts = build(coco, tmp_path / "a", progress=False)
    assert counts == {"images_in_json": 7, "selected": 3, "missing_on_disk": 1, "written": 2}
    counts = build(coco, tmp_path / "b", keep_empty=True, images="copy", progress=False)
    assert counts["written"] == 3
    empty = cv2.imread(str(tmp_path / "b/annotations/ood_seg_train2017/000000000005.png"), cv2.IMREAD_UNCHANGED)
    assert empty.shape == (500, 500) and not empty.any()
    assert not (tmp_path / "b/train2017/000000000005.jpg").is_symlink()
    assert build(coco, tmp_path / "c", limit=1, progress=False)["written"] == 1
    # writing into the COCO root itself (Meta-OoD's default) leaves the images in place
    build(coco, coco, progress=False)
    assert len(CocoOutlierDataset(coco)) == 2 and not (coco / "train2017/000000000001.jpg").is_symlink()


def test_build_min_size_and_exclusion_list(tmp_path: Path) -> None:
    coco = tmp_path / "coco"
    _make_coco(coco)
    # without the exclusion list, image 2 (person) and 7 (stop sign, crowd) come in; min-size 300 admits 3
    counts = build(coco, tmp_path / "x", exclude=("dog",), min_size=300, progress=False)
    names = sorted(p.stem for p in (tmp_path / "x/annotations/ood_seg_train2017").glob("*.png"))
    assert names == ["000000000004", "000000000007"] and counts["written"] == 2
    assert set(EXCLUDE_CLASSES) == {"person", "bicycle", "car", "motorcycle", "bus", "truck", "traffic light", "stop sign"}
    with pytest.raises(ValueError, match="not in the COCO categories"):
        build(coco, tmp_path / "y", exclude=("persn",), progress=False)


def test_build_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="instances_train2017.json"):
        build(tmp_path, tmp_path / "o", progress=False)
