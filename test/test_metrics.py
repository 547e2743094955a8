"""metrics.py against independent computations: scikit-learn on the raw arrays, a brute-force FPR95,
the official fpr_and_fdr_at_recall re-typed, and sklearn's confusion_matrix / jaccard_score."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, average_precision_score, confusion_matrix, jaccard_score,
                             roc_auc_score)

from pebal_ros.labels import TRAIN_ID_NAMES
from pebal_ros.metrics import OODMetrics, SegMetrics, fpr_at_recall, ood_metrics


# --------------------------------------------------------------------------------------------
# independent FPR95 implementations

def _fpr95_brute(s: np.ndarray, y: np.ndarray, level: float = 0.95) -> float:
    """Every distinct threshold t (score >= t flagged), recall/FPR by counting; the official choice:
    recall closest to ``level`` over thresholds down to the first with full recall, ties -> lowest t."""
    thresholds = np.unique(s)[::-1]
    pos, neg = s[y], s[~y]
    best = None
    for t in thresholds:
        recall = np.count_nonzero(pos >= t) / pos.size
        fpr = np.count_nonzero(neg >= t) / neg.size
        d = abs(recall - level)
        if best is None or d <= best[0]:
            best = (d, fpr)
        if recall == 1.0:
            break
    return best[1]


def _official_fpr(y_true: np.ndarray, y_score: np.ndarray, recall_level: float = 0.95) -> float:
    """utils/pyt_utils.py fpr_and_fdr_at_recall of tianyu0207/PEBAL, re-typed."""
    y_true = y_true == 1
    desc = np.argsort(y_score, kind="mergesort")[::-1]
    y_score, y_true = y_score[desc], y_true[desc]
    distinct = np.where(np.diff(y_score))[0]
    idxs = np.r_[distinct, y_true.size - 1]
    tps = np.cumsum(y_true, dtype=np.float64)[idxs]
    fps = 1 + idxs - tps
    recall = tps / tps[-1]
    last = tps.searchsorted(tps[-1])
    sl = slice(last, None, -1)
    recall, fps = np.r_[recall[sl], 1], np.r_[fps[sl], 0]
    cutoff = np.argmin(np.abs(recall - recall_level))
    return fps[cutoff] / np.sum(np.logical_not(y_true))


def _random_set(seed: int, n: int = 20000, ties: bool = False, p_anom: float = 0.1):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < p_anom
    s = rng.normal(size=n) + 1.8 * y
    if ties:
        s = np.round(s * 4) / 4           # many equal scores, plateaus in the curve
    return s.astype(np.float32), y


# --------------------------------------------------------------------------------------------
# ood_metrics (exact)

@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, False), (3, True)])
def test_ood_metrics_exact_vs_sklearn_and_bruteforce(seed, ties):
    s, y = _random_set(seed, ties=ties)
    labels = y.astype(np.uint8)
    # Void pixels with extreme scores must be ignored.
    rng = np.random.default_rng(100 + seed)
    void = rng.random(s.size) < 0.2
    labels_v = labels.copy()
    labels_v[void] = 255
    s_v = s.copy()
    s_v[void] = rng.choice([-1e6, 1e6], size=int(void.sum()))
    got = ood_metrics(s_v.reshape(100, -1), labels_v.reshape(100, -1))
    keep = ~void
    assert got["auroc"] == pytest.approx(roc_auc_score(y[keep], s[keep]), abs=1e-12)
    assert got["ap"] == pytest.approx(average_precision_score(y[keep], s[keep]), abs=1e-12)
    assert got["fpr95"] == pytest.approx(_fpr95_brute(s[keep], y[keep]), abs=1e-12)
    assert got["fpr95"] == pytest.approx(_official_fpr(labels[keep], s[keep]), abs=1e-12)
    assert got["n_anomaly"] == int(y[keep].sum()) and got["n_inlier"] == int((~y[keep]).sum())


def test_fpr95_picks_closest_recall_even_below_095():
    # 100 anomalies: 94 at score 10, 5 tied at 5 (recall jumps 0.94 -> 0.99), 1 at -10.
    # 1000 inliers: 10 at 9 (between), 100 at 4, the rest at 0.
    s = np.r_[np.full(94, 10.0), np.full(5, 5.0), [-10.0], np.full(10, 9.0), np.full(100, 4.0), np.zeros(890)]
    y = np.r_[np.ones(100, bool), np.zeros(1000, bool)]
    got = ood_metrics(s, y.astype(np.uint8))["fpr95"]
    # recall 0.94 (|d| = 0.01) beats 0.99 (0.04): threshold 9 (the lowest with recall 0.94) -> 10 FPs.
    assert got == pytest.approx(10 / 1000)
    assert got == pytest.approx(_official_fpr(y.astype(int), s))
    # With 40 inliers tied with the 5 anomalies at score 5, "the first threshold with recall >= 0.95"
    # would count 10 + 40 false positives; the official rule stays on the 0.94 plateau: still 10.
    s2 = np.r_[s, np.full(40, 5.0)]
    y2 = np.r_[y, np.zeros(40, bool)]
    assert ood_metrics(s2, y2.astype(np.uint8))["fpr95"] == pytest.approx(10 / 1040)
    assert _official_fpr(y2.astype(int), s2) == pytest.approx(10 / 1040)


def test_fpr95_plateau_takes_lowest_threshold():
    # Recall 0.95 is reached at score 8 and stays 0.95 down to score 2; inliers in between
    # (at 6 and 3) are counted: the official argmin over the reversed curve picks the lowest
    # threshold of the plateau (score 3 here, the lowest distinct score still at recall 0.95).
    s = np.r_[np.full(95, 8.0), np.full(5, 1.0), np.full(7, 6.0), np.full(11, 3.0), np.zeros(82)]
    y = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    assert ood_metrics(s, y.astype(np.uint8))["fpr95"] == pytest.approx(18 / 100)
    assert _official_fpr(y.astype(int), s) == pytest.approx(18 / 100)


def test_ood_metrics_sequences_equal_concatenation():
    s, y = _random_set(4, n=6000)
    frames_s = [s[:1000].reshape(20, 50), s[1000:4000].reshape(30, 100), s[4000:]]
    frames_y = [y[:1000].reshape(20, 50).astype(np.uint8), y[1000:4000].reshape(30, 100).astype(np.uint8),
                y[4000:].astype(np.uint8)]
    assert ood_metrics(frames_s, frames_y) == ood_metrics(s, y.astype(np.uint8))


def test_ood_metrics_accepts_torch():
    torch = pytest.importorskip("torch")
    s, y = _random_set(5, n=4000)
    a = ood_metrics(torch.from_numpy(s), torch.from_numpy(y.astype(np.uint8)))
    assert a == ood_metrics(s, y.astype(np.uint8))


@pytest.mark.parametrize("scores,labels,match", [
    (np.zeros(4), np.array([0, 1, 2, 0]), "labels must be"),
    (np.zeros(4), np.array([0, 0, 255, 0]), "both classes"),
    (np.array([0.0, np.nan, 1.0, 2.0]), np.array([0, 1, 0, 1]), "NaN"),
    (np.zeros(4), np.zeros(5), "same shape"),
])
def test_ood_metrics_bad_input(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        ood_metrics(scores, labels)


def test_fpr_at_recall_counts_api():
    # descending thresholds: 3 anomalies + 0 inliers, then 1 + 1, then 0 + 10
    assert fpr_at_recall(np.array([3, 1, 0]), np.array([0, 1, 10])) == pytest.approx(1 / 11)
    with pytest.raises(ValueError):
        fpr_at_recall(np.array([0, 0]), np.array([1, 2]))


# --------------------------------------------------------------------------------------------
# OODMetrics (streaming histogram)

def _frames(seed: int, n_frames: int = 12, shape=(120, 160), grow: bool = False):
    rng = np.random.default_rng(seed)
    for i in range(n_frames):
        y = np.zeros(shape, np.uint8)
        r, c = rng.integers(0, shape[0] - 30), rng.integers(0, shape[1] - 30)
        y[r:r + 30, c:c + 30] = 1                       # one anomaly blob
        y[: shape[0] // 10] = 255                      # a void band (ego vehicle...)
        scale = (1 + i) if grow else 1.0               # later frames widen the score range
        s = (rng.normal(-12, 1.5, shape) + 5 * (y == 1)) * scale
        yield s.astype(np.float32), y


@pytest.mark.parametrize("grow", [False, True])
def test_streaming_matches_exact(grow):
    frames = list(_frames(7, grow=grow))
    m = OODMetrics()
    for s, y in frames:
        m.update(s, y)
    got = m.compute()
    exact = ood_metrics([f[0] for f in frames], [f[1] for f in frames])
    assert got["n_anomaly"] == exact["n_anomaly"] and got["n_inlier"] == exact["n_inlier"]
    assert abs(got["auroc"] - exact["auroc"]) <= got["auroc_bin_error_bound"] + 1e-12
    assert abs(got["auroc"] - exact["auroc"]) < 1e-4
    assert abs(got["ap"] - exact["ap"]) < 1e-4
    assert abs(got["fpr95"] - exact["fpr95"]) < 1e-4
    if grow:
        assert m.doublings > 0


def test_streaming_error_bound_holds_with_coarse_bins():
    frames = list(_frames(8, n_frames=6))
    m = OODMetrics(num_bins=256)
    for s, y in frames:
        m.update(s, y)
    got = m.compute()
    exact = ood_metrics([f[0] for f in frames], [f[1] for f in frames])
    err = abs(got["auroc"] - exact["auroc"])
    assert err > 0                                   # coarse bins do lose something...
    assert err <= got["auroc_bin_error_bound"]       # ...never more than the reported bound
    assert abs(got["ap"] - exact["ap"]) < 0.01


def test_streaming_exact_when_each_value_has_its_own_bin():
    rng = np.random.default_rng(9)
    y = (rng.random((50, 400)) < 0.15).astype(np.uint8)
    s = rng.integers(0, 60, y.shape) + 15 * y          # integer scores: many ties
    y[:, :7] = 255
    m = OODMetrics(num_bins=1024, score_range=(-0.5, 100.5))
    for i in range(0, 50, 10):
        m.update(s[i:i + 10].astype(np.float32), y[i:i + 10])
    got, exact = m.compute(), ood_metrics(s, y)
    for k in ("auroc", "ap", "fpr95"):
        assert got[k] == pytest.approx(exact[k], abs=1e-12), k


def test_streaming_range_growth_keeps_counts_and_order():
    m = OODMetrics(num_bins=64, score_range=(0.0, 1.0))
    m.update(np.array([0.1, 0.9, 0.3, 0.65], np.float32), np.array([0, 1, 0, 1], np.uint8))
    m.update(np.array([-3.0, 7.5], np.float32), np.array([0, 1], np.uint8))   # below and above
    assert m.lo <= -3.0 and m.hi > 7.5
    assert int(m.counts.sum()) == 6
    s = np.array([0.1, 0.9, 0.3, 0.65, -3.0, 7.5])
    y = np.array([0, 1, 0, 1, 0, 1], np.uint8)
    # [0, 1] grew to [-3, 13] over 64 bins (width 0.25): these scores still fall in distinct bins.
    assert (m.lo, m.width) == (-3.0, 0.25)
    assert m.compute()["auroc"] == pytest.approx(ood_metrics(s, y)["auroc"])
    assert m.compute()["auroc_bin_error_bound"] == 0.0


def test_streaming_batches_void_frames_reset():
    m = OODMetrics()
    m.update(np.zeros((2, 4, 4), np.float32), np.full((2, 4, 4), 255, np.uint8))   # all void: no-op
    assert m.lo is None
    with pytest.raises(ValueError, match="both classes"):
        m.compute()
    s, y = next(_frames(10, n_frames=1))
    m.update(s[None], y[None])
    first = m.compute()
    m.reset()
    assert m.counts.sum() == 0
    m.update(s, y)
    assert m.compute() == first


def test_streaming_random_large_accuracy():
    """1.2 M pixels of overlapping Gaussians: the approximation errors are far below 1e-4."""
    rng = np.random.default_rng(11)
    y = rng.random(1_200_000) < 0.05
    s = (rng.normal(size=y.size) + 2.0 * y).astype(np.float32)
    m = OODMetrics()
    for chunk in range(12):
        sl = slice(chunk * 100_000, (chunk + 1) * 100_000)
        m.update(s[sl], y[sl].astype(np.uint8))
    got = m.compute()
    assert abs(got["auroc"] - roc_auc_score(y, s)) < 1e-6
    assert abs(got["ap"] - average_precision_score(y, s)) < 1e-4
    assert abs(got["fpr95"] - _official_fpr(y.astype(int), s)) < 1e-4


def test_streaming_bins_do_not_depend_on_frame_order():
    """The bins are a function of the lowest and highest score only: any order of the same frames
    gives the same counts (the old first-frame range did not)."""
    frames = list(_frames(13, n_frames=8, grow=True))
    a, b = OODMetrics(), OODMetrics()
    for s, y in frames:
        a.update(s, y)
    for s, y in reversed(frames):
        b.update(s, y)
    assert (a.level, a.base) == (b.level, b.base) and np.array_equal(a.counts, b.counts)
    assert a.compute() == b.compute()


@pytest.mark.parametrize("num_bins", [1 << 20, 256])
def test_merge_equals_one_pass_over_all_frames(num_bins):
    """Partitions of the frames (as bags on different workers), merged in any order, give exactly
    the histogram of one pass; the compact state round-trips."""
    frames = list(_frames(14, n_frames=9, grow=True)) + [(np.full((4, 4), 250.0, np.float32),
                                                         np.eye(4, dtype=np.uint8))]
    one = OODMetrics(num_bins)
    for s, y in frames:
        one.update(s, y)
    parts = [frames[i::3] for i in range(3)]
    accs = []
    for part in parts:
        m = OODMetrics(num_bins)
        for s, y in part:
            m.update(s, y)
        accs.append(OODMetrics.from_state(m.state()))
    merged = OODMetrics(num_bins)
    for m in (accs[2], OODMetrics(num_bins), accs[0], accs[1]):       # an empty one too
        merged.merge(m)
    assert (merged.level, merged.base) == (one.level, one.base)
    assert np.array_equal(merged.counts, one.counts)
    assert merged.compute() == one.compute()
    with pytest.raises(ValueError, match="merge"):
        merged.merge(OODMetrics(num_bins * 2))


def test_streaming_bad_args():
    with pytest.raises(ValueError, match="power of two"):
        OODMetrics(num_bins=1000)
    with pytest.raises(ValueError, match="score_range"):
        OODMetrics(score_range=(1.0, 1.0))
    with pytest.raises(ValueError, match="labels must be"):
        OODMetrics().update(np.zeros(3), np.array([0, 1, 3]))


# --------------------------------------------------------------------------------------------
# SegMetrics

def test_seg_metrics_vs_sklearn():
    rng = np.random.default_rng(12)
    gt = rng.integers(0, 19, (6, 40, 50))
    gt[gt == 7] = 3                       # class 7 absent from the ground truth...
    pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, 19, gt.shape))
    pred[pred == 7] = 2                   # ...and from the prediction: excluded from the mean
    pred[pred == 12] = 0                  # class 12 present in gt but never predicted: IoU 0
    gt[:, :5] = 255
    gt[:, -2:, :3] = 254                  # anomaly label: not a class, ignored too
    m = SegMetrics()
    for i in range(gt.shape[0]):
        m.update(pred[i].astype(np.uint8), gt[i].astype(np.uint8))
    got = m.compute()

    valid = gt < 19
    g, p = gt[valid], pred[valid]
    cm = confusion_matrix(g, p, labels=list(range(19)))
    assert np.array_equal(m.confusion, cm)
    present = sorted(set(g.tolist()) | set(p.tolist()))
    ious = jaccard_score(g, p, labels=present, average=None)
    assert 7 not in present and 12 in present
    assert got["miou"] == pytest.approx(float(np.mean(ious)), abs=1e-12)
    for c, v in zip(present, ious):
        assert got["iou"][TRAIN_ID_NAMES[c]] == pytest.approx(v, abs=1e-12)
    assert np.isnan(got["iou"][TRAIN_ID_NAMES[7]])
    assert got["iou"][TRAIN_ID_NAMES[12]] == 0.0
    assert got["pixel_acc"] == pytest.approx(accuracy_score(g, p), abs=1e-12)
    assert got["n_labelled"] == int(valid.sum())
    assert list(got["iou"]) == list(TRAIN_ID_NAMES)


def test_seg_metrics_torch_batch_and_errors():
    torch = pytest.importorskip("torch")
    m = SegMetrics()
    gt = torch.randint(0, 19, (2, 8, 8))
    m.update(gt.clone(), gt)
    assert m.compute()["miou"] == 1.0 and m.compute()["pixel_acc"] == 1.0
    with pytest.raises(ValueError, match="class ids"):
        m.update(np.full((4, 4), 19), np.zeros((4, 4), int))
    with pytest.raises(ValueError, match="same shape"):
        m.update(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(ValueError, match="integer"):
        m.update(np.zeros((4, 4)), np.zeros((4, 4), int))
    m.reset()
    assert np.isnan(m.compute()["miou"])
