"""`pebal calibrate`: thresholds checked against independent computations (numpy quantiles, the
regions recomputed frame by frame, TPR counted directly), held-out frames, bags, bad input, and the
real EdgeNets weights on the real Cityscapes frames."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_replay_helpers import H, W, tiny_onnx

from pebal_ros.calibrate.stats import CalibrationStats, CalibrationTargetError, alarm_level
from pebal_ros.calibration import file_sha256, find_calibration, read_calibration
from pebal_ros.cli import main
from pebal_ros.data.synthetic_scene import render_anomaly_frame, render_scene
from pebal_ros.pipeline.regions import find_regions


def _smooth_scores(rng: np.random.Generator, shape=(48, 64)) -> np.ndarray:
    s = cv2.GaussianBlur(rng.normal(0, 1, shape).astype(np.float32), (0, 0), 2.0)
    return (s * 5).astype(np.float32)


def _has_region(score: np.ndarray, t: float, min_area: int) -> bool:
    return bool(find_regions((score > t).astype(np.uint8), score, min_area))


# -- the statistics alone ---------------------------------------------------------------------
def test_alarm_level_is_where_the_frame_stops_alarming() -> None:
    rng = np.random.default_rng(1)
    for i in range(6):
        score = _smooth_scores(rng)
        min_area = int(rng.integers(1, 200))
        level = alarm_level(score, min_area)
        values = np.unique(score)
        k = int(np.searchsorted(values, level))
        assert values[k] == level
        assert not _has_region(score, level, min_area)              # at the level: no alarm
        if k:
            assert _has_region(score, values[k - 1], min_area)      # one value lower: alarm
        for t in rng.choice(values, 20):                             # and everywhere else
            assert _has_region(score, t, min_area) == (t < level)
    assert alarm_level(np.zeros((4, 4), np.float32), 17) == -np.inf


def test_pixel_fpr_threshold_matches_numpy_quantile() -> None:
    rng = np.random.default_rng(2)
    frames = [_smooth_scores(rng) + rng.normal() for _ in range(10)]
    stats = CalibrationStats()
    stats.add_normal(frames[0] * 0.2, 10)        # a narrow first frame: later ones force range doublings
    size = stats.normal.counts.nbytes
    for s in frames[1:]:
        stats.add_normal(s, 10)
    assert stats.normal.counts.nbytes == size and stats.normal.doublings > 0   # memory does not grow
    frames[0] = frames[0] * 0.2
    pooled = np.concatenate([s.ravel() for s in frames]).astype(np.float64)
    width = stats.normal.width
    for p in (0.001, 0.01, 0.2):
        t = stats.choose("pixel_fpr", p).threshold
        assert np.mean(pooled > t) <= p                  # the target holds
        assert np.mean(pooled >= t - width) > p          # and the threshold is the lowest that does
        q = np.quantile(pooled, 1 - p)
        assert abs(t - q) <= 2 * width + np.diff(np.sort(pooled)).max()
        assert stats.pixel_fpr(t)[0] == pytest.approx(np.mean(pooled > t), abs=1e-12)


def test_merged_stats_give_the_single_pass_thresholds() -> None:
    """Frames split over several accumulators (bags on different workers), sent as compact states
    and merged: every threshold equals the one-pass threshold, exactly."""
    rng = np.random.default_rng(5)
    frames = [_smooth_scores(rng) * (1 + i % 3) + rng.normal() for i in range(9)]
    labelled = [(_smooth_scores(rng) + 4, (rng.random((48, 64)) < 0.1).astype(np.uint8)) for _ in range(3)]
    one = CalibrationStats()
    for s in frames:
        one.add_normal(s, 10)
    for s, y in labelled:
        one.add_labelled(s, y)
    parts = [CalibrationStats() for _ in range(3)]
    for i, s in enumerate(frames):
        parts[(i * 7) % 3].add_normal(s, 10)
    for s, y in labelled:
        parts[2].add_labelled(s, y)
    merged = CalibrationStats()
    for part in reversed(parts):
        merged.merge(CalibrationStats.from_state(part.state()))
    assert merged.frames == one.frames and merged.normal_pixels == one.normal_pixels
    for target, value in (("pixel_fpr", 0.001), ("pixel_fpr", 0.05), ("frame_alarm_rate", 0.34), ("tpr", 0.9)):
        assert merged.choose(target, value).threshold == one.choose(target, value).threshold, target
    t = one.choose("pixel_fpr", 0.01).threshold
    assert merged.figures(t) == one.figures(t) and merged.labelled_metrics() == one.labelled_metrics()


def test_frame_alarm_and_tpr_thresholds_recomputed_directly() -> None:
    rng = np.random.default_rng(3)
    frames = [_smooth_scores(rng) + rng.normal(0, 2) for _ in range(40)]
    stats = CalibrationStats()
    for s in frames:
        stats.add_normal(s, 30)
    t = stats.choose("frame_alarm_rate", 0.1).threshold
    alarms = np.array([_has_region(s, t, 30) for s in frames])
    assert alarms.mean() <= 0.1 and stats.frame_alarm_rate(t)[0] == alarms.mean()
    lower = np.nextafter(np.float32(t), np.float32(-np.inf))
    assert np.mean([_has_region(s, lower, 30) for s in frames]) > 0.1

    labels = []
    for s in frames[:8]:
        lab = (s > np.quantile(s, 0.9)).astype(np.uint8)
        lab[:2] = 255
        stats.add_labelled(s, lab)
        labels.append(lab)
    anom = np.concatenate([s[lab == 1] for s, lab in zip(frames, labels)])
    for q in (0.5, 0.95):
        t = stats.choose("tpr", q).threshold
        assert np.mean(anom >= t) >= q and np.mean(anom >= t + stats.labelled.width) < q
    assert set(stats.labelled_metrics()) == {"auroc", "ap", "fpr95"}


def test_unmeasurable_targets_are_refused() -> None:
    stats = CalibrationStats()
    with pytest.raises(CalibrationTargetError, match="no normal frames"):
        stats.choose("pixel_fpr", 0.01)
    stats.add_normal(np.arange(100, dtype=np.float32).reshape(10, 10), 5)
    with pytest.raises(CalibrationTargetError, match="cannot be measured on 100 normal pixels"):
        stats.choose("pixel_fpr", 0.001)
    with pytest.raises(CalibrationTargetError, match="1 normal frame"):
        stats.choose("frame_alarm_rate", 0.01)
    with pytest.raises(CalibrationTargetError, match="labelled anomaly frames"):
        stats.choose("tpr", 0.9)
    with pytest.raises(CalibrationTargetError, match="between 0 and 1"):
        stats.choose("pixel_fpr", 1.0)


# -- the command on synthetic street scenes --------------------------------------------------------
@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Generator scenes at the tiny model's size: calibration and held-out normal frames, labelled
    anomaly frames, and the tiny fused ONNX model."""
    root = tmp_path_factory.mktemp("scenes")
    out = {"model": tiny_onnx(root / "tiny.onnx")}
    for split, seed, n in (("calib", 11, 40), ("held", 12, 40)):
        d = root / split
        d.mkdir()
        for i in range(n):
            img, _ = render_scene(np.random.default_rng([seed, i]), (W, H))
            cv2.imwrite(str(d / f"f{i:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        out[split] = d
    imgs, labs = root / "anom_img", root / "anom_lab"
    imgs.mkdir()
    labs.mkdir()
    for i in range(12):
        img, lab = render_anomaly_frame(np.random.default_rng([13, i]), (W, H))
        cv2.imwrite(str(imgs / f"a{i:02d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(labs / f"a{i:02d}.png"), lab)
    out["anom_img"], out["anom_lab"] = imgs, labs
    return out


def _scores(model: Path, folder: Path) -> list[np.ndarray]:
    from pebal_ros.runtime import load_runtime

    rt = load_runtime(model, device="cpu")
    return [rt.infer(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), 0.0).score
            for p in sorted(folder.glob("*.png"))]


def test_pixel_fpr_on_held_out_frames(scenes: dict[str, Path], tmp_path: Path, capsys) -> None:
    model = tmp_path / "m.onnx"
    shutil.copyfile(scenes["model"], model)
    rc = main(["calibrate", str(scenes["calib"]), "--model", str(model), "--pixel-fpr", "0.01", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    cal, where, reason = find_calibration(model)
    assert cal is not None and reason == "" and where == tmp_path / "m.onnx.calibration.yaml"
    assert cal.model_sha256 == file_sha256(model) and cal.frames == 40 and cal.input_size == (H, W)
    assert cal.target == "pixel_fpr" and cal.target_value == 0.01 and cal.min_region_area == 50
    assert (tmp_path / "m.onnx.calibration.png").stat().st_size > 10_000
    assert "| threshold" in out and f"{cal.threshold:.4f} *" in out
    # independent: the runtime's own score maps, pooled, thresholded with numpy
    calib = np.concatenate([s.ravel() for s in _scores(model, scenes["calib"])])
    assert np.mean(calib > cal.threshold) <= 0.01
    assert abs(cal.threshold - np.quantile(calib, 0.99)) < 0.01
    assert cal.achieved["pixel_fpr"] == pytest.approx(np.mean(calib > cal.threshold), abs=1e-9)
    held = np.concatenate([s.ravel() for s in _scores(model, scenes["held"])])
    held_fpr = float(np.mean(held > cal.threshold))
    print(f"held-out pixel FPR {held_fpr:.4f} for a target of 0.01")
    assert 0.004 <= held_fpr <= 0.025


def test_frame_alarm_rate_from_a_bag(scenes: dict[str, Path], tmp_path: Path, capsys) -> None:
    """Camera frames twice the network's size in a bag: the alarm rate must be the one the node's own
    per-frame pipeline reports (status regions >= min_region_area camera pixels)."""
    from pebal_ros.pipeline.frame import FramePipeline, PipelineConfig
    from pebal_ros.replay.recording import write_recording
    from pebal_ros.runtime import load_runtime

    rgbs = [cv2.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), (2 * W, 2 * H))
            for p in sorted(scenes["calib"].glob("*.png"))]
    bag = tmp_path / "drive"
    write_recording(bag, ((im, None) for im in rgbs), topic="/front/image_raw", compressed_topic="/front/jpeg",
                    label_topic=None, fmt="png")
    rc = main(["calibrate", str(bag), "--topic", "/front/jpeg", "--model", str(scenes["model"]),
               "--frame-alarm-rate", "0.1", "--min-region-area", "80", "--output", str(tmp_path / "c.yaml"),
               "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    cal = read_calibration(tmp_path / "c.yaml")
    assert cal.frames == 40 and "/front/jpeg" in cal.data and cal.min_region_area == 80
    rt = load_runtime(scenes["model"], device="cpu")

    def node_alarm_rate(t: float) -> float:
        pipe = FramePipeline(rt, PipelineConfig(threshold=t, min_region_area=80, outputs=("status",)))
        return float(np.mean([bool(pipe.process_image(im).status.regions) for im in rgbs]))

    assert node_alarm_rate(cal.threshold) == cal.achieved["frame_alarm_rate"] <= 0.1
    assert node_alarm_rate(cal.threshold - 1e-3) > 0.1          # the lowest threshold meeting the target


def test_tpr_with_labelled_anomalies(scenes: dict[str, Path], tmp_path: Path, capsys) -> None:
    rc = main(["calibrate", str(scenes["calib"]), "--model", str(scenes["model"]), "--tpr", "0.9",
               "--anomaly-images", str(scenes["anom_img"]), "--anomaly-labels", str(scenes["anom_lab"]),
               "--output", str(tmp_path / "c.yaml"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    cal = read_calibration(tmp_path / "c.yaml")
    assert cal.anomaly_frames == 12 and {"tpr", "ap", "auroc", "fpr95"} <= set(cal.achieved)
    assert "TPR" in out and "AP" in out
    scores = _scores(scenes["model"], scenes["anom_img"])
    labels = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(scenes["anom_lab"].glob("*.png"))]
    anom = np.concatenate([s[lab == 1] for s, lab in zip(scores, labels)])
    assert np.mean(anom > cal.threshold) >= 0.9
    assert cal.achieved["tpr"] == pytest.approx(np.mean(anom > cal.threshold), abs=1e-9)
    # the same frames in the Fishyscapes layout (original/ + labels/) give the same threshold
    fs = tmp_path / "fs"
    shutil.copytree(scenes["anom_img"], fs / "original")
    shutil.copytree(scenes["anom_lab"], fs / "labels")
    assert main(["calibrate", str(scenes["calib"]), "--model", str(scenes["model"]), "--tpr", "0.9",
                 "--anomalies", f"fs_static={fs}", "--max-frames", "5", "--output", str(tmp_path / "fs.yaml"), "--no-progress"]) == 0
    assert read_calibration(tmp_path / "fs.yaml").threshold == cal.threshold


def test_bad_input_gets_one_clear_line(scenes: dict[str, Path], tmp_path: Path, capsys) -> None:
    m = str(scenes["model"])
    (tmp_path / "empty").mkdir()
    assert main(["calibrate", str(tmp_path / "empty"), "--model", m]) == 2
    assert "no normal frames" in capsys.readouterr().err
    assert main(["calibrate", str(scenes["calib"]), "--model", m, "--tpr", "0.9"]) == 2
    assert "--tpr needs labelled anomaly frames" in capsys.readouterr().err
    assert main(["calibrate", str(scenes["calib"]), "--model", m, "--pixel-fpr", "1.5"]) == 2
    assert main(["calibrate", str(scenes["calib"]), "--model", m, "--frame-alarm-rate", "0.001",
                 "--dry-run", "--no-progress", "--plot", str(tmp_path / "p.png")]) == 1
    assert "cannot be measured on 40 normal frame(s)" in capsys.readouterr().err
    assert main(["calibrate", str(scenes["calib"]), "--model", str(tmp_path / "none.onnx")]) == 2
    assert "cannot load the model" in capsys.readouterr().err
    assert main(["calibrate", str(scenes["calib"]), "--model", m, "--input-size", "32x48"]) == 2
    err = capsys.readouterr().err     # the ONNX graph's size is baked in: the one settings resolution says so
    assert "baked in" in err and "re-export" in err
    # a broken image is skipped with its reason, the rest calibrates
    mixed = tmp_path / "mixed"
    shutil.copytree(scenes["calib"], mixed)
    (mixed / "zz_broken.png").write_bytes(b"not a png")
    assert main(["calibrate", str(mixed), "--model", m, "--dry-run", "--no-progress",
                 "--plot", str(tmp_path / "p.png")]) == 0
    assert "1 normal frame(s) skipped" in capsys.readouterr().err
    bag = tmp_path / "bag"
    from pebal_ros.replay.recording import write_recording
    write_recording(bag, [(np.zeros((H, W, 3), np.uint8), None)], label_topic=None)
    assert main(["calibrate", str(bag), "--topic", "/nope", "--model", m]) == 2
    assert "topic /nope is not in" in capsys.readouterr().err


def test_bag_without_images_is_refused(shared_data: Path, scenes: dict[str, Path], capsys) -> None:
    rc = main(["calibrate", str(shared_data / "rosbag2" / "talker_mcap"), "--model", str(scenes["model"]),
               "--no-progress"])
    assert rc == 2 and "has no image topics" in capsys.readouterr().err


# -- the real weights on the real frames ----------------------------------------------------------
@pytest.mark.slow
def test_real_weights_on_real_cityscapes_frames(shared_data: Path, tmp_path: Path, capsys) -> None:
    from pebal_ros.infer import run_on_image
    from pebal_ros.replay.model import open_runtime

    weights = tmp_path / "espnetv2_s_2.0_city_1024x512.pth"     # a copy: the record goes beside it
    shutil.copyfile(shared_data / "weights" / weights.name, weights)
    frames = tmp_path / "normal"
    frames.mkdir()
    for p in sorted((shared_data / "cityscapes").glob("*_leftImg8bit.png")):
        shutil.copyfile(p, frames / p.name)                     # the two full-size frames
    rc = main(["calibrate", str(frames), "--model", str(weights), "--pixel-fpr", "0.01", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    cal, where, _ = find_calibration(weights)
    assert cal is not None and where.parent == tmp_path and cal.frames == 2 and cal.input_size == (512, 1024)
    # independent: the network run as `pebal infer` does, mask at camera size, the target fraction
    rt = open_runtime(weights, device="cpu")
    flagged = [run_on_image(rt, cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), cal.threshold).mask.mean()
               for p in sorted(frames.iterdir())]
    print(f"real weights: threshold {cal.threshold:.3f}, flagged {flagged}")
    assert 0.005 <= float(np.mean(flagged)) <= 0.015
    # the user's next step: `pebal infer` with that model picks the record up by itself, says so,
    # and warns no more about an uncalibrated threshold
    capsys.readouterr()
    assert main(["infer", str(frames), "--model", str(weights), "--out", str(tmp_path / "inf")]) == 0
    got = capsys.readouterr()
    assert f"threshold {cal.threshold:.4g} (calibration" in got.out, got.out
    assert "pebal calibrate" not in got.err and "Energy baseline" in got.err   # plain network: still said
