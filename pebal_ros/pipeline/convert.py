"""Image message fields <-> numpy arrays, for every REP-118 encoding a camera produces.

Works on any object with the standard ``sensor_msgs`` field names (rclpy messages, rosbags
dataclasses, ...): ``Image`` (height, width, encoding, is_bigendian, step, data) and
``CompressedImage`` (format, data). ``data`` may be a numpy array (rosbags), an ``array.array``
(rclpy), ``bytes`` or a ``memoryview``; it is wrapped with ``np.frombuffer`` (no copy) and
reshaped through strides, so the common ``rgb8``/``bgr8`` cases never copy the pixels.

Every problem with an incoming frame raises a subclass of :class:`FrameError` whose message says
what was wrong and what was expected; the node logs it (throttled) and carries on, replay records
it as the reason a frame was skipped. A frame that declares more than ``max_pixels`` pixels
(``input.max_decoded_pixels``) is refused before anything is decoded or converted: a compressed
frame's size is read from its PNG/JPEG header (:mod:`pebal_ros.image_limits`).
"""
from __future__ import annotations

import array
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .. import image_limits
from ..image_limits import DEFAULT_MAX_PIXELS, ImageHeaderError, ImageTooLargeError
from ..textcap import capped


class FrameError(ValueError):
    """An input frame that cannot be processed (the next frame may well be fine).

    Its message quotes message fields the sender chose: it is capped (a backstop; each quoted field
    is capped where it is quoted, so the reason itself stays readable)."""

    def __init__(self, message: str = "") -> None:
        super().__init__(capped(message, 1024))


class UnsupportedEncodingError(FrameError):
    """The encoding (or compressed format) is not one this pipeline converts."""


class ImageLayoutError(FrameError):
    """height/width/step/data length are inconsistent with each other or the encoding."""


class EmptyImageError(FrameError):
    """The message carries no pixels (zero size or empty data)."""


class CorruptCompressedImageError(FrameError):
    """A CompressedImage payload that does not decode (truncated, corrupt, not JPEG/PNG)."""


class OversizedFrameError(FrameError, ImageTooLargeError):
    """The frame declares more pixels than the decode cap (a decompression bomb, or a wrong header)."""


@dataclass(frozen=True)
class EncodingInfo:
    channels: int
    dtype: np.dtype
    # cv2 conversion code to RGB (None: the array already is RGB / handled specially)
    to_rgb: int | None
    to_bgr: int | None
    kind: str  # "packed" (HxWxC), "yuv422" (2 bytes/pixel), "yuv420sp" (NV12/NV21 planes)


_U8 = np.dtype(np.uint8)
_U16 = np.dtype(np.uint16)

