"""pebal evaluate end to end on tiny generated Fishyscapes-layout and Cityscapes-layout sets.

The table's numbers are checked against an independent computation: the test runs the network
itself, pools every pixel, and computes AUROC/AP with scikit-learn and FPR95 with the Hendrycks
rule written out here, and mIoU from a confusion matrix; ``pebal evaluate`` uses the streaming
(histogram) accumulators of ``pebal_ros.metrics``.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, roc_auc_score

from pebal_ros.cli import main as cli_main
from pebal_ros.data.transforms import normalize
from pebal_ros.labels import NUM_CLASSES
from pebal_ros.models import add_abstention, build_model, load_model, save_checkpoint
from pebal_ros.scoring import get_scorer

H, W = 48, 96            # label / image size
NET = (32, 64)           # network input size (images are resized, logits upsampled back)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _frame(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Train-id map and image of a crude street frame (sky / building / road)."""
    t = np.zeros((H, W), np.uint8)
    hz = int(rng.integers(H // 3, H // 2))
    t[: hz // 2], t[hz // 2: hz] = 10, 2
    colours = {0: (80, 80, 80), 2: (150, 100, 80), 10: (120, 170, 230)}
    img = np.zeros((H, W, 3), np.uint8)
    for k, c in colours.items():
        img[t == k] = c
    return np.clip(img.astype(int) + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8), t


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaldata")
    rng = np.random.default_rng(7)
    fs = root / "fs"
    (fs / "original").mkdir(parents=True)
    (fs / "labels").mkdir(parents=True)
    for i in range(3):
        img, _ = _frame(rng)
        lab = np.zeros((H, W), np.uint8)
        y, x = int(rng.integers(H // 2, H - 10)), int(rng.integers(0, W - 12))
        img[y:y + 8, x:x + 12] = rng.integers(0, 256, 3)
        lab[y:y + 8, x:x + 12] = 1
        lab[-3:] = 255
        cv2.imwrite(str(fs / "original" / f"f{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(fs / "labels" / f"f{i}.png"), lab)
    cs = root / "cityscapes"
    for i in range(2):
        img, t = _frame(rng)
        t[-2:] = 255
        stem = f"lindau_{i:06d}_000019"
        (cs / "leftImg8bit" / "val" / "lindau").mkdir(parents=True, exist_ok=True)
        (cs / "gtFine" / "val" / "lindau").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(cs / "leftImg8bit" / "val" / "lindau" / f"{stem}_leftImg8bit.png"),
                    cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(cs / "gtFine" / "val" / "lindau" / f"{stem}_gtFine_labelTrainIds.png"), t)
    torch.manual_seed(3)
    inlier = save_checkpoint(build_model("espnetv2", s=0.5), root / "inlier.pt")
    torch.manual_seed(4)
    pebal = save_checkpoint(add_abstention(build_model("espnetv2", s=0.5)), root / "pebal.pt")
    return {"fs": fs, "cityscapes": cs, "inlier": inlier, "pebal": pebal}


def fpr_at_95_tpr(scores: np.ndarray, labels: np.ndarray) -> float:
    """Hendrycks' fpr_and_fdr_at_recall(recall_level=0.95), as the official PEBAL code uses it."""
    order = np.argsort(scores, kind="mergesort")[::-1]
    s, y = scores[order], labels[order].astype(np.float64)
    idx = np.r_[np.where(np.diff(s))[0], y.size - 1]
    tps = np.cumsum(y)[idx]
    fps = 1 + idx - tps
    recall = tps / tps[-1]
    last = tps.searchsorted(tps[-1])
    sl = slice(last, None, -1)
    recall, fps = np.r_[recall[sl], 1], np.r_[fps[sl], 0]
    return float(fps[np.argmin(np.abs(recall - 0.95))] / np.sum(y == 0))


_LOGITS: dict[tuple[str, str], list[tuple[torch.Tensor, np.ndarray]]] = {}


def _forward_all(model_path: Path, image_paths: list[Path], label_of) -> list[tuple[torch.Tensor, np.ndarray]]:
    """(logits at network resolution, label) per image, computed once per (model, dataset)."""
    key = (str(model_path), str(image_paths[0].parent))
    if key not in _LOGITS:
        model = load_model(model_path).eval()
        items = []
        for img_path in image_paths:
            img = cv2.cvtColor(cv2.imread(str(img_path)), cv2.COLOR_BGR2RGB)
            x = cv2.resize(img, (NET[1], NET[0]), interpolation=cv2.INTER_LINEAR)
            x = torch.from_numpy(normalize(x, MEAN, STD).transpose(2, 0, 1).copy())[None]
            with torch.no_grad():
                items.append((model(x), cv2.imread(str(label_of(img_path)), cv2.IMREAD_UNCHANGED)))
        _LOGITS[key] = items
    return _LOGITS[key]


def _reference(model_path: Path, data: Path, scorer: str, network_res: bool = False) -> dict[str, float]:
    fn = get_scorer(scorer)
    all_s, all_y = [], []
    images = sorted((data / "original").glob("*.png"))
    for logits, lab in _forward_all(model_path, images, lambda p: data / "labels" / p.name):
        if network_res:
            score = F.interpolate(fn(logits)[:, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
        else:
            score = fn(F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False))[0]
        keep = lab != 255
        all_s.append(score.numpy()[keep])
        all_y.append(lab[keep])
    s, y = np.concatenate(all_s).astype(np.float64), np.concatenate(all_y)
    return {"auroc": roc_auc_score(y, s), "ap": average_precision_score(y, s), "fpr95": fpr_at_95_tpr(s, y),
            "anomaly_scores": s[y == 1], "inlier_scores": s[y == 0]}


def _reference_miou(model_path: Path, data: Path) -> float:
    conf = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    images = sorted((data / "leftImg8bit" / "val").glob("*/*.png"))

    def label_of(p: Path) -> str:
        return str(p).replace("leftImg8bit", "gtFine", 1).replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")

    for logits, gt in _forward_all(model_path, images, label_of):
        pred = F.interpolate(logits, size=(H, W), mode="bilinear")[0, :NUM_CLASSES].argmax(0).numpy()
        keep = gt != 255
        conf += np.bincount(gt[keep].astype(np.int64) * NUM_CLASSES + pred[keep],
                            minlength=NUM_CLASSES ** 2).reshape(NUM_CLASSES, NUM_CLASSES)
    inter = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - inter
    return float(np.mean(inter[union > 0] / union[union > 0]))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a 2-core machine shared with other jobs, two threads spin-wait each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def evaluated(eval_data, tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("evalout") / "table"
    argv = ["evaluate", "--model", f"inlier={eval_data['inlier']}", "--model", f"pebal={eval_data['pebal']}",
            "--dataset", f"fs_static={eval_data['fs']}", "--dataset", f"cityscapes={eval_data['cityscapes']}",
            "--dataset", f"copy@fs_static={eval_data['fs']}",
            "--input-size", str(NET[0]), str(NET[1]), "--fast", "--num-workers", "0", "--no-progress",
            "--out", str(out)]
    assert cli_main(argv) == 0
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def test_table_has_every_row_and_column(evaluated):
    result, md = evaluated
    header, rows = result["table"]["header"], result["table"]["rows"]
    assert header[:2] == ["Model", "Method"]
    assert [h for h in header if "fs_static" in h] == ["fs_static AUROC ↑", "fs_static AP ↑", "fs_static FPR95 ↓"]
    assert header[-1] == "cityscapes mIoU ↑"
    assert "copy AP ↑" in header     # LABEL@KIND renames a dataset's columns
    assert len(rows) == 2 * 5 * 2        # models x scorers x score resolutions
    for model in ("inlier", "pebal"):
        methods = [r[1] for r in rows if r[0] == model]
        for label in ("MSP", "Max Logit", "Entropy", "Energy", "PEBAL score (smoothed energy)"):
            assert label in methods and f"{label} [scored at network res.]" in methods
    assert all(cell not in ("", "–") for r in rows for cell in r)
    # The markdown file is the same table.
    lines = md.strip().splitlines()
    assert len(lines) == 2 + len(rows) and "fs_static AP" in lines[0] and "PEBAL score" in md


@pytest.mark.parametrize("model", ["inlier", "pebal"])
@pytest.mark.parametrize("scorer", ["pebal", "energy", "msp"])
def test_metrics_match_a_direct_computation(evaluated, eval_data, model, scorer):
    result, _ = evaluated
    got = result["anomaly"][model]["fs_static"][scorer]
    ref = _reference(eval_data[model], eval_data["fs"], scorer)
    assert got["auroc"] == pytest.approx(ref["auroc"], abs=2e-4)
    assert got["ap"] == pytest.approx(ref["ap"], abs=2e-3)
    assert got["fpr95"] == pytest.approx(ref["fpr95"], abs=2e-3)
    assert got["n_anomaly"] + got["n_inlier"] == 3 * (H - 3) * W
    # The suggested threshold flags at least 95 % of the anomaly pixels, and is tight (within a bin).
    thr, anom = got["threshold_tpr95"], ref["anomaly_scores"]
    assert np.mean(anom >= thr) >= 0.95
    assert np.mean(anom >= thr + 2 * got["bin_width"]) < 0.95 + 1.0 / anom.size
    # The vehicle operating point flags at most 5 % of the inlier pixels, and is tight too.
    thr, inl = got["threshold_fpr05"], ref["inlier_scores"]
    assert np.mean(inl >= thr) <= 0.05
    assert np.mean(inl >= thr - 2 * got["bin_width"]) > 0.05 - 1.0 / inl.size


def test_network_resolution_rows_match_a_direct_computation(evaluated, eval_data):
    result, _ = evaluated
    got = result["anomaly"]["pebal"]["fs_static"]["pebal@network"]
    ref = _reference(eval_data["pebal"], eval_data["fs"], "pebal", network_res=True)
    assert got["auroc"] == pytest.approx(ref["auroc"], abs=2e-4)
    assert got["ap"] == pytest.approx(ref["ap"], abs=2e-3)


def test_a_relabelled_dataset_gives_the_same_numbers(evaluated):
    result, _ = evaluated
    for model in ("inlier", "pebal"):
        assert result["anomaly"][model]["copy"] == result["anomaly"][model]["fs_static"]


def test_miou_matches_a_confusion_matrix(evaluated, eval_data):
    result, _ = evaluated
    for model in ("inlier", "pebal"):
        assert result["segmentation"][model]["cityscapes"]["miou"] == pytest.approx(
            _reference_miou(eval_data[model], eval_data["cityscapes"]), abs=1e-9)


def test_bad_arguments_fail_clearly(eval_data, capsys):
    with pytest.raises(SystemExit):
        cli_main(["evaluate", "--model", str(eval_data["inlier"]), "--dataset", f"nosuchset={eval_data['fs']}"])
    assert "unknown dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="not found"):
        cli_main(["evaluate", "--model", "/nonexistent/model.pt", "--dataset", f"fs_static={eval_data['fs']}"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_evaluation_matches_cpu(evaluated, eval_data):
    from pebal_ros.evaluate import evaluate_model, parse_dataset
    result, _ = evaluated
    got = evaluate_model(load_model(eval_data["pebal"]), "pebal", str(eval_data["pebal"]),
                         [parse_dataset(f"fs_static={eval_data['fs']}")], input_size=NET, mean=MEAN, std=STD,
                         scorers=["pebal", "energy"], resolutions=["input"], device=torch.device("cuda"),
                         progress=False)
    for s in ("pebal", "energy"):
        for k in ("auroc", "ap", "fpr95"):
            assert got.ood["fs_static"][s][k] == pytest.approx(result["anomaly"]["pebal"]["fs_static"][s][k], abs=2e-3)
