"""Classical codecs (JPEG, WebP, AVIF, JPEG XL) and the search for the quality matching a rate.

Rate-matched comparison: for a target bpp (in this project, the bpp of a sodec file of the same
image), :func:`search_quality` finds the integer quality whose *encoded file* is closest in bytes
to ``target_bpp * pixels / 8`` in a handful of encodes (a bracketing search on the quality scale,
then a walk to a closer neighbour; JPEG XL's quality is libjxl's monotone map onto its distance,
so this is a search on distance; its sizes dip slightly in places, which the walk absorbs).
An :class:`EncodeCache` per image makes each (codec, quality) encode once. bpp is always
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
import math
import time
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
    # Quality ranges over which file size grows (nearly) monotonically; the search brackets the
    # target in each and keeps the closest. One range for JPEG, WebP, AVIF; two for JPEG XL.
    segments: tuple[range, ...] = ()

    def monotone_segments(self) -> tuple[range, ...]:
        return self.segments or (self.qualities,)

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


# libjxl codes at 2x downsampling once the distance reaches 20 (enc_frame's automatic resampling,
# with the distance re-mapped to 6 + (d - 20) / 4), so its sizes restart there: on Kodak, quality
# 4 (distance 20.7) gives files 8-25 % larger than quality 5 (19.7).
JXL_RESAMPLE_DISTANCE = 20.0


def jxl_distance(quality: int) -> float:
    """libjxl's ``JxlEncoderDistanceFromQuality``: the Butteraugli distance a quality encodes at.

    Strictly decreasing in quality (25 at 0, 6.4 at 30, 1.0 at 90, 0 = lossless at 100), so a
    search over JPEG XL's qualities is a search over a grid of distances.
    """
    if quality >= 100:
        return 0.0
    if quality >= 30:
        return 0.1 + (100 - quality) * 0.09
    return 53.0 / 3000.0 * quality * quality - 23.0 / 20.0 * quality + 25.0


_JXL_FULL_RES = next(q for q in range(101) if jxl_distance(q) < JXL_RESAMPLE_DISTANCE)  # = 5


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
            "jxl",
            "JPEG XL",
            range(0, 101),
            _jxl_encode,
            _jxl_decode,
            {"effort": 7},
            _jxl_version,
            # below / above libjxl's resampling switch
            segments=(
                range(0, _JXL_FULL_RES),
                range(_JXL_FULL_RES, 101),
            ),
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


class EncodeCache:
    """Every encode of one image, by (codec, quality): each is made once per image.

    ``sodec evaluate`` keeps one per image, so the searches for several targets (one per sodec
    model, plus fixed bpp targets) share their encodes, and the chosen file's encode time is the
    one measured when it was made (no extra encode to time it). ``encodes[codec]`` counts the
    encodes actually run.
    """

    def __init__(self, image: np.ndarray, threads: int = 1) -> None:
        _check_image(image)
        self.image = image
        self.threads = threads
        self.files: dict[tuple[str, int], tuple[bytes, float]] = {}  # -> (file, encode seconds)
        self.encodes: dict[str, int] = {}

    def encode(self, codec: ClassicalCodec, quality: int) -> bytes:
        key = (codec.name, quality)
        if key not in self.files:
            t = time.perf_counter()
            data = codec.encode(self.image, quality, self.threads)
            self.files[key] = (data, time.perf_counter() - t)
            self.encodes[codec.name] = self.encodes.get(codec.name, 0) + 1
        return self.files[key][0]

    def seconds(self, codec: ClassicalCodec, quality: int) -> float:
        """Wall-clock seconds of the encode at ``quality`` (KeyError if it was never made)."""
        return self.files[(codec.name, quality)][1]


@dataclass(frozen=True)
class SearchResult:
    """The quality whose file is closest to the target size, its bytes, and what was tried."""

    codec: str
    quality: int
    data: bytes
    target_bytes: float
    tried: dict[int, int]  # quality -> file size in bytes, every quality this search looked at
    reachable: bool  # False: the target lies outside the sizes of the lowest..highest quality
    encodes: int  # encodes this search ran (qualities already in the cache are free)

    def bpp(self, pixels: int) -> float:
        return 8.0 * len(self.data) / pixels


def search_quality(
    codec: ClassicalCodec,
    image: np.ndarray,
    target_bpp: float,
    threads: int = 1,
    scan: bool = False,
    cache: EncodeCache | None = None,
) -> SearchResult:
    """The quality whose encoded size is closest to ``target_bpp`` (ties: the smaller file).

    A bracketing search in each of the codec's monotone segments (one, or two for JPEG XL):
    the segment's lowest quality first (if even it overshoots, it is the segment's answer; in a
    segment below the top one, its highest quality next, the answer if it undershoots), then,
    keeping ``size(lo) < target <= size(hi)``, probes interpolated on log file size between the
    bracket's ends (a bisection instead whenever an interpolated probe failed to halve the
    bracket, and while the top is still unencoded: the highest quality — lossless for JPEG XL —
    is only encoded when the target lies above every other size). The closest segment answer
    is then walked to a neighbour (q - 1 or q + 1) while that is strictly closer, which absorbs
    the small dips in libjxl's size curve. ``reachable`` is False when the target is below the
    smallest or above the largest size the search saw (= of all qualities, on monotone segments). About 5-9 encodes per image and codec
    on Kodak; ``scan=True`` encodes every quality and returns the closest of all (the reference
    the tests compare with).

    ``cache``: an :class:`EncodeCache` of this image shared with other searches; ``threads``
    is then the cache's.
    """
    _check_image(image)
    if not target_bpp > 0:
        raise UsageError(f"target bpp must be > 0, got {target_bpp}")
    if cache is None:
        cache = EncodeCache(image, threads)
    elif cache.image is not image and not np.array_equal(cache.image, image):
        raise UsageError("the encode cache holds another image")
    h, w = image.shape[:2]
    target = target_bpp * h * w / 8.0
    qs = list(codec.qualities)
    before = cache.encodes.get(codec.name, 0)
    tried: dict[int, int] = {}

    def size(i: int) -> int:
        tried[qs[i]] = len(cache.encode(codec, qs[i]))
        return tried[qs[i]]

    def better(i: int, j: int) -> bool:
        """Is index i strictly closer to the target than j (equal distance: the smaller file;
        equal sizes, which happen where qualities share a quantiser: the lower quality)?"""
        di, dj = abs(size(i) - target), abs(size(j) - target)
        return di < dj or (di == dj and (size(i), i) < (size(j), j))

    top = len(qs) - 1

    def bracket(seg: range) -> int:
        """Search one monotone segment: the index of its closest quality."""
        first, last = qs.index(seg[0]), qs.index(seg[-1])
        if size(first) >= target:
            return first
        if last < top and size(last) < target:  # a lower segment: its top is cheap to try first
            return last
        # invariant: size(lo) < target <= size(hi); hi = last + 1 stands for "above every size"
        lo, hi, interpolate = first, last + 1, False
        while hi - lo > 1:
            if interpolate and hi <= last:
                # file size grows roughly exponentially with quality: interpolate on log size
                s_lo, s_hi = math.log(size(lo)), math.log(size(hi))
                frac = (math.log(target) - s_lo) / (s_hi - s_lo) if s_hi > s_lo else 0.5
                mid = min(hi - 1, max(lo + 1, lo + round(frac * (hi - lo))))
            else:
                mid = (lo + hi) // 2
            width = hi - lo
            if size(mid) >= target:
                hi = mid
            else:
                lo = mid
            interpolate = hi - lo <= width // 2 or not interpolate
        return lo if hi > last or better(lo, hi) else hi

    if scan:
        best = 0
        for i in range(1, len(qs)):
            best = i if better(i, best) else best
    else:
        found = [bracket(seg) for seg in codec.monotone_segments()]
        best = found[0]
        for i in found[1:]:
            best = i if better(i, best) else best
    moved = not scan
    while moved:
        moved = False
        for nb in (best - 1, best + 1):
            if 0 <= nb <= top and better(nb, best):
                best, moved = nb, True
                break
    q = qs[best]
    # each segment's smallest file is its first quality, and any size above the target was seen
    reachable = min(tried.values()) <= target <= max(tried.values())
    return SearchResult(
        codec.name,
        q,
        cache.encode(codec, q),
        target,
        dict(sorted(tried.items())),
        reachable,
        cache.encodes.get(codec.name, 0) - before,
    )
