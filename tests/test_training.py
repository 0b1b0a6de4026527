"""Training (issue 6): every rate-annealing stage as data, resume, DDP, the CLI, the data sampler.

All runs use the tiny presets, 64-px crops, batch 2 and a few steps on a handful of synthetic PNGs
written to a temporary folder: nothing here needs ../shared.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from helpers import random_image, shared_weights_dir
from sodec import api
from sodec.checkpoint import load_checkpoint, read_checkpoint, sha256_file
from sodec.cli import main
from sodec.data import CropSampler, list_images, split_holdout
from sodec.errors import UsageError
from sodec.losses import ms_ssim_loss
from sodec.training.stages import StageConfig, load_schedule, load_stage
from sodec.training.trainer import Trainer

TESTS = Path(__file__).resolve().parent

# (height, width) of the synthetic training images; one is smaller than the 64-px crop.
IMAGE_SIZES = [(80, 96), (72, 64), (100, 70), (48, 40), (64, 130)]

# Shared by every stage below: tiny, fast, no held-out validation unless a test asks for it.
COMMON = """
steps = 3
batch_size = 2
crop = 64
seed = 0
holdout = 0.0
lr = 1e-3
log_every = 1
checkpoint_every = 100
validate_every = 0
"""

# SODEC's stages (paper Sec. 3.4; docs/design.md) on the tiny preset, as stage files.
STAGES = {
    # Stage 1: the codec alone at a high rate (small lambda).
    "codec": """
name = "codec"
preset = "sodec:tiny"
objective = "codec"
train = ["codec.*"]
losses = { mse = 1.0 }
rate_weight = 1.0
""",
    # Pre-training the small preset's SD-VAE stand-in D_m (the paper's comes pretrained).
    "vae": """
name = "vae"
preset = "sodec:tiny"
objective = "vae"
train = ["diffusion.vae.*"]
losses = { mse = 1.0, kl = 1e-6 }
""",
    # Stage 2: the codec frozen but for h_s; T_s, D_a, F_p and the UNet's LoRA train; distortion only.
    "diffusion": """
name = "diffusion"
preset = "sodec:tiny"
objective = "sodec"
train = ["codec.h_s.*", "transform.*", "fidelity_decoder.*", "fgm.projector.*", "diffusion.unet.*lora*"]
losses = { mse = 1.0 }
rate_weight = 0.0
""",
    # Stage 3: everything but D_m and the ViT (and the UNet's base weights), lambda annealed up.
    "anneal": """
name = "anneal"
preset = "sodec:tiny"
objective = "sodec"
train = ["codec.*", "transform.*", "fidelity_decoder.*", "fgm.projector.*", "diffusion.unet.*lora*"]
losses = { mse = 1.0, align = 0.5 }
rate_weight = 0.5
rate_weight_end = 4.0
anneal = "log"
""",
    # Stage 3's final fine-tune with the adversarial term (the discriminator path).
    "anneal-gan": """
