"""The path from bytes to integer symbols is deterministic (STYLE habit 5; docs/reliability.md).

The decoder must rebuild exactly the encoder's CDF indexes from z_hat, whatever the thread count
or batch size. Decoding checks it: ``api.decode_latents`` raises DesyncError when the symbols'
CRC differs from the one the encoder wrote. These tests also compare y_hat and the entropy
parameters w bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from sodec import api, container, errors
from sodec.image_io import read_image

SHARED = Path(__file__).resolve().parents[2] / "shared"
KODAK = SHARED / "data" / "kodak"
TINY = Path(__file__).resolve().parent / "data" / "codec-tiny-test.safetensors"
THREADS = (1, 2, 4)


@contextmanager
def num_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shipped() -> api.Model:
    try:
        return api.load_model()
    except errors.SodecError as e:
        pytest.skip(f"no shipped default model: {e}")


@pytest.fixture(scope="module", params=["tiny", "shipped"])
def model(request: pytest.FixtureRequest) -> api.Model:
    """The tiny test model (its y scales span the scale table) and the shipped default."""
    if request.param == "tiny":
        return api.load_model(TINY)
    return request.getfixturevalue("shipped")


def synthetic(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([xx * 255 // (width - 1), yy * 255 // (height - 1), (xx ^ yy) & 255], -1)
    return np.clip(img + rng.integers(-30, 31, img.shape), 0, 255).astype(np.uint8)


def kodak_files() -> list[Path]:
    return sorted(KODAK.glob("kodim*.png")) if KODAK.is_dir() else []


def check_thread_invariance(model: api.Model, data: bytes) -> None:
    """Decode ``data`` at 1, 2 and 4 threads: same symbols (CRC), same y_hat and w, bit for bit."""
    ref = None
    for n in THREADS:
        with num_threads(n):
            lat = api.decode_latents(data, model)  # DesyncError if the symbols differ
        if ref is None:
            ref = lat
            continue
        assert torch.equal(lat.y_hat, ref.y_hat), f"y_hat differs at {n} threads"
        assert torch.equal(lat.w, ref.w), f"entropy parameters differ at {n} threads"


def z_hat_of(model: api.Model, data: bytes) -> torch.Tensor:
    """The decoded hyper-latent of a (valid) file, as the decoder computes it."""
    box = container.unpack(data)
    wp, hp = api.padded_size(box.header.width, box.header.height, box.header.margin)
    with torch.inference_mode():
        return model.codec.entropy_bottleneck.decompress([box.streams[0]], (hp // 64, wp // 64))


def check_batch_invariance(model: api.Model, files: list[bytes]) -> None:
    """h_s on a batch of z_hats gives each image the same w and CDF indexes as on its own."""
    codec = model.codec
    zs = [z_hat_of(model, d) for d in files]
    batch = torch.cat(zs + zs[:1])  # batch sizes len(files) + 1 and 1
    for n in THREADS:
        with num_threads(n), torch.inference_mode():
            w_batch = codec.hyper_synthesis(batch)
            for i, z in enumerate(zs):
                w_one = codec.hyper_synthesis(z)
                assert torch.equal(w_batch[i : i + 1], w_one), f"w of image {i} differs in a batch ({n} threads)"
                scales = codec.split_params(w_one)[0]
                idx_one = codec.gaussian_conditional.build_indexes(scales)
                idx_batch = codec.gaussian_conditional.build_indexes(codec.split_params(w_batch[i : i + 1])[0])
                assert torch.equal(idx_one, idx_batch)


def test_symbols_identical_across_threads_and_batches(model: api.Model) -> None:
    """Fast variant: 2 Kodak images (or 2 synthetic ones when the data folder is absent)."""
    paths = kodak_files()[:2]
    images = [read_image(p)[0] for p in paths] if paths else [synthetic(256, 384, s) for s in (1, 2)]
    files = [api.compress(model, im) for im in images]
    for data in files:
        check_thread_invariance(model, data)
    check_batch_invariance(model, files)


@pytest.mark.slow
@pytest.mark.needs_data
def test_kodak_symbols_identical_across_threads(shipped: api.Model) -> None:
    """All 24 Kodak images: encode, then decode at 1/2/4 threads; batches of same-size images."""
    paths = kodak_files()
    if len(paths) < 24:
        pytest.skip(f"Kodak not found in {KODAK}")
    by_size: dict[tuple[int, ...], list[bytes]] = {}
    for p in paths:
        image = read_image(p)[0]
        data = api.compress(shipped, image)
        check_thread_invariance(shipped, data)
        by_size.setdefault(image.shape, []).append(data)
    for files in by_size.values():
        check_batch_invariance(shipped, files[:6])


def test_desync_is_refused_not_decoded(model: api.Model) -> None:
    """If a decoder ever derived other CDF indexes, the symbols CRC would stop it: simulate one."""
    data = api.compress(model, synthetic(128, 128, 3))
    codec = model.codec
    real = codec.hyper_synthesis

    def other_machine(z_hat: torch.Tensor) -> torch.Tensor:
        scales, means = codec.split_params(real(z_hat))
        return torch.cat([scales * 1.3 + 0.5, means], dim=1)  # other CDF indexes, same means

    codec.hyper_synthesis = other_machine  # type: ignore[method-assign]
    try:
        with pytest.raises(errors.DesyncError):
            api.decompress(data, model)
    finally:
        del codec.hyper_synthesis


def test_shipped_default_pixels_within_contract_across_threads(shipped: api.Model) -> None:
    """The decoding contract (docs/reliability.md) with the shipped default model: decoding one
    file at 1, 2 and 4 threads gives the same symbols and pixels within 2 levels and 50 dB."""
    from sodec import contract

    case = SHARED / "cases" / "photo-65x130.png"
    image = read_image(case)[0] if case.is_file() else synthetic(130, 65, 7)
    data = api.compress(shipped, image)
    decoded = {}
    for n in THREADS:
        with num_threads(n):
            decoded[n] = api.decompress(data, shipped)
    for n in THREADS[1:]:
        diff = contract.compare_pixels(decoded[n], decoded[THREADS[0]])
        assert diff.conforms, f"{n} threads vs {THREADS[0]}: {diff}"
