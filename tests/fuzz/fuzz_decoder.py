"""atheris harness over the .sodec container parser and the decoder (tiny test model).

    python tests/fuzz/fuzz_decoder.py -runs=50000 /tmp/sodec-corpus      # the long run
    python tests/fuzz/fuzz_decoder.py -max_total_time=120 /tmp/sodec-corpus
    python tests/fuzz/fuzz_decoder.py --candidate crash-1234 out.sodec   # fuzzer input -> .sodec

An empty corpus folder is filled with the valid conformance files first. Passing means: for every
input, ``api.info`` and ``api.decompress`` return or raise a :class:`~sodec.errors.SodecError`;
anything else (another exception, a crash, a hang) is a bug. A Python exception also saves the
.sodec bytes that caused it in ``$SODEC_FUZZ_CRASHES`` (default ``fuzz-crashes/``), ready to
become a regression file in tests/data/regressions/.

A random mutation nearly always fails a CRC first, so the first input byte picks how the rest
becomes a file (MODES):

    raw             the bytes as they are (magic, lengths, CRCs)
    resealed        both CRCs recomputed (header fields, stream lengths, entropy decoder)
    sealed          resealed, and the symbols CRC set to what the decoder yields, so decoding runs
                    to the end and synthesises whatever the bytes say (g_s, tiling, uint8)
    streams         a seed file's header with fuzzed z/y streams (the rANS decoder)
    sealed-streams  both
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data"
MODEL_PATH = DATA / "codec-tiny-test.safetensors"
# Small: the fuzzer should spend its time on many inputs, not on one big decode.
MAX_PIXELS = 256 * 256
# Indexed by the first input byte (mod 8): the decoder-reaching modes get most of the inputs.
MODES = ("raw", "resealed", "sealed", "streams", "streams", "streams", "sealed-streams", "sealed-streams")

_state: dict[str, Any] = {}
stats: collections.Counter[str] = collections.Counter()


def load() -> None:
    """Import sodec and load the model (inside atheris.instrument_imports when fuzzing)."""
    if _state:
        return
    import torch

    from sodec import api, container, errors

    torch.set_num_threads(1)
    model = api.load_model(MODEL_PATH)
    seeds = [p.read_bytes() for p in sorted((DATA / "conformance").glob("ok-*.sodec")) if p.stat().st_size < 2048]
    _state.update(api=api, container=container, errors=errors, model=model, seeds=seeds, torch=torch)


def seed_inputs() -> list[bytes]:
    """Fuzzer inputs that decode: each small valid conformance file in each mode."""
    load()
    return [bytes([m]) + s for s in _state["seeds"] for m in (0, 1, 2)] + [
        bytes([m, i, 0, 0]) + s for i, s in enumerate(_state["seeds"]) for m in (3, 6)
    ]


def _streams_case(body: bytes) -> bytes:
    """A seed's header with the z/y streams taken from ``body``."""
    api, container, model, seeds = _state["api"], _state["container"], _state["model"], _state["seeds"]
    if len(body) < 3:
        return b""
    seed = container.unpack(seeds[body[0] % len(seeds)])
    wp, hp = api.padded_size(seed.header.width, seed.header.height, seed.header.margin)
    n_z = model.codec.cfg.hyper_latent_channels * (hp // 64) * (wp // 64)
    rest = body[3:]
    if body[2] & 1:  # any lengths
        cut = min(len(rest), body[1] * 4 + (body[2] >> 1 & 3))
        z, y = rest[:cut], rest[cut:]
    else:  # lengths the rANS coder can make, so the decoder runs: whole words, 2..n words
        n_y = model.codec.cfg.latent_channels * (hp // 16) * (wp // 16)
        cut = min(len(rest) // 4, 2 + body[1] % (n_z - 1)) * 4
        z, y = rest[:cut], rest[cut : cut + min(len(rest) - cut, 4 * n_y) // 4 * 4]
    header = dataclasses.replace(seed.header, stream_lengths=(len(z), len(y)))
    return container.pack(header, [z, y])


def _seal_symbols(data: bytes) -> bytes:
    """Mode 3: set the symbols CRC to what the decoder produces for these streams."""
    api, container, errors, model = _state["api"], _state["container"], _state["errors"], _state["model"]
    try:
        box = container.unpack(data, MAX_PIXELS)
        if len(box.streams) not in (2, 3):
            return data
        wp, hp = api.padded_size(box.header.width, box.header.height, box.header.margin)
        cfg = model.codec.cfg
        n_y = cfg.latent_channels * (hp // 16) * (wp // 16)
        n_z = cfg.hyper_latent_channels * (hp // 64) * (wp // 64)
        z, y = box.streams[:2]
        api.check_stream("z", len(z), n_z)
        api.check_stream("y", len(y), n_y)
        if wp * hp > MAX_PIXELS:
            return data
    except errors.SodecError:
        return data
    pad_z, pad_y = api._stream_padding(len(z), n_z), api._stream_padding(len(y), n_y)
    with _state["torch"].inference_mode():
        _, _, crc = model.codec.decompress_latent(y + bytes(pad_y), z + bytes(pad_z), (hp // 16, wp // 16))
    at = box.header.header_len - 8
    return container.reseal(data[:at] + struct.pack("<I", crc) + data[at + 4 :])


def candidate(data: bytes) -> bytes:
    """Fuzzer input -> the .sodec bytes it stands for (first byte: mode, see MODES)."""
    load()
    if not data:
        return b""
    mode, body = MODES[data[0] % len(MODES)], data[1:]
    reseal = _state["container"].reseal
    if mode == "raw":
        return body
    if mode == "resealed":
        return reseal(body)
    if mode == "sealed":
        return _seal_symbols(reseal(body))
    if mode == "streams":
        return _streams_case(body)
    return _seal_symbols(_streams_case(body))


def one_input(data: bytes) -> None:
    """The property: info and decompress return or raise a SodecError, nothing else."""
    load()
    api, errors = _state["api"], _state["errors"]
    file = candidate(data)
    try:
        with contextlib.suppress(errors.SodecError):
            api.info(file, max_pixels=MAX_PIXELS)
        try:
            image = api.decompress(file, _state["model"], max_pixels=MAX_PIXELS)
            stats["ok"] += 1
            assert image.ndim == 3 and image.shape[2] == 3
        except errors.SodecError as e:
            stats[type(e).__name__] += 1
    except BaseException:
        out = Path(os.environ.get("SODEC_FUZZ_CRASHES", "fuzz-crashes"))
        out.mkdir(parents=True, exist_ok=True)
        (out / f"crash-{int(time.time() * 1e6)}.sodec").write_bytes(file)
        raise
    stats["inputs"] += 1
    if stats["inputs"] % 5000 == 0:
        report()


def report() -> None:
    line = json.dumps(dict(sorted(stats.items())))
    print(f"sodec-fuzz: {line}", file=sys.stderr, flush=True)
    if os.environ.get("SODEC_FUZZ_STATS"):
        Path(os.environ["SODEC_FUZZ_STATS"]).write_text(line + "\n")


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[1] == "--candidate":
        load()
        Path(argv[3]).write_bytes(candidate(Path(argv[2]).read_bytes()))
        return 0
    import atheris

    with atheris.instrument_imports(include=["sodec"]):
        load()
    corpora = [Path(a) for a in argv[1:] if not a.startswith("-")]
    if corpora and (not corpora[0].exists() or not any(corpora[0].iterdir())):
        corpora[0].mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(seed_inputs()):
            (corpora[0] / f"seed-{i:03d}").write_bytes(s)
    import atexit

    atexit.register(report)
    atheris.Setup(argv, one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
