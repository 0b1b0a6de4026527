"""Reading images into the codec's RGB uint8 form, as viewers show them; writing files atomically.

``read_image`` returns the picture a colour-managed viewer displays:

* EXIF orientation (all eight values) is applied, so a portrait photo stays upright;
* an embedded ICC profile is converted to sRGB (LittleCMS via Pillow's ImageCms), the space the
  codec and its metrics assume;
* samples deeper than 8 bits are scaled by the range the file declares (PNG/TIFF/JPEG XL bit
  depth, PGM/PPM maxval, float in [0, 1]), never by the largest value found in the data: a dark
  16-bit picture stays dark;
* JPEG XL is read through pillow-jxl-plugin.

No silent changes: each of these, like grayscale, palette, CMYK or an opaque alpha channel, is
reported as a one-line note the CLI prints. An alpha channel that is not fully opaque is refused,
because the codec cannot keep it and dropping it would change the image. A file that cannot be
read gives one line naming it and saying why: empty, not an image, truncated, or damaged.

Importing this module must not import torch: the CLI reads the input before loading a model.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .container import DEFAULT_MAX_PIXELS
from .errors import LimitsError, UnsupportedInputError
from .fileio import atomic_write_via

# What Pillow raises on malformed files. Besides OSError/ValueError, fuzzing read_image with
# mutated PNG/GIF/TIFF/BMP/... files found a TIFF without dimensions raising TypeError; the
# others are what its plugins' parsing code can raise on short or inconsistent data.
# pillow-jxl-plugin reports every libjxl failure as RuntimeError.
_DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    EOFError,
    IndexError,
    KeyError,
    ZeroDivisionError,
    RuntimeError,
    struct.error,
)

# JPEG XL: a bare codestream, or the ISO BMFF container's signature box.
_JXL_CODESTREAM = b"\xff\x0a"
_JXL_CONTAINER = b"\x00\x00\x00\x0cJXL \r\n\x87\n"

# EXIF orientation -> what turns the stored pixels into the picture viewers show, as a note.
# Meaning of each value (EXIF 2.32, tag 0x0112): where row 0 / column 0 of the stored image lie.
_ORIENTATION = {
    2: "mirrored left-right",
    3: "rotated 180°",
    4: "mirrored top-bottom",
    5: "transposed (mirrored, then rotated 90° counter-clockwise)",
    6: "rotated 90° clockwise",
    7: "transversed (mirrored, then rotated 90° clockwise)",
    8: "rotated 90° counter-clockwise",
}

# Float samples within half an 8-bit level of [0, 1] round to the same 8-bit value as if they
# were clipped first, so accepting them changes nothing; beyond that the file holds data (HDR
# highlights, a 0..255 range) that clipping would destroy, so it is refused instead.
_FLOAT_SLACK = 0.5 / 255.0


# Pillow's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS, 89.5 MP, an error at twice that)
# is a process-wide setting: sodec applies its own limit (max_pixels, the CLI's --max-pixels)
# instead, so Pillow's is lifted while sodec opens a file, under a lock because it is global.
_PILLOW_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def pillow_limit_lifted() -> Iterator[None]:
    """Pillow's decompression-bomb check off inside the block (the caller checks the size)."""
    with _PILLOW_LIMIT_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


