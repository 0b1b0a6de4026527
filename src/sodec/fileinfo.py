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


# Files with the margin flag (container.FLAG_MARGIN) keep at least this many replicated pixels on
# every side of the picture: a codec trained on crops of larger photos codes the picture's own
# edge (a scan's frame, a horizon) as well as its inside, instead of against zero padding
# (docs/design.md, "Margin").
MARGIN = 8


def canvas(width: int, height: int, margin: bool = False) -> tuple[int, int, int, int]:
    """The area the codec works on and where the picture sits in it: (Wp, Hp, left, top) in px.

    Without a margin the picture sits at (0, 0) and the canvas is (W, H) rounded up to multiples
    of PAD_MULTIPLE; with one, (W + 2 MARGIN, H + 2 MARGIN) is rounded up and the picture centred
    (the left/top offsets round down), every side padded by edge replication.
    """
    m = MARGIN if margin else 0
    wp = -(-(width + 2 * m) // PAD_MULTIPLE) * PAD_MULTIPLE
    hp = -(-(height + 2 * m) // PAD_MULTIPLE) * PAD_MULTIPLE
    return (wp, hp, (wp - width) // 2, (hp - height) // 2) if margin else (wp, hp, 0, 0)


def padded_size(width: int, height: int, margin: bool = False) -> tuple[int, int]:
    """(Wp, Hp): the area the codec actually works on (:func:`canvas`)."""
    return canvas(width, height, margin)[:2]


def check_size(width: int, height: int, max_pixels: int | None, verb: str = "coded", margin: bool = False) -> None:
    """Refuse a side outside the format's range (UsageError) or a padded area over ``max_pixels``
    (LimitsError; None = no limit); :func:`sodec.api.check_encode_size` is this for encoding."""
    if not (1 <= height <= container.MAX_SIDE and 1 <= width <= container.MAX_SIDE):
        raise UsageError(f"image size {width}x{height} out of range")
    wp, hp = padded_size(width, height, margin)
    if max_pixels is not None and wp * hp > max_pixels:
        raise LimitsError(
            f"image of {width}x{height} is {verb} padded to {wp}x{hp}, over the limit of {max_pixels} pixels"
            " (--max-pixels 0 lifts it)"
        )


def check_file(data: bytes, max_pixels: int | None = container.DEFAULT_MAX_PIXELS) -> container.Header:
    """The checks :func:`sodec.api.decompress` makes before it needs a model: container (CRCs,
    lengths, pixel limit) and the padded area. Returns the header; raises a SodecError."""
    header = container.unpack(data, max_pixels).header
    check_size(header.width, header.height, max_pixels, "decoded", header.margin)
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
        "padded_to": list(padded_size(h.width, h.height, h.margin)),
        "padding": f"edge-replicate, centred, >= {MARGIN} px each side" if h.margin else "edge-replicate, bottom/right",
        "grayscale": h.grayscale,
        "entropy_coder": container.CODERS[h.coder],
        "streams": dict(zip(STREAM_NAMES[: len(h.stream_lengths)], h.stream_lengths, strict=True))
        if len(h.stream_lengths) in (2, 3)
        else list(h.stream_lengths),
        "header_bytes": h.header_len,
        "file_bytes": box.file_size,
        "bpp": box.bpp(),
    }
