"""The mean-colour stream (sodec.mean_colour, docs/format.md "Mean colour")."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import random_image
from sodec import api, container, mean_colour
from sodec.errors import FormatError

TEST_MODEL = Path(__file__).resolve().parent / "data" / "codec-tiny-test.safetensors"


@pytest.fixture(scope="module")
def model() -> api.Model:
    return api.load_model(TEST_MODEL)


def _mean(image: np.ndarray) -> np.ndarray:
    return image.reshape(-1, 3).astype(np.float64).mean(0)


def test_stream_round_trip_and_units() -> None:
    image = np.zeros((2, 2, 3), np.uint8)
    image[0, 0] = (255, 1, 0)  # means 63.75, 0.25, 0
    stream = mean_colour.encode(image)
    assert len(stream) == mean_colour.STREAM_BYTES
    assert struct.unpack("<3H", stream) == (4080, 16, 0)
    assert mean_colour.decode(stream) == (63.75, 0.25, 0.0)
    assert mean_colour.decode(mean_colour.encode(np.full((3, 5, 3), 255, np.uint8))) == (255.0, 255.0, 255.0)


@pytest.mark.parametrize(
    "stream, message",
    [(bytes(5), "5 bytes"), (bytes(7), "7 bytes"), (struct.pack("<3H", 0, 255 * 64 + 1, 0), "above 255")],
)
def test_malformed_stream_is_a_format_error(stream: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        mean_colour.decode(stream)


def test_match_reaches_the_mean_despite_clipping() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 40, 50, generator=g)
    x[:, 0] = 0.98  # red nearly saturated: a shift up clips most of it
    target = (252.0, 100.0, 160.0)  # levels; the input's means are ~250, ~127, ~127
    out = mean_colour.match(x.clone(), target)
    assert out.min() >= 0 and out.max() <= 1
    got = out.mean(dim=(0, 2, 3)).double() * 255
    assert torch.allclose(got, torch.tensor(target, dtype=torch.float64), atol=0.05), got
    # Texture is kept where nothing clips: one offset per channel.
    diff = out[0, 2] - x[0, 2]
    inside = (out[0, 2] > 0) & (out[0, 2] < 1)
    assert float(diff[inside].std()) < 1e-6


def test_match_is_stable_when_nearly_everything_clips() -> None:
    """A saturated decode (as an untrained model makes) must not turn float noise into visible
    differences: decodes on two machines stay within the decoding contract's 2 levels."""
    g = torch.Generator().manual_seed(1)
    x = torch.ones(1, 3, 64, 64)
    x[..., :2, :] = torch.rand(1, 3, 2, 64, generator=g)  # 3 % of the samples below 1
    a = mean_colour.match(x.clone(), (200.0, 30.0, 240.0))
    b = mean_colour.match((x + 1e-5 * torch.randn(x.shape, generator=g)).clamp(0, 1), (200.0, 30.0, 240.0))
    assert float((a - b).abs().max()) * 255 < 0.5


def test_match_works_on_a_cropped_view() -> None:
    x = torch.full((1, 3, 64, 64), 0.5)
    view = x[..., :37, :50]
    mean_colour.match(view, (100.0, 100.0, 100.0))
    assert torch.allclose(x[..., :37, :50], torch.full_like(view, 100 / 255))
    assert torch.equal(x[..., 37:, :], torch.full_like(x[..., 37:, :], 0.5))  # padding untouched


def test_files_carry_the_stream_and_decode_to_the_original_mean(model: api.Model) -> None:
    # The tiny test model is untrained: without the stream its decode's mean is far off.
    image = random_image(70, 90, seed=3)
    data = api.compress(model, image)
    box = container.unpack(data)
    assert len(box.streams) == 3 and box.streams[2] == mean_colour.encode(image)
    assert api.info(data)["streams"]["mean_colour"] == 6
    decoded = api.decompress(data, model)
    assert np.abs(_mean(decoded) - _mean(image)).max() <= 0.5

    # The same file as sodec <= 0.1 wrote it (no third stream): decoded as before, unshifted.
    old = mean_colour.strip(data)
    assert len(container.unpack(old).streams) == 2 and mean_colour.strip(old) == old
    lat = api.decode_latents(old, model)
    assert lat.mean_colour is None
    with torch.inference_mode():
        raw = api.to_uint8(model.module.reconstruct(lat.y_hat, lat.w)[..., :70, :90])
    assert np.array_equal(api.decompress(old, model), raw)
    assert np.abs(_mean(raw) - _mean(image)).max() > 3  # what the stream repairs


def test_mean_colour_costs_six_bytes_of_the_files_bpp(model: api.Model) -> None:
    image = random_image(64, 64, seed=4)
    data = api.compress(model, image)
    old = mean_colour.strip(data)
    assert len(data) - len(old) == 6 + 1  # the stream and its length varint
    assert api.info(data)["bpp"] == pytest.approx(8 * len(data) / (64 * 64))
