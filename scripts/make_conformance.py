"""Write the .sodec conformance files in tests/data/conformance/ and their manifest.

    python scripts/make_conformance.py            # (re)write the files and manifest.json
    python scripts/make_conformance.py --check    # rebuild in memory, compare with what is there
    python scripts/make_conformance.py --new-model  # also replace the test models in tests/data/

Every file is coded with a tiny fixed test model, not a shipped one (those are retrained and will
change): ``CODEC_PRESETS["tiny"]`` with ``torch.manual_seed(0)``. The model file is made once
and kept, because it cannot be remade byte for byte: safetensors writes its metadata in hash-map
order, so each save has another sha256 and thus another ``weights_id`` (the tensors are the
same). Without ``--new-model`` the committed model is reused.

The valid files code synthetic images built from integers and numpy's PCG64 (no data folder
needed); the broken ones are each wrong in one named way, mostly *re-sealed* (CRCs recomputed)
so that the check behind the checksums is what they exercise. Each file's outcome is verified
here before it is written: "ok" with the CRC-32 of its decoded symbols (which must match
exactly everywhere) and a reference PNG of its decoded pixels under ``ref/`` (which a decoder
must match within the tolerance of :mod:`sodec.contract`), or an error class name.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sodec import api, container, contract, errors, mean_colour
from sodec.checkpoint import save_checkpoint
from sodec.config import CODEC_PRESETS
from sodec.image_io import png_bytes
from sodec.models.vae_codec import VAECodec

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
MODEL_FILE = "codec-tiny-test.safetensors"
MODEL_ID = "codec-tiny-test"
# The same tiny codec with a checkerboard context model (CodecConfig.context; docs/format.md):
# its files pin the two-run order of the y stream. Made and kept like the model above.
CONTEXT_MODEL_FILE = "codec-tiny-context-test.safetensors"
CONTEXT_MODEL_ID = "codec-tiny-context-test"


def make_model(path: Path) -> str:
    """The tiny test model: seeded init, with the y scales spread over the whole scale table.

    A freshly initialised h_s gives scales near 0, so every y symbol would use the one CDF of
    the smallest scale and the tests would never see CDF index selection at work. Setting the
    bias of h_s's scale outputs to log-spaced values in [0.15, 60] fixes that.
    """
    torch.manual_seed(0)
    cfg = CODEC_PRESETS["tiny"]
    model = VAECodec(cfg)
    last = model.h_s[-1]
    with torch.no_grad():
        last.bias[: cfg.latent_channels] = torch.logspace(np.log10(0.15), np.log10(60.0), cfg.latent_channels)
    model.update(force=True)
    return save_checkpoint(path, model, "codec", cfg, {"sodec.model_id": MODEL_ID})


def make_context_model(path: Path) -> str:
    """The test model with a checkerboard context whose residual is not zero (a zero residual
    would code exactly like the plain hyperprior, and the files would pin nothing)."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(CODEC_PRESETS["tiny"], context="checkerboard")
    model = VAECodec(cfg)
    last = model.h_s[-1]
    with torch.no_grad():
        last.bias[: cfg.latent_channels] = torch.logspace(np.log10(0.15), np.log10(60.0), cfg.latent_channels)
        torch.nn.init.normal_(model.context_model.params[-1].weight, std=0.3)  # type: ignore[union-attr]
    model.update(force=True)
    return save_checkpoint(path, model, "codec", cfg, {"sodec.model_id": CONTEXT_MODEL_ID})


