"""The size an encoded image declares, read from its header alone, and the decode cap it must meet.

A decompression bomb is a small valid file that declares a huge image: a 140 KB PNG of 12000x12000
zero pixels decodes to 144 MB, and the pipeline then converts, resizes and upsamples it to several
GB. OpenCV has no header-only API (``cv2.imdecode`` allocates the whole image before it reads a
pixel), so every decode in pebal_ros first reads the declared size here and refuses anything over
``input.max_decoded_pixels`` (:class:`pebal_ros.config.InputConfig`): PNG (IHDR) and JPEG (SOF)
headers are parsed here, a few bytes each; other image files (BMP, TIFF, WebP) are read by Pillow's
lazy ``Image.open``, which reads only the header.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .config import InputConfig

DEFAULT_MAX_PIXELS: int = InputConfig.max_decoded_pixels

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
# Start-of-frame markers: every SOFn except DHT (C4), JPG (C8) and DAC (CC), which share the range
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})   # TEM, RSTn, SOI: no length field


class ImageTooLargeError(ValueError):
    """The image declares more pixels than the decode cap; nothing was decoded."""


class ImageHeaderError(ValueError):
    """The header that gives the image's size is missing, truncated or invalid."""


def _bytes_view(data: Any) -> memoryview:
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return memoryview(data).cast("B")


def image_format(data: Any) -> str | None:
    """'png' or 'jpeg' from the magic bytes, else None."""
    head = bytes(_bytes_view(data)[:8])
    if head == PNG_SIGNATURE:
        return "png"
    if head.startswith(JPEG_SOI):
        return "jpeg"
    return None


def png_size(data: Any) -> tuple[int, int]:
    """(height, width) from a PNG's IHDR chunk, which the format requires first, right after the
    signature: bytes 16-24 of the file."""
    mv = _bytes_view(data)
    if len(mv) < 24 or bytes(mv[:8]) != PNG_SIGNATURE:
        raise ImageHeaderError(f"PNG of {len(mv)} bytes is too short for its IHDR header")
    if bytes(mv[12:16]) != b"IHDR" or int.from_bytes(mv[8:12], "big") != 13:
        raise ImageHeaderError("PNG does not start with an IHDR chunk")
    w, h = int.from_bytes(mv[16:20], "big"), int.from_bytes(mv[20:24], "big")
    if not (0 < w < 2**31 and 0 < h < 2**31):
        raise ImageHeaderError(f"PNG header declares an invalid size {w}x{h}")
    return h, w


def jpeg_size(data: Any) -> tuple[int, int]:
    """(height, width) from a JPEG's frame header (SOFn), found by walking the marker segments
    before it (APPn, DQT, DHT, ...: each carries its length, so only their first bytes are read)."""
    mv = _bytes_view(data)
    n = len(mv)
    if bytes(mv[:2]) != JPEG_SOI:
        raise ImageHeaderError("not a JPEG (no start-of-image marker)")
    i = 2
    while i + 1 < n:
        if mv[i] != 0xFF:
            raise ImageHeaderError(f"JPEG has no marker at byte {i} (a corrupt header)")
        marker = mv[i + 1]
        if marker == 0xFF:              # fill byte before a marker
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in (0xD9, 0xDA):      # EOI / start of scan: image data before any frame header
            raise ImageHeaderError("JPEG has no frame header (SOF) before its image data")
        if i + 4 > n:
            break
        length = int.from_bytes(mv[i + 2:i + 4], "big")
        if length < 2:
            raise ImageHeaderError(f"JPEG segment at byte {i} has an invalid length {length}")
        if marker in _SOF:
            if i + 9 > n or length < 8:
                break
            h, w = int.from_bytes(mv[i + 5:i + 7], "big"), int.from_bytes(mv[i + 7:i + 9], "big")
            if h == 0 or w == 0:        # h == 0 defers the height to a DNL marker: libjpeg refuses it too
                raise ImageHeaderError(f"JPEG frame header declares an invalid size {w}x{h}")
            return h, w
        i += 2 + length
    raise ImageHeaderError(f"JPEG of {n} bytes ends before its frame header (truncated?)")


def encoded_size(data: Any) -> tuple[str, int, int]:
    """(format, height, width) of a PNG or JPEG payload from its header; ImageHeaderError otherwise."""
    fmt = image_format(data)
    if fmt == "png":
        return (fmt, *png_size(data))
    if fmt == "jpeg":
        return (fmt, *jpeg_size(data))
    raise ImageHeaderError("neither PNG nor JPEG")


def _cap_text(cap: int) -> str:
    side = int(round(cap ** 0.5))
    return f"{cap} ({side}x{side}, input.max_decoded_pixels)" if side * side == cap \
        else f"{cap} (input.max_decoded_pixels)"


def check_pixels(height: int, width: int, cap: int, what: str = "image",
                 error: type[ValueError] = ImageTooLargeError) -> None:
    """Raise ``error`` (one line naming the size and the cap) when ``width x height`` exceeds ``cap``."""
    if height * width > cap:
        raise error(f"{what} declares {width}x{height} = {height * width} pixels, over the decode cap of "
                    f"{_cap_text(cap)}; not decoded")


_PIL_BOMB = re.compile(r"\((\d+) pixels\)")


def _pillow_size(data: bytes, cap: int, what: str) -> tuple[int, int]:
    """(height, width) of another format (BMP, TIFF, WebP, ...) from Pillow's lazy open (header only)."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning (above 89 MP): the cap below decides, with its own message
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
    except Image.DecompressionBombError as exc:   # over 2x Pillow's limit: it will not say the size
        m = _PIL_BOMB.search(str(exc))
        pixels = int(m.group(1)) if m else cap + 1
        if pixels > cap:
            raise ImageTooLargeError(f"{what} declares {pixels} pixels, over the decode cap of {_cap_text(cap)}; "
                                     "not decoded") from None
        raise ImageHeaderError(f"{what}: Pillow refuses to read its header: {exc}") from None
    except UnidentifiedImageError:
        raise ImageHeaderError(f"{what}: not a readable image (no image header Pillow or this module knows)") \
            from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageHeaderError(f"{what}: cannot read the image size from its header ({exc})") from None
    return int(h), int(w)


def read_image(path: str | Path, flags: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | None:
    """``cv2.imread(path, flags)`` that checks the declared size against ``max_pixels`` first.

    The file is read once; its header is checked and the same bytes are decoded. Returns None where
    OpenCV cannot decode the file (as ``cv2.imread`` does); raises OSError (unreadable),
    :class:`ImageTooLargeError` or :class:`ImageHeaderError` (size unknown: not decoded either).
    """
    import cv2

    data = Path(path).read_bytes()
    what = f"image {path}"
    try:
        _, h, w = encoded_size(data)
    except ImageHeaderError as exc:
        if image_format(data) is not None:
            raise ImageHeaderError(f"{what}: {exc}") from None
        h, w = _pillow_size(data, max_pixels, what)
    check_pixels(h, w, max_pixels, what)
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)
