"""The small preset's graph (issue 11): TAEF2 latent space, D_m, residual UNet, time-boxed and
bf16 training, the codec's unit-gain init. Tests needing TAEF2 skip with a reason without it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import taef2_root
from sodec import api
from sodec.checkpoint import load_checkpoint
from sodec.config import CODEC_PRESETS, SODEC_PRESETS, DiffusionConfig, TAEConfig, from_json, to_json
from sodec.models.one_step import alphas_cumprod
from sodec.models.sodec import SodecModel
from sodec.models.taef2 import TAEDecoder
from sodec.models.vae_codec import VAECodec
from sodec.training.stages import StageConfig, stage_from_dict
from sodec.training.trainer import Trainer, run_schedule

TAEF2_ROOT = taef2_root()
needs_taef2 = pytest.mark.skipif(TAEF2_ROOT is None, reason="TAEF2 weights (taef2/ under SODEC_WEIGHTS_DIR) not found")
TINY_TAE = SODEC_PRESETS["tiny-tae"]


# -- configs ---------------------------------------------------------------------------------------


def test_small_preset_lives_in_taef2_latent_space_and_round_trips_as_json():
    cfg = SODEC_PRESETS["small"]
    assert cfg.latent_space == "taef2" and cfg.latent_decoder is not None
    assert cfg.transform.out_channels == cfg.unet.in_channels == cfg.unet.out_channels == 32
    assert cfg.diffusion.prediction_type == "residual"
    assert not cfg.latent_decoder.global_branch_at_1_8  # tiles decode like the whole image
    assert from_json(to_json(cfg)) == cfg
    # The paper preset is unchanged: SD's 4-channel latent and VAE, epsilon prediction.
    paper = SODEC_PRESETS["paper"]
    assert paper.latent_decoder is None and paper.unet.in_channels == 4 and paper.diffusion.prediction_type == "epsilon"


def test_inconsistent_latent_space_configs_are_refused():
    with pytest.raises(ValueError, match="latent_decoder"):
        dataclasses.replace(SODEC_PRESETS["small"], latent_decoder=None)
    with pytest.raises(ValueError, match="channels"):
        dataclasses.replace(
            SODEC_PRESETS["small"], transform=dataclasses.replace(SODEC_PRESETS["small"].transform, out_channels=4)
        )
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusionConfig(prediction_type="v")


def test_alphas_cumprod_is_diffusers_schedule():
    from diffusers import DDPMScheduler

    d = DiffusionConfig()
    ref = DDPMScheduler(
        num_train_timesteps=d.num_train_timesteps,
        beta_start=d.beta_start,
        beta_end=d.beta_end,
        beta_schedule=d.beta_schedule,
    ).alphas_cumprod
    assert torch.allclose(alphas_cumprod(d), ref.float(), rtol=1e-6, atol=0)


# -- the graph -------------------------------------------------------------------------------------


def test_residual_unet_starts_as_identity_on_the_latent():
    torch.manual_seed(0)
    m = SodecModel(TINY_TAE).eval()
    y_t = torch.randn(1, 32, 8, 8)
    c = torch.randn(1, TINY_TAE.fgm.tokens, TINY_TAE.fgm.cond_dim)
    assert torch.equal(m.diffusion.denoise(y_t, c), y_t)


def test_tiny_tae_model_codes_and_decodes_through_the_api(tmp_path):
    torch.manual_seed(0)
    net = SodecModel(TINY_TAE).eval()
    net.update(force=True)
    model = api.Model(net, "sodec", "tiny-tae", "0" * 64)
    img = (np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8)
    data = api.compress(model, img)
    out = api.decompress(data, model)
    assert out.shape == img.shape and out.dtype == np.uint8
    # A checkpoint carries the TAE decoder's config and rebuilds the same model.
    from sodec.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "m.safetensors", net, "sodec", TINY_TAE)
    again, _ = load_checkpoint(tmp_path / "m.safetensors")
    assert again.cfg == TINY_TAE
    assert np.array_equal(api.decompress(data, api.Model(again.eval(), "sodec", "tiny-tae", "0" * 64)), out)


def test_decoder_objective_decodes_the_given_latent():
    torch.manual_seed(0)
    m = SodecModel(TINY_TAE)
    x = torch.rand(2, 3, 64, 64)
    z = torch.randn(2, 32, 8, 8)
    out = m(x, objective="decoder", target_latent=z)
    assert out.x_hat.shape == x.shape and torch.equal(out.latent, z)
    assert torch.allclose(out.x_hat, m.diffusion.latent_decoder(z))
    with pytest.raises(ValueError, match="target latent"):
        m(x, objective="decoder")


def test_whole_graph_returns_the_latent_for_the_latent_loss():
    torch.manual_seed(0)
    out = SodecModel(TINY_TAE).train()(torch.rand(1, 3, 64, 64))
    assert out.latent.shape == (1, 32, 8, 8) and out.x_hat.shape == (1, 3, 64, 64)


def test_init_from_copies_matching_convs_and_drops_the_rest():
    torch.manual_seed(0)
    teacher = TAEDecoder()  # TAEF2's layout, random weights
    student = TAEDecoder(TAEConfig(dec_blocks=(3, 3, 3, 0), global_branch_at_1_8=False))
    student.init_from(teacher)
    t_levels, s_levels = teacher.levels(), student.levels()
    assert torch.equal(s_levels[0]["entry"][0].weight, t_levels[0]["entry"][0].weight)
    assert torch.equal(s_levels[2]["blocks"][1].conv[2].weight, t_levels[2]["blocks"][1].conv[2].weight)
    assert torch.equal(s_levels[3]["exit"][0].weight, t_levels[3]["exit"][0].weight)
    assert not any("pool" in k for k in student.state_dict())
    with pytest.raises(ValueError, match="same width"):
        TAEDecoder(TAEConfig(width=48)).init_from(teacher)


def test_tile_decodes_like_its_region_without_the_global_branch():
    """D_m has no image-wide normalisation: a latent's interior decodes the same alone or inside a
    larger latent (what the small-image and tiling checks rely on)."""
    torch.manual_seed(0)
    dm = TAEDecoder(SODEC_PRESETS["small"].latent_decoder).eval()
    z = torch.randn(1, 32, 80, 80)
    with torch.no_grad():
        whole = dm(z)
        part = dm(z[:, :, 20:60, 20:60])
    # 18 latents from the cut (D_m's receptive-field radius is about 17.6 latents: 10 convs at
    # 1/8, 10 at 1/4, 10 at 1/2 and the output conv), the two decodes agree to rounding.
    assert torch.allclose(
        whole[:, :, 38 * 8 : 42 * 8, 38 * 8 : 42 * 8], part[:, :, 18 * 8 : 22 * 8, 18 * 8 : 22 * 8], atol=1e-4
    )


# -- stage 1: the init that keeps colour -----------------------------------------------------------


def test_gdn_codec_starts_with_unit_gain():
    """With PyTorch's default init g_s(g_a(x)) is ~1000x attenuated and colour is learned last
    (docs/design.md); the unit-gain init passes the image's variation through at about its scale."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    codec = VAECodec(CODEC_PRESETS["small-gdn"])
    with torch.no_grad():
        y = codec.g_a(x)
        out = codec.g_s(y)
    assert 0.1 < float(y.std() / x.std()) < 10
    assert float(out.std() / x.std()) > 0.05


