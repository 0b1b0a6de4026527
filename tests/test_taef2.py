"""TAEF2 (models/taef2.py): architecture without weights, then the README's reference values.

The reference values come from shared/weights/taef2/README.md (full-size Kodak PNGs, float32,
CPU); tests that need the weights or Kodak skip with a reason when either is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from helpers import KODAK, taef2_root
from sodec.errors import UnsupportedInputError, WeightsError
from sodec.models.taef2 import (
    TAEF2_FILES,
    TAEConfig,
    TAEDecoder,
    TAEEncoder,
    latent_from_uint8,
    latent_to_uint8,
    load_taef2,
    taef2_paths,
)

ROOT = taef2_root()
needs_taef2 = pytest.mark.skipif(ROOT is None, reason="TAEF2 weights (taef2/ under SODEC_WEIGHTS_DIR) not found")
needs_kodak = pytest.mark.skipif(not KODAK.is_dir(), reason=f"Kodak images not found at {KODAK}")


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# -- architecture, no weights ----------------------------------------------------------------------


def test_parameter_counts_match_the_published_files():
    assert _n_params(TAEEncoder()) == 1_338_528
    assert _n_params(TAEDecoder()) == 1_338_499


@pytest.mark.parametrize("hw", [(8, 8), (24, 40), (56, 8)])
def test_shapes_at_odd_multiples_of_8(hw):
    h, w = hw
    enc, dec = TAEEncoder().eval(), TAEDecoder().eval()
    with torch.inference_mode():
        z = enc(torch.rand(2, 3, h, w))
        assert z.shape == (2, 32, h // 8, w // 8)
        y = dec(z)
        assert y.shape == (2, 3, h, w)
        out = dec.decode(z)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_input_not_a_multiple_of_8_is_refused():
    with pytest.raises(UnsupportedInputError, match="multiple of 8"):
        TAEEncoder()(torch.rand(1, 3, 20, 16))


def test_narrow_config_builds_and_runs():
    cfg = TAEConfig(width=32, dec_blocks=(2, 2, 1, 0))
    dec = TAEDecoder(cfg).eval()
    assert _n_params(dec) < _n_params(TAEDecoder()) / 4
    with torch.inference_mode():
        assert dec(torch.randn(1, 32, 3, 5)).shape == (1, 3, 24, 40)
    # The narrower decoder has no full-resolution block, so no module is named like TAEF2's 18.
    assert not any(k.startswith("18.") for k in dec.state_dict())


def test_bad_config_is_refused():
    with pytest.raises(ValueError):
        TAEConfig(enc_blocks=(1, 3, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TAEConfig(width=10, global_groups=4, global_expand=1)


def test_decoder_soft_clamps_the_latent():
    # 3*tanh(z/3) saturates: latents far outside (-3, 3) decode alike.
    dec = TAEDecoder().eval()
    with torch.inference_mode():
        a, b = dec(torch.full((1, 32, 2, 2), 40.0)), dec(torch.full((1, 32, 2, 2), 80.0))
    torch.testing.assert_close(a, b)


def test_8bit_latent_mapping():
    z = torch.linspace(-4.0, 4.0, 801)
    q = latent_to_uint8(z)
    assert q.dtype == torch.uint8 and int(q[0]) == 0 and int(q[-1]) == 255
    back = latent_from_uint8(q)
    inside = z.abs() <= 3.0
    # Half a step of 6/255 inside the range; clamped to +-3 outside it.
    assert float((back[inside] - z[inside]).abs().max()) <= 3.0 / 255 + 1e-6
    assert torch.equal(back[~inside].abs(), torch.full_like(back[~inside], 3.0))


# -- the files ----------------------------------------------------------------------------------------


@needs_taef2
def test_files_load_strictly_as_float32():
    enc, dec = load_taef2(ROOT)
    assert all(p.dtype == torch.float32 for p in [*enc.parameters(), *dec.parameters()])
    assert not any(p.requires_grad for p in enc.parameters())  # frozen: it only defines targets
    assert all(p.requires_grad for p in dec.parameters())  # D_m's initialisation, to be trained
    # The README's fingerprint of the encoder's first conv.
    assert float(enc.state_dict()["0.weight"].sum()) == pytest.approx(-0.072046, abs=1e-6)
    # Keys, both ways (load_state_dict(strict=True) already failed otherwise; spelled out for clarity).
    for part, module in (("encoder", enc), ("decoder", dec)):
        assert set(load_file(str(ROOT / "taef2" / TAEF2_FILES[part][0]))) == set(module.state_dict())


@needs_taef2
def test_sha256_mismatch_and_missing_file_raise_weights_error(tmp_path):
    (tmp_path / "taef2").mkdir()
    for part, (fname, _) in TAEF2_FILES.items():
        shutil.copyfile(ROOT / "taef2" / fname, tmp_path / "taef2" / fname)
        if part == "decoder":
            with open(tmp_path / "taef2" / fname, "r+b") as f:  # flip one byte in the tensor data
                f.seek(-1, os.SEEK_END)
                last = f.read(1)
                f.seek(-1, os.SEEK_END)
                f.write(bytes([last[0] ^ 1]))
    with pytest.raises(WeightsError, match="sha256") as info:
        load_taef2(tmp_path)
    assert "\n" not in str(info.value) and "taef2_decoder.safetensors" in str(info.value)
    # The encoder alone is still fine.
    enc, dec = load_taef2(tmp_path, parts=("encoder",))
    assert enc is not None and dec is None

    (tmp_path / "taef2" / TAEF2_FILES["encoder"][0]).unlink()
    with pytest.raises(WeightsError, match="not found"):
        taef2_paths(tmp_path)


def test_no_weights_dir_raises_weights_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SODEC_WEIGHTS_DIR", str(tmp_path / "absent"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/sodec/weights either
    with pytest.raises(WeightsError, match="SODEC_WEIGHTS_DIR"):
        taef2_paths()
    with pytest.raises(WeightsError, match="not found"):
        taef2_paths(tmp_path)  # a folder without taef2/


@needs_taef2
def test_weights_dir_from_environment(monkeypatch):
    monkeypatch.setenv("SODEC_WEIGHTS_DIR", str(ROOT))
    assert taef2_paths()["encoder"] == ROOT / "taef2" / TAEF2_FILES["encoder"][0]


# -- README reference values (full-size Kodak) ----------------------------------------------------------

# kodim01..03 round-trip PSNR (dB) and kodim01's latent statistics, from the README.
REF_PSNR = {"kodim01": 27.18, "kodim02": 31.43, "kodim03": 33.22}
REF_LATENT_01 = {"mean": 0.094270, "std": 0.858312, "min": -4.2455, "max": 5.0218}


def _psnr_8bit(x: torch.Tensor, y: torch.Tensor) -> float:
    """The README's PSNR: both images scaled by 255 and rounded; y is clamped to [0, 1] first."""
    a = (x * 255).round().double()
    b = (y.clamp(0, 1) * 255).round().double()
    return float(10 * torch.log10(255.0**2 / ((a - b) ** 2).mean()))