# ROS bayer names give the colour of the top-left 2x2 cell; OpenCV names the pattern by the
# second row's 2nd/3rd pixels, hence the apparent mismatch (cv_bridge uses the same mapping).
_ENCODINGS: dict[str, EncodingInfo] = {
    "rgb8": EncodingInfo(3, _U8, None, cv2.COLOR_RGB2BGR, "packed"),
    "bgr8": EncodingInfo(3, _U8, cv2.COLOR_BGR2RGB, None, "packed"),
    "rgba8": EncodingInfo(4, _U8, cv2.COLOR_RGBA2RGB, cv2.COLOR_RGBA2BGR, "packed"),
    "bgra8": EncodingInfo(4, _U8, cv2.COLOR_BGRA2RGB, cv2.COLOR_BGRA2BGR, "packed"),
    "mono8": EncodingInfo(1, _U8, cv2.COLOR_GRAY2RGB, cv2.COLOR_GRAY2BGR, "packed"),
    "8UC1": EncodingInfo(1, _U8, cv2.COLOR_GRAY2RGB, cv2.COLOR_GRAY2BGR, "packed"),
    "rgb16": EncodingInfo(3, _U16, None, cv2.COLOR_RGB2BGR, "packed"),
    "bgr16": EncodingInfo(3, _U16, cv2.COLOR_BGR2RGB, None, "packed"),
    "rgba16": EncodingInfo(4, _U16, cv2.COLOR_RGBA2RGB, cv2.COLOR_RGBA2BGR, "packed"),
    "bgra16": EncodingInfo(4, _U16, cv2.COLOR_BGRA2RGB, cv2.COLOR_BGRA2BGR, "packed"),
    "mono16": EncodingInfo(1, _U16, cv2.COLOR_GRAY2RGB, cv2.COLOR_GRAY2BGR, "packed"),
    "16UC1": EncodingInfo(1, _U16, cv2.COLOR_GRAY2RGB, cv2.COLOR_GRAY2BGR, "packed"),
    "bayer_rggb8": EncodingInfo(1, _U8, cv2.COLOR_BayerBG2RGB, cv2.COLOR_BayerBG2BGR, "packed"),
    "bayer_bggr8": EncodingInfo(1, _U8, cv2.COLOR_BayerRG2RGB, cv2.COLOR_BayerRG2BGR, "packed"),
    "bayer_gbrg8": EncodingInfo(1, _U8, cv2.COLOR_BayerGR2RGB, cv2.COLOR_BayerGR2BGR, "packed"),
    "bayer_grbg8": EncodingInfo(1, _U8, cv2.COLOR_BayerGB2RGB, cv2.COLOR_BayerGB2BGR, "packed"),
    "bayer_rggb16": EncodingInfo(1, _U16, cv2.COLOR_BayerBG2RGB, cv2.COLOR_BayerBG2BGR, "packed"),
    "bayer_bggr16": EncodingInfo(1, _U16, cv2.COLOR_BayerRG2RGB, cv2.COLOR_BayerRG2BGR, "packed"),
    "bayer_gbrg16": EncodingInfo(1, _U16, cv2.COLOR_BayerGR2RGB, cv2.COLOR_BayerGR2BGR, "packed"),
    "bayer_grbg16": EncodingInfo(1, _U16, cv2.COLOR_BayerGB2RGB, cv2.COLOR_BayerGB2BGR, "packed"),
    # "yuv422" in ROS is UYVY byte order; Jazzy adds the explicit aliases "uyvy" and "yuyv".
    "yuv422": EncodingInfo(2, _U8, cv2.COLOR_YUV2RGB_UYVY, cv2.COLOR_YUV2BGR_UYVY, "yuv422"),
    "uyvy": EncodingInfo(2, _U8, cv2.COLOR_YUV2RGB_UYVY, cv2.COLOR_YUV2BGR_UYVY, "yuv422"),
    "yuv422_yuy2": EncodingInfo(2, _U8, cv2.COLOR_YUV2RGB_YUY2, cv2.COLOR_YUV2BGR_YUY2, "yuv422"),
    "yuyv": EncodingInfo(2, _U8, cv2.COLOR_YUV2RGB_YUY2, cv2.COLOR_YUV2BGR_YUY2, "yuv422"),
    "nv12": EncodingInfo(1, _U8, cv2.COLOR_YUV2RGB_NV12, cv2.COLOR_YUV2BGR_NV12, "yuv420sp"),
    "nv21": EncodingInfo(1, _U8, cv2.COLOR_YUV2RGB_NV21, cv2.COLOR_YUV2BGR_NV21, "yuv420sp"),
}

SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_ENCODINGS)

# Encodings we know but deliberately refuse, with the reason given to the user.
_REFUSED = {
    "32FC1": "a depth/float image, not a camera colour image",
    "16SC1": "a signed single-channel image (depth/disparity), not a camera colour image",
    "nv24": "NV24 (4:4:4 semi-planar) has no OpenCV conversion; configure the driver for nv12 or rgb8",
}


def encoding_info(encoding: str) -> EncodingInfo:
    info = _ENCODINGS.get(encoding)
    if info is None:
        why = _REFUSED.get(encoding, "unknown encoding")
        raise UnsupportedEncodingError(
            f"image encoding {capped(encoding)!r} is not supported ({why}); supported: {', '.join(SUPPORTED_ENCODINGS)}"
        )
    return info