# -- training ----------------------------------------------------------------------------------


def _stage(**kw) -> StageConfig:
    base = dict(name="t", steps=3, batch_size=1, crop=64, log_every=1, checkpoint_every=100, val_images=0, holdout=0.0)
    base.update(kw)
    return stage_from_dict(base)


def test_time_boxed_stage_ends_early_and_is_not_rerun(tmp_path, tiny_data):
    stage = _stage(preset="codec:tiny", steps=10_000, max_seconds=1.0, lr_schedule="cosine", data=str(tiny_data))
    res = run_schedule([stage], tmp_path / "run")
    assert 0 < res[0].steps < 10_000
    # Resumed: the finished (time-boxed) stage is kept, not trained again.
    assert run_schedule([stage], tmp_path / "run") == []


def test_done_fraction_drives_lr_to_its_end(tmp_path, tiny_data):
    from sodec.training.trainer import _lr_at

    stage = _stage(preset="codec:tiny", steps=100, lr=1e-3, max_seconds=10.0, data=str(tiny_data))
    assert _lr_at(stage, 5, done=1.0) == pytest.approx(1e-4)
    assert _lr_at(stage, 5, done=None) > 9e-4


def test_stage_rejects_unknown_amp_and_bad_combinations():
    with pytest.raises(ValueError, match="amp"):
        _stage(preset="codec:tiny", amp="fp8")
    with pytest.raises(ValueError, match="cannot use"):
        _stage(preset="sodec:tiny-tae", objective="decoder", losses={"latent": 1.0})
    with pytest.raises(ValueError, match="cannot use"):
        _stage(preset="codec:tiny", objective="codec", losses={"distill": 1.0})
    with pytest.raises(ValueError, match="flat_fraction"):
        _stage(preset="codec:tiny", flat_fraction=-0.1)


