"""The decode cap (input.max_decoded_pixels): header parsers against Pillow, decompression bombs refused
from their header on every decode path (CompressedImage PNG/JPEG incl. the reduced-scale JPEG path, raw
Image, image files, label PNGs) with peak RSS measured in a subprocess, the pipeline going on with the
next frame, and the setting's validation (config, --max-decoded-pixels, node parameter)."""
from __future__ import annotations

import io
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from hostile_images import jpeg_with_size, png_bomb
from PIL import Image
from rosbags.typesys import Stores, get_typestore
from test_pipeline_runtime import PaletteRuntime, make_scene

from pebal_ros import image_limits
from pebal_ros.config import InputConfig, from_dict
from pebal_ros.image_limits import ImageHeaderError, ImageTooLargeError, encoded_size, read_image
from pebal_ros.pipeline.convert import (CorruptCompressedImageError, FrameError, ImageLayoutError,
                                        OversizedFrameError, compressed_to_array, jpeg_reduction, msg_to_array)
from pebal_ros.pipeline.frame import FramePipeline, PipelineConfig
from pebal_ros.pipeline.messages import MessageFactory

REPO = Path(__file__).resolve().parents[1]
BOMB = 12000                 # the bomb: 140 KB, 12000x12000 grey
DEFAULT_CAP = 8192 * 8192


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return png_bomb(BOMB, BOMB)


@pytest.fixture(scope="module")
def factory():
    return MessageFactory.for_rosbags(get_typestore(Stores.ROS2_JAZZY))


def compressed(factory, fmt: str, payload: bytes, sec: int = 1):
    ts = factory.typestore
    msg = ts.types["sensor_msgs/msg/CompressedImage"](header=factory.header(sec, 0, "cam"), format=fmt,
                                                      data=np.frombuffer(payload, np.uint8))
    return ts.deserialize_cdr(ts.serialize_cdr(msg, "sensor_msgs/msg/CompressedImage"), "sensor_msgs/msg/CompressedImage")


def raw(factory, h: int, w: int, encoding: str, step: int, data: np.ndarray, sec: int = 1):
    return factory.typestore.types["sensor_msgs/msg/Image"](
        header=factory.header(sec, 0, "cam"), height=h, width=w, encoding=encoding, is_bigendian=0, step=step,
        data=data)


def _jpeg(rgb: np.ndarray, **pil_kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", **pil_kw)
    return buf.getvalue()


# --- the header parsers, against Pillow's ------------------------------------------------------

def _samples() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), np.uint8)
    out = []
    for mode, arr in (("L", rgb[..., 0]), ("RGB", rgb), ("RGBA", np.dstack([rgb, rgb[..., :1]])),
                      ("I;16", rgb[..., 0].astype(np.uint16) * 257)):
        buf = io.BytesIO()
        Image.fromarray(arr, mode if mode != "I;16" else None).save(buf, "PNG")
        out.append((f"png {mode}", buf.getvalue()))
    out.append(("png opencv", cv2.imencode(".png", rgb)[1].tobytes()))
    out.append(("jpeg baseline", _jpeg(rgb)))
    out.append(("jpeg progressive", _jpeg(rgb, progressive=True)))
    out.append(("jpeg opencv", cv2.imencode(".jpg", rgb)[1].tobytes()))
    # a 60 KB EXIF block and an ICC profile before the frame header: segments must be skipped by length
    exif = Image.Exif()
    exif[0x010E] = "x" * 60000
    out.append(("jpeg big exif + icc", _jpeg(rgb, exif=exif.tobytes(), icc_profile=bytes(3000))))
    jpg = _jpeg(rgb)
    out.append(("jpeg fill bytes", jpg[:2] + b"\xff\xff\xff" + jpg[2:]))   # 0xFF fill before a marker is legal
    return out


@pytest.mark.parametrize("name,data", _samples(), ids=[n for n, _ in _samples()])
def test_header_size_equals_pillows(name, data):
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
    fmt, hh, ww = encoded_size(data)
    assert (hh, ww) == (h, w) == (37, 53) and fmt == name.split()[0]
    assert encoded_size(np.frombuffer(data, np.uint8)) == (fmt, h, w)   # numpy payloads, as rosbags gives


