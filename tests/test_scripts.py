"""The report-writing flags of scripts/eval_codec.py (``--registry``, ``--readme``) and
benchmarks/quality_checks.py (``--readme``, ``--json``), run in-process on tiny inputs.

Both write files that the repo commits (models.json's kodak_bpp, README sections), so a silent
mistake there would put wrong figures into the release; these tests run the real scripts on a
copy of the registry and a scratch README.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sodec import registry

REPO = Path(__file__).resolve().parents[1]
MODEL = "codec-small-q3"  # the cheapest shipped model to run


def _load(rel: str):
    path = REPO / rel
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


@pytest.fixture
def registry_copy(tmp_path, monkeypatch):
    """A writable copy of the shipped weights folder (links to the weights, a copy of models.json)."""
    src = registry.weights_folder()
    dst = tmp_path / "weights"
    dst.mkdir()
    for f in src.glob("*.safetensors"):
        (dst / f.name).symlink_to(f)
    shutil.copy(src / "models.json", dst / "models.json")
    monkeypatch.setattr(registry, "weights_folder", lambda: dst)
    return dst


@pytest.fixture
def tiny_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    base = np.linspace(0, 255, 64)[None, :, None] * np.ones((48, 1, 3))
    img = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(folder / "a.png")
    return folder


def _readme(tmp_path: Path, section: str) -> Path:
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\nbefore\n<!-- {section}:start -->\nold\n<!-- {section}:end -->\nafter\n")
    return readme


def test_eval_codec_writes_registry_bpp_and_readme_section(registry_copy, tiny_folder, tmp_path):
    mod = _load("scripts/eval_codec.py")
    before = json.loads((registry_copy / "models.json").read_text())
    readme = _readme(tmp_path, "codec")
    out = tmp_path / "r.json"
    argv = ["--data", str(tiny_folder), "--model", MODEL, "--registry", "--readme", str(readme), "--json", str(out)]
    assert mod.main(argv) == 0
    measured = json.loads(out.read_text())[0]
    # bpp from the file's bytes: 8 * bytes / pixels of the one 64x48 image
    row = measured["per_image"][0]
    assert row["bpp"] == pytest.approx(8 * row["bytes"] / (64 * 48))
    after = json.loads((registry_copy / "models.json").read_text())
    for old, new in zip(before["models"], after["models"], strict=True):
        if new["name"] == MODEL:
            assert new["kodak_bpp"] == round(measured["mean"]["bpp"], 4) != old["kodak_bpp"]
            assert {k: v for k, v in new.items() if k != "kodak_bpp"} == {
                k: v for k, v in old.items() if k != "kodak_bpp"
            }
        else:
            assert new == old  # models not evaluated keep their figure
    text = readme.read_text()
    assert text.startswith("# t\nbefore\n<!-- codec:start -->\n") and text.endswith("<!-- codec:end -->\nafter\n")
    assert "\nold\n" not in text and f"| {MODEL} | codec |" in text


def test_quality_checks_writes_readme_section_and_json(tiny_folder, tmp_path):
    """No Kodak images (``--images 0``): the flat-patch and small-image checks still run; the
    Kodak-based cells say n/a instead of a made-up PASS."""
    mod = _load("benchmarks/quality_checks.py")
    readme = _readme(tmp_path, "quality")
    out = tmp_path / "q.json"
    assert mod.main(["--model", MODEL, "--images", "0", "--readme", str(readme), "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())
    assert r["model"] == MODEL and isinstance(r["flat_max_err"], int) and r["flat"] == (r["flat_max_err"] <= 3)
    assert "border" not in r and "grid" not in r  # not measured without images
    text = readme.read_text()
    assert text.endswith("<!-- quality:end -->\nafter\n") and "\nold\n" not in text
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {MODEL} |"))
    assert ("PASS" if r["flat"] else "FAIL") + f" ({r['flat_max_err']} lv)" in line
    assert "n/a" in line  # border/grid/mean colour: no images, no verdict


def test_quality_checks_grid_peak_finds_a_periodic_error():
    """The grid check's spectral test: an 8-px periodic error is flagged, white noise is not."""
    mod = _load("benchmarks/quality_checks.py")
    rng = np.random.default_rng(1)
    orig = rng.integers(0, 256, (128, 128, 3)).astype(np.uint8)
    noise = orig.astype(float) + rng.normal(0, 3, orig.shape)
    grid = noise + 6 * (np.arange(128) % 8 == 0)[None, :, None]
    assert mod.grid_peak(orig, noise) <= 4.0
    assert mod.grid_peak(orig, grid) > 4.0


def test_border_profile_measures_distance_to_the_nearest_edge():
    mod = _load("benchmarks/border_profile.py")
    d = mod.edge_distance(5, 8)
    assert d.shape == (5, 8)
    assert d[0].tolist() == [0] * 8 and d[:, 0].tolist() == [0] * 5 and d[:, -1].tolist() == [0] * 5
    assert d[2].tolist() == [0, 1, 2, 2, 2, 2, 1, 0]
    assert int(d.max()) == 2


def test_fgm_effect_decodes_with_each_condition(tmp_path, capsys):
    """benchmarks/fgm_effect.py on the shipped default model: one table row per image, figures
    that are numbers; a plain codec has no guidance to probe."""
    mod = _load("benchmarks/fgm_effect.py")
    rng = np.random.default_rng(2)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    assert mod.main(["--images", "2", "--crop", "64", "--data", str(tmp_path)]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| 0.png") or ln.startswith("| 1.png")]
    assert len(rows) == 2
    cells = rows[0].strip("|").split("|")
    assert all(float(c.replace("lv", "")) >= 0 for c in cells[1:])
    with pytest.raises(SystemExit, match="no guidance"):
        mod.main(["--model", MODEL, "--data", str(tmp_path)])


def test_margin_effect_codes_each_image_with_and_without_the_margin(tmp_path, capsys):
    """benchmarks/margin_effect.py on a plain codec: a row for each setting, the margin's files
    larger (the canvas grows from 64x64 to 128x128), and a picture whose ring is worse than
    its inside measured as a positive gap."""
    mod = _load("benchmarks/margin_effect.py")
    img = np.full((64, 64, 3), 128, np.uint8)
    img[:3] = 20  # a dark frame along the top, as a film scan has
    Image.fromarray(img).save(tmp_path / "kodim01.png")
    assert mod.main(["--model", MODEL, "--images", "1", "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    head = out[1].split()
    off, on = ({k: float(v) for k, v in zip(head[1:], ln.split()[1:], strict=True)} for ln in out[2:4])
    assert out[2].startswith("off") and out[3].startswith("on")
    assert on["bpp"] > off["bpp"]
    dec = np.full((64, 64, 3), 130, np.uint8)  # the frame lost, the inside 2 levels off
    assert mod.ring_gap(img, dec) > 10
