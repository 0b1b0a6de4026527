"""The replicated margin (container flag bit 3, ``fileinfo.canvas``; docs/format.md "Margin")."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sodec import api, container, fileinfo, mean_colour, registry
from sodec.cli import main
from sodec.errors import LimitsError


@pytest.fixture(scope="module")
def codec() -> api.Model:
    return api.load_model("codec-small-q2")


def _ramp(h: int, w: int) -> np.ndarray:
    """(H, W, 3) uint8 smooth image: any shift of the decoded picture shows as a large error."""
    y, x = np.mgrid[:h, :w]
    img = np.stack([255 * x / (w - 1), 255 * y / (h - 1), 128 + 0 * x], -1)
    return img.round().astype(np.uint8)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(float) - b) ** 2)))


@pytest.mark.parametrize(
    ("w", "h", "margin", "expected"),
    [
        (768, 512, False, (768, 512, 0, 0)),
        (768, 512, True, (832, 576, 32, 32)),
        (100, 37, False, (128, 64, 0, 0)),
        (100, 37, True, (128, 64, 14, 13)),
        (48, 48, True, (64, 64, 8, 8)),
        (49, 1, True, (128, 64, 39, 31)),
    ],
)
def test_canvas_centres_the_picture_with_at_least_the_margin_on_every_side(w, h, margin, expected) -> None:
    wp, hp, left, top = got = fileinfo.canvas(w, h, margin)
    assert got == expected
    assert wp % fileinfo.PAD_MULTIPLE == 0 and hp % fileinfo.PAD_MULTIPLE == 0
    if margin:
        assert min(left, top, wp - w - left, hp - h - top) >= fileinfo.MARGIN


def test_a_margin_file_decodes_to_the_picture_in_place(codec: api.Model) -> None:
    img = _ramp(37, 100)
    plain = api.compress(codec, img, margin=False)
    framed = api.compress(codec, img, margin=True)
    assert not container.parse_header(plain).margin and container.parse_header(framed).margin
    dec = api.decompress(framed, codec)
    assert dec.shape == img.shape
    # A picture cropped from the wrong place in the canvas (shifted by even a few px) loses
    # far more than a dB on this ramp; in place, the margin costs nothing in quality.
    assert _psnr(img, dec) >= _psnr(img, api.decompress(plain, codec)) - 1.0
    info = api.info(framed)
    assert info["padded_to"] == [128, 64] and "centred" in info["padding"]


def test_stripping_the_mean_colour_keeps_the_margin(codec: api.Model) -> None:
    img = _ramp(40, 72)
    data = api.compress(codec, img, margin=True)
    stripped = mean_colour.strip(data)
    assert container.parse_header(stripped).margin
    assert api.decompress(stripped, codec).shape == img.shape


def test_the_margin_counts_against_the_pixel_limit(codec: api.Model) -> None:
    img = _ramp(64, 64)
    api.compress(codec, img, max_pixels=64 * 64, margin=False)
    with pytest.raises(LimitsError, match="128x128"):
        api.compress(codec, img, max_pixels=64 * 64, margin=True)


def test_the_default_follows_the_registry_and_the_cli_can_override_it(tmp_path, capsys) -> None:
    from PIL import Image

    png = tmp_path / "ramp.png"
    Image.fromarray(_ramp(40, 72)).save(png)
    for entry in registry.models():
        out = tmp_path / f"{entry.name}.sodec"
        assert main(["compress", str(png), "-o", str(out), "-m", entry.name, "-q"]) == 0
        assert container.parse_header(out.read_bytes()).margin == entry.margin
        for choice in ("on", "off"):
            out2 = tmp_path / f"{entry.name}-{choice}.sodec"
            assert main(["compress", str(png), "-o", str(out2), "-m", entry.name, "--margin", choice, "-q"]) == 0
            assert container.parse_header(out2.read_bytes()).margin == (choice == "on")
        assert main(["info", str(out2), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["padded_to"] == [128, 64]


def test_the_cli_counts_the_margin_before_it_loads_a_model(tmp_path, capsys) -> None:
    from PIL import Image

    png = tmp_path / "ramp.png"
    Image.fromarray(_ramp(64, 64)).save(png)
    out = tmp_path / "r.sodec"
    args = ["compress", str(png), "-o", str(out), "-m", "codec-small-q2", "--max-pixels", str(64 * 64)]
    assert main([*args, "--margin", "on"]) == 7  # LimitsError's exit code (docs/reliability.md)
    assert "128x128" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--margin", "off", "-q"]) == 0 and out.is_file()
