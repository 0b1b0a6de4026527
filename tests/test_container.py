"""The .sodec container (sodec.container): round trips, field validation, hostile bytes."""

from __future__ import annotations

import contextlib
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sodec import container, errors
from sodec.container import Header

model_ids = st.from_regex(r"[a-z0-9._-]{1,48}", fullmatch=True)
sides = st.integers(1, container.MAX_SIDE)
streams = st.lists(st.binary(max_size=64), min_size=1, max_size=container.MAX_STREAMS)


def header(**kw: object) -> Header:
    fields: dict[str, object] = {
        "model_id": "codec-tiny-test",
        "weights_id": b"\x01\x02\x03\x04",
        "width": 100,
        "height": 37,
        "stream_lengths": (0, 0),
        "symbols_crc": 0xDEADBEEF,
    }
    fields.update(kw)
    return Header(**fields)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(
    mid=model_ids, wid=st.binary(min_size=4, max_size=4), w=sides, h=sides, ss=streams, crc=st.integers(0, 2**32 - 1)
)
def test_round_trip(mid: str, wid: bytes, w: int, h: int, ss: list[bytes], crc: int) -> None:
    data = container.pack(header(model_id=mid, weights_id=wid, width=w, height=h, symbols_crc=crc), ss)
    box = container.unpack(data, max_pixels=None)
    hd = box.header
    assert (hd.model_id, hd.weights_id, hd.width, hd.height, hd.symbols_crc) == (mid, wid, w, h, crc)
    assert box.streams == tuple(ss) and hd.stream_lengths == tuple(len(s) for s in ss)
    assert box.file_size == len(data) and box.bpp() == 8 * len(data) / (w * h)
    assert container.reseal(data) == data


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_typed_errors(data: bytes) -> None:
    for candidate in (data, b"SODC\x01" + data, container.reseal(b"SODC\x01" + data)):
        with contextlib.suppress(errors.SodecError):
            container.unpack(candidate)


@settings(max_examples=500, deadline=None)
@given(pos=st.integers(0, 200), value=st.integers(0, 255), cut=st.integers(0, 300))
def test_resealed_edits_raise_only_typed_errors(pos: int, value: int, cut: int) -> None:
    """Edit one byte of a valid file, recompute the CRCs: field validation must catch it."""
    data = bytearray(container.pack(header(stream_lengths=(3, 5)), [b"abc", b"defgh"]))
    data[pos % len(data)] = value
    for candidate in (bytes(data), bytes(data[: cut % (len(data) + 1)])):
        try:
            box = container.unpack(container.reseal(candidate))
        except errors.SodecError:
            continue
        assert box.file_size == len(candidate)


def test_header_fields_out_of_range_are_refused() -> None:
    good = container.pack(header(stream_lengths=(3, 5)), [b"abc", b"defgh"])
    hl = container.parse_header(good).header_len
    body = good[7 : hl - 4]

    def with_body(new: bytes) -> bytes:
        head = b"SODC\x01" + struct.pack("<H", 7 + len(new) + 4) + new
        head += struct.pack("<I", zlib.crc32(head))
        return head + b"abcdefgh" + struct.pack("<I", zlib.crc32(b"abcdefgh"))

    assert container.unpack(with_body(body)).streams == (b"abc", b"defgh")
    for bad in (
        b"\x00" + body[1:],  # flags: padding bit clear
        b"\x81" + body[1:],  # flags: unknown bit
        b"\x03" + body[1:],  # flags: bit 1 stays reserved
        b"\x04" + body[1:],  # flags: grayscale without the padding bit
        body[:1] + b"\x07" + body[2:],  # unknown coder
    ):
        with pytest.raises(errors.FormatError):
            container.unpack(with_body(bad))


def test_the_grayscale_flag_round_trips() -> None:
    for flags, gray in ((container.FLAG_PAD_REPLICATE, False), (0x05, True)):
        data = container.pack(header(stream_lengths=(3,), flags=flags), [b"abc"])
        h = container.unpack(data).header
        assert (h.flags, h.grayscale) == (flags, gray)


def test_the_margin_flag_round_trips_and_only_known_bits_parse() -> None:
    for flags in (0x01, 0x05, 0x09, 0x0D):
        data = container.pack(header(stream_lengths=(3,), flags=flags), [b"abc"])
        h = container.unpack(data).header
        assert (h.flags, h.grayscale, h.margin) == (flags, bool(flags & 4), bool(flags & 8))
    for flags in (0x08, 0x0B, 0x11, 0x19):  # margin without bit 0, or beside an unknown bit
        with pytest.raises(ValueError):
            container.pack(header(stream_lengths=(3,), flags=flags), [b"abc"])


def test_limits_are_checked_from_the_header_alone() -> None:
    data = container.pack(header(width=1_000_000, height=1_000_000, stream_lengths=(1,)), [b"x"])
    head = data[: container.parse_header(data, max_pixels=None).header_len]
    with pytest.raises(errors.LimitsError):
        container.parse_header(head)  # before the file's missing payload is even noticed
    with pytest.raises(errors.TruncatedError):
        container.parse_header(head, max_pixels=None)
    with pytest.raises(errors.LimitsError):
        container.unpack(data, max_pixels=10**12 - 1)
    assert container.unpack(data, max_pixels=10**12).header.pixels == 10**12


def test_stream_lengths_are_checked_against_the_file_size() -> None:
    data = container.pack(header(stream_lengths=(3, 5)), [b"abc", b"defgh"])
    hl = container.parse_header(data).header_len
    # A header that claims a 2^35 - 1 byte stream in a 40-byte file: refused without reading.
    huge = container.reseal(data[: hl - 10] + b"\xff\xff\xff\xff\x7f" + data[hl - 9 :])
    with pytest.raises(errors.SodecError):
        container.unpack(huge)
    with pytest.raises(errors.TruncatedError):
        container.unpack(data[:-1])
    with pytest.raises(errors.CorruptedError):
        container.unpack(data + b"\0")


@pytest.mark.parametrize(
    "kw",
    [
        {"model_id": "Upper"},
        {"model_id": "id\n"},
        {"model_id": ""},
        {"model_id": "x" * 49},
        {"weights_id": b"\0\0\0"},
        {"width": 0},
        {"height": container.MAX_SIDE + 1},
        {"flags": 0},
        {"flags": 4},
        {"flags": 3},
        {"coder": 9},
    ],
)
def test_pack_refuses_what_parse_would(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        container.pack(header(**kw), [b""])


def test_pack_refuses_stream_counts() -> None:
    with pytest.raises(ValueError):
        container.pack(header(), [])
    with pytest.raises(ValueError):
        container.pack(header(), [b""] * 9)


def test_varints() -> None:
    assert container._uv(0) == b"\x00" and container._uv(127) == b"\x7f" and container._uv(128) == b"\x80\x01"
    r = container._Reader(b"\x80\x80\x80\x80\x01", 5)
    assert r.uv("x") == 1 << 28
    for bad in (b"\x80\x00", b"\xff\xff\xff\xff\xff\x01", b"\x80"):
        with pytest.raises(errors.FormatError):
            container._Reader(bad, len(bad)).uv("x")


def test_reseal_leaves_short_input_alone() -> None:
    for data in (b"", b"SODC", b"SODC\x01\x05\x00xxxxxxx"):
        assert container.reseal(data) == data
