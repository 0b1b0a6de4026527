"""Replay tests/data/conformance/: every file decodes (or fails) as its manifest says.

The files were written by scripts/make_conformance.py with a tiny fixed test model, so they do not
change when the shipped models are retrained; a later format version must keep decoding them.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sodec import api, contract, errors
from sodec.cli import main

DATA = Path(__file__).resolve().parent / "data"
FOLDER = DATA / "conformance"
MANIFEST = json.loads((FOLDER / "manifest.json").read_text())
FILES = MANIFEST["files"]


@pytest.fixture(scope="module")
def models() -> dict[str, api.Model]:
    """Every test model of the manifest by file name (the main one and e.g. the context model)."""
    shas = {MANIFEST["model"]: MANIFEST["model_sha256"], **MANIFEST.get("other_models", {})}
    out = {}
    for file, sha in shas.items():
        out[file] = api.load_model(DATA / file)
        assert out[file].sha256 == sha
    return out


@pytest.fixture(scope="module")
def model(models: dict[str, api.Model]) -> api.Model:
    return models[MANIFEST["model"]]


def test_manifest_lists_every_file() -> None:
    on_disk = {p.name for p in FOLDER.glob("*.sodec")}
    assert on_disk == set(FILES)
    refs = {e["reference_png"] for e in FILES.values() if e["expect"] == "ok"}
    assert refs == {f"ref/{p.name}" for p in (FOLDER / "ref").glob("*.png")}
    assert {e["expect"] for e in FILES.values()} >= {"ok", "DesyncError", "LimitsError", "WrongModelError"}
    for entry in FILES.values():
        assert entry["expect"] == "ok" or issubclass(getattr(errors, entry["expect"]), errors.SodecError)


@pytest.mark.parametrize("name", sorted(FILES))
def test_conformance_file(name: str, models: dict[str, api.Model]) -> None:
    data = (FOLDER / name).read_bytes()
    entry = FILES[name]
    model = models[entry.get("model", MANIFEST["model"])]
    if entry["expect"] == "ok":
        # Symbols: exact. decode_latents refuses a file whose decoded symbols' CRC differs from
        # the header's; the header's must be the reference's.
        latents = api.decode_latents(data, model)
        assert latents.header.symbols_crc == entry["symbols_crc"]
        image = api.decompress(data, model)
        assert image.shape == (entry["height"], entry["width"], 3)
        assert image.dtype == np.uint8
        if latents.header.grayscale:  # docs/format.md, "Grayscale": exactly R = G = B
            assert (image == image[..., :1]).all()
        # Pixels: within the stated tolerance of the reference decode (sodec.contract).
        reference = np.asarray(Image.open(FOLDER / entry["reference_png"]).convert("RGB"))
        diff = contract.compare_pixels(image, reference)
        assert diff.conforms, f"{name}: {diff}"
        info = api.info(data)
        assert (info["width"], info["height"]) == (entry["width"], entry["height"])
        return
    with pytest.raises(errors.SodecError) as caught:
        api.decompress(data, model)
    # The exact class, not a parent: a DesyncError turning into a plain CorruptedError is a change.
    assert type(caught.value).__name__ == entry["expect"], str(caught.value)
    with contextlib.suppress(errors.SodecError):
        api.info(data)  # info reads the container only; it may pass where decoding fails


@pytest.mark.parametrize("name", ["ok-100x37.sodec", "truncated-in-payload.sodec", "y-all-ff.sodec", "flags-3.sodec"])
def test_cli_exit_codes(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.png"
    rc = main(["decompress", str(FOLDER / name), "--model", str(DATA / MANIFEST["model"]), "-o", str(out), "-q"])
    expect = FILES[name]["expect"]
    err = capsys.readouterr().err
    if expect == "ok":
        assert rc == 0 and out.is_file() and err == ""
    else:
        assert rc == getattr(errors, expect).exit_code
        assert not out.exists()
        assert err.startswith("sodec: error: ") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == ([out] if expect == "ok" else [])


def test_tolerance_catches_a_wrong_decode() -> None:
    """The pixel check is not vacuous: one level passes, three levels or a shifted image fail."""
    ref = np.asarray(Image.open(FOLDER / FILES["ok-768x512.sodec"]["reference_png"]).convert("RGB"))
    near = ref.astype(np.int16)
    near[::97, ::89] += np.where(near[::97, ::89] < 255, 1, -1)
    assert contract.compare_pixels(near.astype(np.uint8), ref).conforms
    far = ref.copy()
    far[10, 10] = (int(ref[10, 10, 0]) + 3) % 256
    assert not contract.compare_pixels(far, ref).conforms
    assert not contract.compare_pixels(np.roll(ref, 1, axis=1), ref).conforms
    with pytest.raises(ValueError):
        contract.compare_pixels(ref[:-1], ref)