def test_broken_headers_are_refused():
    jpg = _jpeg(np.zeros((8, 8, 3), np.uint8))
    png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    sof = jpg.index(b"\xff\xc0")
    sos = jpg.index(b"\xff\xda")
    for bad, why in ((png[:20], "too short"), (png[:12] + b"IDAT" + png[16:], "IHDR"),
                     (png[:16] + bytes(4) + png[20:], "invalid size"),
                     (jpg[:sof], "ends before its frame header"), (jpg[:2] + bytes(50), "no marker"),
                     (jpg[:sof] + jpg[sos:], "no frame header"),
                     (jpeg_with_size(jpg, 0, 8), "invalid size")):
        with pytest.raises(ImageHeaderError, match=why):
            encoded_size(bad)
    with pytest.raises(ImageHeaderError, match="neither"):
        encoded_size(b"GIF89a......")


def test_refusal_is_one_line_naming_size_and_cap():
    with pytest.raises(ImageTooLargeError) as exc:
        image_limits.check_pixels(BOMB, BOMB, DEFAULT_CAP, "PNG payload")
    text = str(exc.value)
    assert "\n" not in text and "12000x12000" in text and "67108864 (8192x8192" in text, text
    assert "input.max_decoded_pixels" in text
    image_limits.check_pixels(8192, 8192, DEFAULT_CAP)   # exactly the cap is allowed


# --- peak memory of a real bomb, measured in a subprocess ------------------------------------------

def _rss_growth_mb(tmp_path: Path, body: str) -> tuple[float, str]:
    """Peak RSS growth (MB) of ``body`` run in a fresh interpreter after the imports it needs."""
    script = tmp_path / "probe.py"
    lines = ["import resource, sys", f"sys.path.insert(0, {str(REPO / 'test')!r})", "import cv2, numpy as np",
             "from hostile_images import png_bomb", "from pebal_ros.pipeline.convert import compressed_to_array",
             "from pebal_ros.image_limits import read_image", f"payload = png_bomb({BOMB}, {BOMB})",
             "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss", "try:"]
    lines += ["    " + line for line in textwrap.dedent(body).splitlines()]
    lines += ["    print('result: decoded')", "except Exception as exc:", "    print('result:', type(exc).__name__, exc)",
              "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss", "print('growth_kb:', after - before)"]
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    growth = int(out.stdout.split("growth_kb:")[1].split()[0]) / 1024
    return growth, out.stdout.split("result:")[1].splitlines()[0].strip()


def test_png_bomb_message_is_refused_without_memory(tmp_path):
    growth, result = _rss_growth_mb(tmp_path, """\
        from types import SimpleNamespace
        compressed_to_array(SimpleNamespace(format="png", data=np.frombuffer(payload, np.uint8)))
        """)
    # decoding it would take 144 MB (grey) + 432 MB (the RGB the pipeline converts to)
    assert result.startswith("OversizedFrameError") and "12000x12000" in result, result
    assert growth < 40, f"peak RSS grew by {growth:.0f} MB for a refused frame"


def test_png_bomb_file_is_refused_without_memory(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_bomb(BOMB, BOMB))
    growth, result = _rss_growth_mb(tmp_path, """\
        read_image("bomb.png", cv2.IMREAD_COLOR)
        """)
    assert result.startswith("ImageTooLargeError") and "bomb.png" in result and "8192x8192" in result, result
    assert growth < 40, f"peak RSS grew by {growth:.0f} MB for a refused file"


# --- every decode path --------------------------------------------------------------------------

def test_compressed_bombs_are_refused_png_and_jpeg(factory, bomb):
    with pytest.raises(OversizedFrameError, match="PNG payload of 140[0-9]{3} bytes declares 12000x12000"):
        compressed_to_array(compressed(factory, "png", bomb))
    # a small JPEG whose frame header declares 20000x20000: at the reduced scale it would be 2500x2500,
    # but libjpeg's buffers and the camera-size overlay follow the declared size
    jpg = jpeg_with_size(_jpeg(make_scene(64, 128)), 20000, 20000)
    for reduce in (1, 8):
        with pytest.raises(OversizedFrameError, match="JPEG payload .* declares 20000x20000"):
            compressed_to_array(compressed(factory, "jpeg", jpg), reduce=reduce)
    # a caller's own cap
    small = compressed(factory, "png", cv2.imencode(".png", make_scene(64, 128))[1].tobytes())
    assert compressed_to_array(small, max_pixels=64 * 128).shape == (64, 128, 3)
    with pytest.raises(OversizedFrameError, match="128x64 = 8192 pixels, over the decode cap of 8191"):
        compressed_to_array(small, max_pixels=64 * 128 - 1)


