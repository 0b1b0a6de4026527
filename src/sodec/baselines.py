"""Classical codecs (JPEG, WebP, AVIF, JPEG XL) and the search for the quality matching a rate.

Rate-matched comparison: for a target bpp (in this project, the bpp of a sodec file of the same
image), :func:`search_quality` finds the integer quality whose *encoded file* is closest in bytes
to ``target_bpp * pixels / 8`` (bisection where file size grows monotonically with quality, a
scan of every quality for JPEG XL, whose sizes dip in places). bpp is always
8 * len(file) / pixels, container headers included.

Encoders and settings (recorded in every result through :meth:`ClassicalCodec.settings`):

- jpeg: Pillow (libjpeg-turbo), quality 1..100, 4:2:0 chroma, optimised Huffman tables, baseline
  (not progressive);
- webp: Pillow (libwebp), quality 0..100, lossy, method 6 (slowest, smallest);
- avif: Pillow's built-in AVIF (libavif + aom), quality 0..100, 4:2:0, speed 6 (Pillow's default);
- jxl: imagecodecs (libjxl), quality ("level") 0..100, effort 7 (libjxl's default); 100 = lossless.

Encoders run on ``threads`` threads (default 1; :mod:`sodec.evaluation` passes torch's thread
count, so classical and learned codecs get the same CPU share).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .errors import UsageError


@dataclass(frozen=True)
class ClassicalCodec:
    """One codec: integer ``qualities`` (ascending = larger files) and encode/decode on uint8 RGB."""

    name: str
    label: str
    qualities: range
    encode_fn: Callable[[np.ndarray, int, int], bytes]  # (image, quality, threads) -> file bytes
    decode_fn: Callable[[bytes, int], np.ndarray]  # (file bytes, threads) -> (H, W, 3) uint8
    options: dict[str, Any] = field(default_factory=dict)
    library: Callable[[], str] = lambda: ""
    # File size never shrinks as quality rises (checked on Kodak for JPEG, WebP, AVIF). libjxl's
    # quality -> distance mapping has small dips (e.g. q 30..35 on kodim23), so JXL is scanned.
    monotone: bool = True

    def encode(self, image: np.ndarray, quality: int, threads: int = 1) -> bytes:
        _check_image(image)
        if quality not in self.qualities:
            raise UsageError(
                f"{self.name}: quality {quality} outside {self.qualities.start}..{self.qualities.stop - 1}"
            )
        return self.encode_fn(image, quality, threads)

    def decode(self, data: bytes, threads: int = 1) -> np.ndarray:
        out = self.decode_fn(data, threads)
        return np.ascontiguousarray(out, dtype=np.uint8)

    def settings(self) -> dict[str, Any]:
        return {"library": self.library(), **self.options}


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise UsageError(f"codecs take (H, W, 3) uint8 RGB arrays, got {getattr(image, 'shape', type(image))}")


def _pillow_encode(fmt: str, **opts: Any) -> Callable[[np.ndarray, int, int], bytes]:
    def encode(image: np.ndarray, quality: int, threads: int) -> bytes:
        buf = io.BytesIO()
        extra = {"max_threads": threads} if fmt == "AVIF" else {}
        Image.fromarray(image, "RGB").save(buf, format=fmt, quality=quality, **opts, **extra)
        return buf.getvalue()

    return encode


def _pillow_decode(data: bytes, threads: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _pillow_version(feature: str) -> Callable[[], str]:
    def version() -> str:
        from PIL import __version__, features

        text = f"Pillow {__version__}, {feature} {features.version(feature)}"
        if feature == "avif":
            from PIL import _avif

            text += f" ({_avif.codec_versions()})"  # which AV1 encoder libavif uses (aom, ...)
        return text

    return version


def _jxl_encode(image: np.ndarray, quality: int, threads: int) -> bytes:
    import imagecodecs

    # ``level`` is libjxl's quality (JxlEncoderDistanceFromQuality): 100 -> distance 0 (lossless).
    return bytes(imagecodecs.jpegxl_encode(image, level=quality, effort=7, numthreads=threads))


def _jxl_decode(data: bytes, threads: int) -> np.ndarray:
    import imagecodecs

    return imagecodecs.jpegxl_decode(data, numthreads=threads)


def _jxl_version() -> str:
    import imagecodecs

    return f"imagecodecs {imagecodecs.__version__}, {imagecodecs.jpegxl_version()}"


CODECS: dict[str, ClassicalCodec] = {
    c.name: c
    for c in (
        ClassicalCodec(
            "jpeg",
            "JPEG",
            range(1, 101),
            _pillow_encode("JPEG", subsampling="4:2:0", optimize=True),
            _pillow_decode,
            {"subsampling": "4:2:0", "optimize": True},
            _pillow_version("libjpeg_turbo"),
        ),
        ClassicalCodec(
            "webp",
            "WebP",
            range(0, 101),
            _pillow_encode("WEBP", method=6),
            _pillow_decode,
            {"method": 6, "lossless": False},
            _pillow_version("webp"),
        ),
        ClassicalCodec(
            "avif",
            "AVIF",
            range(0, 101),
            _pillow_encode("AVIF", speed=6, subsampling="4:2:0"),
            _pillow_decode,
            {"speed": 6, "subsampling": "4:2:0"},
            _pillow_version("avif"),
        ),
        ClassicalCodec(
            "jxl", "JPEG XL", range(0, 101), _jxl_encode, _jxl_decode, {"effort": 7}, _jxl_version, monotone=False
        ),
    )
}


def unavailable_reason(name: str) -> str | None:
    """None when ``name`` can encode here, else why not (unknown name, library built without it)."""
    if name not in CODECS:
        return f"unknown codec {name!r}; known: {', '.join(CODECS)}"
    from PIL import features

    if name in ("webp", "avif") and not features.check(name):
        return f"this Pillow build has no {name.upper()} support (PIL.features.check({name!r}) is False)"
    if name == "jxl":
        try:
            import imagecodecs

            if not imagecodecs.JPEGXL.available:
                return "imagecodecs was built without JPEG XL"
        except ImportError:
            return "imagecodecs is not installed"
    return None


def get(name: str) -> ClassicalCodec:
    reason = unavailable_reason(name)
    if reason is not None:
        raise UsageError(reason)
    return CODECS[name]


@dataclass(frozen=True)
class SearchResult:
    """The quality whose file is closest to the target size, its bytes, and what was tried."""

    codec: str
    quality: int
    data: bytes
    target_bytes: float
    tried: dict[int, int]  # quality -> file size in bytes
    reachable: bool  # False: the target lies outside the sizes of the lowest..highest quality

    def bpp(self, pixels: int) -> float:
        return 8.0 * len(self.data) / pixels


def search_quality(
    codec: ClassicalCodec, image: np.ndarray, target_bpp: float, threads: int = 1, scan: bool | None = None
) -> SearchResult:
    """The quality whose encoded size is closest to ``target_bpp`` (ties: the smaller file).

    ``scan`` (default: for codecs not known to be monotone) encodes every quality: the result
    is then the closest of all. Otherwise a bisection over the monotone size curve finds the two
    qualities bracketing the target in ~log2(100) = 7 encodes, and the answer is walked to a
    neighbour (q - 1 or q + 1) while that is closer: no quality one step away is closer, and
    where sizes are monotone no quality at all is.
    """
    _check_image(image)
    if not target_bpp > 0:
        raise UsageError(f"target bpp must be > 0, got {target_bpp}")
    h, w = image.shape[:2]
    target = target_bpp * h * w / 8.0
    qs = list(codec.qualities)
    files: dict[int, bytes] = {}

    def size(i: int) -> int:
        if qs[i] not in files:
            files[qs[i]] = codec.encode(image, qs[i], threads)
        return len(files[qs[i]])

    def better(i: int, j: int) -> bool:
        """Is index i strictly closer to the target than j (equal distance: the smaller file)?"""
        di, dj = abs(size(i) - target), abs(size(j) - target)
        return di < dj or (di == dj and size(i) < size(j))

    lo, hi = 0, len(qs) - 1
    if scan if scan is not None else not codec.monotone:
        best = 0
        for i in range(1, len(qs)):
            best = i if better(i, best) else best
    elif size(hi) <= target:
        best = hi
    elif size(lo) >= target:
        best = lo
    else:
        while hi - lo > 1:  # invariant: size(lo) < target <= size(hi)
            mid = (lo + hi) // 2
            if size(mid) >= target:
                hi = mid
            else:
                lo = mid
        best = hi if better(hi, lo) else lo
    moved = True
    while moved:
        moved = False
        for nb in (best - 1, best + 1):
            if 0 <= nb < len(qs) and better(nb, best):
                best, moved = nb, True
                break
    q = qs[best]
    reachable = min(size(0), size(len(qs) - 1)) <= target <= max(size(0), size(len(qs) - 1))
    return SearchResult(codec.name, q, files[q], target, {k: len(v) for k, v in sorted(files.items())}, reachable)