def _as_u8_buffer(data: Any) -> np.ndarray:
    """A flat uint8 view of a message's ``data`` field without copying where possible."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype.itemsize == 1 else data.view(np.uint8).reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview, array.array)):
        return np.frombuffer(data, dtype=np.uint8)
    # A plain list of ints (hand-built messages): one vectorised copy.
    return np.asarray(data, dtype=np.uint8).reshape(-1)


def image_view(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, EncodingInfo]:
    """The message's pixels as an array in their native layout, a view of ``msg.data`` where possible.

    Returns (array, info): HxWxC for packed encodings (uint8 or native-endian uint16), Hx(2W) bytes
    for YUV 4:2:2 (OpenCV's layout for ``COLOR_YUV2*_UYVY/YUY2``) and (3H/2)xW for NV12/NV21.
    """
    encoding = str(msg.encoding)
    info = encoding_info(encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise EmptyImageError(f"image has size {width}x{height} (encoding {capped(encoding)})")
    image_limits.check_pixels(height, width, max_pixels, f"{capped(encoding)} image", OversizedFrameError)
    buf = _as_u8_buffer(msg.data)
    if buf.size == 0:
        raise EmptyImageError(f"image {width}x{height} {encoding} has empty data")
    bpp = info.channels * info.dtype.itemsize  # bytes per pixel of the first plane
    row_bytes = width * bpp
    if step < row_bytes:
        raise ImageLayoutError(
            f"step {step} is smaller than width*bytes_per_pixel = {width}*{bpp} = {row_bytes} for {encoding}"
        )
    if info.kind == "yuv420sp":
        if height % 2 or width % 2:
            raise ImageLayoutError(f"{encoding} needs even width and height, got {width}x{height}")
        rows = height * 3 // 2   # Y plane then interleaved half-height chroma plane, same step
    else:
        rows = height
        if info.kind == "yuv422" and width % 2:
            raise ImageLayoutError(f"{encoding} needs an even width, got {width}")
    expected = step * rows
    if buf.size != expected:
        raise ImageLayoutError(
            f"data has {buf.size} bytes but step*rows = {step}*{rows} = {expected} are required "
            f"for a {width}x{height} {encoding} image"
        )
    if info.dtype.itemsize > 1 and step % info.dtype.itemsize:
        raise ImageLayoutError(f"step {step} is not a multiple of {info.dtype.itemsize} for {encoding}")
    rows2d = buf.reshape(rows, step)[:, :row_bytes]
    if info.dtype.itemsize > 1:
        big = bool(msg.is_bigendian)
        dt = info.dtype.newbyteorder(">" if big else "<")
        px = rows2d.view(dt)
        if dt != info.dtype:  # foreign byte order: one byte-swapping copy
            px = px.astype(info.dtype)
    else:
        px = rows2d
    if info.kind == "packed":
        px = px.reshape(height, width, info.channels) if info.channels > 1 else px.reshape(height, width)
    elif info.kind == "yuv422":
        px = px.reshape(height, width, 2)   # OpenCV's CV_8UC2 layout for UYVY/YUY2
    return px, info


def _to_u8(px: np.ndarray) -> np.ndarray:
    # 16-bit camera data to 8 bit exactly as cv_bridge does it (convertTo with scale 255/65535,
    # rounded), so frames match tools built on cv_bridge bit for bit (checked against the real one
    # in test/ros/ros_cv_bridge.py); a plain >> 8 differs by one in a quarter of the values.
    # Cameras that put 12-bit data LSB-aligned should publish mono16 scaled.
    return cv2.convertScaleAbs(px, alpha=255.0 / 65535.0) if px.dtype == np.uint16 else px


def image_to_array(msg: Any, order: str = "rgb", out: np.ndarray | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Convert a ``sensor_msgs/Image``-like message to uint8 HxWx3 in ``order`` ("rgb"/"bgr").

    The result is a view of the message's buffer when the encoding already matches ``order``
    (it may then be read-only and non-contiguous); otherwise it is written into ``out`` when
    given with the right shape (buffer reuse across frames). More than ``max_pixels`` pixels:
    :class:`OversizedFrameError`.
    """
    if order not in ("rgb", "bgr"):
        raise ValueError(f"order must be 'rgb' or 'bgr', got {order!r}")
    px, info = image_view(msg, max_pixels)
    code = info.to_rgb if order == "rgb" else info.to_bgr
    if info.dtype == np.uint16 and info.kind == "packed" and "bayer" not in str(msg.encoding):
        px = _to_u8(px)
    if code is None:
        return px
    h, w = int(msg.height), int(msg.width)
    if out is not None and (out.shape != (h, w, 3) or out.dtype != np.uint8):
        out = None
    result = cv2.cvtColor(px, code, dst=out)
    if result.dtype == np.uint16:   # 16-bit Bayer demosaics at 16 bit; reduce afterwards
        result = _to_u8(result)
    return result


def array_to_image_fields(image: np.ndarray, encoding: str) -> dict[str, Any]:
    """Field values of a ``sensor_msgs/Image`` holding ``image`` (no per-element conversion).

    ``data`` is a flat C-contiguous uint8 view of the array (copied once only if the array is
    not contiguous); factories turn it into what their message library wants.
    """
    info = encoding_info(encoding)
    arr = np.ascontiguousarray(image)
    if info.kind != "packed":
        raise UnsupportedEncodingError(f"writing {encoding} images is not supported; use a packed encoding")
    expect_c = info.channels
    if arr.ndim == 2 and expect_c == 1:
        h, w = arr.shape
    elif arr.ndim == 3 and arr.shape[2] == expect_c:
        h, w = arr.shape[:2]
    else:
        raise ImageLayoutError(f"array of shape {arr.shape} cannot be a {encoding} image ({expect_c} channel(s))")
    if arr.dtype != info.dtype:
        raise ImageLayoutError(f"{encoding} needs dtype {info.dtype}, got {arr.dtype}")
    return {
        "height": h,
        "width": w,
        "encoding": encoding,
        "is_bigendian": int(arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not np.little_endian)),
        "step": w * expect_c * arr.dtype.itemsize,
        "data": arr.reshape(-1).view(np.uint8),
    }