name = "anneal-gan"
preset = "sodec:tiny"
objective = "sodec"
train = ["codec.*", "transform.*", "fidelity_decoder.*", "fgm.projector.*", "diffusion.unet.*lora*"]
losses = { mse = 1.0, align = 0.5, gan = 0.1 }
rate_weight = 4.0
""",
}

# Stage 1 on a plain codec model (what configs/codec-small.toml trains): its names have no "codec.".
CODEC_ONLY = """
name = "codec"
preset = "codec:tiny"
train = ["*"]
losses = { mse = 1.0 }
rate_weight = 1.0
"""

# Parameter groups (name prefixes; "diffusion.unet/lora" = the UNet's LoRA adapters) that must have
# changed after the stage's steps. Every other group must be frozen, bit for bit.
TRAINED_GROUPS = {
    "codec": {"codec.g_a", "codec.g_s", "codec.h_a", "codec.h_s", "codec.entropy_bottleneck"},
    "vae": {"diffusion.vae/encoder", "diffusion.vae/decoder"},
    "diffusion": {"codec.h_s", "transform", "fidelity_decoder", "fgm.projector", "diffusion.unet/lora"},
    # codec.g_s trains but gets no gradient: SODEC's image comes from D_m, not from g_s.
    "anneal": {
        "codec.g_a",
        "codec.h_a",
        "codec.h_s",
        "codec.entropy_bottleneck",
        "transform",
        "fidelity_decoder",
        "fgm.projector",
        "diffusion.unet/lora",
    },
}
TRAINED_GROUPS["anneal-gan"] = TRAINED_GROUPS["anneal"]
# Groups no stage may touch.
FROZEN_GROUPS = {
    "codec": {
        "fidelity_decoder",
        "transform",
        "fgm.vit",
        "fgm.projector",
        "diffusion.unet/base",
        "diffusion.unet/lora",
        "diffusion.vae/decoder",
    },
    "vae": {
        "codec.g_a",
        "codec.h_s",
        "fidelity_decoder",
        "transform",
        "fgm.vit",
        "fgm.projector",
        "diffusion.unet/base",
    },
    "diffusion": {
        "codec.g_a",
        "codec.g_s",
        "codec.h_a",
        "codec.entropy_bottleneck",
        "fgm.vit",
        "diffusion.unet/base",
        "diffusion.vae/decoder",
    },
    "anneal": {"fgm.vit", "diffusion.unet/base", "diffusion.vae/decoder", "diffusion.vae/encoder"},
}
FROZEN_GROUPS["anneal-gan"] = FROZEN_GROUPS["anneal"]


def group(name: str) -> str:
    """The parameter group a SODEC parameter name belongs to (see TRAINED_GROUPS)."""
    if name.startswith("diffusion.unet."):
        return "diffusion.unet/lora" if "lora_" in name else "diffusion.unet/base"
    if name.startswith("diffusion.vae."):
        return "diffusion.vae/encoder" if ".encoder." in name or "quant_conv" in name else "diffusion.vae/decoder"
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] in ("codec", "fgm") else parts[0]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("train-data")
    for i, (h, w) in enumerate(IMAGE_SIZES):
        Image.fromarray(random_image(h, w, seed=i)).save(d / f"img{i:02d}.png")
    return d


def stage_from_toml(tmp_path: Path, data_dir: Path, body: str, **overrides: object) -> StageConfig:
    """A stage file of ``body`` + COMMON on the synthetic images, loaded like ``sodec train`` does."""
    path = tmp_path / "stage.toml"
    path.write_text(f'{body}\n{COMMON}\ndata = "{data_dir.as_posix()}"\n')
    return load_stage(path, **overrides)


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def read_log(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(autouse=True)
def _one_thread():
    # Two cores are shared with other jobs; one thread also keeps float sums in one order.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- 1. every stage: finite loss, frozen parts untouched, trainable parts moved, clean checkpoint ---


@pytest.mark.parametrize("which", list(STAGES))
def test_stage_runs_and_freezes_what_it_should(tmp_path, data_dir, which):
    stage = stage_from_toml(tmp_path, data_dir, STAGES[which])
    tr = Trainer(stage, tmp_path / "run", progress=False)
    before = params(tr.model)
    disc_before = params(tr.disc) if tr.disc is not None else {}
    res = tr.run()
    after = params(tr.model)

    # The loss and each of its terms are finite at every step.
    rows = read_log(res.run_dir)
    assert [int(r["step"]) for r in rows] == list(range(1, stage.steps + 1))
    for r in rows:
        for k in ("loss", *stage.losses):
            assert math.isfinite(float(r[k])), f"step {r['step']}: {k} = {r[k]}"
    assert math.isfinite(res.last["loss"])
    # lambda follows the stage's schedule step by step (stage 3 anneals it upward).
    lam = [float(r["rate_weight"]) for r in rows]
    assert lam == pytest.approx([stage.rate_weight_at(i) for i in range(stage.steps)], rel=1e-5)

    # Frozen means requires_grad False and bit-identical weights; trainable groups moved.
    trainable = set(tr.trainable)
    for n, p in tr.model.named_parameters():
        assert p.requires_grad == (n in trainable), n
    frozen_changed = [n for n in before if n not in trainable and not torch.equal(before[n], after[n])]
    assert not frozen_changed, f"frozen parameters changed: {frozen_changed[:5]}"
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed, "no trainable parameter changed"
    changed_groups = {group(n) for n in changed}
    trainable_groups = {group(n) for n in trainable}
    assert TRAINED_GROUPS[which] <= changed_groups, f"did not train: {TRAINED_GROUPS[which] - changed_groups}"
    assert not FROZEN_GROUPS[which] & trainable_groups, f"should be frozen: {FROZEN_GROUPS[which] & trainable_groups}"

    if "gan" in stage.losses:
        assert all(math.isfinite(float(r[k])) for r in rows for k in ("gan", "disc"))
        assert any(not torch.equal(disc_before[n], p) for n, p in tr.disc.named_parameters()), (
            "discriminator did not train"
        )

    # The final checkpoint: loads by itself, holds exactly the model (no loss net, no discriminator).
    assert (res.run_dir / "stage.json").is_file()
    assert (res.run_dir / "model.sha256").read_text().split()[0] == sha256_file(res.checkpoint) == res.sha256
    kind, _, state, meta = read_checkpoint(res.checkpoint)
    assert (kind, meta["sodec.stage"]) == ("sodec", which)
    assert set(state) == set(tr.model.state_dict())
    bad = [k for k in state if k.startswith(("disc", "perceptual", "lpips", "dists")) or ".nets." in k]
    assert not bad, f"loss-network weights in the model checkpoint: {bad[:5]}"
    model, _ = load_checkpoint(res.checkpoint)
    for n, p in model.named_parameters():
        assert torch.equal(p, after[n]), n


def test_codec_preset_stage_with_validation(tmp_path, data_dir):
    """A plain codec model (``codec:tiny``), with held-out images coded to real bytes."""
    stage = stage_from_toml(tmp_path, data_dir, CODEC_ONLY, holdout=0.4, val_images=2)
    train, held = split_holdout(list_images(data_dir), stage.holdout, stage.seed)
    assert train and held, "the synthetic set must split both ways for this test"
    tr = Trainer(stage, tmp_path / "run", progress=False)
    before = params(tr.model)
    res = tr.run()
    assert res.checkpoint.is_file() and math.isfinite(res.last["loss"])
    assert any(not torch.equal(before[n], p) for n, p in tr.model.named_parameters())
    with open(res.run_dir / "val.csv", newline="") as f:
        val = list(csv.DictReader(f))
    assert len(val) == 1 and float(val[0]["val_bpp"]) > 0 and math.isfinite(float(val[0]["val_psnr"]))
    _, meta = load_checkpoint(res.checkpoint)
    assert meta["sodec.kind"] == "codec"


@pytest.mark.needs_weights
def test_perceptual_loss_trains_and_stays_out_of_the_checkpoint(tmp_path, data_dir):
    weights = shared_weights_dir()
    if weights is None:
        pytest.skip("LPIPS backbone weights absent (SODEC_WEIGHTS_DIR or ../shared/weights)")
    stage = stage_from_toml(
        tmp_path, data_dir, STAGES["anneal"].replace("align = 0.5", "align = 0.5, lpips_alex = 10.0")
    )
    tr = Trainer(stage, tmp_path / "run", weights_dir=str(weights), progress=False)
    assert tr.perceptual is not None and "lpips_alex" in tr.perceptual.nets
    res = tr.run()
    assert all(math.isfinite(float(r["lpips_alex"])) for r in read_log(res.run_dir))
    _, _, state, _ = read_checkpoint(res.checkpoint)
    assert set(state) == set(tr.model.state_dict())
    assert not [k for k in state if "lpips" in k or k.startswith(("perceptual", "nets."))]


def test_flat_crops_are_told_from_photo_crops(data_dir):
    from sodec.data import paint_flat_region
    from sodec.losses import flat_crops

    g = np.random.default_rng(0)
    painted = np.stack([paint_flat_region(np.zeros((192, 192, 3), np.uint8), g) for _ in range(30)])
    x = torch.from_numpy(painted).permute(0, 3, 1, 2).float() / 255
    whole = ~(x == 0).all(1).flatten(1).any(1)  # a whole-crop fill leaves no black pixel
    assert int(whole.sum()) >= 5 and bool(flat_crops(x[whole]).all())
    photos = CropSampler(list_images(data_dir), 192, seed=1).batch(0, 8)
    assert not bool(flat_crops(photos).any())


@pytest.mark.needs_weights
def test_perceptual_terms_leave_flat_crops_out(data_dir):
    from sodec.losses import PerceptualLosses

    weights = shared_weights_dir()
    if weights is None:
        pytest.skip("LPIPS/DISTS weights absent (SODEC_WEIGHTS_DIR or ../shared/weights)")
    perc = PerceptualLosses(["lpips_alex", "dists"], str(weights))
    photos = CropSampler(list_images(data_dir), 64, seed=1).batch(0, 2)
    flat = torch.full((1, 3, 64, 64), 0.4)
    x = torch.cat([photos, flat])
    x_hat = (x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    x_hat.requires_grad_(True)
    for name in ("lpips_alex", "dists"):
        both = perc(name, x_hat, x)
        assert torch.allclose(both, perc(name, x_hat[:2], x[:2]), atol=1e-6), name
        alone = perc(name, x_hat[2:], x[2:])
        assert float(alone.detach()) == 0.0 and alone.requires_grad


def test_a_perceptual_loss_without_weights_is_dropped_with_a_warning(tmp_path, data_dir):
    stage = stage_from_toml(
        tmp_path, data_dir, CODEC_ONLY.replace("mse = 1.0", "mse = 1.0, lpips_alex = 10.0"), steps=1
    )
    empty = tmp_path / "no-weights"
    empty.mkdir()
    with pytest.warns(UserWarning, match="lpips_alex.*disabled"):
        tr = Trainer(stage, tmp_path / "run", weights_dir=str(empty), progress=False)
    res = tr.run()
    row = read_log(res.run_dir)[0]
    assert "lpips_alex" not in row and math.isfinite(float(row["loss"]))


@pytest.mark.parametrize("side", [64, 128, 192])
def test_ms_ssim_loss_works_on_training_crops(side):
    """pytorch_msssim alone refuses sides <= 160; the loss uses fewer scales there."""
    g = torch.Generator().manual_seed(side)
    x = torch.rand(2, 3, side, side, generator=g)
    noise = torch.randn(x.shape, generator=g)
    assert float(ms_ssim_loss(x, x)) == pytest.approx(0.0, abs=1e-6)
    mild, strong = (x + 0.02 * noise).clamp(0, 1), (x + 0.2 * noise).clamp(0, 1)
    assert 0 < float(ms_ssim_loss(mild, x)) < float(ms_ssim_loss(strong, x)) <= 1
    y = mild.clone().requires_grad_(True)
    ms_ssim_loss(y, x).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_border_mse_sees_the_ring_only():
    """An error inside the 16-px ring counts, one in the interior does not; values as mse255's."""
    from sodec.losses import border_mse255, mse255

    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    inner, edge = x.clone(), x.clone()
    inner[..., 16:48, 16:48] += 0.1
    edge[..., :16, :] += 0.1
    assert float(border_mse255(inner, x)) == 0.0
    ring_px = 64 * 64 - 32 * 32
    assert float(border_mse255(edge, x)) == pytest.approx(float(mse255(edge, x)) * 64 * 64 / ring_px, rel=1e-5)
    # a crop with no interior: the whole crop is the ring
    assert float(border_mse255(edge[..., :32, :32], x[..., :32, :32])) == pytest.approx(
        float(mse255(edge[..., :32, :32], x[..., :32, :32]))
    )