def synthetic(height: int, width: int, seed: int) -> np.ndarray:
    """(H, W, 3) uint8: gradients, a checkerboard and noise; integer maths only (portable)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    r = xx * 255 // max(width - 1, 1)
    g = yy * 255 // max(height - 1, 1)
    b = ((xx // 16 + yy // 16) % 2) * 160 + 40
    img = np.stack([r, g, b], axis=-1) + rng.integers(-24, 25, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _uv(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def raw_file(
    streams: list[bytes],
    *,
    weights_id: bytes,
    width: int,
    height: int,
    symbols_crc: int,
    model_id: bytes = MODEL_ID.encode(),
    flags: int = container.FLAG_PAD_REPLICATE,
    coder: int = container.CODER_RANS,
    version: int = container.VERSION,
    width_uv: bytes | None = None,
    header_len_delta: int = 0,
) -> bytes:
    """A file laid out as container.pack does, but with no validation: fields can be anything."""
    body = bytes([flags, coder, len(model_id)]) + model_id + weights_id
    body += (width_uv if width_uv is not None else _uv(width)) + _uv(height) + bytes([len(streams)])
    body += b"".join(_uv(len(s)) for s in streams) + struct.pack("<I", symbols_crc)
    header_len = 4 + 1 + 2 + len(body) + 4 + header_len_delta
    head = container.MAGIC + bytes([version]) + struct.pack("<H", header_len) + body
    head += struct.pack("<I", zlib.crc32(head))
    payload = b"".join(streams)
    return head + payload + struct.pack("<I", zlib.crc32(payload))


def flip(data: bytes, bit: int) -> bytes:
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def build(model: api.Model) -> dict[str, tuple[bytes, str, str]]:
    """name -> (file bytes, expected outcome, what the file is)."""
    files: dict[str, tuple[bytes, str, str]] = {}

    def add(name: str, data: bytes, expect: str, note: str) -> None:
        files[name] = (data, expect, note)

    # The ok-<w>x<h> files are as sodec <= 0.1 wrote them (two streams, no mean colour): they
    # must keep decoding, to the same pixels, in every later release.
    valid = {}
    for h, w, seed in [(64, 64, 1), (37, 100, 2), (1, 1, 3), (130, 65, 4), (512, 768, 5)]:
        data = mean_colour.strip(api.compress(model, synthetic(h, w, seed)))
        valid[(w, h)] = data
        add(f"ok-{w}x{h}.sodec", data, "ok", f"synthetic {w}x{h} image (seed {seed})")
    flat = np.full((64, 96, 3), 128, np.uint8)
    add("ok-flat-96x64.sodec", mean_colour.strip(api.compress(model, flat)), "ok", "uniform grey: the smallest streams")
    # Files with the mean-colour stream (docs/format.md, "Mean colour").
    for h, w, seed in [(37, 100, 2), (130, 65, 4)]:
        add(
            f"ok-mean-colour-{w}x{h}.sodec",
            api.compress(model, synthetic(h, w, seed)),
            "ok",
            f"synthetic {w}x{h} image (seed {seed}), mean-colour stream",
        )
    red = np.full((64, 64, 3), (200, 30, 30), np.uint8)
    add("ok-mean-colour-flat-64x64.sodec", api.compress(model, red), "ok", "flat (200, 30, 30), mean-colour stream")
    # A grayscale file (docs/format.md, "Grayscale"): flag bit 2, decoded with R = G = B.
    gray = np.repeat(synthetic(40, 72, 6)[..., :1], 3, axis=2)
    add("ok-gray-72x40.sodec", api.compress(model, gray), "ok", "synthetic 72x40 grayscale image (seed 6), flags 0x05")
    # Files with the margin (docs/format.md, "Margin"): flag bit 3, the picture centred in its canvas.
    for h, w, seed in [(37, 100, 2), (512, 768, 5)]:
        add(
            f"ok-margin-{w}x{h}.sodec",
            api.compress(model, synthetic(h, w, seed), margin=True),
            "ok",
            f"synthetic {w}x{h} image (seed {seed}), flags 0x09: centred in a replicated margin",
        )
    add(
        "ok-margin-gray-72x40.sodec",
        api.compress(model, gray, margin=True),
        "ok",
        "synthetic 72x40 grayscale image (seed 6), flags 0x0d",
    )

    base = valid[(64, 64)]
    box = container.unpack(base)
    hd = box.header
    z, y = box.streams
    common = {"weights_id": hd.weights_id, "width": hd.width, "height": hd.height, "symbols_crc": hd.symbols_crc}
    n_y = model.codec.cfg.latent_channels * (64 // 16) ** 2
    n_z = model.codec.cfg.hyper_latent_channels * (64 // 64) ** 2

    def with_streams(zs: bytes, ys: bytes, **kw: object) -> bytes:
        return raw_file([zs, ys], **{**common, **kw})  # type: ignore[arg-type]

    assert with_streams(z, y) == base, "raw_file must match container.pack"

    # Not a .sodec file / damaged bytes (detected by magic, lengths or CRCs).
    add("empty.sodec", b"", "TruncatedError", "zero bytes")
    add("magic-only.sodec", b"SODC", "TruncatedError", "the magic and nothing else")
    add("not-sodec-png.sodec", b"\x89PNG\r\n\x1a\n" + bytes(64), "FormatError", "a PNG signature")
    add("bad-magic.sodec", b"SODX" + base[4:], "FormatError", "magic SODX")
    add("header-bitflip.sodec", flip(base, 8 * 30 + 3), "CorruptedError", "one bit of the header flipped")
    hl = hd.header_len
    add("payload-bitflip.sodec", flip(base, 8 * (hl + 2)), "CorruptedError", "one bit of the z stream flipped")
    add("payload-crc-bitflip.sodec", flip(base, 8 * len(base) - 1), "CorruptedError", "payload CRC bit flipped")
    add("truncated-in-header.sodec", base[:20], "TruncatedError", "cut inside the header")
    add("truncated-in-payload.sodec", base[: hl + 3], "TruncatedError", "cut inside the streams")
    add("truncated-last-byte.sodec", base[:-1], "TruncatedError", "payload CRC missing its last byte")
    add("trailing-bytes.sodec", base + b"\x00", "CorruptedError", "one byte after the payload CRC")

    # Header fields no version 1 file may hold (re-sealed: the CRCs match).
    rs = container.reseal
    add("version-2.sodec", rs(base[:4] + b"\x02" + base[5:]), "UnsupportedVersionError", "format version 2")
    add("version-0.sodec", rs(base[:4] + b"\x00" + base[5:]), "UnsupportedVersionError", "format version 0")
    add("header-len-small.sodec", with_streams(z, y, header_len_delta=-30), "FormatError", "header_len below minimum")
    add("header-len-off.sodec", rs(with_streams(z, y, header_len_delta=1)), "FormatError", "header_len 1 too large")
    add("flags-0.sodec", with_streams(z, y, flags=0), "FormatError", "padding flag clear")
    add("flags-3.sodec", with_streams(z, y, flags=3), "FormatError", "unknown flag bit 1")
    add("flags-4.sodec", with_streams(z, y, flags=4), "FormatError", "grayscale flag, padding flag clear")
    add("flags-8.sodec", with_streams(z, y, flags=8), "FormatError", "margin flag, padding flag clear")
    add("flags-25.sodec", with_streams(z, y, flags=0x19), "FormatError", "margin flag beside unknown bit 4")
    add("coder-2.sodec", with_streams(z, y, coder=2), "FormatError", "unknown entropy coder 2")
    add("model-id-upper.sodec", with_streams(z, y, model_id=b"Codec-tiny-test"), "FormatError", "upper case id")
    add("model-id-newline.sodec", with_streams(z, y, model_id=b"codec-tiny-test\n"), "FormatError", "id + newline")
    add("model-id-empty.sodec", with_streams(z, y, model_id=b""), "FormatError", "model id of length 0")
    add("varint-nonminimal.sodec", with_streams(z, y, width_uv=b"\xc0\x00"), "FormatError", "width 64 as 2 bytes")
    add("varint-6-bytes.sodec", with_streams(z, y, width_uv=b"\x80" * 5 + b"\x01"), "FormatError", "6-byte varint")
    add("width-0.sodec", with_streams(z, y, width=0), "FormatError", "width 0")
    add("width-too-large.sodec", with_streams(z, y, width=(1 << 24) + 1), "FormatError", "width above 2^24")
    add("three-streams.sodec", raw_file([z, y, b"\0" * 8], **common), "FormatError", "a third stream of 8 bytes, not 6")  # type: ignore[arg-type]
    mean_short = raw_file([z, y, b"\0" * 5], **common)  # type: ignore[arg-type]
    add("mean-colour-5-bytes.sodec", mean_short, "FormatError", "a mean-colour stream of 5 bytes")
    over = raw_file([z, y, struct.pack("<3H", mean_colour.MAX_VALUE + 1, 0, 0)], **common)  # type: ignore[arg-type]
    add("mean-colour-over-255.sodec", over, "FormatError", "mean red of 255 + 1/64 levels")
    four = raw_file([z, y, bytes(6), bytes(6)], **common)  # type: ignore[arg-type]
    add("four-streams.sodec", four, "FormatError", "a fourth stream after the mean colour")
    add("one-stream.sodec", raw_file([z + y], **common), "FormatError", "1 stream")  # type: ignore[arg-type]

    # Limits: refused from the header alone, before any model or tensor.
    huge = raw_file([z, y], **{**common, "width": 1_000_000, "height": 1_000_000})  # type: ignore[arg-type]
    add("huge-1000000x1000000.sodec", huge, "LimitsError", "claims 10^12 pixels")
    wide = raw_file([z, y], **{**common, "width": 1 << 24, "height": 1})  # type: ignore[arg-type]
    add("padded-over-limit.sodec", wide, "LimitsError", "2^24 x 1 px: under the pixel limit, 2^24 x 64 padded")

    # The file is fine but made by another model.
    add("other-model-id.sodec", with_streams(z, y, model_id=b"codec-other"), "WrongModelError", "another model id")
    add("other-weights.sodec", with_streams(z, y, weights_id=b"\0\0\0\0"), "WrongModelError", "another weights id")

    # Streams the rANS decoder must never see (each was a segfault in CompressAI's decoder).
    add("streams-empty.sodec", with_streams(b"", b""), "FormatError", "z and y of 0 bytes")
    add("stream-odd-length.sodec", with_streams(z, y + b"\0"), "FormatError", "y not a multiple of 4 bytes")
    add("stream-too-long.sodec", with_streams(z, b"\xff" * (4 * n_y + 4)), "FormatError", "y longer than 4 B/symbol")
    add("z-too-long.sodec", with_streams(b"\xff" * (4 * n_z + 4), y), "FormatError", "z longer than 4 B/symbol")

    # Streams that pass every length check: the decoder runs and the symbols CRC refuses them.
    add("y-all-ff.sodec", with_streams(z, b"\xff" * (4 * n_y)), "DesyncError", "y of 0xff: bypass mode past the end")
    add("z-all-ff.sodec", with_streams(b"\xff" * (4 * n_z), y), "DesyncError", "z of 0xff")
    add("y-bitflip-resealed.sodec", rs(flip(base, 8 * (hl + len(z) + 5))), "DesyncError", "y bit flipped, re-sealed")
    add("symbols-crc-off.sodec", with_streams(z, y, symbols_crc=hd.symbols_crc ^ 1), "DesyncError", "symbols CRC ^ 1")
    big = container.unpack(valid[(768, 512)])
    swapped = dataclasses.replace(big.header, stream_lengths=(len(z), len(big.streams[1])))
    add("z-from-other-file.sodec", container.pack(swapped, [z, big.streams[1]]), "DesyncError", "z of another image")
    return files


def build_context(model: api.Model) -> dict[str, tuple[bytes, str, str]]:
    """Files of the checkerboard-context test model: name -> (bytes, expected outcome, what)."""
    files = {}
    for h, w, seed in [(37, 100, 2), (130, 65, 4), (200, 264, 6)]:
        files[f"ok-context-{w}x{h}.sodec"] = (
            api.compress(model, synthetic(h, w, seed)),
            "ok",
            f"synthetic {w}x{h} image (seed {seed}), checkerboard context model",
        )
    return files


def outcome(data: bytes, model: api.Model) -> tuple[str, np.ndarray | None]:
    try:
        image = api.decompress(data, model)
    except errors.SodecError as e:
        return type(e).__name__, None
    return "ok", image


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA, help="tests/data folder")
    p.add_argument("--new-model", action="store_true", help="replace the tiny test model (breaks old files)")
    p.add_argument("--check", action="store_true", help="compare with the files on disk; write nothing")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model_path = args.data / MODEL_FILE
    if args.new_model or not model_path.is_file():
        if args.check:
            print(f"no model at {model_path}", file=sys.stderr)
            return 1
        model_path.parent.mkdir(parents=True, exist_ok=True)
        print(f"new test model {model_path}: sha256 {make_model(model_path)}")
    model = api.load_model(model_path)
    context_path = args.data / CONTEXT_MODEL_FILE
    if args.new_model or not context_path.is_file():
        if args.check:
            print(f"no model at {context_path}", file=sys.stderr)
            return 1
        print(f"new test model {context_path}: sha256 {make_context_model(context_path)}")
    context_model = api.load_model(context_path)
    out = args.data / "conformance"
    manifest: dict[str, object] = {
        "about": "Expected outcome of decoding each file with the model below (scripts/make_conformance.py).",
        "format_version": container.VERSION,
        "model": MODEL_FILE,
        "model_sha256": model.sha256,
        "other_models": {CONTEXT_MODEL_FILE: context_model.sha256},
        "model_of_file": "a file's own 'model' entry, where it has one, names the model it decodes with",
        "symbols_crc": "CRC-32 of the decoded integer symbols (z then y, int32 little-endian): exact everywhere",
        "reference_png": "the decoded pixels on the machine that wrote these files; a decoder must match them "
        f"within {contract.MAX_ABS_LEVELS} levels per sample and {contract.MIN_PSNR_DB:.0f} dB PSNR (sodec.contract)",
        "files": {},
    }
    problems: list[str] = []
    files: dict[str, object] = manifest["files"]  # type: ignore[assignment]
    jobs = [(name, f, model, None) for name, f in build(model).items()]
    jobs += [(name, f, context_model, CONTEXT_MODEL_FILE) for name, f in build_context(context_model).items()]
    for name, (data, expect, note), file_model, model_file in jobs:
        got, image = outcome(data, file_model)
        if got != expect:
            problems.append(f"{name}: expected {expect}, got {got}")
        entry: dict[str, object] = {"expect": got, "note": note}
        if model_file is not None:
            entry["model"] = model_file
        if image is not None:
            h = container.parse_header(data)
            ref = f"ref/{Path(name).stem}.png"
            entry.update(width=h.width, height=h.height, symbols_crc=h.symbols_crc, reference_png=ref)
            if args.check:
                on_disk = out / ref
                if not on_disk.is_file():
                    problems.append(f"{name}: no reference {on_disk}")
                else:
                    diff = contract.compare_pixels(image, np.asarray(Image.open(on_disk).convert("RGB")))
                    if not diff.conforms:
                        problems.append(f"{name}: pixels outside the tolerance of {ref}: {diff}")
            else:
                (out / "ref").mkdir(parents=True, exist_ok=True)
                (out / ref).write_bytes(png_bytes(image))
        files[name] = entry
        if args.check:
            on_disk = out / name
            if not on_disk.is_file() or on_disk.read_bytes() != data:
                problems.append(f"{name}: differs from {on_disk}")
        else:
            out.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(data)
    text = json.dumps(manifest, indent=2) + "\n"
    if args.check:
        if (out / "manifest.json").read_text() != text:
            problems.append("manifest.json differs")
    else:
        (out / "manifest.json").write_text(text)
    for line in problems:
        print(line, file=sys.stderr)
    print(f"{len(files)} files {'checked' if args.check else 'written'} in {out}, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