def test_raw_images_over_the_cap_or_inconsistent_are_refused(factory):
    h, w = 60, 100
    pixels = np.zeros(h * w, np.uint8)
    msg = raw(factory, h, w, "mono8", w, pixels)
    assert msg_to_array(msg, max_pixels=h * w).shape == (h, w, 3)
    with pytest.raises(OversizedFrameError, match="mono8 image declares 100x60 = 6000 pixels"):
        msg_to_array(msg, max_pixels=h * w - 1)
    # a huge declared size is refused before its data is looked at
    with pytest.raises(OversizedFrameError, match="12000x12000"):
        msg_to_array(raw(factory, BOMB, BOMB, "rgb8", BOMB * 3, pixels))
    # an oversized data field (more bytes than height*step) and a step inconsistent with the data
    with pytest.raises(ImageLayoutError, match="data has 12000 bytes but step\\*rows = 100\\*60 = 6000"):
        msg_to_array(raw(factory, h, w, "mono8", w, np.zeros(2 * h * w, np.uint8)))
    with pytest.raises(ImageLayoutError, match="step\\*rows"):
        msg_to_array(raw(factory, h, w, "mono8", 10**9, pixels))


def test_pipeline_refuses_the_bomb_and_processes_the_next_frames(factory, bomb):
    runtime = PaletteRuntime(input_size=(32, 64))
    pipe = FramePipeline(runtime, PipelineConfig(threshold=-4.0), factory)
    scene = make_scene(128, 256)
    good_png = compressed(factory, "png", cv2.imencode(".png", scene[..., ::-1])[1].tobytes(), sec=2)
    good_jpg = compressed(factory, "jpeg", _jpeg(scene), sec=3)   # 128x256 -> 1/4 scale for 32x64
    assert jpeg_reduction((128, 256), (32, 64)) == 4
    jpeg_bomb = compressed(factory, "jpeg", jpeg_with_size(_jpeg(scene), 20000, 20000))
    for hostile in (compressed(factory, "png", bomb), jpeg_bomb):
        with pytest.raises(OversizedFrameError):
            pipe.process(hostile)
        for good in (good_png, good_jpg):
            res = pipe.process(good)
            assert res.camera_size == (128, 256) and res.outputs.semantic.shape == (128, 256)
    assert runtime.calls == 4   # the hostile frames never reached the network
    # several cameras in one tick: the bomb costs only its own slot
    results = pipe.process_batch([good_png, compressed(factory, "png", bomb), good_jpg])
    assert isinstance(results[1], OversizedFrameError) and isinstance(results[1], FrameError)
    assert results[0].camera_size == results[2].camera_size == (128, 256)
    # the pipeline's cap is the setting
    tight = FramePipeline(runtime, PipelineConfig(threshold=-4.0, max_decoded_pixels=128 * 256 - 1), factory)
    with pytest.raises(OversizedFrameError, match="over the decode cap of 32767"):
        tight.process(good_jpg)
    with pytest.raises(ValueError, match="input.max_decoded_pixels"):
        PipelineConfig(max_decoded_pixels=0).validate()


def test_corrupt_and_truncated_frames_are_refused_and_the_next_one_runs(factory, bomb):
    runtime = PaletteRuntime(input_size=(32, 64))
    pipe = FramePipeline(runtime, PipelineConfig(threshold=-4.0), factory)
    png = cv2.imencode(".png", make_scene(64, 128))[1].tobytes()
    for payload, fmt in ((png[:30], "png"), (png[:40] + png[-12:], "png"), (_jpeg(make_scene(64, 128))[:300], "jpeg")):
        with pytest.raises(CorruptCompressedImageError):
            pipe.process(compressed(factory, fmt, payload))
    assert pipe.process(compressed(factory, "png", png)).camera_size == (64, 128)


# --- image files and labels ---------------------------------------------------------------------