def float_image_fields(image: np.ndarray) -> dict[str, Any]:
    """Field values of a ``32FC1`` image (the anomaly score map)."""
    arr = np.ascontiguousarray(image, dtype=np.float32)
    if arr.ndim != 2:
        raise ImageLayoutError(f"32FC1 needs a 2-D array, got shape {arr.shape}")
    h, w = arr.shape
    return {
        "height": h,
        "width": w,
        "encoding": "32FC1",
        "is_bigendian": 0 if np.little_endian else 1,
        "step": w * 4,
        "data": arr.reshape(-1).view(np.uint8),
    }


def float_image_from_msg(msg: Any) -> np.ndarray:
    """Read a ``32FC1`` image message back into float32 HxW (the score map)."""
    if str(msg.encoding) != "32FC1":
        raise UnsupportedEncodingError(f"expected a 32FC1 image, got {capped(msg.encoding)!r}")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    buf = _as_u8_buffer(msg.data)
    if buf.size != h * step or step < w * 4 or step % 4:
        raise ImageLayoutError(f"32FC1 image {w}x{h} with step {step} has {buf.size} bytes")
    dt = np.dtype(">f4" if msg.is_bigendian else "<f4")
    return buf.reshape(h, step)[:, : w * 4].view(dt).astype(np.float32, copy=False)


# --- CompressedImage ---------------------------------------------------------------------------

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"


def compressed_format_kind(fmt: str) -> str:
    """'jpeg' or 'png' from a CompressedImage ``format`` ("jpeg", "png", "bgr8; jpeg compressed bgr8", ...)."""
    f = fmt.lower()
    if "compresseddepth" in f:
        raise UnsupportedEncodingError(
            f"CompressedImage format {capped(fmt)!r} is a compressedDepth image (depth, not colour); not supported"
        )
    if "jpeg" in f or "jpg" in f:
        return "jpeg"
    if "png" in f:
        return "png"
    if f.strip() == "":
        return ""   # unspecified: decide by magic bytes
    raise UnsupportedEncodingError(f"CompressedImage format {capped(fmt)!r} is not supported; expected jpeg or png")


_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


def jpeg_size(msg: Any) -> tuple[int, int] | None:
    """(H, W) of a JPEG CompressedImage from its frame header alone (no decoding); None for anything
    else (PNG, unreadable header: the full decode says what is wrong)."""
    buf = _as_u8_buffer(msg.data)
    if not buf[:3].tobytes().startswith(_JPEG_SOI):
        return None
    try:
        return image_limits.jpeg_size(buf)
    except ImageHeaderError:
        return None