@pytest.fixture(scope="module")
def kodak_round_trips():
    """{name: (image, latent, decoded)} for kodim01..03 (~5 s per image and direction on 2 cores)."""
    enc, dec = load_taef2(ROOT)
    out = {}
    with torch.inference_mode():
        for name in REF_PSNR:
            with Image.open(KODAK / f"{name}.png") as im:
                arr = np.array(im.convert("RGB"))
            x = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255
            z = enc(x)
            out[name] = (x, z, dec(z))
    return out, dec


@needs_taef2
@needs_kodak
@pytest.mark.needs_data
def test_readme_round_trip_psnr(kodak_round_trips):
    trips, _ = kodak_round_trips
    got = {name: _psnr_8bit(x, y) for name, (x, _, y) in trips.items()}
    for name, ref in REF_PSNR.items():
        assert got[name] == pytest.approx(ref, abs=0.02), name
    assert np.mean(list(got.values())) == pytest.approx(30.61, abs=0.01)


@needs_taef2
@needs_kodak
@pytest.mark.needs_data
def test_readme_latent_statistics(kodak_round_trips):
    trips, _ = kodak_round_trips
    z = trips["kodim01"][1]
    assert tuple(z.shape) == (1, 32, 64, 96)
    assert float(z.mean()) == pytest.approx(REF_LATENT_01["mean"], abs=1e-5)
    assert float(z.std()) == pytest.approx(REF_LATENT_01["std"], abs=1e-5)
    assert float(z.min()) == pytest.approx(REF_LATENT_01["min"], abs=1e-3)
    assert float(z.max()) == pytest.approx(REF_LATENT_01["max"], abs=1e-3)


