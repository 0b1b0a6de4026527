"""What a .sodec file holds, and size checks that need no model: all without importing torch.

``sodec info`` and the CLI's checks before a model loads use these, so they answer in a blink
(``python -X importtime -m sodec.cli info a.sodec`` shows no torch). :func:`info` returns the
dict :func:`sodec.api.info` returns (that one calls this).
"""

from __future__ import annotations

from typing import Any

from . import container, registry
from .errors import LimitsError, SodecError, UsageError

# The codec works on images padded to this multiple (z sits at stride 64); sodec.api uses it too.
PAD_MULTIPLE = 64
STREAM_NAMES = ("z", "y", "mean_colour")  # in file order; files of sodec <= 0.1 hold the first two


def padded_size(width: int, height: int) -> tuple[int, int]:
    """(W, H) rounded up to multiples of PAD_MULTIPLE: the area the codec actually works on."""
    return -(-width // PAD_MULTIPLE) * PAD_MULTIPLE, -(-height // PAD_MULTIPLE) * PAD_MULTIPLE


def check_size(width: int, height: int, max_pixels: int | None, verb: str = "coded") -> None:
    """Refuse a side outside the format's range (UsageError) or a padded area over ``max_pixels``
    (LimitsError; None = no limit); :func:`sodec.api.check_encode_size` is this for encoding."""
    if not (1 <= height <= container.MAX_SIDE and 1 <= width <= container.MAX_SIDE):
        raise UsageError(f"image size {width}x{height} out of range")
    wp, hp = padded_size(width, height)
    if max_pixels is not None and wp * hp > max_pixels:
        raise LimitsError(
            f"image of {width}x{height} is {verb} padded to {wp}x{hp}, over the limit of {max_pixels} pixels"
            " (--max-pixels 0 lifts it)"
        )


def check_file(data: bytes, max_pixels: int | None = container.DEFAULT_MAX_PIXELS) -> container.Header:
    """The checks :func:`sodec.api.decompress` makes before it needs a model: container (CRCs,
    lengths, pixel limit) and the padded area. Returns the header; raises a SodecError."""
    header = container.unpack(data, max_pixels).header
    check_size(header.width, header.height, max_pixels, "decoded")
    return header


def info(data: bytes, max_pixels: int | None = container.DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """Header fields, sizes, and bpp from the file's bytes (header included); raises SodecError."""
    box = container.unpack(data, max_pixels)
    h = box.header
    known: str | None
    try:
        known = registry.get(h.model_id).kind
    except SodecError:
        known = None
    return {
        "format_version": h.version,
        "model": h.model_id,
        "model_installed": known is not None,
        "model_kind": known,
        "weights_id": h.weights_id.hex(),
        "width": h.width,
        "height": h.height,
        "padded_to": list(padded_size(h.width, h.height)),
        "padding": "edge-replicate, bottom/right",
        "grayscale": h.grayscale,
        "entropy_coder": container.CODERS[h.coder],
        "streams": dict(zip(STREAM_NAMES[: len(h.stream_lengths)], h.stream_lengths, strict=True))
        if len(h.stream_lengths) in (2, 3)
        else list(h.stream_lengths),
        "header_bytes": h.header_len,
        "file_bytes": box.file_size,
        "bpp": box.bpp(),
    }