def jpeg_reduction(size: tuple[int, int], target: tuple[int, int]) -> int:
    """The largest libjpeg scale factor (8, 4, 2; else 1) that still decodes a ``size`` JPEG to at
    least ``target`` (H, W): decoding at 1/8 costs a fifth of a full decode and is a proper
    low-pass (the DCT's), where a full decode would be averaged down to the network size anyway."""
    for f in (8, 4, 2):
        if -(-size[0] // f) >= target[0] and -(-size[1] // f) >= target[1]:
            return f
    return 1


def compressed_to_array(msg: Any, order: str = "rgb", reduce: int = 1,
                        max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage``-like message (JPEG or PNG) to uint8 HxWx3.

    ``reduce`` (2, 4 or 8; JPEG only): decode at that fraction of the size in libjpeg's DCT, giving
    ceil(H / reduce) x ceil(W / reduce) pixels. The size the header declares, not the reduced one,
    must be within ``max_pixels`` (:class:`OversizedFrameError`): libjpeg's buffers for a
    progressive JPEG follow the declared size at any scale, and the overlay decodes it whole.
    """
    if order not in ("rgb", "bgr"):
        raise ValueError(f"order must be 'rgb' or 'bgr', got {order!r}")
    if reduce not in _REDUCED:
        raise ValueError(f"reduce must be one of {sorted(_REDUCED)}, got {reduce!r}")
    declared = compressed_format_kind(str(msg.format))
    buf = _as_u8_buffer(msg.data)
    if buf.size == 0:
        raise EmptyImageError(f"CompressedImage ({capped(msg.format)!r}) has empty data")
    head = buf[:8].tobytes()
    if head.startswith(_JPEG_SOI):
        actual = "jpeg"
        # libjpeg "decodes" truncated streams (grey fill + a warning), so check the end marker;
        # some encoders pad after EOI, so look at the last few bytes rather than the very end.
        if _JPEG_EOI not in buf[-16:].tobytes():
            raise CorruptCompressedImageError(
                f"JPEG payload of {buf.size} bytes has no end-of-image marker (truncated?)"
            )
    elif head == _PNG_SIG:
        actual = "png"
        if _PNG_IEND not in buf[-16:].tobytes():
            raise CorruptCompressedImageError(f"PNG payload of {buf.size} bytes has no IEND chunk (truncated?)")
    else:
        raise CorruptCompressedImageError(
            f"CompressedImage payload ({buf.size} bytes, format {capped(msg.format)!r}) is neither JPEG nor PNG "
            f"(starts with {head[:4].hex()})"
        )
    if declared and declared != actual:
        raise CorruptCompressedImageError(f"CompressedImage format says {declared} but the payload is {actual}")
    if reduce != 1 and actual != "jpeg":
        raise ValueError(f"reduce={reduce} needs a JPEG payload, got {actual}")
    try:
        height, width = image_limits.png_size(buf) if actual == "png" else image_limits.jpeg_size(buf)
    except ImageHeaderError as exc:
        raise CorruptCompressedImageError(f"{actual.upper()} payload of {buf.size} bytes: {exc}") from None
    image_limits.check_pixels(height, width, max_pixels, f"{actual.upper()} payload of {buf.size} bytes",
                              OversizedFrameError)
    img = cv2.imdecode(buf, _REDUCED[reduce])
    if img is None or img.size == 0:
        raise CorruptCompressedImageError(f"{actual.upper()} payload of {buf.size} bytes does not decode")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if order == "rgb" else img


def encode_compressed(image: np.ndarray, kind: str = "jpeg", order: str = "rgb", quality: int = 90) -> tuple[str, np.ndarray]:
    """Encode uint8 HxWx3 (in ``order``) or HxW to (format string, payload) for a CompressedImage.

    The format string follows image_transport's compressed plugin ("rgb8; jpeg compressed bgr8").
    """
    if kind not in ("jpeg", "png"):
        raise ValueError(f"kind must be 'jpeg' or 'png', got {kind!r}")
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise ImageLayoutError(f"can only compress uint8 HxW or HxWx3 arrays, got {arr.dtype} {arr.shape}")
    if arr.ndim == 3:
        bgr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR) if order == "rgb" else arr
        src_enc = "rgb8" if order == "rgb" else "bgr8"
        dst = "bgr8"
    else:
        bgr, src_enc, dst = arr, "mono8", "mono8"
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if kind == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, payload = cv2.imencode(".jpg" if kind == "jpeg" else ".png", bgr, params)
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode a {arr.shape} image as {kind}")
    return f"{src_enc}; {kind} compressed {dst}", payload.reshape(-1)


def is_compressed(msg: Any) -> bool:
    """True for CompressedImage-like messages (they have ``format`` and no ``encoding``)."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def msg_to_array(msg: Any, order: str = "rgb", out: np.ndarray | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Image or CompressedImage -> uint8 HxWx3 in ``order``; more than ``max_pixels`` pixels is refused."""
    if is_compressed(msg):
        return compressed_to_array(msg, order, max_pixels=max_pixels)
    if not hasattr(msg, "encoding"):
        raise UnsupportedEncodingError(f"{type(msg).__name__} is neither a sensor_msgs Image nor CompressedImage")
    return image_to_array(msg, order, out, max_pixels)