def _bmp_declaring(tmp_path: Path, h: int, w: int) -> Path:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(buf, "BMP")
    data = bytearray(buf.getvalue())
    data[18:26] = struct.pack("<ii", w, h)          # BITMAPINFOHEADER width, height
    path = tmp_path / f"declares_{w}x{h}.bmp"
    path.write_bytes(bytes(data))
    return path


def test_image_files_are_checked_before_decoding(tmp_path, bomb):
    (tmp_path / "bomb.png").write_bytes(bomb)
    with pytest.raises(ImageTooLargeError, match=r"bomb.png declares 12000x12000"):
        read_image(tmp_path / "bomb.png", cv2.IMREAD_UNCHANGED)
    # formats without a parser here go through Pillow's lazy open (header only)
    with pytest.raises(ImageTooLargeError, match="declares 12000x12000"):
        read_image(_bmp_declaring(tmp_path, 12000, 12000), cv2.IMREAD_COLOR)
    with pytest.raises(ImageTooLargeError, match="declares 400000000 pixels"):   # Pillow's own bomb error
        read_image(_bmp_declaring(tmp_path, 20000, 20000), cv2.IMREAD_COLOR)
    ok = tmp_path / "ok.png"
    cv2.imwrite(str(ok), make_scene(40, 60))
    assert np.array_equal(read_image(ok, cv2.IMREAD_COLOR), cv2.imread(str(ok), cv2.IMREAD_COLOR))
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ImageHeaderError, match="junk.png"):
        read_image(tmp_path / "junk.png", cv2.IMREAD_COLOR)


def test_data_readers_and_label_sources_apply_the_cap(tmp_path, factory, bomb):
    from pebal_ros.data.io import read_label, read_rgb
    from pebal_ros.replay.groundtruth import LabelFolder, label_from_message

    (tmp_path / "bomb.png").write_bytes(bomb)
    for reader in (read_rgb, read_label):
        with pytest.raises(ImageTooLargeError, match="12000x12000"):
            reader(tmp_path / "bomb.png")
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "000000.png").write_bytes(bomb)
    cv2.imwrite(str(labels / "000001.png"), np.ones((8, 8), np.uint8))
    folder = LabelFolder(labels, "name")
    with pytest.raises(ValueError, match="000000.png declares 12000x12000"):
        folder.get(0, None)
    assert folder.get(1, None).shape == (8, 8)
    with pytest.raises(ValueError, match="label image declares 12000x12000"):
        label_from_message(raw(factory, BOMB, BOMB, "mono8", BOMB, np.zeros(64, np.uint8)))


# --- the setting -------------------------------------------------------------------------------

def test_setting_is_validated_everywhere():
    assert InputConfig().max_decoded_pixels == DEFAULT_CAP
    assert from_dict({"input": {"max_decoded_pixels": 1000}}).input.max_decoded_pixels == 1000
    for bad in (0, -5, 2**31):
        with pytest.raises(ValueError, match="input.max_decoded_pixels must be an integer from 1 to 1073741824"):
            from_dict({"input": {"max_decoded_pixels": bad}})
    for bad in ("8192x8192", True, 1.5):
        with pytest.raises(ValueError, match="input.max_decoded_pixels: expected an integer"):
            from_dict({"input": {"max_decoded_pixels": bad}})
    from pebal_ros.node.params import validate
    assert validate("max_decoded_pixels", DEFAULT_CAP) is None
    assert "must be in [1, 1073741824]" in validate("max_decoded_pixels", 0)
    assert "must be a integer" in validate("max_decoded_pixels", "8192x8192")


@pytest.mark.parametrize("value,ok", [("8192x8192", 8192 * 8192), ("1000", 1000), ("0", None), ("0x10", None),
                                      ("-4x-4", None), ("big", None), ("40000x40000", None)])
def test_max_decoded_pixels_flag(value, ok):
    from pebal_ros.cli import build_parser

    parser = build_parser()
    if ok is None:
        with pytest.raises(SystemExit):
            parser.parse_args(["infer", "x.png", "--out", "o", "--max-decoded-pixels", value])
        return
    for cmd in (["infer", "x.png", "--out", "o"], ["replay", "bag", "--out", "o"], ["calibrate", "x.png"]):
        args = parser.parse_args(cmd + ["--max-decoded-pixels", value])
        assert args.max_decoded_pixels == ok

