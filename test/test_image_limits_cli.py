"""The decode cap end to end, through the commands: `pebal replay` of a recording with a decompression
bomb between good frames (every good frame processed, the bomb accounted as a skipped frame with its
reason, peak RSS and result bag as without it), `pebal infer` on a folder holding a bomb, `pebal calibrate`'s
image and label folders. Only the commands' public surface is used, so these run against any version."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hostile_images import png_bomb
from test_pipeline_runtime import make_scene

BOMB = 12000


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return png_bomb(BOMB, BOMB)


def _bomb_bag(path: Path, bomb: bytes | None, n: int = 7) -> list[np.ndarray]:
    """``n`` good PNG frames on one CompressedImage topic, the middle one replaced by ``bomb``."""
    from pebal_ros.replay.bag import BagWriter, make_typestore
    from pebal_ros.replay.recording import COMPRESSED, START_NS, _header, compressed_message
    from test_replay_helpers import frames

    store = make_typestore()
    good = [img for img, _ in frames(n)]
    with BagWriter(path, store) as bag:
        bag.add_topic("/camera/image_raw/compressed", COMPRESSED)
        for i, img in enumerate(good):
            stamp = START_NS + i * 100_000_000
            msg = (store.types[COMPRESSED](header=_header(store, stamp, "camera"), format="png",
                                           data=np.frombuffer(bomb, np.uint8))
                   if bomb is not None and i == n // 2 else compressed_message(store, img, stamp, "camera"))
            bag.write("/camera/image_raw/compressed", stamp, msg)
    return good


def _run_measured(args: list[str], cwd: Path) -> tuple[int, str, float]:
    """(exit code, output, peak RSS in MB) of ``pebal ARGS`` in its own process."""
    import os

    proc = subprocess.Popen([sys.executable, "-m", "pebal_ros.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, out, usage.ru_maxrss / 1024


def test_replay_accounts_for_a_bomb_between_good_frames_with_bounded_memory(tmp_path, bomb):
    import json

    from test_replay_helpers import tiny_onnx

    model = tiny_onnx(tmp_path / "tiny.onnx")
    _bomb_bag(tmp_path / "clean", None)
    _bomb_bag(tmp_path / "bomb", bomb)
    labels = tmp_path / "labels"            # ground truth by frame index; frame 1's label PNG is a bomb too
    labels.mkdir()
    for i in range(7):
        if i == 1:
            (labels / f"{i:06d}.png").write_bytes(bomb)
        else:
            cv2.imwrite(str(labels / f"{i:06d}.png"), np.zeros((64, 96), np.uint8))
    runs = {}
    for name in ("clean", "bomb"):
        runs[name] = _run_measured(["replay", name, "--out", f"out_{name}", "--model", str(model), "--threshold",
                                    "-4", "--threads", "1", "--no-progress", "--labels", "labels",
                                    "--label-match", "index"], tmp_path)
    code, out, rss = runs["bomb"]
    det = json.loads((tmp_path / "out_bomb" / "report" / "summary.json").read_text())["deterministic"]
    topic = det["topics"][0]
    # every good frame processed, the bomb accounted as a skipped frame with its reason
    assert (topic["read"], topic["processed"], topic["skipped"]) == (7, 6, 1), (topic, out[-2000:])
    (reason, n), = topic["skip_reasons"].items()
    assert n == 1 and reason.startswith("OversizedFrameError: PNG payload") and "12000x12000" in reason \
        and "8192x8192" in reason, reason
    assert det["frames"] == {"read": 7, "processed": 6, "skipped": 1}
    assert any("12000x12000" in k for k in det["ground_truth"]["label_messages"]), det["ground_truth"]
    lines = [line for line in out.splitlines() if "12000x12000" in line]
    assert len(lines) == 1 and "skipped: OversizedFrameError" in lines[0], out[-2000:]
    clean_code, clean_out, clean_rss = runs["clean"]
    assert clean_code == 0, clean_out[-2000:]
    # memory and output as without the bomb (decoding it took the process past 4 GB and wrote 1.7 GB)
    assert rss < clean_rss + 100, f"peak RSS {rss:.0f} MB with the bomb, {clean_rss:.0f} MB without"
    size = {name: sum(f.stat().st_size for f in (tmp_path / f"out_{name}" / "result_bag").rglob("*") if f.is_file())
            for name in runs}
    assert size["bomb"] < size["clean"], size      # 6 frames' outputs against 7


def test_infer_skips_a_bomb_file_with_one_line(tmp_path, bomb):
    from test_replay_helpers import tiny_onnx

    model = tiny_onnx(tmp_path / "tiny.onnx")
    images = tmp_path / "images"
    images.mkdir()
    (images / "a_bomb.png").write_bytes(bomb)
    cv2.imwrite(str(images / "b_good.png"), make_scene(64, 96))
    code, out, rss = _run_measured(["infer", "images", "--out", "out", "--model", str(model),
                                    "--threshold", "-4"], tmp_path)
    assert code == 0, out[-2000:]
    line = ("pebal infer: image images/a_bomb.png declares 12000x12000 = 144000000 pixels, over the decode cap of "
            "67108864 (8192x8192, input.max_decoded_pixels); not decoded, skipped\n")
    assert out.count("a_bomb.png") == 1 and line in out, out[-2000:]   # (tqdm's bar may share the line)
    assert (tmp_path / "out" / "b_good_overlay.png").is_file() and not (tmp_path / "out" / "a_bomb_overlay.png").exists()
    # a lower cap from the flag (or --set input.max_decoded_pixels) refuses the 96x64 image as well
    code, out, _ = _run_measured(["infer", "images/b_good.png", "--out", "out2", "--model", str(model),
                                  "--max-decoded-pixels", "64x64"], tmp_path)
    assert code == 1 and "declares 96x64 = 6144 pixels, over the decode cap of 4096 (64x64" in out, out[-2000:]
    code, out, _ = _run_measured(["infer", "images/b_good.png", "--out", "out3", "--model", str(model),
                                  "--set", "input.max_decoded_pixels=0"], tmp_path)
    assert code == 2 and "input.max_decoded_pixels must be an integer from 1" in out, out[-2000:]


def test_calibrate_skips_bomb_images_and_labels(tmp_path, bomb):
    from pebal_ros.calibrate.sources import LabelledFrames, NormalFrames

    images = tmp_path / "normal"
    images.mkdir()
    (images / "bomb.png").write_bytes(bomb)
    cv2.imwrite(str(images / "good.png"), make_scene(64, 96))
    normal = NormalFrames([images])
    assert [f.name for f in normal] == ["good.png"]
    (reason, n), = normal.skips.reasons.items()
    assert n == 1 and "bomb.png declares 12000x12000" in reason, reason
    anomalies, labels = tmp_path / "anomalies", tmp_path / "labels"
    anomalies.mkdir()
    labels.mkdir()
    for stem in ("x", "y"):
        cv2.imwrite(str(anomalies / f"{stem}.png"), make_scene(64, 96))
    (labels / "x.png").write_bytes(bomb)
    cv2.imwrite(str(labels / "y.png"), np.zeros((64, 96), np.uint8))
    labelled = LabelledFrames(images=anomalies, labels=labels)
    assert [f.name for f in labelled] == ["y.png"]
    (reason, n), = labelled.skips.reasons.items()
    assert "x.png declares 12000x12000" in reason, reason
    # the command's own cap reaches the lazily read sources
    labelled.max_pixels = 64 * 96 - 1
    assert list(labelled) == []
