"""The ``.sodec`` container: a small header, the codec's streams, CRC-32s (docs/format.md).

Pure Python, no torch: parsing validates every field and every length against the bytes actually
present *before* anything is allocated, so a hostile header costs microseconds.

Layout (version 1; integers little-endian, ``uv`` = unsigned LEB128 varint, minimal form)::

    magic        4   b"SODC"
    version      1   1
    header_len   2   bytes from the magic to the end of header_crc
    flags        1   bit 0: edge-replicate padding (always set in v1); bit 2: grayscale image
                     (decoded to one channel); bits 1, 3-7 must be 0
    coder        1   1 = CompressAI rANS (range Asymmetric Numeral Systems)
    model_len    1   1..48
    model_id     n   ASCII [a-z0-9._-]
    weights_id   4   first 4 bytes of the model checkpoint's sha256
    width        uv  1..2^24
    height       uv  1..2^24
    n_streams    1   1..8 (sodec writes 3: z, y, mean colour; files of sodec <= 0.1 hold z, y)
    stream_len   uv  one per stream
    symbols_crc  4   CRC-32 of the decoded integer symbols (entropy-decoder desync check)
    header_crc   4   CRC-32 of every header byte before it
    payload      Σ stream_len
    payload_crc  4   CRC-32 of the payload
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

from .errors import CorruptedError, FormatError, LimitsError, TruncatedError, UnsupportedVersionError

MAGIC = b"SODC"
VERSION = 1
CODER_RANS = 1
CODERS = {CODER_RANS: "compressai-rans"}
FLAG_PAD_REPLICATE = 0x01
# Bit 1 stays refused: tests/data/conformance/flags-3.sodec records it as a FormatError for good.
FLAG_GRAYSCALE = 0x04
# Bit 3: the image sits centred in its padded canvas with at least fileinfo.MARGIN px of edge
# replication on every side (docs/format.md, "Margin"), so no edge of the picture is a canvas edge.
FLAG_MARGIN = 0x08
VALID_FLAGS = tuple(FLAG_PAD_REPLICATE | g | m for m in (0, FLAG_MARGIN) for g in (0, FLAG_GRAYSCALE))
MAX_SIDE = 1 << 24
MAX_STREAMS = 8
MAX_MODEL_ID = 48
# fullmatch, not match with "$": "$" also matches before a trailing newline.
MODEL_ID_RE = re.compile(rb"[a-z0-9._-]+")
# Default pixel limit, as Pillow's decompression-bomb error threshold (2 * 89,478,485).
DEFAULT_MAX_PIXELS = 178_956_970
MIN_HEADER = 4 + 1 + 2 + 1 + 1 + 1 + 1 + 4 + 1 + 1 + 1 + 1 + 4 + 4  # smallest possible header


@dataclass(frozen=True)
class Header:
    model_id: str
    weights_id: bytes  # 4 bytes
    width: int
    height: int
    stream_lengths: tuple[int, ...]
    symbols_crc: int
    coder: int = CODER_RANS
    flags: int = FLAG_PAD_REPLICATE
    version: int = VERSION
    header_len: int = 0  # filled by parse / pack

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def grayscale(self) -> bool:
        """The encoder's input had R = G = B everywhere: decoders output one channel."""
        return bool(self.flags & FLAG_GRAYSCALE)

    @property
    def margin(self) -> bool:
        """The image is centred in its canvas with a replicated margin (flag bit 3)."""
        return bool(self.flags & FLAG_MARGIN)


@dataclass(frozen=True)
class Container:
    header: Header
    streams: tuple[bytes, ...]

    @property
    def file_size(self) -> int:
        return self.header.header_len + sum(len(s) for s in self.streams) + 4

    def bpp(self) -> float:
        """Bits per pixel from the whole file, header and checksums included."""
        return 8.0 * self.file_size / self.header.pixels


def _uv(n: int) -> bytes:
    if n < 0:
        raise ValueError("varint must be >= 0")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pack(header: Header, streams: list[bytes] | tuple[bytes, ...]) -> bytes:
    """Serialise a container. Validates the fields the parser would refuse."""
    mid = header.model_id.encode("ascii")
    if not (1 <= len(mid) <= MAX_MODEL_ID) or not MODEL_ID_RE.fullmatch(mid):
        raise ValueError(f"bad model id {header.model_id!r}")
    if header.flags not in VALID_FLAGS or header.coder not in CODERS:
        raise ValueError("version 1 writes flags 0x01, 0x05, 0x09 or 0x0d and a known coder")
    if len(header.weights_id) != 4:
        raise ValueError("weights_id must be 4 bytes")
    if not (1 <= header.width <= MAX_SIDE and 1 <= header.height <= MAX_SIDE):
        raise ValueError("image side out of range")
    if not (1 <= len(streams) <= MAX_STREAMS):
        raise ValueError("1..8 streams")
    body = bytearray()
    body += bytes([header.flags, header.coder, len(mid)]) + mid + header.weights_id
    body += _uv(header.width) + _uv(header.height) + bytes([len(streams)])
    for s in streams:
        body += _uv(len(s))
    body += struct.pack("<I", header.symbols_crc & 0xFFFFFFFF)
    header_len = 4 + 1 + 2 + len(body) + 4
    head = MAGIC + bytes([VERSION]) + struct.pack("<H", header_len) + bytes(body)
    head += struct.pack("<I", zlib.crc32(head))
    payload = b"".join(streams)
    return head + payload + struct.pack("<I", zlib.crc32(payload))


