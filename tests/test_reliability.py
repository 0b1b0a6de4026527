"""Hostile and damaged files, limits before allocation, safe loading, atomic output (issue 5).

All files here are made with the tiny fixed test model in tests/data/, never a shipped one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from sodec import api, checkpoint, container, errors, registry
from sodec.cli import main
from sodec.config import CODEC_PRESETS
from sodec.models.vae_codec import VAECodec

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
CONF = DATA / "conformance"
TINY = DATA / "codec-tiny-test.safetensors"
REGRESSIONS = DATA / "regressions"


@pytest.fixture(scope="module")
def tiny() -> api.Model:
    return api.load_model(TINY)


def sodec_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


# -- corruption: every bit flip and every truncation is detected ------------------------------


def test_every_bit_flip_and_truncation_of_a_kodak_sized_file_is_detected(tiny: api.Model) -> None:
    data = (CONF / "ok-768x512.sodec").read_bytes()
    header = container.parse_header(data)
    assert (header.width, header.height) == (768, 512)
    assert api.decompress(data, tiny).shape == (512, 768, 3)
    missed = []
    # Every bit of the file: the header's 8 * header_len and the whole payload (~40k flips;
    # each fails a CRC-32 within microseconds, so no sampling is needed).
    for bit in range(8 * len(data)):
        bad = bytearray(data)
        bad[bit // 8] ^= 1 << (bit % 8)
        try:
            api.decompress(bytes(bad), tiny)
            missed.append(f"bit {bit}")
        except errors.SodecError:
            pass
    for n in range(len(data)):
        try:
            api.decompress(data[:n], tiny)
            missed.append(f"truncated to {n}")
        except errors.SodecError:
            pass
    assert not missed, f"{len(missed)} undetected: {missed[:10]}"


def test_flip_errors_are_typed_by_where_they_land(tiny: api.Model) -> None:
    data = (CONF / "ok-64x64.sodec").read_bytes()
    hl = container.parse_header(data).header_len

    def err(bit: int) -> type[errors.SodecError]:
        bad = bytearray(data)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(errors.SodecError) as e:
            api.decompress(bytes(bad), tiny)
        return type(e.value)

    assert err(0) is errors.FormatError  # magic
    assert err(8 * 4) is errors.UnsupportedVersionError
    assert all(issubclass(err(8 * i), errors.CorruptedError) for i in range(8, hl))
    assert err(8 * hl + 9) is errors.CorruptedError  # payload
    assert err(8 * len(data) - 1) is errors.CorruptedError  # payload CRC


# -- limits before allocation ------------------------------------------------------------------


class TensorSpy(TorchFunctionMode):
    """Records every torch function called (factories included) while active."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.calls.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def huge_header() -> bytes:
    """The header alone of a file claiming 1,000,000 x 1,000,000 pixels (no payload)."""
    data = (CONF / "huge-1000000x1000000.sodec").read_bytes()
    h = container.parse_header(data, max_pixels=None)
    assert (h.width, h.height) == (1_000_000, 1_000_000)
    return data[: h.header_len]


