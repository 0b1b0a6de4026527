"""read_image: every input read as viewers show it, every conversion noted, every failure named.

Expected pixels are computed here independently of the reader: orientations from the EXIF
definition of each value, bit depths from arrays written byte by byte, colour conversion from
the profile's matrix and tone curve.
"""

from __future__ import annotations

import io
import re
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from sodec.errors import LimitsError, UnsupportedInputError
from sodec.image_io import _jxl_bits_per_sample, read_image

SHARED = Path(__file__).resolve().parents[2] / "shared"
CASES = SHARED / "cases"
needs_cases = pytest.mark.skipif(not CASES.is_dir(), reason=f"shared test inputs not found at {CASES}")


def picture(h: int = 24, w: int = 40, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 with no symmetry, so any wrong flip or turn changes it."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG written by hand (filter 0 on every row), so no library decides the samples."""
    h, w = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = arr.astype(">u2").reshape(h, w * channels)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def pgm(arr: np.ndarray, maxval: int, plain: bool = False) -> bytes:
    h, w = arr.shape
    if plain:
        return f"P2\n# made by a test\n{w} {h}\n{maxval}\n".encode() + " ".join(map(str, arr.ravel())).encode()
    body = arr.astype(">u2" if maxval > 255 else "u1").tobytes()
    return f"P5\n{w} {h}\n{maxval}\n".encode() + body


def rounded(values: np.ndarray, top: float) -> np.ndarray:
    return np.round(values.astype(np.float64) * 255.0 / top).astype(np.uint8)


def gray3(g: np.ndarray) -> np.ndarray:
    return np.repeat(g[..., None], 3, axis=2)


# -- module import ----------------------------------------------------------------------------


def test_import_does_not_load_torch_or_the_jxl_plugin() -> None:
    code = (
        "import sys, sodec.image_io as m, numpy as np, io\n"
        "from PIL import Image\n"
        "assert 'torch' not in sys.modules\n"
        "b = io.BytesIO(); Image.new('RGB', (4, 4)).save(b, format='PNG'); m.read_image(b.getvalue())\n"
        "assert 'pillow_jxl' not in sys.modules, 'plugin loaded for a PNG'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- EXIF orientation -------------------------------------------------------------------------


def stored_for(shown: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores for picture ``shown`` under EXIF orientation 1..8.

    From the tag's definition (where row 0 and column 0 of the stored image lie in the
    picture): S[i, j] = shown[...] below.
    """
    h, w = shown.shape[:2]
    i, j = np.indices((w, h) if orientation >= 5 else (h, w))
    index = {
        1: (i, j),  # row 0 top, column 0 left
        2: (i, w - 1 - j),  # top, right
        3: (h - 1 - i, w - 1 - j),  # bottom, right
        4: (h - 1 - i, j),  # bottom, left
        5: (j, i),  # left, top
        6: (j, w - 1 - i),  # right, top
        7: (h - 1 - j, w - 1 - i),  # right, bottom
        8: (h - 1 - j, i),  # left, bottom
    }[orientation]
    return shown[index]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_shown_as_viewers_show_it(orientation: int) -> None:
    shown = picture(24, 40)
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = Image.fromarray(stored_for(shown, orientation))
    data = save(stored, "PNG", exif=exif.tobytes())
    pixels, notes = read_image(data)
    assert pixels.shape == (24, 40, 3) and pixels.flags.c_contiguous
    np.testing.assert_array_equal(pixels, shown)
    # Pillow's own exif_transpose agrees with the definition.
    np.testing.assert_array_equal(np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data)))), shown)
    if orientation == 1:
        assert notes == []
    else:
        assert notes == [next(n for n in notes if n.startswith(f"EXIF orientation {orientation}: "))]


def test_invalid_orientation_is_noted_and_ignored() -> None:
    stored = picture(8, 12)
    exif = Image.Exif()
    exif[0x0112] = 9
    pixels, notes = read_image(save(Image.fromarray(stored), "PNG", exif=exif.tobytes()))
    np.testing.assert_array_equal(pixels, stored)
    assert notes == ["EXIF orientation 9 is not a valid value: coded as stored"]


@needs_cases
def test_shared_exif_rotated_jpeg() -> None:
    pixels, notes = read_image(CASES / "exif-orientation6-stored96x64.jpg")
    assert pixels.shape == (96, 64, 3)  # stored 96 wide, shown 64 wide
    assert notes == ["EXIF orientation 6: rotated 90° clockwise, as viewers show it"]
    stored = Image.open(CASES / "exif-orientation6-stored96x64.jpg")
    # Orientation 6 (row 0 is the picture's right side): shown = stored turned 90° clockwise.
    np.testing.assert_array_equal(pixels, np.rot90(np.asarray(stored), k=-1))
    np.testing.assert_array_equal(pixels, np.asarray(ImageOps.exif_transpose(stored)))


# -- ICC profiles -----------------------------------------------------------------------------

# Display-P3 primaries adapted to D50 (what the shared test profile holds), and sRGB's.
P3_D50 = np.array([[0.5151, 0.2920, 0.1571], [0.2412, 0.6922, 0.0666], [-0.0011, 0.0419, 0.7841]])
SRGB_D50 = np.array(
    [[0.4360747, 0.3850649, 0.1430804], [0.2225045, 0.7168786, 0.0606169], [0.0139322, 0.0971045, 0.7141733]]
)


def matrix_profile(m: np.ndarray, gamma: float, desc: str) -> bytes:
    """A version-2 RGB display profile (matrix + one gamma curve), written field by field."""

    def xyz(v: np.ndarray) -> bytes:
        return b"XYZ \0\0\0\0" + struct.pack(">3i", *(round(float(c) * 65536) for c in v))

    text = desc.encode() + b"\0"
    tags = [
        (b"desc", b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * 8 + b"\0" * 70),
        (b"wtpt", xyz(np.array([0.9642, 1.0, 0.8249]))),
        (b"rXYZ", xyz(m[:, 0])),
        (b"gXYZ", xyz(m[:, 1])),
        (b"bXYZ", xyz(m[:, 2])),
    ]
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    tags += [(b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, content in tags:
        content += b"\0" * (-len(content) % 4)
        table += struct.pack(">4sII", sig, offset + len(body), len(content))
        body += content
    size = offset + len(body)
    header = struct.pack(
        ">I4sI4s4s4s12s4s", size, b"\0" * 4, 0x02100000, b"mntr", b"RGB ", b"XYZ ", b"\0" * 12, b"acsp"
    )
    header += b"\0" * (68 - len(header)) + struct.pack(">3i", 63190, 65536, 54061)  # D50 illuminant
    header += b"\0" * (128 - len(header))
    return header + struct.pack(">I", len(tags)) + table + body


def expected_srgb(rgb: np.ndarray, m: np.ndarray, gamma: float) -> np.ndarray:
    """Source RGB (profile m, gamma) -> sRGB uint8, colorimetrically, out-of-gamut clipped."""
    lin = (rgb.astype(np.float64) / 255.0) ** gamma
    out = np.clip(lin @ (np.linalg.inv(SRGB_D50) @ m).T, 0.0, 1.0)
    enc = np.where(out <= 0.0031308, 12.92 * out, 1.055 * out ** (1 / 2.4) - 0.055)
    return np.round(enc * 255.0).astype(np.uint8)


def test_wide_gamut_profile_is_converted_to_srgb() -> None:
    stored = picture(16, 16)
    icc = matrix_profile(P3_D50, 2.2, "Test P3")
    pixels, notes = read_image(save(Image.fromarray(stored), "PNG", icc_profile=icc))
    assert notes == ["ICC profile 'Test P3' converted to sRGB"]
    diff = np.abs(pixels.astype(int) - expected_srgb(stored, P3_D50, 2.2).astype(int))
    assert diff.max() <= 2, diff.max()  # LittleCMS interpolates its tone curves
    assert np.abs(pixels.astype(int) - stored).max() > 10  # a real change, not a pass-through


@needs_cases
def test_shared_icc_case_is_converted() -> None:
    path = CASES / "png-icc-p3like-96x64.png"
    pixels, notes = read_image(path)
    assert notes == ["ICC profile 'Synthetic P3-like test profile' converted to sRGB"]
    stored = np.asarray(Image.open(path).convert("RGB"))
    # The file's curves are gamma 0x0233 / 256; its primaries as in P3_D50.
    diff = np.abs(pixels.astype(int) - expected_srgb(stored, P3_D50, 0x233 / 256).astype(int))
    assert diff.max() <= 2, diff.max()


def test_srgb_profile_changes_nothing() -> None:
    stored = picture(16, 16)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    pixels, notes = read_image(save(Image.fromarray(stored), "PNG", icc_profile=icc))
    np.testing.assert_array_equal(pixels, stored)
    assert notes == []


def test_unusable_profiles_are_noted_not_applied() -> None:
    stored = picture(8, 8)
    pixels, notes = read_image(save(Image.fromarray(stored), "PNG", icc_profile=b"not a profile at all" * 8))
    np.testing.assert_array_equal(pixels, stored)
    assert notes == ["embedded ICC profile unreadable: ignored, pixels read as sRGB"]
    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    pixels, notes = read_image(save(Image.fromarray(stored), "PNG", icc_profile=lab))
    np.testing.assert_array_equal(pixels, stored)
    assert len(notes) == 1 and "does not fit RGB pixels: ignored" in notes[0]


# -- bit depth --------------------------------------------------------------------------------


def test_dark_16bit_grayscale_png_stays_dark() -> None:
    values = np.random.default_rng(1).integers(0, 300, (12, 20)).astype(np.uint16)
    pixels, notes = read_image(png16(values))
    np.testing.assert_array_equal(pixels, gray3(rounded(values, 65535)))
    assert pixels.max() <= 1  # the old reader guessed 255 as the top and coded this mid-gray
    assert notes == ["PNG 16-bit grayscale reduced to 8 bits and coded as RGB"]


@pytest.mark.parametrize("maxval", [1023, 4095, 65535])
@pytest.mark.parametrize("plain", [False, True])
def test_pgm_is_scaled_by_its_maxval(maxval: int, plain: bool) -> None:
    values = np.random.default_rng(maxval).integers(0, maxval + 1, (10, 14))
    values[0, :3] = (0, maxval, maxval // 2)
    pixels, notes = read_image(pgm(values, maxval, plain), name="x.pgm")
    want = gray3(rounded(values, maxval))
    # Pillow scales to 16 bits first: two roundings may differ from one by a level, rarely.
    assert np.abs(pixels.astype(int) - want).max() <= 1
    assert (pixels == want).mean() > 0.98
    bits = maxval.bit_length()
    assert notes == [f"PGM maxval {maxval} ({bits}-bit) grayscale reduced to 8 bits and coded as RGB"]


def test_pgm_with_a_small_maxval() -> None:
    values = np.random.default_rng(3).integers(0, 16, (6, 9))
    pixels, notes = read_image(pgm(values, 15))
    np.testing.assert_array_equal(pixels, gray3(rounded(values, 15)))
    assert notes == ["PGM maxval 15 (4-bit) scaled to 8 bits", "L: grayscale coded as RGB"]


@needs_cases
def test_shared_dark_pgm_stays_dark() -> None:
    path = CASES / "pgm16-maxval65535-dark-96x64.pgm"
    raw = path.read_bytes()
    header = b"P5\n96 64\n65535\n"
    assert raw.startswith(header)
    values = np.frombuffer(raw[len(header) :], ">u2").reshape(64, 96)
    pixels, notes = read_image(path)
    np.testing.assert_array_equal(pixels, gray3(rounded(values, 65535)))
    assert notes == ["PGM maxval 65535 (16-bit) grayscale reduced to 8 bits and coded as RGB"]


@pytest.mark.parametrize("channels", [3, 4, 2])
def test_16bit_colour_png_is_rounded_and_noted(channels: int) -> None:
    values = np.random.default_rng(4).integers(0, 65536, (10, 12, channels)).astype(np.uint16)
    values[0, 0, :] = 383  # 383 >> 8 == 1 but 383 / 257 rounds to 1; 511 below rounds up to 2
    values[0, 1, :] = 511
    if channels in (2, 4):
        values[..., -1] = 65535  # opaque
    pixels, notes = read_image(png16(values))
    colour = values[..., :3] if channels >= 3 else np.repeat(values[..., :1], 3, axis=2)
    np.testing.assert_array_equal(pixels, rounded(colour, 65535))
    mode = {3: "RGB", 4: "RGBA", 2: "LA"}[channels]
    assert notes[0] == f"PNG 16-bit {mode} reduced to 8 bits"
    if channels in (2, 4):
        assert notes[1] == f"{mode}: opaque alpha channel dropped"
    assert len(notes) == {3: 1, 4: 2, 2: 3}[channels]


def test_16bit_alpha_below_opaque_is_refused() -> None:
    values = np.full((4, 4, 4), 40000, np.uint16)
    values[1, 1, 3] = 65534  # rounds to 255 at 8 bits, but is not opaque
    with pytest.raises(UnsupportedInputError, match="transparent"):
        read_image(png16(values))


@needs_cases
def test_shared_16bit_rgb_png() -> None:
    path = CASES / "png16-rgb-96x64.png"
    pixels, notes = read_image(path)
    assert notes == ["PNG 16-bit RGB reduced to 8 bits"]
    np.testing.assert_array_equal(pixels, rounded(imagecodecs.png_decode(path.read_bytes()), 65535))


def test_16bit_tiff_and_ppm() -> None:
    values = np.random.default_rng(5).integers(0, 65536, (6, 7, 3)).astype(np.uint16)
    pixels, notes = read_image(imagecodecs.tiff_encode(values))
    np.testing.assert_array_equal(pixels, rounded(values, 65535))
    assert notes == ["TIFF 16-bit RGB reduced to 8 bits"]
    ppm = b"P6\n7 6\n65535\n" + values.astype(">u2").tobytes()
    pixels, notes = read_image(ppm)
    np.testing.assert_array_equal(pixels, rounded(values, 65535))
    assert notes == ["PPM maxval 65535 (16-bit) scaled to 8 bits"]


def test_float_tiff_in_unit_range() -> None:
    values = np.random.default_rng(6).random((9, 11)).astype(np.float32)
    values[0, :2] = (0.0, 1.0)
    pixels, notes = read_image(save(Image.fromarray(values, "F"), "TIFF"))
    np.testing.assert_array_equal(pixels, gray3(rounded(values, 1.0)))
    assert pixels.max() == 255  # the old reader coded [0, 1] floats black
    assert notes == ["TIFF float grayscale in [0, 1] scaled to 8 bits and coded as RGB"]


def test_float_outside_unit_range_is_refused() -> None:
    # Rounding noise just past the ends changes no 8-bit value: accepted.
    tiny = np.array([[-1e-4, 1.0 + 1e-4]], np.float32)
    np.testing.assert_array_equal(read_image(save(Image.fromarray(tiny, "F"), "TIFF"))[0], [[[0] * 3, [255] * 3]])
    for bad, why in [(np.float32(255.0), r"span \[0, 255\]"), (np.float32(np.nan), "NaN")]:
        values = np.zeros((4, 4), np.float32)
        values[2, 2] = bad
        with pytest.raises(UnsupportedInputError, match=why):
            read_image(save(Image.fromarray(values, "F"), "TIFF"), name="hdr.tif")


# -- JPEG XL ----------------------------------------------------------------------------------


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    x = np.clip(linear.astype(np.float64), 0.0, 1.0)
    return np.round(255.0 * np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)).astype(np.uint8)


def close(a: np.ndarray, b: np.ndarray, tol: int = 1) -> bool:
    return int(np.abs(a.astype(int) - b.astype(int)).max()) <= tol


def test_jxl_through_the_plugin() -> None:
    import pillow_jxl  # noqa: F401  (registers the writer)

    shown = picture(20, 30)
    pixels, notes = read_image(save(Image.fromarray(shown), "JXL", lossless=True), name="a.jxl")
    np.testing.assert_array_equal(pixels, shown)
    assert notes == []
    # The plugin writes 16-bit and float samples as linear light (its ICC profile says so); a
    # colour-managed viewer shows them sRGB-encoded, and so must the reader, from full depth.
    gray = np.random.default_rng(7).integers(0, 65536, (8, 9)).astype(np.uint16)
    pixels, notes = read_image(save(Image.fromarray(gray), "JXL", lossless=True))
    assert close(pixels, gray3(srgb_encode(gray / 65535)))
    assert notes == [
        "JXL 16-bit grayscale reduced to 8 bits and coded as RGB",
        "ICC profile 'Gra_D65_Rel_Lin' converted to sRGB",
    ]
    unit = np.random.default_rng(8).random((8, 9)).astype(np.float32)
    pixels, notes = read_image(save(Image.fromarray(unit, "F"), "JXL", lossless=True))
    assert close(pixels, gray3(srgb_encode(unit)))
    assert notes[0] == "JXL float grayscale in [0, 1] scaled to 8 bits and coded as RGB"


@pytest.mark.parametrize("bits", [10, 12, 16])
def test_deep_colour_jxl_is_rounded_and_noted(bits: int) -> None:
    values = np.random.default_rng(bits).integers(0, 2**bits, (10, 13, 3)).astype(np.uint16)
    data = imagecodecs.jpegxl_encode(values, lossless=True, bitspersample=bits)
    assert _jxl_bits_per_sample(data) == bits
    pixels, notes = read_image(data)
    # libjxl tags deep integer samples as linear sRGB, like the plugin (see above).
    assert close(pixels, srgb_encode(values / (2**bits - 1)))
    assert notes == [f"JXL {bits}-bit RGB reduced to 8 bits", "ICC profile 'RGB_D65_SRG_Rel_Lin' converted to sRGB"]


def test_jxl_header_bit_depth() -> None:
    rgb8 = picture(8, 8)
    assert _jxl_bits_per_sample(imagecodecs.jpegxl_encode(rgb8, lossless=True)) == 8
    assert _jxl_bits_per_sample(imagecodecs.jpegxl_encode(rgb8, lossless=True, usecontainer=True)) == 8
    big = np.zeros((300, 700, 3), np.uint16)  # not a multiple of 8: the long SizeHeader
    assert _jxl_bits_per_sample(imagecodecs.jpegxl_encode(big, lossless=True, bitspersample=16)) == 16
    unit = np.random.default_rng(9).random((8, 8, 3)).astype(np.float32)
    assert _jxl_bits_per_sample(imagecodecs.jpegxl_encode(unit, lossless=True)) == 32
    assert _jxl_bits_per_sample(b"\xff\x0a") is None


# -- unreadable files -------------------------------------------------------------------------


def one_line_error(data: bytes, name: str = "kodim01.png") -> str:
    with pytest.raises(UnsupportedInputError) as e:
        read_image(data, name=name)
    msg = str(e.value)
    assert "\n" not in msg and "BytesIO" not in msg and msg.startswith(f"cannot read {name}: ")
    return msg.removeprefix(f"cannot read {name}: ")


def test_unreadable_files_are_named_with_the_reason() -> None:
    png = save(Image.fromarray(picture(64, 64)), "PNG")
    assert one_line_error(b"") == "empty file"
    assert one_line_error(b"a plain text file\nwith two lines\n", "notes.txt") == "not an image (unknown format)"
    assert one_line_error(bytes(range(256)) * 4, "blob.bin") == "not an image (unknown format)"
    for cut in (20, 40, len(png) // 2):
        assert one_line_error(png[:cut]).startswith("truncated PNG data"), cut
    jpeg = save(Image.fromarray(picture(64, 64)), "JPEG")
    assert one_line_error(jpeg[: len(jpeg) // 2], "a.jpg").startswith("truncated JPEG data")
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # inside IHDR's CRC
    assert one_line_error(bytes(bad_crc)).startswith("damaged PNG data (")
    import pillow_jxl  # noqa: F401

    jxl = save(Image.fromarray(picture(64, 64)), "JXL", lossless=True)
    assert one_line_error(jxl[: len(jxl) // 2], "a.jxl") == "damaged or truncated JPEG XL data"


def test_paths_name_themselves(tmp_path: Path) -> None:
    empty = tmp_path / "kodim01.png"
    empty.write_bytes(b"")
    with pytest.raises(UnsupportedInputError, match=f"^{re.escape(f'cannot read {empty}: empty file')}$"):
        read_image(empty)
    with pytest.raises(UnsupportedInputError, match=r"^cannot read the image: empty file$"):
        read_image(b"")
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.png")
    with pytest.raises(UnsupportedInputError, match=r"^cannot read folder: "):
        read_image(tmp_path, name="folder")


@needs_cases
def test_shared_empty_file() -> None:
    path = CASES / "empty-0bytes.png"
    with pytest.raises(UnsupportedInputError, match=r"^cannot read empty-0bytes\.png: empty file$"):
        read_image(path.read_bytes(), name="empty-0bytes.png")


def test_path_and_bytes_read_alike(tmp_path: Path) -> None:
    p = tmp_path / "a.png"
    Image.fromarray(picture(9, 7)[..., 0], "L").save(p)
    by_path, by_bytes = read_image(p), read_image(p.read_bytes(), name="a.png")
    np.testing.assert_array_equal(by_path[0], by_bytes[0])
    assert by_path[1] == by_bytes[1] == ["L: grayscale coded as RGB"]


def test_max_pixels_is_the_limit_not_pillows(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pillow's own decompression-bomb limit (89.5 MP by default) would refuse images the CLI's
    # --max-pixels allows; read_image applies max_pixels from the header, before decoding.
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (30, 160, 60)).save(buf, format="PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # as if the image were over Pillow's limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning on stderr either
        pixels, _ = read_image(buf.getvalue(), max_pixels=None)
        assert pixels.shape == (30, 40, 3)
        assert read_image(buf.getvalue(), max_pixels=1200)[0].shape == (30, 40, 3)
    assert Image.MAX_IMAGE_PIXELS == 100  # Pillow's setting is the caller's again afterwards
    with pytest.raises(LimitsError, match=r"40x30 is over the limit of 1199 pixels \(--max-pixels 0 lifts it\)"):
        read_image(buf.getvalue(), name="a.png", max_pixels=1199)