class _Reader:
    def __init__(self, data: bytes, end: int) -> None:
        self.data, self.pos, self.end = data, 0, end

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise FormatError("header fields run past the header length")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def u8(self) -> int:
        return self.take(1)[0]

    def uv(self, what: str) -> int:
        n = shift = 0
        for i in range(5):  # 5 bytes hold 35 bits: more than any field may claim
            b = self.u8()
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if b == 0 and i > 0:
                    raise FormatError(f"{what}: non-minimal varint")
                return n
        raise FormatError(f"{what}: varint longer than 5 bytes")


def parse_header(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Header:
    """Validate and decode the header (checks its CRC, limits and the total length)."""
    head = data[: len(MAGIC)]
    if head != MAGIC[: len(head)]:
        raise FormatError("not a .sodec file (bad magic bytes)")
    if len(data) < 7:
        raise TruncatedError(f"file too short for a .sodec header ({len(data)} bytes)")
    version = data[4]
    if version != VERSION:
        raise UnsupportedVersionError(f"format version {version} is not supported (this sodec reads {VERSION})")
    (header_len,) = struct.unpack_from("<H", data, 5)
    if header_len < MIN_HEADER:
        raise FormatError(f"header length {header_len} is below the minimum {MIN_HEADER}")
    if len(data) < header_len:
        raise TruncatedError(f"file ends inside the header ({len(data)} of {header_len} bytes)")
    (stored_crc,) = struct.unpack_from("<I", data, header_len - 4)
    if zlib.crc32(data[: header_len - 4]) != stored_crc:
        raise CorruptedError("header checksum mismatch (the file is corrupted)")
    r = _Reader(data, header_len - 4)
    r.pos = 7
    flags, coder, mlen = r.u8(), r.u8(), r.u8()
    if flags not in VALID_FLAGS:  # v1: bit 0 always set, bits 2 and 3 optional, the others clear
        raise FormatError(f"header flags 0x{flags:02x} are not valid in version 1 (0x01, 0x05, 0x09 or 0x0d)")
    if coder not in CODERS:
        raise FormatError(f"unknown entropy coder id {coder}")
    if not 1 <= mlen <= MAX_MODEL_ID:
        raise FormatError(f"model id length {mlen} out of range")
    mid = r.take(mlen)
    if not MODEL_ID_RE.fullmatch(mid):
        raise FormatError("model id has characters outside [a-z0-9._-]")
    weights_id = r.take(4)
    width, height = r.uv("width"), r.uv("height")
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise FormatError(f"image size {width}x{height} out of range")
    if max_pixels is not None and width * height > max_pixels:
        raise LimitsError(f"image of {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}")
    n = r.u8()
    if not 1 <= n <= MAX_STREAMS:
        raise FormatError(f"stream count {n} out of range")
    lengths = tuple(r.uv("stream length") for _ in range(n))
    (symbols_crc,) = struct.unpack("<I", r.take(4))
    if r.pos != header_len - 4:
        raise FormatError("header length does not match its fields")
    expected = header_len + sum(lengths) + 4
    if len(data) < expected:
        raise TruncatedError(f"file is truncated ({len(data)} of {expected} bytes)")
    if len(data) > expected:
        raise CorruptedError(f"{len(data) - expected} unexpected bytes after the end of the stream")
    return Header(
        mid.decode("ascii"), bytes(weights_id), width, height, lengths, symbols_crc, coder, flags, version, header_len
    )


def unpack(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Container:
    """Parse a whole file: header, lengths and both CRCs. Raises typed SodecErrors only."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("unpack takes bytes")
    data = bytes(data)
    h = parse_header(data, max_pixels)
    payload = data[h.header_len : len(data) - 4]
    (stored,) = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(payload) != stored:
        raise CorruptedError("payload checksum mismatch (the file is corrupted)")
    streams, pos = [], 0
    for n in h.stream_lengths:
        streams.append(payload[pos : pos + n])
        pos += n
    return Container(h, tuple(streams))


def reseal(data: bytes) -> bytes:
    """Recompute both CRC-32s of an edited file (for tests, conformance files and fuzzing).

    A test can then make a file wrong in one chosen way with checksums that still match, so it
    exercises the check *behind* the CRCs (field validation, the entropy decoder, the symbols
    CRC). Bytes too short to locate the header CRC come back unchanged.
    """
    b = bytearray(data)
    if len(b) < 7:
        return bytes(b)
    (header_len,) = struct.unpack_from("<H", b, 5)
    if header_len < 11 or header_len > len(b):  # the CRC would overwrite the length itself
        return bytes(b)
    b[header_len - 4 : header_len] = struct.pack("<I", zlib.crc32(b[: header_len - 4]))
    if len(b) >= header_len + 4:
        b[-4:] = struct.pack("<I", zlib.crc32(b[header_len:-4]))
    return bytes(b)