def test_huge_header_is_refused_before_any_model_or_tensor(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_model(*a: object, **k: object) -> None:
        raise AssertionError("a model was loaded for a file that the header alone refuses")

    monkeypatch.setattr(api, "load_model", no_model)
    monkeypatch.setattr(api, "model_for", no_model)
    monkeypatch.setattr(checkpoint, "load_checkpoint", no_model)
    spy = TensorSpy()
    with spy:
        torch.zeros(1)  # the spy does see tensor factories
    assert spy.calls == ["zeros"]
    spy.calls.clear()
    for data in (huge_header(), (CONF / "huge-1000000x1000000.sodec").read_bytes()):
        with spy:
            with pytest.raises(errors.LimitsError):
                api.decompress(data)
            with pytest.raises(errors.LimitsError):
                api.info(data)
        assert spy.calls == [], f"torch was called: {spy.calls[:5]}"
    path = tmp_path / "huge.sodec"
    path.write_bytes(huge_header())
    assert main(["decompress", str(path), "-o", str(tmp_path / "x.png")]) == errors.LimitsError.exit_code
    assert main(["info", str(path)]) == errors.LimitsError.exit_code
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith(f"sodec: error: {path}: image of 1000000x1000000") for line in err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.sodec"]


def test_max_pixels_is_configurable(tiny: api.Model, tmp_path: Path) -> None:
    data = (CONF / "ok-64x64.sodec").read_bytes()
    with pytest.raises(errors.LimitsError):
        api.decompress(data, tiny, max_pixels=64 * 64 - 1)
    assert api.decompress(data, tiny, max_pixels=64 * 64).shape == (64, 64, 3)
    src, out = str(CONF / "ok-64x64.sodec"), str(tmp_path / "o.png")
    args = ["decompress", src, "--model", str(TINY), "-o", out, "-q"]
    assert main([*args, "--max-pixels", "4000"]) == errors.LimitsError.exit_code
    assert main([*args, "--max-pixels", "0"]) == 0  # 0 = no limit
    assert main(["info", src, "--max-pixels", "4000"]) == errors.LimitsError.exit_code


def test_the_limit_counts_the_padded_area(tiny: api.Model) -> None:
    """A 100x37 image is decoded at 128x64: the limit applies to the work actually done."""
    data = (CONF / "ok-100x37.sodec").read_bytes()
    with pytest.raises(errors.LimitsError, match="padded to 128x64"):
        api.decompress(data, tiny, max_pixels=100 * 37)
    assert api.decompress(data, tiny, max_pixels=128 * 64).shape == (37, 100, 3)
    assert api.info(data, max_pixels=100 * 37)["padded_to"] == [128, 64]  # info allocates nothing


def test_stream_lengths_checked_against_symbol_counts(tiny: api.Model) -> None:
    for length, n, ok in [(8, 4, True), (16, 4, True), (20, 4, False), (0, 4, False), (4, 1, False), (9, 4, False)]:
        if ok:
            api.check_stream("z", length, n)
        else:
            with pytest.raises(errors.FormatError):
                api.check_stream("z", length, n)


def test_bad_tile_is_a_usage_error(tiny: api.Model) -> None:
    data = (CONF / "ok-64x64.sodec").read_bytes()
    for tile in (-4, 0, 5, 8):
        with pytest.raises(errors.UsageError):
            api.decompress(data, tiny, tile=tile)
    assert api.decompress(data, tiny, tile=12).shape == (64, 64, 3)


# -- fuzz-style checks that run in the default suite ----------------------------------------


def load_harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sodec_fuzz_harness", HERE / "fuzz" / "fuzz_decoder.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(i, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[min(i, len(b) - 1)] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif op == 2:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3:
            del b[i : i + rng.randint(1, 8)]
        else:
            j = rng.randrange(len(b) + 1)
            b[i:i] = b[j : j + rng.randint(1, 16)]
    return bytes(b)


def test_mini_fuzz_only_typed_errors() -> None:
    """~1500 mutated inputs through the atheris harness's property, no atheris needed."""
    harness = load_harness()
    seeds = harness.seed_inputs()
    rng = random.Random(5)
    for i in range(1500):
        data = mutate(rng, rng.choice(seeds)) if i >= len(seeds) else seeds[i]
        harness.one_input(data)
    stats = harness.stats
    assert stats["inputs"] == 1500
    # The harness's modes must reach past the CRCs: the decoder ran and both outcomes occur.
    assert stats["ok"] > 50 and stats["DesyncError"] > 50, dict(stats)


def test_regression_files_decode_or_raise_typed_errors(tiny: api.Model) -> None:
    """tests/data/regressions/: inputs that once crashed the decoder (see the README there)."""
    files = sorted(REGRESSIONS.glob("*.sodec"))
    for path in files:
        data = path.read_bytes()
        try:
            image = api.decompress(data, tiny, max_pixels=256 * 256)
            assert image.ndim == 3
        except errors.SodecError:
            pass
        with contextlib.suppress(errors.SodecError):
            api.info(data)


def test_regression_images_are_refused_with_typed_errors(tmp_path: Path) -> None:
    from sodec.image_io import read_image

    files = sorted(p for p in REGRESSIONS.iterdir() if p.suffix in {".tif", ".png", ".gif", ".bmp", ".jpg"})
    assert files
    for path in files:
        with pytest.raises(errors.UnsupportedInputError):
            read_image(path.read_bytes())
        rc = main(["compress", str(path), "-o", str(tmp_path / "x.sodec"), "-q"])
        assert rc == errors.UnsupportedInputError.exit_code and not (tmp_path / "x.sodec").exists()


def test_hostile_streams_in_a_subprocess() -> None:
    """The streams that segfaulted CompressAI's rANS decoder, replayed where a crash can't hide.

    Run in a child so a regression shows up as a signal, not as a dead test session.
    """
    names = ["streams-empty.sodec", "y-all-ff.sodec", "z-all-ff.sodec", "stream-too-long.sodec"]
    code = (
        "import sys\nfrom sodec import api, errors\nm = api.load_model(sys.argv[1])\n"
        "for f in sys.argv[2:]:\n"
        "    try:\n        api.decompress(open(f, 'rb').read(), m)\n"
        "    except errors.SodecError as e:\n        print(type(e).__name__)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(TINY), *(str(CONF / n) for n in names)],
        capture_output=True,
        text=True,
        env=sodec_env(),
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["FormatError", "DesyncError", "DesyncError", "FormatError"]


# -- safe loading: safetensors only, sha256 before use, wrong models refused --------------------


def other_tiny(path: Path, seed: int, model_id: str = "codec-tiny-test") -> Path:
    torch.manual_seed(seed)
    cfg = CODEC_PRESETS["tiny"]
    model = VAECodec(cfg)
    model.update(force=True)
    checkpoint.save_checkpoint(path, model, "codec", cfg, {"sodec.model_id": model_id})
    return path


def test_file_from_one_model_decoded_with_another_is_refused(tiny: api.Model, tmp_path: Path) -> None:
    data = (CONF / "ok-64x64.sodec").read_bytes()
    same_id = api.load_model(other_tiny(tmp_path / "a.safetensors", seed=1))
    assert same_id.model_id == tiny.model_id and same_id.weights_id != tiny.weights_id
    with pytest.raises(errors.WrongModelError, match="other weights"):
        api.decompress(data, same_id)
    other_id = api.load_model(other_tiny(tmp_path / "b.safetensors", seed=0, model_id="codec-other"))
    with pytest.raises(errors.WrongModelError, match="made by model 'codec-tiny-test'"):
        api.decompress(data, other_id)
    # No --model: the file names a model that is not installed.
    with pytest.raises(errors.WrongModelError, match="not installed"):
        api.decompress(data)
    assert main(["decompress", str(CONF / "ok-64x64.sodec"), "-o", str(tmp_path / "o.png")]) == 6


def registry_with(monkeypatch: pytest.MonkeyPatch, folder: Path, sha256: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "codec-tiny-test.safetensors").write_bytes(TINY.read_bytes())
    entry = {
        "name": "codec-tiny-test",
        "kind": "codec",
        "family": "codec-tiny",
        "quality": 1,
        "file": "codec-tiny-test.safetensors",
        "sha256": sha256,
    }
    import json

    (folder / "models.json").write_text(json.dumps({"models": [entry], "default": "codec-tiny-test"}))
    monkeypatch.setattr(registry, "weights_folder", lambda: folder)


def test_registry_sha256_mismatch_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = (CONF / "ok-64x64.sodec").read_bytes()
    registry_with(monkeypatch, tmp_path / "good", checkpoint.sha256_file(TINY))
    assert api.decompress(data).shape == (64, 64, 3)  # found through the registry, sha256 checked
    registry_with(monkeypatch, tmp_path / "bad", "0" * 64)
    with pytest.raises(errors.WeightsError, match="sha256"):
        api.load_model("codec-tiny-test")
    with pytest.raises(errors.WeightsError):
        api.decompress(data)


class _Payload:
    """Unpickling this creates a marker file: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_pickles_and_other_files_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pickle-was-executed"
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    torch_pickle = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, torch_pickle)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(1000))
    plain = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(plain))  # safetensors, but not a sodec checkpoint
    for path in (evil, torch_pickle, junk, plain, tmp_path / "missing.safetensors"):
        with pytest.raises(errors.WeightsError):
            api.load_model(path)
    assert not marker.exists()
    rc = main(["decompress", str(CONF / "ok-64x64.sodec"), "--model", str(evil), "-o", str(tmp_path / "o.png")])
    assert rc == errors.WeightsError.exit_code and not marker.exists()


# -- output files: never partial ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["payload-bitflip.sodec", "y-all-ff.sodec", "truncated-in-payload.sodec"])
def test_failed_decode_leaves_no_output(name: str, tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    rc = main(["decompress", str(CONF / name), "--model", str(TINY), "-o", str(out), "-q"])
    assert rc != 0 and list(tmp_path.iterdir()) == []
    out.write_bytes(b"previous")  # an existing output is left as it was, even with -f
    assert main(["decompress", str(CONF / name), "--model", str(TINY), "-o", str(out), "-q", "-f"]) == rc
    assert out.read_bytes() == b"previous" and list(tmp_path.iterdir()) == [out]


# The child writes its output through sodec.checkpoint.atomic_write_via: a hidden temp file
# ".NAME.XXXX.tmp" in the output folder, renamed over NAME when complete.
_SLOW_FSYNC = """
import os, sys, time
from sodec import cli
_fsync = os.fsync
def slow_fsync(fd):  # widen the write window so the kill lands inside it
    time.sleep(300)
    _fsync(fd)
os.fsync = slow_fsync
sys.exit(cli.main(sys.argv[1:]))
"""


def _kill_when_temp_appears(proc: subprocess.Popen[bytes], folder: Path, name: str, timeout: float) -> bool:
    """Poll for the temp file; SIGKILL the child as soon as it holds data. False if missed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in os.scandir(folder):
            if not (entry.name.startswith(f".{name}.") and entry.name.endswith(".tmp")):
                continue
            try:
                size = entry.stat().st_size
            except FileNotFoundError:  # the empty output probe, or a temp file renamed into place
                continue
            if size > 0:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
        if proc.poll() is not None:
            return False
        time.sleep(0.0005)
    proc.kill()
    proc.wait()
    raise AssertionError("sodec decompress did not start writing in time")


def test_sigkill_during_write_leaves_no_output(tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    args = ["decompress", str(CONF / "ok-768x512.sodec"), "--model", str(TINY), "-o", str(out)]
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_FSYNC, *args], env=sodec_env(), stderr=subprocess.DEVNULL)
    assert _kill_when_temp_appears(proc, tmp_path, out.name, timeout=240)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    # What a kill leaves is the hidden temp file only (see docs/reliability.md).
    assert [p.name.startswith(".out.png.") for p in tmp_path.iterdir()] == [True]


@pytest.mark.slow
def test_sigkill_during_a_real_write_leaves_no_output(tiny: api.Model, tmp_path: Path) -> None:
    """No patching: a 2048x2048 decode to PPM (12 MB) and a tight poll for the temp file."""
    src = tmp_path / "big.sodec"
    src.write_bytes(api.compress(tiny, np.random.default_rng(0).integers(0, 256, (2048, 2048, 3), dtype=np.uint8)))
    for _attempt in range(5):
        out = tmp_path / "out.ppm"
        out.unlink(missing_ok=True)
        args = ["decompress", str(src), "--model", str(TINY), "-o", str(out), "-q"]
        proc = subprocess.Popen([sys.executable, "-m", "sodec.cli", *args], env=sodec_env())
        if _kill_when_temp_appears(proc, tmp_path, out.name, timeout=300):
            assert not out.exists()
            return
        assert proc.returncode == 0 and out.is_file()  # the write won the race: try again
    pytest.skip("the write finished between two polls five times")