def test_grid_energy_sees_a_pattern_locked_to_the_grid_not_noise():
    """A 2-level dot every 8 px reads (nearly) its whole energy; white noise of 4x the power, and
    the same dots off the grid by a drifting phase, read a small fraction; a uniform shift reads 0."""
    from sodec.losses import grid_energy255

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 192, 192, generator=g)
    dots = torch.zeros(192, 192)
    dots[::8, ::8] = 2 / 255
    pattern = dots - dots.mean()
    locked = float((pattern * 255).pow(2).mean())
    assert float(grid_energy255(x + dots, x)) == pytest.approx(locked, rel=1e-3)
    assert float(grid_energy255(x + 0.1, x)) == pytest.approx(0.0, abs=1e-6)
    noise = torch.randn(2, 3, 192, 192, generator=g) * (2 * locked**0.5 / 255)
    assert float(grid_energy255(x + noise, x)) < 0.1 * locked
    drifting = torch.zeros(192, 192)
    for i in range(0, 192, 8):  # one dot per row of cells, its column shifting by 1 px per row
        drifting[i, (i // 8) % 192 :: 9] = 2 / 255
    assert float(grid_energy255(x + drifting, x)) < 0.2 * float(grid_energy255(x + dots, x))


def test_stage_with_grid_logs_it(tmp_path, data_dir):
    stage = stage_from_toml(tmp_path, data_dir, CODEC_ONLY.replace("mse = 1.0", "mse = 1.0, grid = 10.0"), steps=2)
    res = Trainer(stage, tmp_path / "run", progress=False).run()
    assert all(math.isfinite(float(r["grid"])) for r in read_log(res.run_dir))


def test_stage_with_border_mse_logs_it(tmp_path, data_dir):
    stage = stage_from_toml(tmp_path, data_dir, CODEC_ONLY.replace("mse = 1.0", "mse = 1.0, border_mse = 2.0"), steps=2)
    res = Trainer(stage, tmp_path / "run", progress=False).run()
    assert all(float(r["border_mse"]) > 0 for r in read_log(res.run_dir))


def test_stage_with_ms_ssim_at_a_small_crop(tmp_path, data_dir):
    stage = stage_from_toml(tmp_path, data_dir, CODEC_ONLY.replace("mse = 1.0", "mse = 1.0, ms_ssim = 100.0"), steps=2)
    res = Trainer(stage, tmp_path / "run", progress=False).run()
    assert all(math.isfinite(float(r["ms_ssim"])) for r in read_log(res.run_dir))


def test_same_stage_starts_from_the_same_weights(tmp_path, data_dir):
    stage = stage_from_toml(tmp_path, data_dir, STAGES["codec"])
    a = params(Trainer(stage, tmp_path / "a", progress=False).model)
    torch.manual_seed(123)  # the caller's RNG state must not matter
    b = params(Trainer(stage, tmp_path / "b", progress=False).model)
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize(
    ("objective", "loss"), [("sodec", "kl"), ("codec", "kl"), ("codec", "align"), ("vae", "align"), ("vae", "gan")]
)
def test_a_loss_the_objective_cannot_produce_is_refused(objective, loss):
    with pytest.raises(ValueError, match="cannot use losses"):
        StageConfig(name="s", preset="sodec:tiny", objective=objective, losses={"mse": 1.0, loss: 1.0})


def test_every_shipped_stage_file_loads():
    for path in sorted((TESTS.parent / "configs").glob("*.toml")):
        text = path.read_text()
        stages = load_schedule(path) if "[[stage]]" in text else [load_stage(path)]
        assert stages and all(isinstance(s, StageConfig) for s in stages), path


def test_a_glob_matching_nothing_is_an_error(tmp_path, data_dir):
    stage = stage_from_toml(tmp_path, data_dir, STAGES["codec"].replace('["codec.*"]', '["codex.*"]'))
    with pytest.raises(ValueError, match="no parameter matches"):
        Trainer(stage, tmp_path / "run", progress=False)


# -- 2. the rate-weight schedule ---------------------------------------------------------------------


@pytest.mark.parametrize("anneal", ["log", "linear"])
@pytest.mark.parametrize(("a", "b"), [(0.3, 0.7), (400.0, 4000.0), (4000.0, 400.0), (1e-3, 3.3), (0.0, 5.0)])
def test_rate_weight_schedule_hits_its_endpoints_and_is_monotone(anneal, a, b):
    steps = 37
    s = StageConfig(name="s", preset="codec:tiny", rate_weight=a, rate_weight_end=b, anneal=anneal, steps=steps)
    lam = [s.rate_weight_at(i) for i in range(steps)]
    assert lam[0] == a and lam[-1] == b
    assert s.rate_weight_at(steps + 10) == b  # past the end it stays at the target
    diffs = np.diff(lam)
    assert np.all(diffs > 0) if b > a else np.all(diffs < 0)
    if anneal == "log" and a > 0:
        # Geometric: equal ratios per step, so the midpoint is the geometric mean.
        mid = s.rate_weight_at((steps - 1) // 2)
        assert mid == pytest.approx(math.sqrt(a * b), rel=1e-9)
    elif anneal == "linear":
        assert np.allclose(diffs, (b - a) / (steps - 1))


def test_rate_weight_without_an_end_is_constant():
    s = StageConfig(name="s", preset="codec:tiny", rate_weight=2.5, steps=10)
    assert {s.rate_weight_at(i) for i in range(12)} == {2.5}


def test_target_bpp_steers_lambda_toward_the_rate(tmp_path, data_dir):
    """With target_bpp, lambda starts at rate_weight and moves by exp(gain * clip(log(bpp/target)))."""
    for target, direction in ((1e-6, 1), (1e3, -1)):
        stage = stage_from_toml(tmp_path, data_dir, STAGES["anneal"].replace("rate_weight_end = 4.0", ""), steps=4)
        stage = dataclasses.replace(stage, target_bpp=target, rate_gain=0.05)
        rows = read_log(Trainer(stage, tmp_path / f"run-{direction}", progress=False).run().run_dir)
        lam = [float(r["rate_weight"]) for r in rows]
        assert lam[0] == pytest.approx(stage.rate_weight)
        for prev, r, nxt in zip(lam, rows, lam[1:], strict=False):
            err = max(-1.0, min(1.0, math.log(max(float(r["bpp_coded"]), 1e-9) / target)))
            assert err == direction  # far from the target: the clipped step
            assert nxt == pytest.approx(prev * math.exp(0.05 * err), rel=1e-5)


def test_target_bpp_on_the_holdout_images(tmp_path, data_dir):
    """rate_control = holdout: lambda moves only every rate_every steps, by the whole held-out
    images' coded rate, one update standing for rate_every steps."""
    body = STAGES["anneal"].replace("rate_weight_end = 4.0", "")
    for target, direction in ((1e-6, 1), (1e3, -1)):
        stage = stage_from_toml(tmp_path, data_dir, body, steps=5, holdout=0.4, val_images=2)
        stage = dataclasses.replace(stage, target_bpp=target, rate_gain=0.05, rate_control="holdout", rate_every=2)
        tr = Trainer(stage, tmp_path / f"hold-{direction}", progress=False)
        big = [f for f in tr.val_files if min(Image.open(f).size) >= 64]  # whole, cropped to x64
        assert len(tr.rate_images) == len(big) >= 1
        rows = read_log(tr.run().run_dir)
        lam = [float(r["rate_weight"]) for r in rows]
        measured = [math.isfinite(float(r["bpp_holdout"])) for r in rows]
        assert measured == [False, True, False, True, False]
        f = math.exp(0.05 * 2 * direction)
        assert lam == pytest.approx([lam[0], lam[0], lam[0] * f, lam[0] * f, lam[0] * f * f], rel=1e-6)


@pytest.mark.parametrize(
    "fields",
    [
        {"rate_control": "holdout", "target_bpp": 0.1, "holdout": 0.0},
        {"target_bpp": 0.1, "rate_weight": 0.0},
        {"target_bpp": 0.1, "rate_weight_end": 5.0},
        {"target_bpp": -1.0},
    ],
)
def test_a_target_bpp_needs_a_start_and_no_schedule(fields):
    with pytest.raises(ValueError, match=r"target_bpp|holdout"):
        StageConfig(**{"name": "s", "preset": "codec:tiny", "rate_weight": 1.0, **fields})


# -- 3. resume reproduces the uninterrupted run -------------------------------------------------------


@pytest.mark.parametrize("rate", ["annealed", "target"])
@pytest.mark.parametrize("when", ["after-checkpoint", "between-checkpoints"])
def test_resume_after_interruption_reproduces_the_uninterrupted_run(tmp_path, data_dir, monkeypatch, when, rate):
    """Stage 3 with the GAN term (model, AdamW, aux Adam, discriminator and its Adam, lambda
    annealing or steering to a target bpp, cosine lr) is stopped after step 2, then resumed in its
    folder: the final weights and every logged loss equal those of the run that was never stopped."""
    every = 1 if when == "after-checkpoint" else 2
    stage = stage_from_toml(tmp_path, data_dir, STAGES["anneal-gan"], steps=4, checkpoint_every=every, rate_weight=0.5)
    if rate == "annealed":
        stage = dataclasses.replace(stage, rate_weight_end=4.0)
    else:  # lambda is state, not a function of the step: it must come back from the checkpoint
        stage = dataclasses.replace(stage, target_bpp=1e-6, rate_gain=0.1)
    full = Trainer(stage, tmp_path / "full", progress=False).run()

    if when == "after-checkpoint":
        # Ctrl-C right after step 2's checkpoint was written.
        save_state = Trainer.save_state

        def save_then_die(self: Trainer) -> None:
            save_state(self)
            if self.step == 2:
                raise KeyboardInterrupt

        monkeypatch.setattr(Trainer, "save_state", save_then_die)
    else:
        # A crash in step 4: step 3 was trained and logged, but the last checkpoint is step 2's.
        train_step = Trainer.train_step

        def die_in_step_4(self: Trainer, x: torch.Tensor) -> dict[str, float]:
            if self.step == 3:
                raise KeyboardInterrupt
            return train_step(self, x)

        monkeypatch.setattr(Trainer, "train_step", die_in_step_4)
    with pytest.raises(KeyboardInterrupt):
        Trainer(stage, tmp_path / "resumed", progress=False).run()
    monkeypatch.undo()
    assert (tmp_path / "resumed" / "train_state.safetensors").is_file()
    assert not (tmp_path / "resumed" / "model.safetensors").exists()

    if when == "after-checkpoint":
        # A different stage config refuses the folder instead of silently mixing two runs.
        with pytest.raises(ValueError, match="different stage config"):
            Trainer(dataclasses.replace(stage, lr=2e-3), tmp_path / "resumed", progress=False).run()

    resumed = Trainer(stage, tmp_path / "resumed", progress=False).run()
    assert resumed.steps == full.steps == 4

    a, b = load_file(str(full.checkpoint)), load_file(str(resumed.checkpoint))
    assert set(a) == set(b)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"resumed weights differ from the uninterrupted run: {differ[:5]}"
    # Same per-step losses too, each step logged once (steps past the checkpoint were redone).
    log_a, log_b = read_log(full.run_dir), read_log(resumed.run_dir)
    assert [r["step"] for r in log_b] == ["1", "2", "3", "4"]
    for ra, rb in zip(log_a, log_b, strict=True):
        assert {k: v for k, v in ra.items() if k != "s_per_step"} == {k: v for k, v in rb.items() if k != "s_per_step"}


# -- 4. two-process DDP on CPU -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_keeps_ranks_identical(tmp_path, data_dir):
    stage_file = tmp_path / "stage.toml"
    # With a target bpp: lambda follows the ranks' mean rate, so it must agree across ranks too.
    body = STAGES["anneal-gan"] + "target_bpp = 0.05\nrate_gain = 0.05\n"
    stage_file.write_text(f'{body}\n{COMMON}\ndata = "{data_dir.as_posix()}"\n')
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": "2",
        "GLOO_SOCKET_IFNAME": "lo",  # loopback only
        "CUDA_VISIBLE_DEVICES": "",  # gloo on CPU even where a GPU exists
    }
    prefix = tmp_path / "weights"
    procs = []
    for rank in range(2):
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(TESTS / "ddp_train_worker.py"),
                    str(stage_file),
                    str(tmp_path / "run"),
                    str(prefix),
                ],
                env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=240)[0].decode(errors="replace"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rank, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"rank {rank} failed:\n{out[-3000:]}"

    init = [load_file(f"{prefix}-rank{r}-init.safetensors") for r in range(2)]
    final = [load_file(f"{prefix}-rank{r}-final.safetensors") for r in range(2)]
    assert set(final[0]) == set(final[1])
    assert any(k.startswith("disc.") for k in final[0])
    differ = [k for k in final[0] if not torch.equal(final[0][k], final[1][k])]
    assert not differ, f"ranks disagree after training: {differ[:5]}"
    lam = [float(Path(f"{prefix}-rank{r}-lambda.txt").read_text()) for r in range(2)]
    assert lam[0] == lam[1] and lam[0] != 4.0  # steered (from 4.0) by the same mean rate
    assert all(torch.equal(init[0][k], init[1][k]) for k in init[0])
    moved = [k for k in final[0] if not torch.equal(init[0][k], final[0][k])]
    assert any(k.startswith("model.codec.entropy_bottleneck.quantiles") for k in moved)
    assert any("lora_" in k for k in moved) and any(k.startswith("disc.") for k in moved)
    # Rank 0 alone wrote the run folder, and its checkpoint holds rank 0's weights.
    model, _ = load_checkpoint(tmp_path / "run" / "model.safetensors")
    for n, p in model.named_parameters():
        assert torch.equal(p, final[0][f"model.{n}"]), n


# -- 5. the CLI: one stage, and a schedule of stages chained by @previous -------------------------------


def test_cli_train_one_stage(tmp_path, data_dir, capsys):
    cfg = tmp_path / "codec.toml"
    body = CODEC_ONLY
    cfg.write_text(f'{body}\n{COMMON.replace("steps = 3", "steps = 50")}\ndata = "{data_dir.as_posix()}"\n')
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--steps", "2", "--rate-weight", "3.0", "-q"]) == 0
    for name in ("stage.json", "log.csv", "model.safetensors", "model.sha256", "train_state.safetensors"):
        assert (out / name).is_file(), name
    saved = load_stage(cfg, steps=2, rate_weight=3.0)
    assert (out / "stage.json").read_text() == saved.to_json()  # the overrides are in the saved config
    assert [r["step"] for r in read_log(out)] == ["1", "2"]
    assert {float(r["rate_weight"]) for r in read_log(out)} == {3.0}
    _, meta = load_checkpoint(out / "model.safetensors")
    assert meta["sodec.kind"] == "codec"

    # Another config in the same folder: refused, unless --restart, which starts a new log.
    assert main(["train", "--config", str(cfg), "--out", str(out), "--steps", "3", "-q"]) == UsageError.exit_code
    assert "different stage config" in capsys.readouterr().err
    assert main(["train", "--config", str(cfg), "--out", str(out), "--steps", "3", "--restart", "-q"]) == 0
    assert [r["step"] for r in read_log(out)] == ["1", "2", "3"]
    assert (out / "stage.json").read_text() == load_stage(cfg, steps=3).to_json()


SCHEDULE = """
[defaults]
data = "./data"
steps = 2
batch_size = 2
crop = 64
holdout = 0.0
lr = 1e-3
log_every = 1
validate_every = 0
checkpoint_every = 100

[[stage]]
name = "vae"
preset = "sodec:tiny"
objective = "vae"
train = ["diffusion.vae.*"]
losses = { mse = 1.0, kl = 1e-6 }

[[stage]]
name = "diffusion"
objective = "sodec"
train = ["codec.h_s.*", "transform.*", "fidelity_decoder.*", "fgm.projector.*", "diffusion.unet.*lora*"]
losses = { mse = 1.0 }

[[stage]]
name = "anneal"
objective = "sodec"
train = ["codec.*", "transform.*", "fidelity_decoder.*", "fgm.projector.*", "diffusion.unet.*lora*"]
losses = { mse = 1.0, align = 0.5 }
rate_weight = 0.5
rate_weight_end = 2.0
"""


def test_cli_train_schedule_chains_stages(tmp_path, data_dir):
    (tmp_path / "data").symlink_to(data_dir, target_is_directory=True)
    cfg = tmp_path / "schedule.toml"
    cfg.write_text(SCHEDULE)
    stages = load_schedule(cfg)
    assert [s.name for s in stages] == ["vae", "diffusion", "anneal"]
    assert [s.init for s in stages] == [None, "@previous", "@previous"]
    assert all(Path(s.data) == (tmp_path / "data").resolve() for s in stages)  # relative to the file

    out = tmp_path / "runs"
    assert main(["train", "--config", str(cfg), "--out", str(out), "-q"]) == 0
    dirs = [out / "1-vae", out / "2-diffusion", out / "3-anneal"]
    for d in dirs:
        for name in ("stage.json", "log.csv", "model.safetensors", "model.sha256"):
            assert (d / name).is_file(), d / name
        assert (d / "model.sha256").read_text().split()[0] == sha256_file(d / "model.safetensors")
        assert all(math.isfinite(float(r["loss"])) for r in read_log(d))

    # Each stage started from the one before: what a stage froze is still its predecessor's.
    ckpt = [read_checkpoint(d / "model.safetensors")[2] for d in dirs]
    vae_keys = [k for k in ckpt[0] if k.startswith("diffusion.vae.")]
    assert vae_keys and all(
        torch.equal(ckpt[0][k], ckpt[1][k]) and torch.equal(ckpt[1][k], ckpt[2][k]) for k in vae_keys
    )
    ga = [k for k in ckpt[0] if k.startswith("codec.g_a.")]
    assert all(torch.equal(ckpt[0][k], ckpt[1][k]) for k in ga)  # stage 2 froze g_a
    assert any(not torch.equal(ckpt[1][k], ckpt[2][k]) for k in ga)  # stage 3 trained it

    # Running the finished schedule again resumes: nothing is retrained.
    shas = [(d / "model.sha256").read_text() for d in dirs]
    assert main(["train", "--config", str(cfg), "--out", str(out), "-q"]) == 0
    assert [(d / "model.sha256").read_text() for d in dirs] == shas
    # An edited finished stage is not silently kept: its folder is refused.
    cfg.write_text(SCHEDULE.replace("lr = 1e-3", "lr = 2e-3"))
    assert main(["train", "--config", str(cfg), "--out", str(out), "-q"]) == UsageError.exit_code


# -- 6. data ----------------------------------------------------------------------------------------------


def test_split_holdout_is_deterministic_and_disjoint():
    files = [Path(f"d/{i:04d}.png") for i in range(400)]
    train, held = split_holdout(files, 0.1, seed=7)
    assert (train, held) == split_holdout(files, 0.1, seed=7)
    assert not set(train) & set(held) and set(train) | set(held) == set(files)
    assert 20 <= len(held) <= 60  # ~10 %
    assert train == [f for f in files if f in set(train)]  # order kept
    # Adding files never moves an existing one across the split; another seed gives another split.
    more_train, more_held = split_holdout([*files, *(Path(f"d/x{i}.png") for i in range(50))], 0.1, seed=7)
    assert set(held) <= set(more_held) and set(train) <= set(more_train)
    assert split_holdout(files, 0.1, seed=8)[1] != held
    assert split_holdout(files, 0.0, seed=7) == (files, [])


def test_crop_sampler_is_a_function_of_seed_step_rank(data_dir):
    files = list_images(data_dir)
    s = CropSampler(files, 64, seed=3)
    b = s.batch(5, 4, rank=1)
    assert b.shape == (4, 3, 64, 64) and b.dtype == torch.float32
    assert float(b.min()) >= 0.0 and float(b.max()) <= 1.0
    # Same (seed, step, rank) -> same batch, whatever was drawn before and in whichever sampler.
    s.batch(0, 4)
    s.batch(9, 4, rank=0)
    assert torch.equal(s.batch(5, 4, rank=1), b)
    assert torch.equal(CropSampler(files, 64, seed=3).batch(5, 4, rank=1), b)
    torch.manual_seed(99)
    np.random.seed(99)
    assert torch.equal(CropSampler(files, 64, seed=3).batch(5, 4, rank=1), b)
    # Any of the three changed -> other crops.
    assert not torch.equal(s.batch(6, 4, rank=1), b)
    assert not torch.equal(s.batch(5, 4, rank=0), b)
    assert not torch.equal(CropSampler(files, 64, seed=4).batch(5, 4, rank=1), b)


def test_flat_regions_paint_a_share_of_crops_and_leave_the_rest_unchanged(data_dir):
    files = list_images(data_dir)
    plain = CropSampler(files, 64, seed=3)
    flat = CropSampler(files, 64, seed=3, flat_fraction=0.5)
    painted = 0
    for step in range(8):
        a, b = plain.batch(step, 4), flat.batch(step, 4)
        assert torch.equal(flat.batch(step, 4), b)  # still a function of (seed, step, rank)
        for x, y in zip(a, b, strict=True):
            if torch.equal(x, y):
                continue  # an unpainted crop is exactly the crop drawn without flat regions
            painted += 1
            changed = (x != y).any(0)  # (64, 64)
            # The region (a whole crop, a block or a frame) reaches the border and is smooth:
            # slopes of <= 24 levels along each axis.
            assert changed[0].any() or changed[-1].any() or changed[:, 0].any() or changed[:, -1].any()
            region = y[:, changed]
            assert float(region.amax(1).sub(region.amin(1)).max()) <= 49 / 255
    assert 8 <= painted <= 24  # about half of 32 crops
    assert CropSampler(files, 64, seed=3, flat_fraction=0.0).batch(2, 4).equal(plain.batch(2, 4))
    with pytest.raises(ValueError, match="flat_fraction"):
        CropSampler(files, 64, seed=3, flat_fraction=1.5)


@pytest.mark.parametrize(("h", "w"), [(40, 48), (40, 100), (100, 30)])
def test_images_smaller_than_the_crop_are_padded_not_resized(tmp_path, h, w):
    img = random_image(h, w, seed=11)
    path = tmp_path / "small.png"
    Image.fromarray(img).save(path)
    s = CropSampler([path], 64, seed=0)
    seen_flip = seen_plain = False
    for step in range(12):
        crop = (s.batch(step, 1)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        assert crop.shape == (64, 64, 3)
        plain = _find(crop, img)
        flip = _find(crop[:, ::-1], img)
        assert plain or flip, f"step {step}: the crop is not a window of the padded image"
        seen_plain |= plain
        seen_flip |= flip
    assert seen_plain and seen_flip


def _find(crop: np.ndarray, img: np.ndarray) -> bool:
    """Whether ``crop`` is a window of ``img`` padded at the bottom/right by edge replication."""
    c = crop.shape[0]
    padded = np.pad(img, ((0, max(0, c - img.shape[0])), (0, max(0, c - img.shape[1])), (0, 0)), mode="edge")
    ph, pw = padded.shape[:2]
    return any(
        np.array_equal(padded[t : t + c, left : left + c], crop)
        for t in range(ph - c + 1)
        for left in range(pw - c + 1)
    )


def test_a_run_made_before_a_stage_option_existed_still_matches():
    """Fields added to StageConfig later count as their defaults when a saved run lacks them;
    any real difference still counts."""
    from sodec.training.trainer import same_stage

    s = StageConfig(name="s", preset="codec:tiny", rate_weight=2.0)
    old = json.loads(s.to_json())
    del old["rate_control"], old["rate_every"], old["target_bpp"]
    assert same_stage(json.dumps(old), s)
    assert not same_stage(json.dumps({**old, "lr": 5e-4}), s)
    assert not same_stage(json.dumps({**old, "no_such_option": 1}), s)
    assert not same_stage("not json at all", s)


def test_extra_data_folders_join_the_training_set(tmp_path, data_dir):
    """``extra_data``: more image folders beside ``data`` (relative to the stage file), all in
    the held-out split and the sampler."""
    extra = tmp_path / "more"
    extra.mkdir()
    for i in range(3):
        Image.fromarray(random_image(96, 128, seed=50 + i)).save(extra / f"extra{i}.png")
    path = tmp_path / "stage.toml"
    path.write_text(f'{CODEC_ONLY}\n{COMMON}\ndata = "{data_dir.as_posix()}"\nextra_data = ["./more"]\n')
    stage = load_stage(path)
    assert stage.extra_data == (str(extra.resolve()),)
    tr = Trainer(stage, tmp_path / "run", progress=False)
    train, _ = split_holdout(list_images(data_dir) + list_images(extra), stage.holdout, stage.seed)
    assert tr.sampler.files == train
    assert any(p.parent == extra.resolve() for p in tr.sampler.files)


def test_the_final_checkpoint_is_saved_before_the_last_validation(tmp_path, data_dir, monkeypatch):
    """A last validation pass that fails (once, the library changed under a running job) must not
    cost the stage's weights: model.safetensors is written first, then the error surfaces."""
    stage = stage_from_toml(tmp_path, data_dir, CODEC_ONLY, holdout=0.4, val_images=2, steps=2)

    def broken(self):
        raise AttributeError("validation broke")

    monkeypatch.setattr(Trainer, "validate", broken)
    with pytest.raises(AttributeError, match="validation broke"):
        Trainer(stage, tmp_path / "run", progress=False).run()
    model = api.load_model(tmp_path / "run" / "model.safetensors")
    assert api.decompress(api.compress(model, random_image(64, 64, seed=3)), model).shape == (64, 64, 3)


def test_final_checkpoint_codes_without_validation_and_nan_stops(tmp_path, data_dir):
    """No held-out images: the final file still has its entropy tables (it can compress); a
    non-finite loss stops the stage with a one-line error instead of saving NaN weights."""
    stage = stage_from_toml(tmp_path, data_dir, CODEC_ONLY, holdout=0.0, val_images=0, steps=2)
    res = Trainer(stage, tmp_path / "run", progress=False).run()
    model = api.load_model(res.checkpoint)
    assert api.decompress(api.compress(model, random_image(64, 64, seed=3)), model).shape == (64, 64, 3)
    tr = Trainer(stage, tmp_path / "nan", progress=False)
    with torch.no_grad():
        next(tr.model.g_s.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        tr.run()


def test_sample_seed_draws_new_crops_on_the_same_held_out_split(tmp_path, data_dir):
    """``sample_seed``: a further leg sees other crops, while the held-out photos (which its rate
    target is measured on) stay those that ``seed`` drew."""
    base = stage_from_toml(tmp_path, data_dir, CODEC_ONLY, holdout=0.4)
    other = stage_from_toml(tmp_path, data_dir, CODEC_ONLY, holdout=0.4, sample_seed=base.seed + 7)
    assert base.crop_seed == base.seed and other.crop_seed == base.seed + 7
    a = Trainer(base, tmp_path / "a", progress=False)
    b = Trainer(other, tmp_path / "b", progress=False)
    assert a.val_files == b.val_files and a.sampler.files == b.sampler.files
    assert not torch.equal(a.sampler.batch(0, 2), b.sampler.batch(0, 2))
    assert torch.equal(b.sampler.batch(3, 2), CropSampler(b.sampler.files, other.crop, other.sample_seed).batch(3, 2))