def read_image(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview,
    name: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, list[str]]:
    """Read an image file as viewers show it.

    Args:
        source: a path, or the file's bytes (what the CLI passes after reading a path or stdin).
        name: how errors name the file (e.g. the path the user typed, or ``"stdin"``); defaults
            to the path, or ``"the image"`` for bytes.
        max_pixels: refuse an image of more pixels (width x height, read from its header before
            any pixel is decoded); None = no limit. The default is the CLI's ``--max-pixels``
            default; Pillow's own, smaller limit does not apply.

    Returns:
        ``(pixels, notes)``: pixels ``(H, W, 3)`` uint8 sRGB, in display orientation; notes, one
        line per conversion made (orientation, colour profile, bit depth, channels, frames).

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        UnsupportedInputError: one line, ``"cannot read NAME: WHY"``, where WHY is "empty file",
            "not an image (unknown format)", "truncated PNG data" or "damaged PNG data (...)"
            (with the format found), or the image cannot be coded faithfully (transparency,
            float samples outside [0, 1], signed samples).
        LimitsError: more pixels than ``max_pixels``, or not enough memory to decode it.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = name or "the image"
    else:
        name = name or os.fspath(source)
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError:
            raise
        except OSError as e:  # a folder, no permission, an I/O error
            raise UnsupportedInputError(f"cannot read {name}: {e.strerror or e}") from None
    if not data:
        raise UnsupportedInputError(f"cannot read {name}: empty file")
    try:
        with warnings.catch_warnings(), pillow_limit_lifted():
            # Pillow warns about damaged metadata (corrupt EXIF, a bad profile) on stderr; what
            # matters of it reaches the user as a note or an error instead.
            warnings.simplefilter("ignore", UserWarning)
            if _is_jxl(data):
                import pillow_jxl  # noqa: F401  (registers the JXL plugin; only needed here)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:  # before a pixel is decoded
                raise LimitsError(
                    f"cannot read {name}: {w}x{h} is over the limit of {max_pixels} pixels (--max-pixels 0 lifts it)"
                )
            im.load()
            return _Reader(im, data, name).rgb()  # inside: frame counts and conversions read the file too
    except MemoryError:
        raise LimitsError(f"cannot read {name}: image too large: not enough memory to decode it") from None
    except _DECODE_ERRORS as e:
        raise UnsupportedInputError(f"cannot read {name}: {_why_unreadable(data, e)}") from None


def _is_jxl(data: bytes) -> bool:
    return data.startswith(_JXL_CODESTREAM) or data.startswith(_JXL_CONTAINER)


def _why_unreadable(data: bytes, error: Exception) -> str:
    """Say in a few words why Pillow could not read ``data`` (non-empty)."""
    fmt = _claimed_format(data)
    if fmt is None:
        return "not an image (unknown format)"
    if fmt == "JXL":  # libjxl's messages (via the plugin) do not tell truncation from damage
        return "damaged or truncated JPEG XL data"
    if isinstance(error, UnidentifiedImageError):
        # Image.open hides the plugin's own error behind "cannot identify"; ask the plugin.
        try:
            Image.OPEN[fmt][0](io.BytesIO(data)).load()
        except Exception as e:  # any failure here is the explanation we want
            error = e
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    truncated = isinstance(error, (EOFError, struct.error)) or "truncated" in text.lower() or "EOF" in text
    if truncated or (fmt == "PNG" and _png_ends_early(data)):
        return f"truncated {fmt} data (the file ends before the image does)"
    return f"damaged {fmt} data ({text})"


def _png_ends_early(data: bytes) -> bool:
    """Whether the PNG's chunk list runs past the end of ``data`` before IEND."""
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        pos += 12 + length
        if kind == b"IEND":
            return False
    return True


def _claimed_format(data: bytes) -> str | None:
    """The format whose signature ``data`` starts with, by Pillow's own checks; None if none."""
    if _is_jxl(data):
        return "JXL"
    Image.init()
    head = data[:16]
    for fmt, (_factory, accept) in Image.OPEN.items():
        # Plugins without a signature check (TGA, IM, ...) would claim any bytes.
        if accept is not None and accept(head):
            return fmt
    return None


