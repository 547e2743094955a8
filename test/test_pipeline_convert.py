"""Message <-> array conversion with real ROS 2 message classes (rosbags typestores) and CDR round trips.

Expected pixels come from independent constructions: numpy slicing for packed formats, explicit
mosaicking for Bayer patterns, and the BT.601 equations for the YUV formats.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from pebal_ros.pipeline.convert import (
    SUPPORTED_ENCODINGS,
    CorruptCompressedImageError,
    EmptyImageError,
    FrameError,
    ImageLayoutError,
    UnsupportedEncodingError,
    array_to_image_fields,
    compressed_to_array,
    encode_compressed,
    float_image_fields,
    float_image_from_msg,
    image_to_array,
    image_view,
    msg_to_array,
)

STORES = {"humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY}


@pytest.fixture(params=sorted(STORES))
def store(request):
    return get_typestore(STORES[request.param])


def header(store, sec=12, nsec=345, frame="cam_front"):
    H = store.types["std_msgs/msg/Header"]
    T = store.types["builtin_interfaces/msg/Time"]
    return H(stamp=T(sec=sec, nanosec=nsec), frame_id=frame)


def image_msg(store, payload: np.ndarray, height: int, width: int, encoding: str, step: int, bigendian: int = 0):
    Img = store.types["sensor_msgs/msg/Image"]
    msg = Img(header=header(store), height=height, width=width, encoding=encoding, is_bigendian=bigendian,
              step=step, data=np.ascontiguousarray(payload).reshape(-1).view(np.uint8))
    # Every message goes through the wire format, as in a bag or over DDS.
    raw = store.serialize_cdr(msg, Img.__msgtype__)
    return store.deserialize_cdr(raw, Img.__msgtype__)


def with_padding(rows: np.ndarray, pad: int) -> tuple[np.ndarray, int]:
    """uint8 rows (H x rowbytes) -> flat data with ``pad`` junk bytes per row, and the step."""
    h, rb = rows.shape
    out = np.full((h, rb + pad), 0xAB, np.uint8)
    out[:, :rb] = rows
    return out.reshape(-1), rb + pad


def smooth_rgb(h=32, w=48) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 40 + 150 * x / w
    g = 60 + 100 * y / h
    b = 200 - 120 * x / w
    return np.stack([r, g, b], -1).round().astype(np.uint8)


RNG = np.random.default_rng(7)
IMG = RNG.integers(0, 256, (6, 10, 3), dtype=np.uint8)


@pytest.mark.parametrize("pad", [0, 6])
@pytest.mark.parametrize("encoding,make,expect_rgb", [
    ("rgb8", lambda im: im, lambda im: im),
    ("bgr8", lambda im: im[..., ::-1], lambda im: im),
    ("rgba8", lambda im: np.dstack([im, np.full(im.shape[:2], 9, np.uint8)]), lambda im: im),
    ("bgra8", lambda im: np.dstack([im[..., ::-1], np.full(im.shape[:2], 9, np.uint8)]), lambda im: im),
    ("mono8", lambda im: im[..., 0], lambda im: np.repeat(im[..., :1], 3, -1)),
])
def test_packed_8bit(store, encoding, make, expect_rgb, pad):
    px = np.ascontiguousarray(make(IMG))
    h, w = IMG.shape[:2]
    data, step = with_padding(px.reshape(h, -1), pad)
    msg = image_msg(store, data, h, w, encoding, step)
    np.testing.assert_array_equal(image_to_array(msg, "rgb"), expect_rgb(IMG))
    np.testing.assert_array_equal(image_to_array(msg, "bgr"), expect_rgb(IMG)[..., ::-1])


def test_rgb8_is_a_zero_copy_view(store):
    h, w = IMG.shape[:2]
    msg = image_msg(store, IMG, h, w, "rgb8", w * 3)
    out = image_to_array(msg, "rgb")
    assert np.shares_memory(out, msg.data)


@pytest.mark.parametrize("bigendian", [0, 1])
@pytest.mark.parametrize("encoding", ["mono16", "rgb16", "bgr16", "rgba16"])
def test_16bit_scaled_like_cv_bridge(store, encoding, bigendian):
    h, w = 4, 5
    ch = {"mono16": 1, "rgb16": 3, "bgr16": 3, "rgba16": 4}[encoding]
    vals = RNG.integers(0, 65536, (h, w, ch), dtype=np.uint16)
    wire = vals.astype(">u2" if bigendian else "<u2")
    msg = image_msg(store, wire.view(np.uint8), h, w, encoding, w * ch * 2, bigendian)
    # cv_bridge scales by 255/65535 and rounds (v/257 never lands on .5, so no tie rule matters)
    msb = np.rint(vals / 257.0).astype(np.uint8)
    expect = {"mono16": np.repeat(msb, 3, -1), "rgb16": msb, "bgr16": msb[..., ::-1], "rgba16": msb[..., :3]}[encoding]
    np.testing.assert_array_equal(image_to_array(msg, "rgb"), expect)


# ROS names the colour of the top-left 2x2 cell, row-major.
BAYER = {"rggb": ("R", "G", "G", "B"), "bggr": ("B", "G", "G", "R"),
         "gbrg": ("G", "B", "R", "G"), "grbg": ("G", "R", "B", "G")}


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    idx = {"R": 0, "G": 1, "B": 2}
    out = np.empty(rgb.shape[:2], rgb.dtype)
    cells = BAYER[pattern]
    for k, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        out[dy::2, dx::2] = rgb[dy::2, dx::2, idx[cells[k]]]
    return out


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("pattern", sorted(BAYER))
def test_bayer_demosaic_recovers_smooth_image(store, pattern, bits):
    rgb = smooth_rgb()
    h, w = rgb.shape[:2]
    if bits == 8:
        raw = mosaic(rgb, pattern)
        msg = image_msg(store, raw, h, w, f"bayer_{pattern}8", w)
    else:
        raw = mosaic(rgb.astype(np.uint16) * 257, pattern)
        msg = image_msg(store, raw.view(np.uint8), h, w, f"bayer_{pattern}16", w * 2)
    out = image_to_array(msg, "rgb").astype(int)
    err = np.abs(out[2:-2, 2:-2] - rgb[2:-2, 2:-2].astype(int))
    # A wrong pattern mapping swaps red and blue (errors of ~100 here); demosaicing a smooth
    # gradient is accurate to a few levels.
    assert err.mean() < 2.0 and err.max() <= 12, (pattern, err.mean(), err.max())


def bt601_yuv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Studio-range BT.601 Y, U (Cb), V (Cr) from RGB (float)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    return y, u, v


def blocky_rgb(h=8, w=12, bh=1, bw=2) -> np.ndarray:
    """Colours constant over (bh x bw) blocks, so chroma subsampling loses nothing."""
    small = RNG.integers(30, 220, (h // bh, w // bw, 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, bh, 0), bw, 1)


@pytest.mark.parametrize("pad", [0, 4])
@pytest.mark.parametrize("encoding", ["yuv422", "uyvy", "yuv422_yuy2", "yuyv"])
def test_yuv422(store, encoding, pad):
    rgb = blocky_rgb()
    h, w = rgb.shape[:2]
    y, u, v = (np.clip(np.round(c), 0, 255).astype(np.uint8) for c in bt601_yuv(rgb))
    packed = np.empty((h, w * 2), np.uint8)
    if encoding in ("yuv422", "uyvy"):      # U Y0 V Y1
        packed[:, 0::4], packed[:, 1::4], packed[:, 2::4], packed[:, 3::4] = u[:, 0::2], y[:, 0::2], v[:, 0::2], y[:, 1::2]
    else:                                   # Y0 U Y1 V
        packed[:, 0::4], packed[:, 1::4], packed[:, 2::4], packed[:, 3::4] = y[:, 0::2], u[:, 0::2], y[:, 1::2], v[:, 0::2]
    data, step = with_padding(packed, pad)
    msg = image_msg(store, data, h, w, encoding, step)
    out = image_to_array(msg, "rgb").astype(int)
    assert np.abs(out - rgb.astype(int)).max() <= 4


@pytest.mark.parametrize("encoding", ["nv12", "nv21"])
def test_yuv420_semiplanar(store, encoding):
    rgb = blocky_rgb(8, 12, 2, 2)
    h, w = rgb.shape[:2]
    y, u, v = (np.clip(np.round(c), 0, 255).astype(np.uint8) for c in bt601_yuv(rgb))
    uv = np.empty((h // 2, w), np.uint8)
    first, second = (u, v) if encoding == "nv12" else (v, u)
    uv[:, 0::2], uv[:, 1::2] = first[0::2, 0::2], second[0::2, 0::2]
    msg = image_msg(store, np.concatenate([y, uv]), h, w, encoding, w)
    out = image_to_array(msg, "rgb").astype(int)
    assert np.abs(out - rgb.astype(int)).max() <= 4


def test_every_supported_encoding_is_tested():
    tested = {"rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "rgb16", "bgr16", "rgba16", "yuv422", "uyvy",
              "yuv422_yuy2", "yuyv", "nv12", "nv21"} | {f"bayer_{p}{b}" for p in BAYER for b in (8, 16)}
    aliases = {"8UC1", "16UC1", "bgra16"}   # same code paths as mono8 / mono16 / rgba16
    assert set(SUPPORTED_ENCODINGS) == tested | aliases


# --- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding,why", [("32FC1", "depth"), ("nv24", "NV24"), ("jpeg", "unknown"), ("", "unknown")])
def test_unsupported_encodings_rejected(store, encoding, why):
    msg = image_msg(store, np.zeros(4 * 4 * 4, np.uint8), 4, 4, encoding, 16)
    with pytest.raises(UnsupportedEncodingError, match=why) as exc:
        image_to_array(msg)
    assert "rgb8" in str(exc.value)   # lists what is supported


def test_layout_errors(store):
    with pytest.raises(ImageLayoutError, match="step 20 is smaller"):
        image_to_array(image_msg(store, np.zeros(80, np.uint8), 4, 8, "rgb8", 20))
    with pytest.raises(ImageLayoutError, match="data has 95 bytes"):
        image_to_array(image_msg(store, np.zeros(95, np.uint8), 4, 8, "rgb8", 24))
    with pytest.raises(ImageLayoutError, match="even width"):
        image_to_array(image_msg(store, np.zeros(4 * 6, np.uint8), 4, 3, "yuv422", 6))
    with pytest.raises(ImageLayoutError, match="even width and height"):
        image_to_array(image_msg(store, np.zeros(12, np.uint8), 3, 4, "nv12", 4))
    with pytest.raises(ImageLayoutError, match="multiple of 2"):
        image_to_array(image_msg(store, np.zeros(4 * 9, np.uint8), 4, 4, "mono16", 9))


def test_empty_images(store):
    with pytest.raises(EmptyImageError, match="empty data"):
        image_to_array(image_msg(store, np.zeros(0, np.uint8), 4, 4, "rgb8", 12))
    with pytest.raises(EmptyImageError, match="size 0x0"):
        image_to_array(image_msg(store, np.zeros(0, np.uint8), 0, 0, "rgb8", 0))


def test_all_frame_errors_are_value_errors():
    for cls in (UnsupportedEncodingError, ImageLayoutError, EmptyImageError, CorruptCompressedImageError):
        assert issubclass(cls, FrameError) and issubclass(cls, ValueError)


# --- writing images --------------------------------------------------------------------------

@pytest.mark.parametrize("encoding,arr", [
    ("rgb8", IMG), ("mono8", IMG[..., 0].copy()), ("rgba8", np.dstack([IMG, IMG[..., :1]])),
])
def test_array_to_message_round_trip(store, encoding, arr):
    fields = array_to_image_fields(arr, encoding)
    msg = image_msg(store, fields["data"], fields["height"], fields["width"], encoding, fields["step"])
    view, _ = image_view(msg)
    np.testing.assert_array_equal(view, arr)


def test_float_image_round_trip(store):
    score = RNG.normal(size=(5, 7)).astype(np.float32)
    f = float_image_fields(score)
    msg = image_msg(store, f["data"], f["height"], f["width"], "32FC1", f["step"], f["is_bigendian"])
    np.testing.assert_array_equal(float_image_from_msg(msg), score)


def test_array_to_fields_rejects_mismatch():
    with pytest.raises(ImageLayoutError, match="3 channel"):
        array_to_image_fields(np.zeros((4, 4), np.uint8), "rgb8")
    with pytest.raises(ImageLayoutError, match="dtype uint8"):
        array_to_image_fields(np.zeros((4, 4, 3), np.float32), "rgb8")


# --- CompressedImage -------------------------------------------------------------------------

def compressed_msg(store, fmt: str, payload) -> object:
    C = store.types["sensor_msgs/msg/CompressedImage"]
    msg = C(header=header(store), format=fmt, data=np.frombuffer(bytes(payload), np.uint8))
    return store.deserialize_cdr(store.serialize_cdr(msg, C.__msgtype__), C.__msgtype__)


def test_png_lossless_and_jpeg_close(store):
    rgb = smooth_rgb()
    ok, png = cv2.imencode(".png", rgb[..., ::-1])
    msg = compressed_msg(store, "png", png.tobytes())
    np.testing.assert_array_equal(compressed_to_array(msg, "rgb"), rgb)
    np.testing.assert_array_equal(msg_to_array(msg, "bgr"), rgb[..., ::-1])
    ok, jpg = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = compressed_to_array(compressed_msg(store, "bgr8; jpeg compressed bgr8", jpg.tobytes()), "rgb")
    assert np.abs(out.astype(int) - rgb).mean() < 3


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_encode_compressed_round_trip(store, kind):
    rgb = smooth_rgb()
    fmt, payload = encode_compressed(rgb, kind)
    assert fmt == f"rgb8; {kind} compressed bgr8"
    out = compressed_to_array(compressed_msg(store, fmt, payload.tobytes()))
    assert np.abs(out.astype(int) - rgb).mean() < (3 if kind == "jpeg" else 1e-9)


def test_corrupt_compressed_payloads(store):
    rgb = smooth_rgb()
    jpg = cv2.imencode(".jpg", rgb)[1].tobytes()
    png = cv2.imencode(".png", rgb)[1].tobytes()
    with pytest.raises(CorruptCompressedImageError, match="end-of-image"):
        compressed_to_array(compressed_msg(store, "jpeg", jpg[: len(jpg) // 2]))
    with pytest.raises(CorruptCompressedImageError, match="IEND"):
        compressed_to_array(compressed_msg(store, "png", png[: len(png) // 2]))
    with pytest.raises(CorruptCompressedImageError, match="neither JPEG nor PNG"):
        compressed_to_array(compressed_msg(store, "jpeg", b"not an image at all, really"))
    with pytest.raises(CorruptCompressedImageError, match="says png but the payload is jpeg"):
        compressed_to_array(compressed_msg(store, "png", jpg))
    # Intact markers, garbage in between: no frame header to read the size from, nothing decoded.
    broken = jpg[:2] + bytes(200) + jpg[-2:]
    with pytest.raises(CorruptCompressedImageError, match="corrupt header"):
        compressed_to_array(compressed_msg(store, "jpeg", broken))
    # A readable frame header, garbage after it: the decoder itself must fail.
    sof = jpg.index(b"\xff\xc0")
    broken = jpg[:sof + 2 + int.from_bytes(jpg[sof + 2:sof + 4], "big")] + bytes(200) + jpg[-2:]
    with pytest.raises(CorruptCompressedImageError, match="does not decode"):
        compressed_to_array(compressed_msg(store, "jpeg", broken))
    with pytest.raises(EmptyImageError):
        compressed_to_array(compressed_msg(store, "jpeg", b""))
    with pytest.raises(UnsupportedEncodingError, match="compressedDepth"):
        compressed_to_array(compressed_msg(store, "16UC1; compressedDepth png", png))
    with pytest.raises(UnsupportedEncodingError, match="expected jpeg or png"):
        compressed_to_array(compressed_msg(store, "tiff", png))


def test_msg_to_array_dispatch(store):
    h, w = IMG.shape[:2]
    raw = image_msg(store, IMG, h, w, "rgb8", w * 3)
    np.testing.assert_array_equal(msg_to_array(raw), IMG)
    with pytest.raises(UnsupportedEncodingError, match="neither"):
        msg_to_array(store.types["std_msgs/msg/String"](data="x"))


def test_data_as_bytes_and_array_array():
    """rclpy gives ``array.array('B')``; hand-built messages may use bytes or lists."""
    import array
    from types import SimpleNamespace

    h, w = IMG.shape[:2]
    for data in (IMG.tobytes(), array.array("B", IMG.tobytes()), list(IMG.reshape(-1))):
        msg = SimpleNamespace(height=h, width=w, encoding="bgr8", is_bigendian=0, step=w * 3, data=data)
        np.testing.assert_array_equal(image_to_array(msg, "bgr"), IMG)