@needs_taef2
def test_decoder_distillation_and_latent_loss_steps_run_in_bf16(tmp_path, tiny_data):
    """Both new objectives through the one trainer, under bf16 autocast on the CPU."""
    w = str(TAEF2_ROOT)
    dec = _stage(
        preset="sodec:tiny-tae",
        objective="decoder",
        train=("diffusion.latent_decoder.*",),
        losses={"distill": 1.0, "mse": 0.5},
        amp="bf16",
        data=str(tiny_data),
    )
    t = Trainer(dec, tmp_path / "dm", weights_dir=w, progress=False)
    before = {k: v.clone() for k, v in t.model.diffusion.latent_decoder.state_dict().items()}
    rec = t.train_step(t.sampler.batch(0, 1))
    assert rec["distill"] > 0 and np.isfinite(rec["loss"])
    after = t.model.diffusion.latent_decoder.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    joint = _stage(
        preset="sodec:tiny-tae", losses={"mse": 1.0, "latent": 10.0}, rate_weight=1.0, amp="bf16", data=str(tiny_data)
    )
    t = Trainer(joint, tmp_path / "joint", weights_dir=w, progress=False)
    rec = t.train_step(t.sampler.batch(0, 1))
    assert rec["latent"] > 0 and np.isfinite(rec["loss"])


def test_latent_loss_needs_the_taef2_latent_space(tmp_path, tiny_data):
    stage = _stage(preset="sodec:tiny", losses={"mse": 1.0, "latent": 1.0}, data=str(tiny_data))
    with pytest.raises(ValueError, match="TAEF2"):
        Trainer(stage, tmp_path / "r", progress=False)


@pytest.fixture
def tiny_data(tmp_path):
    from PIL import Image

    from helpers import random_image

    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        Image.fromarray(random_image(96, 96, seed=i)).save(d / f"{i}.png")
    return d


# -- the training CLI and tools added for time-boxed GPU runs ----------------------------------------


def test_train_cli_resolves_folders_from_the_working_directory_and_time_boxes(tmp_path, tiny_data, monkeypatch):
    """--data/--extra-data are relative to where the command runs (not to the stage file),
    --max-seconds time-boxes the stage, --init starts from a checkpoint."""
    from sodec.cli import main

    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    (cfg_dir / "s.toml").write_text(
        'name = "s"\npreset = "codec:tiny"\nlosses = { mse = 1.0 }\nrate_weight = 1.0\n'
        "steps = 100000\nbatch_size = 1\ncrop = 64\nholdout = 0.0\nval_images = 0\nlog_every = 1\n"
        'data = "./nowhere"\n'
    )
    monkeypatch.chdir(tiny_data.parent)
    out = tmp_path / "run"
    rc = main(["train", "--config", str(cfg_dir / "s.toml"), "--data", tiny_data.name, "--extra-data", tiny_data.name,
               "--max-seconds", "1", "--out", str(out), "-q"])  # fmt: skip
    assert rc == 0
    stage = json.loads((out / "stage.json").read_text())
    assert stage["data"] == str(tiny_data) and stage["extra_data"] == [str(tiny_data)]
    steps = len((out / "log.csv").read_text().splitlines()) - 1
    assert 0 < steps < 100000
    # --init: a stage file without init/preset starts from the given checkpoint.
    (cfg_dir / "t.toml").write_text(
        'name = "t"\nlosses = { mse = 1.0 }\nsteps = 1\nbatch_size = 1\ncrop = 64\nholdout = 0.0\nval_images = 0\n'
    )
    rc = main(["train", "--config", str(cfg_dir / "t.toml"), "--init", str(out / "model.safetensors"),
               "--data", str(tiny_data), "--out", str(tmp_path / "run2"), "-q"])  # fmt: skip
    assert rc == 0 and (tmp_path / "run2" / "model.safetensors").is_file()


def test_export_train_state_makes_a_checkpoint_that_codes(tmp_path, tiny_data):
    import subprocess
    import sys

    from safetensors.torch import load_file, save_file

    stage = _stage(preset="codec:tiny", steps=2, data=str(tiny_data))
    run_schedule([stage], tmp_path / "run", progress=False)
    state = tmp_path / "run" / "1-t" / "train_state.safetensors"
    # The packed form a lent machine sends back: float tensors as float16.
    packed = tmp_path / "packed.safetensors"
    from safetensors import safe_open

    with safe_open(str(state), framework="pt") as f:
        meta = f.metadata()
    tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(state)).items()}
    save_file(tensors, str(packed), metadata=meta)
    out = tmp_path / "exported.safetensors"
    script = Path(__file__).resolve().parents[1] / "scripts" / "export_train_state.py"
    r = subprocess.run(
        [sys.executable, str(script), str(packed), "--preset", "codec:tiny", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    model, meta = load_checkpoint(out)
    img = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
    m = api.Model(model.eval(), "codec", "x", "0" * 64)
    assert api.decompress(api.compress(m, img), m).shape == img.shape
    # An architecture that is no preset: taken from a checkpoint instead (here the stage's own).
    out2 = tmp_path / "exported2.safetensors"
    r = subprocess.run(
        [sys.executable, str(script), str(state), "--config-from", str(tmp_path / "run" / "1-t" / "model.safetensors"),
         "--out", str(out2)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    again, _ = load_checkpoint(out2)
    finished, _ = load_checkpoint(tmp_path / "run" / "1-t" / "model.safetensors")
    for k, v in finished.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_python_dash_m_sodec_is_the_cli():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "sodec", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "compress" in r.stdout
