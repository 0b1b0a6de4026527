"""Classical codecs: round trips, bpp from the encoded bytes, and the rate-matching quality search
(checked against an exhaustive scan of every quality: no other quality is closer to the target)."""

from __future__ import annotations

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


def exhaustive_sizes(codec: baselines.ClassicalCodec, image: np.ndarray) -> dict[int, int]:
    return {q: len(codec.encode(image, q)) for q in codec.qualities}


def check_search(codec: baselines.ClassicalCodec, image: np.ndarray) -> None:
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
        best = min(abs(s - target_bytes) for s in sizes.values())
        assert got == pytest.approx(best, abs=1e-6), (codec.name, target_bytes, res.quality, sizes)
        assert len(res.data) == sizes[res.quality]  # the bytes are the real encode at that quality
        assert res.bpp(pixels) == 8 * len(res.data) / pixels
        assert res.reachable == (lo <= target_bytes <= hi)
        if codec.monotone:
            assert len(res.tried) < len(sizes) // 3  # a bisection, not a scan


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
    check_search(available(name), synthetic(40, 56))


@pytest.mark.parametrize("name", list(baselines.CODECS))
def test_bisection_is_within_one_quality_step(name):
    check_one_step(available(name), synthetic(40, 56, seed=3))


@pytest.mark.needs_data
@pytest.mark.parametrize("name", list(baselines.CODECS))
def test_quality_search_on_a_kodak_crop(name):
    path = SHARED / "data" / "kodak" / "kodim23.png"
    if not path.is_file():
        pytest.skip(f"Kodak absent: {path}")
    from sodec.image_io import read_image

    image = read_image(path)[0][200:296, 300:396].copy()  # 96x96 crop
    check_search(available(name), image)


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