class _Reader:
    """One opened image on its way to (H, W, 3) uint8 sRGB; collects the notes."""

    def __init__(self, im: Image.Image, data: bytes, name: str) -> None:
        self.im = im
        self.data = data
        self.name = name
        self.fmt = _format_name(im, data)
        self.notes: list[str] = []
        # Samples deeper than 8 bits, (H, W, 1 or 3) float32 in [0, 1], alpha already judged and
        # dropped: kept at full precision through the colour conversion, rounded once at the end.
        self.deep: np.ndarray | None = None

    def rgb(self) -> tuple[np.ndarray, list[str]]:
        im = self.im
        if getattr(im, "n_frames", 1) > 1:
            self.notes.append(f"{im.n_frames} frames: coding the first only")
        orientation = self._orientation()
        im = self._eight_bits(im)
        if self.deep is not None:
            arr = self._deep_to_srgb(self.deep)
        else:
            im = self._drop_opaque_alpha(im)
            im = self._to_srgb(im)
            if im.mode != "RGB":
                if im.mode in ("L", "1"):
                    self.notes.append(f"{im.mode}: grayscale coded as RGB")
                else:
                    self.notes.append(f"{im.mode}: converted to RGB")
                im = im.convert("RGB")
            arr = np.asarray(im, dtype=np.uint8)
        if orientation in _ORIENTATION:
            arr = _orient(arr, orientation)
            self.notes.append(f"EXIF orientation {orientation}: {_ORIENTATION[orientation]}, as viewers show it")
        return np.ascontiguousarray(arr), self.notes

    # -- orientation ---------------------------------------------------------------------------

    def _orientation(self) -> int:
        if self.fmt == "JXL" and not getattr(self.im, "jpeg", False):
            # libjxl already applied the codestream's orientation to the pixels, and the JPEG XL
            # spec says an Exif box's orientation is to be ignored. (A recompressed JPEG is
            # handed back as that JPEG, with its EXIF, so it takes the path below.)
            return 1
        try:
            value = self.im.getexif().get(0x0112, 1)
        except _DECODE_ERRORS:  # unreadable EXIF: as Pillow's exif_transpose, show as stored
            return 1
        if value not in range(1, 9):
            if value is not None:
                self.notes.append(f"EXIF orientation {value!r} is not a valid value: coded as stored")
            return 1
        return int(value)

    # -- bit depth -----------------------------------------------------------------------------

    def _eight_bits(self, im: Image.Image) -> Image.Image:
        """Any image -> an 8-bit mode, scaling deeper samples by the file's declared range."""
        mode = im.mode
        if mode.startswith("I"):  # I, I;16, I;16B, I;16L, I;16S, ...
            return self._deep_gray(im)
        if mode == "F":
            return self._float_gray(im)
        bits = self._declared_bits()
        if self.fmt in ("PGM", "PPM") and bits != 8:
            # Pillow's PNM decoder scales by maxval itself, with rounding; only the note is ours.
            maxval = _pnm_maxval(self.data)
            self.notes.append(f"{self.fmt} maxval {maxval} ({bits}-bit) scaled to 8 bits")
        elif bits > 8 and mode in ("RGB", "RGBA", "LA"):
            return self._deep_colour(im, bits)
        return im

    def _declared_bits(self) -> int:
        """Bits per sample the file declares (8 when it has no other say)."""
        try:
            if self.fmt == "PNG":
                return self.data[24]  # IHDR bit depth: signature (8) + length, type (8) + w, h (8)
            if self.fmt == "TIFF":
                return max(_tuple(self.im.tag_v2.get(258, 8)))
            if self.fmt in ("PGM", "PPM"):
                return int(_pnm_maxval(self.data)).bit_length()
            if self.fmt == "JXL" and not getattr(self.im, "jpeg", False):
                return _jxl_bits_per_sample(self.data) or 8
        except (IndexError, ValueError, TypeError):
            pass
        return 8

    def _deep_gray(self, im: Image.Image) -> Image.Image:
        arr = np.asarray(im).astype(np.float64)
        if self.fmt == "TIFF" and 2 in _tuple(self.im.tag_v2.get(339, 1)):
            raise UnsupportedInputError(
                f"cannot read {self.name}: signed integer samples have no display range; "
                "convert it to an unsigned or float image in [0, 1]"
            )
        bits = self._declared_bits()
        if self.fmt in ("PGM", "PPM"):
            # Pillow scales maxval > 255 to 0..65535 itself.
            top, what = 65535.0, f"{self.fmt} maxval {_pnm_maxval(self.data)} ({bits}-bit)"
        elif self.fmt == "TIFF" and bits > 8:
            top, what = float(2**bits - 1), f"TIFF {bits}-bit"
        elif im.mode.startswith("I;16") or self.fmt in ("PNG", "JXL"):
            # I;16 holds 16-bit samples; libjxl hands any depth > 8 over scaled to 16 bits.
            top, what = 65535.0, f"{self.fmt} {bits if bits > 8 else 16}-bit"
        else:
            # A 32-bit integer image from a format that declares no range: accept it only where
            # it fits 16 bits, the depth Pillow's plugins use mode I for.
            if arr.min() < 0 or arr.max() > 65535:
                raise UnsupportedInputError(
                    f"cannot read {self.name}: 32-bit integer samples outside 0..65535 and no declared range"
                )
            top, what = 65535.0, f"{self.fmt} 16-bit"
        if arr.max() > top or arr.min() < 0:
            self.notes.append(f"samples outside the declared range 0..{int(top)} clipped")
        self.notes.append(f"{what} grayscale reduced to 8 bits and coded as RGB")
        self.deep = np.clip(arr / top, 0.0, 1.0).astype(np.float32)[..., None]
        return im

    def _float_gray(self, im: Image.Image) -> Image.Image:
        arr = np.asarray(im).astype(np.float64)
        lo, hi = 0.0, 1.0
        if self.fmt == "TIFF":  # SMinSampleValue / SMaxSampleValue, when written, declare the range
            tags = self.im.tag_v2
            if 340 in tags and 341 in tags:
                lo, hi = float(min(_tuple(tags[340]))), float(max(_tuple(tags[341])))
        if not np.isfinite(arr).all():
            raise UnsupportedInputError(f"cannot read {self.name}: float samples include NaN or infinity")
        slack = _FLOAT_SLACK * (hi - lo)
        if hi <= lo or arr.min() < lo - slack or arr.max() > hi + slack:
            raise UnsupportedInputError(
                f"cannot read {self.name}: float samples span [{arr.min():.4g}, {arr.max():.4g}]; sodec reads "
                f"float images in [{lo:g}, {hi:g}] (convert or tone-map it to that range first)"
            )
        self.notes.append(f"{self.fmt} float grayscale in [{lo:g}, {hi:g}] scaled to 8 bits and coded as RGB")
        self.deep = np.clip((arr - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)[..., None]
        return im

    def _deep_colour(self, im: Image.Image, bits: int) -> Image.Image:
        """A > 8-bit colour (or gray + alpha) image that Pillow truncated to 8 bits."""
        # Pillow keeps the high byte of each 16-bit sample (v >> 8), which is up to one level
        # below the rounded value; decode the samples again at full depth and round.
        deep = _decode_deep(self.fmt, self.data)
        top = float(2**bits - 1)
        # (Pillow opens 16-bit gray + alpha PNGs as RGBA; the samples say what the file holds.)
        if deep is None or deep.shape[:2] != (im.height, im.width) or deep.shape[2] not in (2, 3, 4):
            self.notes.append(f"{self.fmt} {bits}-bit {im.mode} reduced to 8 bits")
            return im
        mode = {2: "LA", 3: "RGB", 4: "RGBA"}[deep.shape[2]]
        self.notes.append(f"{self.fmt} {bits}-bit {mode} reduced to 8 bits")
        if mode != "RGB":
            if (deep[..., -1] < top).any():  # alpha judged at full depth
                raise UnsupportedInputError(_TRANSPARENT)
            self.notes.append(f"{mode}: opaque alpha channel dropped")
            deep = deep[..., :-1]
            if deep.shape[2] == 1:
                self.notes.append("grayscale coded as RGB")
        self.deep = (deep / np.float32(top)).astype(np.float32)
        return im

    def _deep_to_srgb(self, deep: np.ndarray) -> np.ndarray:
        """(H, W, 1|3) float32 in [0, 1] -> (H, W, 3) uint8 sRGB, converting any ICC profile first.

        The conversion runs in float (LittleCMS through imagecodecs): done on 8-bit samples, a
        linear-light profile (what JPEG XL encoders write for 16-bit and float data) would band
        the shadows, where one 8-bit linear step is about 13 sRGB levels.
        """
        gray = deep.shape[2] == 1
        src = self._profile("L" if gray else "RGB")
        if src is not None:
            import imagecodecs

            icc, desc = src
            try:
                space = "gray" if gray else "rgb"
                deep = imagecodecs.cms_transform(
                    deep[..., 0] if gray else deep,
                    icc,
                    imagecodecs.cms_profile("srgb"),
                    colorspace=space,
                    outcolorspace="rgb",
                    outdtype="float32",
                )
                self.notes.append(f"ICC profile {desc!r} converted to sRGB")
            except Exception as e:  # imagecodecs.CmsError, or a profile LittleCMS rejects
                self.notes.append(f"ICC profile {desc!r} cannot be applied ({e}): ignored")
        out = _scale_to_u8(deep.astype(np.float64), 1.0)
        return np.repeat(out, 3, axis=2) if out.shape[2] == 1 else out

    def _profile(self, mode: str) -> tuple[bytes, str] | None:
        """The embedded ICC profile and its description if it must be applied to ``mode`` pixels.

        None when there is none, or it is sRGB already; notes a profile that is unreadable or made
        for another colour space (both ignored).
        """
        icc = self.im.info.get("icc_profile")
        if not icc:
            return None
        from PIL import ImageCms

        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            desc = ImageCms.getProfileDescription(src).strip() or "unnamed"
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            self.notes.append("embedded ICC profile unreadable: ignored, pixels read as sRGB")
            return None
        space = src.profile.xcolor_space.strip()
        if {"RGB": "RGB", "GRAY": "L", "CMYK": "CMYK"}.get(space) != mode:
            self.notes.append(f"ICC profile {desc!r} ({space}) does not fit {mode} pixels: ignored")
            return None
        if mode in ("RGB", "L") and _is_srgb_like(src, mode):
            return None  # converting would only add rounding noise
        return icc, desc

    # -- alpha, colour -------------------------------------------------------------------------

    def _drop_opaque_alpha(self, im: Image.Image) -> Image.Image:
        mode = im.mode
        keyed = "transparency" in im.info and mode in ("P", "L", "RGB")
        if mode not in ("RGBA", "LA", "PA", "La", "RGBa") and not keyed:
            return im
        rgba = im.convert("RGBA")
        if np.asarray(rgba)[..., 3].min() < 255:
            raise UnsupportedInputError(_TRANSPARENT)
        self.notes.append(f"{mode}: opaque alpha channel dropped")
        # Keep the colour model the profile (if any) was made for: gray stays gray.
        return rgba.convert("L" if mode in ("LA", "La", "L") else "RGB")

    def _to_srgb(self, im: Image.Image) -> Image.Image:
        """8-bit pixels with an embedded ICC profile -> sRGB (LittleCMS, perceptual intent)."""
        if im.mode == "P":  # a palette image's profile describes its palette's RGB
            im = im.convert("RGB") if "icc_profile" in self.im.info else im
        elif im.mode == "1":
            im = im.convert("L") if "icc_profile" in self.im.info else im
        src = self._profile(im.mode)
        if src is None:
            return im
        from PIL import ImageCms

        icc, desc = src
        try:
            profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            out = ImageCms.profileToProfile(im, profile, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except ImageCms.PyCMSError as e:
            self.notes.append(f"ICC profile {desc!r} cannot be applied ({e}): ignored")
            return im
        assert out is not None
        self.notes.append(f"ICC profile {desc!r} converted to sRGB")
        return out


_TRANSPARENT = "the image has transparent pixels; sodec codes RGB only (flatten it onto a background first)"


def _format_name(im: Image.Image, data: bytes) -> str:
    if im.format == "PPM":  # Pillow calls the whole PNM family PPM; name what the file is
        return {b"P1": "PBM", b"P4": "PBM", b"P2": "PGM", b"P5": "PGM"}.get(data[:2], "PPM")
    return im.format or "image"


def _tuple(value: object) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)  # type: ignore[return-value]


def _scale_to_u8(arr: np.ndarray, top: float) -> np.ndarray:
    """Samples in [0, top] -> uint8 0..255, rounded to nearest (values outside are clipped)."""
    return np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Stored (H, W, C) pixels -> displayed ones, for EXIF orientation 2..8."""
    if orientation in (5, 6, 7, 8):
        arr = arr.transpose(1, 0, 2)  # 5 is exactly this; 6, 7, 8 add a flip
        if orientation == 6:
            return arr[:, ::-1]
        if orientation == 7:
            return arr[::-1, ::-1]
        if orientation == 8:
            return arr[::-1]
        return arr
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    return arr[::-1]  # 4


def _is_srgb_like(profile: object, mode: str) -> bool:
    """Whether ``profile`` (for "RGB" or "L" pixels) moves no colour by more than one 8-bit level
    from sRGB, on a 17^3 RGB grid or all 256 gray levels."""
    from PIL import ImageCms

    if mode == "RGB":
        levels = np.linspace(0, 255, 17).round().astype(np.uint8)
        grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(17, 289, 3)
        probe, want = Image.fromarray(grid, "RGB"), grid
    else:
        ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
        probe, want = Image.fromarray(ramp, "L"), np.repeat(ramp[..., None], 3, axis=2)
    try:
        out = ImageCms.profileToProfile(probe, profile, ImageCms.createProfile("sRGB"), outputMode="RGB")  # type: ignore[arg-type]
    except ImageCms.PyCMSError:
        return False
    assert out is not None
    return int(np.abs(np.asarray(out).astype(np.int16) - want).max()) <= 1


def _decode_deep(fmt: str, data: bytes) -> np.ndarray | None:
    """The first image of ``data`` at its full integer depth, (H, W, C) uint16, as stored."""
    import imagecodecs

    try:
        if fmt == "PNG":
            deep = imagecodecs.png_decode(data)
        elif fmt == "TIFF":
            deep = imagecodecs.tiff_decode(data, index=0)
        elif fmt == "JXL":  # libjxl applies the codestream orientation, as the plugin does
            deep = imagecodecs.jpegxl_decode(data)
        else:
            return None
    except Exception:  # any failure: fall back to the 8-bit pixels Pillow gave
        return None
    if deep.dtype != np.uint16:
        return None
    return deep[..., None] if deep.ndim == 2 else deep


def _pnm_maxval(data: bytes) -> int:
    """The maxval field of a PGM/PPM header (Pillow does not expose it)."""
    tokens: list[bytes] = []
    i = 2  # after the magic number
    while len(tokens) < 3:
        while data[i : i + 1].isspace():
            i += 1
        if data[i : i + 1] == b"#":  # a comment runs to the end of the line
            while data[i : i + 1] not in (b"\n", b"\r", b""):
                i += 1
            continue
        j = i
        while j < len(data) and not data[j : j + 1].isspace() and data[j : j + 1] != b"#":
            j += 1
        if j == i:
            raise ValueError("PNM header ends early")
        tokens.append(data[i:j])
        i = j
    return int(tokens[2])


class _BitReader:
    """LSB-first bit reader, the order JPEG XL headers are written in."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u(self, n: int) -> int:
        value = 0
        for k in range(n):
            byte = self.data[(self.pos + k) >> 3]  # IndexError past the end
            value |= ((byte >> ((self.pos + k) & 7)) & 1) << k
        self.pos += n
        return value

    def u32(self, *choices: tuple[int, int]) -> int:
        """JPEG XL U32: a 2-bit selector, then (bits, offset) of the chosen distribution."""
        bits, offset = choices[self.u(2)]
        return offset + self.u(bits)


def _jxl_bits_per_sample(data: bytes) -> int | None:
    """Bits per sample a JPEG XL file declares (ISO/IEC 18181-1 ImageMetadata); None if unsure.

    pillow-jxl-plugin hands deeper colour images over at 8 bits without saying so, so the depth
    is read from the header: SizeHeader, then ImageMetadata up to its BitDepth field.
    """
    codestream = data if data.startswith(_JXL_CODESTREAM) else _jxl_box_codestream(data)
    if codestream is None or not codestream.startswith(_JXL_CODESTREAM):
        return None
    r = _BitReader(codestream[2:])
    try:
        _jxl_size(r)
        if r.u(1):  # all_default: 8-bit
            return 8
        if r.u(1):  # extra_fields
            r.u(3)  # orientation - 1
            if r.u(1):  # intrinsic size
                _jxl_size(r)
            if r.u(1):  # preview header
                div8 = r.u(1)
                size = ((0, 16), (0, 32), (5, 1), (9, 33)) if div8 else ((6, 1), (8, 65), (10, 321), (12, 1345))
                r.u32(*size)
                if r.u(3) == 0:
                    r.u32(*size)
            if r.u(1):  # animation header
                r.u32((0, 100), (0, 1000), (10, 1), (30, 1))
                r.u32((0, 1), (0, 1001), (8, 1), (10, 1))
                r.u32((0, 0), (3, 0), (16, 0), (32, 0))
                r.u(1)
        if r.u(1):  # float samples
            return r.u32((0, 32), (0, 16), (0, 24), (6, 1))
        return r.u32((0, 8), (0, 10), (0, 12), (6, 1))
    except IndexError:
        return None


def _jxl_size(r: _BitReader) -> None:
    """Skip a JPEG XL SizeHeader."""
    if r.u(1):  # small: sizes in multiples of 8, up to 256
        r.u(5)
        if r.u(3) == 0:
            r.u(5)
        return
    size = ((9, 1), (13, 1), (18, 1), (30, 1))
    r.u32(*size)
    if r.u(3) == 0:
        r.u32(*size)


def _jxl_box_codestream(data: bytes) -> bytes | None:
    """The start of the codestream inside a JPEG XL container (``jxlc``, or the first ``jxlp``)."""
    pos = 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1:
            if pos + 16 > len(data):
                return None
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
            header = 16
        end = len(data) if size == 0 else pos + size
        if kind == b"jxlc":
            return data[pos + header : end]
        if kind == b"jxlp":
            return data[pos + header + 4 : end]  # after the part's 4-byte index
        if size < header:
            return None
        pos = end
    return None


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def encode_image_file(arr: np.ndarray, suffix: str, grayscale: bool = False) -> bytes:
    """Encode a decoded (H, W, 3) uint8 image for writing; the format follows the output file's
    suffix. ``grayscale`` (a file whose header says so, R = G = B) writes one channel, except to
    .ppm, whose format holds colour only (netpbm's grayscale one is .pgm)."""
    fmt = {".png": "PNG", ".ppm": "PPM", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}.get(suffix.lower())
    if fmt is None:
        raise UnsupportedInputError(f"output suffix {suffix!r}: write .png, .ppm, .bmp or .tif (lossless)")
    buf = io.BytesIO()
    if grayscale and fmt != "PPM":
        Image.fromarray(np.ascontiguousarray(arr[..., 0]), "L").save(buf, format=fmt)
    else:
        Image.fromarray(arr, "RGB").save(buf, format=fmt)
    return buf.getvalue()


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temp file in the same folder, then rename: never a partial file."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_write_via(Path(path), write)
