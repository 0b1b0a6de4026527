"""Classical codecs: round trips, bpp from the encoded bytes, and the rate-matching quality search
(checked against an exhaustive scan of every quality: no other quality is closer to the target,
and it takes a handful of encodes)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from sodec import baselines
from sodec.errors import UsageError

SHARED = Path(__file__).resolve().parents[2] / "shared"


def synthetic(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour blocks plus texture: compressible at low qualities, costly at high ones."""
    rng = np.random.default_rng(seed)
    blocks = np.kron(rng.random((4, 4, 3)), np.ones((h // 4 + 1, w // 4 + 1, 1)))[:h, :w]
    return (blocks * 190 + rng.random((h, w, 3)) * 65).round().clip(0, 255).astype(np.uint8)


def available(name: str) -> baselines.ClassicalCodec:
    reason = baselines.unavailable_reason(name)
    if reason is not None:
        pytest.skip(reason)
    return baselines.CODECS[name]


MAX_ENCODES = 12  # worst case seen on these images is 10; Kodak averages ~6 per image and codec


def exhaustive_sizes(codec: baselines.ClassicalCodec, image: np.ndarray) -> dict[int, int]:
    return {q: len(codec.encode(image, q)) for q in codec.qualities}


def check_search(codec: baselines.ClassicalCodec, image: np.ndarray, exact: bool = True) -> None:
    """``exact``: the search's file is as close as the best of all qualities; else (a size curve
    with dips) as close as its neighbours'."""
    sizes = exhaustive_sizes(codec, image)
    pixels = image.shape[0] * image.shape[1]
    lo, hi = min(sizes.values()), max(sizes.values())
    # targets inside the range (between existing sizes and exactly on one) and outside it
    ordered = sorted(sizes.values())
    targets = [
        ordered[len(ordered) // 5],
        (ordered[10] + ordered[11]) / 2,
        ordered[len(ordered) // 2] + 0.4,
        (lo + hi) / 2,
        lo * 0.5,
        hi * 1.5,
    ]
    for target_bytes in targets:
        res = baselines.search_quality(codec, image, 8 * target_bytes / pixels)
        got = abs(len(res.data) - target_bytes)
        near = (res.quality - 1, res.quality, res.quality + 1)
        best = min(abs(s - target_bytes) for q, s in sizes.items() if exact or q in near)
        assert got == pytest.approx(best, abs=1e-6), (codec.name, target_bytes, res.quality, sizes)
        assert len(res.data) == sizes[res.quality]  # the bytes are the real encode at that quality
        assert res.bpp(pixels) == 8 * len(res.data) / pixels
        assert res.reachable == (lo <= target_bytes <= hi)
        assert res.encodes == len(res.tried) <= MAX_ENCODES  # a search, not a scan


def check_one_step(codec: baselines.ClassicalCodec, image: np.ndarray) -> None:
    """The bisection alone (even on a codec whose sizes dip): no neighbouring quality is closer."""
    sizes = exhaustive_sizes(codec, image)
    pixels = image.shape[0] * image.shape[1]
    qs = list(codec.qualities)
    for target_bytes in sorted(sizes.values())[5::15]:
        target_bytes += 0.3
        res = baselines.search_quality(codec, image, 8 * target_bytes / pixels, scan=False)
        i = qs.index(res.quality)
        for nb in (i - 1, i + 1):
            if 0 <= nb < len(qs):
                closer = abs(sizes[qs[nb]] - target_bytes) < abs(len(res.data) - target_bytes)
                assert not closer, (codec.name, target_bytes, res.quality, qs[nb])


@pytest.mark.parametrize("name", list(baselines.CODECS))
def test_quality_search_is_closest_in_bytes(name):
    # On 40x56 pixels of noise libjxl's sizes dip by several qualities (e.g. 362 bytes at q 51,
    # 357 at 50, 360 at 49): no search short of a scan is exact there; on photos it is (below).
    check_search(available(name), synthetic(40, 56), exact=name != "jxl")


@pytest.mark.parametrize("name", list(baselines.CODECS))
def test_bisection_is_within_one_quality_step(name):
    check_one_step(available(name), synthetic(40, 56, seed=3))


def kodak_crop(name: str, top: int, left: int, side: int = 96) -> np.ndarray:
    path = SHARED / "data" / "kodak" / name
    if not path.is_file():
        pytest.skip(f"Kodak absent: {path}")
    from sodec.image_io import read_image

    return read_image(path)[0][top : top + side, left : left + side].copy()


@pytest.mark.needs_data
@pytest.mark.parametrize("name", list(baselines.CODECS))
@pytest.mark.parametrize(("image", "top", "left"), [("kodim23.png", 160, 280), ("kodim01.png", 240, 80)])
def test_quality_search_on_kodak_crops_equals_the_scan(name, image, top, left):
    """On real photos (two 160x160 crops, every codec, JPEG XL included): the search returns
    exactly the exhaustive scan's file, in a handful of encodes."""
    codec = available(name)
    crop = kodak_crop(image, top, left, side=160)
    pixels = crop.shape[0] * crop.shape[1]
    scan_cache = baselines.EncodeCache(crop)  # the scans of all targets share one set of encodes
    for bpp in (0.15, 0.25, 0.4, 0.6, 0.9, 1.3, 2.0, 3.0):
        fast = baselines.search_quality(codec, crop, bpp)
        full = baselines.search_quality(codec, crop, bpp, scan=True, cache=scan_cache)
        assert (fast.quality, fast.data, fast.reachable) == (full.quality, full.data, full.reachable), (name, bpp)
        assert fast.encodes <= MAX_ENCODES, (name, bpp, fast.tried)
        assert fast.bpp(pixels) == full.bpp(pixels)
    assert len(scan_cache.files) == len(codec.qualities)


def test_encode_cache_makes_each_encode_once():
    codec = available("webp")
    image = synthetic(48, 64, seed=5)
    cache = baselines.EncodeCache(image)
    first = baselines.search_quality(codec, image, 1.0, cache=cache)
    assert first.encodes == cache.encodes["webp"] == len(cache.files) > 0
    again = baselines.search_quality(codec, image, 1.0, cache=cache)  # e.g. a second model, same rate
    assert again.encodes == 0 and again.data == first.data
    near = baselines.search_quality(codec, image, 1.05, cache=cache)
    assert near.encodes < first.encodes  # shares the first search's encodes
    assert cache.seconds(codec, first.quality) > 0
    with pytest.raises(UsageError):
        baselines.search_quality(codec, synthetic(48, 64, seed=6), 1.0, cache=cache)


def test_jxl_quality_is_libjxl_distance():
    codec = available("jxl")
    import imagecodecs

    image = synthetic(32, 40, seed=2)
    d = [baselines.jxl_distance(q) for q in codec.qualities]
    assert d[0] == 25.0 and d[-1] == 0.0 and all(a > b for a, b in itertools.pairwise(d))
    for q in (0, 17, 30, 64, 95):  # imagecodecs' ``level`` is that distance
        by_distance = imagecodecs.jpegxl_encode(image, distance=baselines.jxl_distance(q), effort=7, numthreads=1)
        assert codec.encode(image, q) == bytes(by_distance), q


@pytest.mark.parametrize("name", list(baselines.CODECS))
def test_round_trip_keeps_size_and_type(name):
    codec = available(name)
    image = synthetic(23, 37)  # odd sizes: chroma subsampling must not change the shape
    data = codec.encode(image, codec.qualities[len(codec.qualities) // 2])
    out = codec.decode(data)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - image.astype(int)).mean() < 40  # a picture of the input, not noise
    assert codec.settings()["library"]


def test_bad_input_is_a_typed_error():
    codec = baselines.CODECS["jpeg"]
    image = synthetic(16, 16)
    with pytest.raises(UsageError):
        codec.encode(image.astype(np.float32), 50)
    with pytest.raises(UsageError):
        codec.encode(image, 0)  # JPEG qualities are 1..100
    with pytest.raises(UsageError):
        baselines.search_quality(codec, image, 0.0)
    with pytest.raises(UsageError):
        baselines.get("png")
