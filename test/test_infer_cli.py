"""`pebal infer`: PNGs per image for files and folders, at the image's own size, and bad input."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from test_replay_helpers import H, W, frames, tiny_onnx

from pebal_ros.cli import main


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("model") / "tiny.onnx")


def test_infer_files_and_folders(model: Path, tmp_path: Path, capsys) -> None:
    from pebal_ros.pipeline.visualize import colorize
    from pebal_ros.runtime import load_runtime

    imgs = [f for f, _ in frames(3)]
    folder = tmp_path / "in"
    folder.mkdir()
    for i, img in enumerate(imgs[:2]):
        cv2.imwrite(str(folder / f"f{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    (folder / "notes.txt").write_text("ignored")
    big = cv2.resize(imgs[2], (3 * W, 2 * H))            # another size than the model's
    cv2.imwrite(str(tmp_path / "big.png"), cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    rc = main(["infer", str(folder), str(tmp_path / "big.png"), "--out", str(out), "--model", str(model),
               "--threshold", "-3.9", "--mask"])
    assert rc == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{s}_{k}.png" for s in ("f0", "f1", "big")
                           for k in ("overlay", "semantic", "anomaly", "mask"))
    # Same image size as the model: the semantic PNG is exactly the palette of the runtime's output.
    direct = load_runtime(model).infer(imgs[0], -3.9)
    sem = cv2.cvtColor(cv2.imread(str(out / "f0_semantic.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(sem, colorize(direct.semantic))
    mask = cv2.imread(str(out / "f0_mask.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(mask, direct.mask * 255)
    for kind in ("overlay", "semantic", "anomaly", "mask"):
        assert cv2.imread(str(out / f"big_{kind}.png")).shape[:2] == (2 * H, 3 * W)
    assert "wrote 12 PNGs for 3 image(s)" in capsys.readouterr().out


def test_infer_bad_input(model: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "empty").mkdir()
    rc = main(["infer", str(tmp_path / "broken.png"), str(tmp_path / "empty"), str(tmp_path / "nope.png"),
               "--out", str(tmp_path / "o"), "--model", str(model)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "not a readable image" in err and "holds no images" in err and "no such file" in err
    assert main(["infer", str(tmp_path / "nope.png"), "--out", str(tmp_path / "o"), "--model", str(model)]) == 2
    assert main(["infer", str(tmp_path / "broken.png"), "--out", str(tmp_path / "o"),
                 "--model", str(tmp_path / "missing.onnx")]) == 2
    assert "cannot load the model" in capsys.readouterr().err


def test_infer_threshold_from_config_layers(model: Path, tmp_path: Path) -> None:
    """--set inference.threshold (or a --preset/--config holding it) decides the mask like --threshold."""
    from pebal_ros.runtime import load_runtime

    img = frames(1)[0][0]
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert main(["infer", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), "--model", str(model),
                 "--set", "inference.threshold=-4.0", "--mask"]) == 0
    mask = cv2.imread(str(tmp_path / "o" / "a_mask.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(mask, load_runtime(model).infer(img, -4.0).mask * 255)
    assert main(["infer", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), "--model", str(model),
                 "--set", "inference.nope=1"]) == 2


def test_infer_heat_maps_share_one_scale(model: Path, tmp_path: Path) -> None:
    """Every heat map uses the threshold +- inference.heatmap_span scale (was each image's own
    1st-99th percentile): a pixel's colour follows from its score alone, identically in every
    image; flagged pixels are on the red side, the rest on the blue side."""
    from pebal_ros.pipeline.visualize import heatmap_lut
    from pebal_ros.runtime import load_runtime

    imgs = [f for f, _ in frames(2)]
    for i, img in enumerate(imgs):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    assert main(["infer", str(tmp_path / "f0.png"), str(tmp_path / "f1.png"), "--out", str(out),
                 "--model", str(model), "--threshold", "-3.9", "--set", "inference.heatmap_span=2"]) == 0
    rt = load_runtime(model)
    lut = heatmap_lut()[:, 0].astype(int)
    for i, img in enumerate(imgs):
        score = rt.infer(img, -3.9).score.copy()
        heat = cv2.cvtColor(cv2.imread(str(out / f"f{i}_anomaly.png")), cv2.COLOR_BGR2RGB).astype(int)
        # the scale from its definition: -5.9 -> 0 (blue end), -3.9 -> the middle, -1.9 -> 255 (red end)
        pos = np.clip((score + 3.9) / 4.0 * 255 + 127.5, 0, 255)
        idx = np.where(score > -3.9, np.maximum(np.ceil(pos), 128), np.minimum(np.floor(pos), 127)).astype(int)
        keep = np.zeros(score.shape, bool)
        keep[: H // 2, : W // 2] = True                       # away from the colour bar in the corner
        keep &= ~np.all(heat == 0, axis=-1)                   # and from the threshold line
        assert keep.sum() > 100
        assert np.abs(heat[keep] - lut[idx[keep]]).max() <= 1
        red_side = heat[..., 0] > heat[..., 2]
        assert np.array_equal(red_side[keep], (score > -3.9)[keep])
