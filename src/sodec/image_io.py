"""Reading images into the codec's RGB uint8 form, and writing files atomically.

No silent changes: every conversion (grayscale, palette, 16-bit, CMYK, opaque alpha) is reported
as a note the CLI prints; an alpha channel that is not fully opaque is refused, because the codec
cannot keep it and dropping it would change the image.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .checkpoint import atomic_write_via
from .errors import LimitsError, UnsupportedInputError

# What Pillow raises on malformed files. Besides OSError/ValueError, fuzzing read_image with
# mutated PNG/GIF/TIFF/BMP/... files found a TIFF without dimensions raising TypeError; the
# others are what its plugins' parsing code can raise on short or inconsistent data.
_DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    EOFError,
    IndexError,
    KeyError,
    ZeroDivisionError,
    struct.error,
)


def read_image(source: str | os.PathLike[str] | bytes) -> tuple[np.ndarray, list[str]]:
    """-> ((H, W, 3) uint8 RGB, notes about conversions made)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            im.load()
            return _to_rgb(im)  # inside: frame counts and conversions read the file too
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError) as e:
        raise LimitsError(f"image too large: {e}") from None
    except FileNotFoundError:
        raise
    except _DECODE_ERRORS as e:
        raise UnsupportedInputError(f"cannot read the image: {e}") from None


def _to_rgb(im: Image.Image) -> tuple[np.ndarray, list[str]]:
    notes: list[str] = []
    mode = im.mode
    if getattr(im, "n_frames", 1) > 1:
        notes.append(f"{im.n_frames} frames: coding the first only")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        if alpha.min() < 255:
            raise UnsupportedInputError(
                "the image has transparent pixels; sodec codes RGB only (flatten it onto a background first)"
            )
        notes.append(f"{mode}: opaque alpha channel dropped")
        im = rgba.convert("RGB")
    elif mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        notes.append(f"{mode}: high-bit-depth grayscale reduced to 8 bits and coded as RGB")
        g = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2), notes
    elif mode != "RGB":
        if mode in ("L", "1"):
            notes.append(f"{mode}: grayscale coded as RGB")
        else:
            notes.append(f"{mode}: converted to RGB")
        im = im.convert("RGB")
    arr = np.asarray(im, dtype=np.uint8)
    return np.ascontiguousarray(arr), notes


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def encode_image_file(arr: np.ndarray, suffix: str) -> bytes:
    """Encode a decoded image for writing; the format follows the output file's suffix."""
    fmt = {".png": "PNG", ".ppm": "PPM", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}.get(suffix.lower())
    if fmt is None:
        raise UnsupportedInputError(f"output suffix {suffix!r}: write .png, .ppm, .bmp or .tif (lossless)")
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format=fmt)
    return buf.getvalue()


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temp file in the same folder, then rename: never a partial file."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_write_via(Path(path), write)
