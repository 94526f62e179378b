"""Reading one image file into an array with its real value range: 8-bit, 16-bit and float images.

Pillow's ``convert("L")`` clips a 16-bit image to 8 bits (a full-range 16-bit ramp becomes 99.6 % white),
so :func:`read_image` scales each stored type by its own range instead:

* ``uint8`` (modes ``1``, ``L``, ``P``, ``RGB``, ``RGBA``, ...) -> divided by 255 (as before);
* ``uint16`` (modes ``I;16*``; mode ``I`` from a 16-bit PNG or TIFF) -> divided by 65535;
* ``float32`` (mode ``F``, float TIFFs) -> kept, and refused unless finite and already in [0, 1];
* 16-bit colour (48-bit PNG/TIFF): Pillow can only decode it to 8 bits per channel (the high byte, so
  the range is right); the source dtype is then recorded as ``"uint16 (colour, read at 8-bit precision)"``;
* anything else (32-bit integers, signed 16-bit) is refused with the file named.

A pixel-count guard refuses images above ``max_pixels`` (:data:`MAX_PIXELS` = 50 000 000 by default)
from the header alone, before any pixel is decoded; Pillow's decompression-bomb checks become one-line
errors naming the file.
"""
from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np

from ..errors import TrustVisionError

MAX_PIXELS = 50_000_000                 # per image; raise with --max-pixels / max_pixels=
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
SCALE = {"uint8": 255.0, "uint16": 65535.0, "float32": 1.0}
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_GREY_8BIT_MODES = ("L", "1")

__all__ = ["IMAGE_SUFFIXES", "MAX_PIXELS", "SCALE", "check_pixels", "read_image"]


def check_pixels(where: str, height: int, width: int, max_pixels: int | None) -> None:
    """Refuse an image of ``height`` x ``width`` above ``max_pixels`` pixels (``None`` = no limit)."""
    if max_pixels is not None and height * width > max_pixels:
        raise TrustVisionError(f"{where}: image of {width}x{height} = {height * width:,} pixels exceeds the limit "
                               f"of {max_pixels:,} pixels per image; raise it with --max-pixels "
                               f"(max_pixels= in Python) or pass smaller images")


def _bits(im) -> int | None:
    """Bits per sample declared by a TIFF (None for other formats)."""
    tags = getattr(im, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None
    return int(bits[0] if isinstance(bits, tuple) else bits) if bits else None


def _wide(im) -> bool:
    """Whether the not-yet-loaded image stores 16 bits per sample (Pillow's raw decoder mode says so)."""
    return any(";16" in str(getattr(t, "args", t)) for t in (im.tile or []))


def _decode(im, path: Path, wide: bool) -> tuple[np.ndarray, str]:
    """Pixels of a loaded Pillow image: (H, W) or (H, W, 3) in its stored dtype, and that dtype's name.

    ``wide``: :func:`_wide` of the image before loading (16-bit colour is decoded by Pillow to 8 bits).
    """
    mode = im.mode
    if mode in _UINT16_MODES or (mode == "I" and (im.format == "PNG" or _bits(im) == 16)):
        a = np.array(im)
        if a.dtype.kind not in "ui" or (a.size and (a.min() < 0 or a.max() > 65535)):
            raise TrustVisionError(f"{path}: 16-bit image with values outside 0..65535")
        return a.astype(np.uint16), "uint16"
    if mode == "F":
        a = np.array(im, dtype=np.float32)
        if not np.isfinite(a).all():
            raise TrustVisionError(f"{path}: float image contains NaN or Inf")
        if a.size and (a.min() < 0 or a.max() > 1):
            raise TrustVisionError(f"{path}: float image values must lie in [0, 1] (found {float(a.min()):.3g}.."
                                   f"{float(a.max()):.3g}); scale it to [0, 1] or save it as 8/16-bit")
        return a, "float32"
    if mode.startswith("I"):
        raise TrustVisionError(f"{path}: unsupported {mode!r} integer image (32-bit or signed); "
                               "save it as 8-bit, 16-bit or float in [0, 1]")
    a = np.array(im.convert("L" if mode in _GREY_8BIT_MODES else "RGB"))   # a writable copy
    return a, ("uint16 (colour, read at 8-bit precision)" if wide else "uint8")


def read_image(path: Path, max_pixels: int | None = MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Read one image file.

    Returns:
        (pixels, dtype name): pixels (H, W) grey or (H, W, 3) colour in the stored dtype (``uint8``,
        ``uint16`` or ``float32`` in [0, 1]); divide by ``SCALE[...]`` of the array's dtype for [0, 1].

    Raises:
        TrustVisionError: unreadable/corrupt file, unsupported pixel type, float values outside [0, 1],
            more than ``max_pixels`` pixels, or a Pillow decompression bomb — one line naming the file.
    """
    from PIL import Image, UnidentifiedImageError
    bomb = (Image.DecompressionBombError, Image.DecompressionBombWarning)
    limit = Image.MAX_IMAGE_PIXELS
    raised = max_pixels is not None and limit is not None and max_pixels > limit   # the user raised the limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if raised else "error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                check_pixels(str(path), im.size[1], im.size[0], max_pixels)
                wide = _wide(im)
                im.load()
                return _decode(im, path, wide)
    except TrustVisionError:
        raise
    except bomb as e:
        raise TrustVisionError(f"{path}: refused by Pillow as a possible decompression bomb ({_one_line(e)}); "
                               "pass smaller images") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise TrustVisionError(f"{path}: corrupt or unreadable image ({_one_line(e)})") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