@needs_taef2
@needs_kodak
@pytest.mark.needs_data
def test_8bit_latents_cost_little(kodak_round_trips):
    # README: 30.19 dB with float latents, 30.14 dB stored as 8-bit (all 24). A 192x128 window of
    # one image suffices to show the mapping is wired the right way round (a wrong scale or
    # offset costs dB) and keeps the test to 1/8 of a full-image decode.
    trips, dec = kodak_round_trips
    x, z, _ = trips["kodim02"]
    z, x = z[..., 16:32, 24:48], x[..., 128:256, 192:384]
    with torch.inference_mode():
        y, y8 = dec(z), dec(latent_from_uint8(latent_to_uint8(z)))
    loss = _psnr_8bit(x, y) - _psnr_8bit(x, y8)
    assert -0.05 < loss < 0.15, loss


# -- scripts/cache_latents.py ------------------------------------------------------------------------------


@needs_taef2
def test_cache_latents_script_stores_each_windows_own_latent(tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    g = np.random.default_rng(0)
    arr = g.integers(0, 256, size=(45, 70, 3), dtype=np.uint8)  # cropped to 40 x 64, not a multiple of 32
    Image.fromarray(arr).save(src / "a.png")
    out = tmp_path / "cache"
    script = Path(__file__).resolve().parents[1] / "scripts" / "cache_latents.py"
    cmd = [sys.executable, str(script), str(src), "--out", str(out), "--crop", "32", "--stride", "24", "--flip"]
    env = {**os.environ, "SODEC_WEIGHTS_DIR": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    index = json.loads((out / "index.json").read_text())
    assert index["weights"] == {TAEF2_FILES["encoder"][0]: TAEF2_FILES["encoder"][1]}
    (entry,) = index["images"]
    assert entry["hw"] == [40, 64] and entry["file"] == "imgs/a.safetensors"
    cached = load_file(str(out / entry["file"]))
    # Windows start every 24 px, the last moved in to end at the border.
    assert cached["boxes"].tolist() == [[t, left, 32, 32] for t in (0, 8) for left in (0, 24, 32)]
    enc, _ = load_taef2(ROOT, parts=("encoder",))
    x = torch.from_numpy(arr[:40, :64].copy()).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        for k, (t, left, h, w) in enumerate(cached["boxes"].tolist()):
            crop = x[..., t : t + h, left : left + w]
            torch.testing.assert_close(cached["latents"][k].float(), enc(crop)[0], atol=4e-3, rtol=2e-3)
            torch.testing.assert_close(cached["latents_flip"][k].float(), enc(crop.flip(-1))[0], atol=4e-3, rtol=2e-3)
    # Same folder, other settings: refused with the usage exit code, nothing mixed.
    bad = subprocess.run([*cmd[:-5], "--crop", "16"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "other crop" in bad.stderr
