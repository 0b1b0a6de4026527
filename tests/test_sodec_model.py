"""The SODEC decoder (issue 3): shapes, conditioning, one vs N steps, paper layout, tiling."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from helpers import random_image
from sodec import api
from sodec.checkpoint import load_checkpoint, save_checkpoint
from sodec.config import SODEC_PRESETS, UNetConfig
from sodec.determinism import deterministic_attention
from sodec.models.sodec import SodecModel
from sodec.tiling import tiled_decode

TINY = SODEC_PRESETS["tiny"]


def saved_model(cfg, seed: int, name: str, tmp_path_factory) -> api.Model:
    """A random-weight SODEC model of ``cfg``, saved as a checkpoint and loaded like a user would."""
    torch.manual_seed(seed)
    module = SodecModel(cfg).eval()
    module.update(force=True)
    path = tmp_path_factory.mktemp("m") / f"{name}.safetensors"
    save_checkpoint(path, module, "sodec", cfg, {"sodec.model_id": name})
    return api.load_model(path)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> api.Model:
    return saved_model(TINY, 1, "sodec-tiny", tmp_path_factory)


@pytest.mark.parametrize("hw", [(1, 1), (17, 33), (64, 64), (70, 130)])
def test_roundtrip_any_size(tiny_model, hw):
    img = random_image(*hw)
    data = api.compress(tiny_model, img)
    out = api.decompress(data, tiny_model)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert api.info(data)["model"] == "sodec-tiny"


def test_decode_is_deterministic_across_runs_and_threads(tiny_model):
    img = random_image(96, 80, seed=3)
    data = api.compress(tiny_model, img)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            outs.append(api.decompress(data, tiny_model))
    finally:
        torch.set_num_threads(threads)
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


def test_conditioning_path_changes_output(tiny_model):
    m = tiny_model.module
    y_hat = torch.randn(1, TINY.codec.latent_channels, 4, 4)
    w = torch.randn(1, 2 * TINY.codec.latent_channels, 4, 4)
    with torch.no_grad():
        a = m.decode_latent(y_hat, w, torch.zeros(1, 3, 64, 64))
        b = m.decode_latent(y_hat, w, torch.ones(1, 3, 64, 64))
        c = m.decode_latent(y_hat, w, torch.zeros(1, 3, 64, 64))
    assert not torch.allclose(a, b), "x_vae (through the ViT and projector) must steer the output"
    assert torch.equal(a, c)


def test_one_step_matches_the_epsilon_formula(tiny_model):
    diff = tiny_model.module.diffusion
    y_t = torch.randn(1, 4, 8, 8)
    cond = torch.randn(1, TINY.fgm.tokens, TINY.fgm.cond_dim)
    with torch.no_grad():
        eps = diff.unet(y_t, torch.tensor([999]), encoder_hidden_states=cond).sample
        abar = diff.alphas_cumprod[999]
        expect = (y_t - (1 - abar).sqrt() * eps) / abar.sqrt()
        got = diff.denoise(y_t, cond)
    torch.testing.assert_close(got, expect)
    assert 0 < float(abar) < 0.01  # t = 999 of SD's scaled-linear schedule: almost pure noise


def test_multistep_runs_the_unet_n_times(tiny_model):
    m = tiny_model.module
    calls = []
    handle = m.diffusion.unet.register_forward_hook(lambda *a: calls.append(1))
    y_hat = torch.randn(1, TINY.codec.latent_channels, 4, 4)
    w = torch.randn(1, 2 * TINY.codec.latent_channels, 4, 4)
    try:
        with torch.no_grad():
            one = m.decode_latent(y_hat, w)
            n_one = len(calls)
            m.set_decode_steps(5)
            five = m.decode_latent(y_hat, w)
    finally:
        m.set_decode_steps(1)
        handle.remove()
    assert n_one == 1 and len(calls) - n_one == 5
    assert one.shape == five.shape and not torch.allclose(one, five)
    with pytest.raises(ValueError):
        m.set_decode_steps(0)


def test_tiling_single_tile_is_identical(tiny_model):
    m = tiny_model.module
    y_hat = torch.randn(1, TINY.codec.latent_channels, 8, 12)
    w = torch.randn(1, 2 * TINY.codec.latent_channels, 8, 12)
    with torch.no_grad(), deterministic_attention():
        direct = m.decode_latent(y_hat, w).clamp(0, 1)
    tiled = m.reconstruct(y_hat, w, tile=16)
    assert torch.equal(direct, tiled)


def test_tiling_blends_to_a_partition_of_unity():
    # With a pointwise decoder every tile agrees on the overlap, so the blend must be exact.
    lat = torch.rand(1, 3, 40, 28)

    def pointwise(t):
        return torch.repeat_interleave(torch.repeat_interleave(t, 4, dim=-1), 4, dim=-2)

    full = pointwise(lat)
    tiled = tiled_decode(pointwise, (lat,), scale=4, tile=12, overlap=4)
    torch.testing.assert_close(tiled, full)


def test_tiled_decode_of_a_larger_image(tiny_model):
    m = tiny_model.module
    calls = []
    handle = m.transform.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[-2:]))
    img = random_image(300, 200, seed=5)
    data = api.compress(tiny_model, img)
    try:
        out = api.decompress(data, tiny_model, tile=12)
    finally:
        handle.remove()
    assert out.shape == img.shape
    assert len(calls) > 1 and all(max(hw) <= 12 for hw in calls)


def test_tiling_hides_per_tile_shifts():
    """Decoders whose tiles disagree (GroupNorm statistics, cut context) must not show seams.

    A decoder that adds its tile's mean (as GroupNorm shifts do) on a smooth latent: linear
    blending spreads each disagreement across the overlap instead of a one-pixel jump.
    """
    h, w = 40, 28
    lat = torch.linspace(0, 1, w).repeat(h, 1)[None, None].repeat(1, 3, 1, 1)

    def shifty(t):
        up = torch.repeat_interleave(torch.repeat_interleave(t, 4, dim=-1), 4, dim=-2)
        return up + 4 * t.mean()

    tiled = tiled_decode(shifty, (lat,), scale=4, tile=12, overlap=4)
    full = shifty(lat)
    jump_tiled = tiled.diff(dim=-1).abs().max()
    jump_full = full.diff(dim=-1).abs().max()
    # Tile means differ by up to ~4 * 0.3 here: a hard cut or a plain average would jump by a
    # large fraction of that; a 16-px linear ramp spreads it to < 0.1 per pixel.
    assert jump_tiled < jump_full + 0.1


# -- paper preset: public diffusers layout ----------------------------------------------------

# Public key names of SD 2.1 / SD-Turbo's diffusers checkpoints (unet/ and vae/).
PUBLIC_UNET_KEYS = [
    "conv_in.weight",
    "time_embedding.linear_1.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
    "down_blocks.0.attentions.0.proj_in.weight",
    "down_blocks.3.resnets.1.conv2.weight",
    "mid_block.resnets.0.conv1.weight",
    "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
    "up_blocks.3.attentions.2.proj_out.weight",
    "conv_out.weight",
]
PUBLIC_VAE_KEYS = [
    "encoder.conv_in.weight",
    "decoder.mid_block.attentions.0.to_q.weight",
    "decoder.up_blocks.3.resnets.2.conv2.weight",
    "quant_conv.weight",
    "post_quant_conv.weight",
]


def paper_layout(width: int):
    """The paper preset's block layout (SD 2.1: 4 blocks, 2 layers, linear proj) at a width."""
    p = SODEC_PRESETS["paper"]
    unet = dataclasses.replace(
        p.unet,
        block_out_channels=(width, 2 * width, 2 * width, 2 * width),
        attention_head_dim=(1, 2, 2, 2),
        cross_attention_dim=16,
        norm_num_groups=8,
        sample_size=16,
    )
    vae = dataclasses.replace(
        p.vae, block_out_channels=(width, width, 2 * width, 2 * width), norm_num_groups=8, sample_size=64
    )
    fgm = dataclasses.replace(
        p.fgm, timm_name=None, img_size=28, patch_size=14, embed_dim=16, depth=1, num_heads=2, cond_dim=16
    )
    return dataclasses.replace(
        p, codec=SODEC_PRESETS["tiny"].codec, unet=unet, vae=vae, fgm=fgm, transform=TINY.transform
    )


def _check_paper_roundtrip(cfg, tmp_path):
    from safetensors import safe_open

    torch.manual_seed(0)
    src = SodecModel(dataclasses.replace(cfg, base_weights=None)).eval()
    base = tmp_path / "sd"
    src.save_base(base)  # public diffusers layout: unet/, vae/ (+ our vit/)
    with safe_open(str(base / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        unet_keys = set(f.keys())
    with safe_open(str(base / "vae" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        vae_keys = set(f.keys())
    assert set(PUBLIC_UNET_KEYS) <= unet_keys
    assert set(PUBLIC_VAE_KEYS) <= vae_keys
    assert not any("lora" in k or "base_layer" in k for k in unet_keys)

    # A paper-preset checkpoint holds only what SODEC trains; the SD weights come from base.
    paper_cfg = dataclasses.replace(cfg, base_weights="stabilityai/sd-turbo")
    model = SodecModel(paper_cfg, base_weights=base).eval()
    # Adapters start at zero effect (LoRA B = 0), so the loaded UNet equals the saved one.
    lora = [k for k in model.state_dict() if "lora_" in k]
    assert lora, "paper preset trains the UNet through LoRA"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.01)  # make the adapters matter, so reloading them is tested
    model.update(force=True)
    ckpt = tmp_path / "sodec-paper.safetensors"
    save_checkpoint(ckpt, model, "sodec", paper_cfg)
    with safe_open(str(ckpt), "pt") as f:
        stored = set(f.keys())
    assert not any(k.startswith("diffusion.vae.") for k in stored)
    assert not any(k.startswith("diffusion.unet.") and "lora_" not in k for k in stored)
    assert any("lora_" in k for k in stored)

    reloaded, _ = load_checkpoint(ckpt, base_weights=base)
    y_hat = torch.randn(1, cfg.codec.latent_channels, 4, 4)
    w = torch.randn(1, 2 * cfg.codec.latent_channels, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.decode_latent(y_hat, w), model.decode_latent(y_hat, w))


def test_paper_layout_save_and_reload(tmp_path):
    _check_paper_roundtrip(paper_layout(8), tmp_path)


def test_paper_preset_requires_base_weights(tmp_path):
    from sodec.errors import WeightsError

    with pytest.raises(WeightsError):
        SodecModel(paper_layout(8), base_weights=tmp_path / "missing")


@pytest.mark.slow
def test_full_paper_preset_save_and_reload(tmp_path):
    """SD 2.1-sized UNet and VAE with random weights (several GB of RAM, minutes on a CPU)."""
    cfg = dataclasses.replace(
        SODEC_PRESETS["paper"], fgm=dataclasses.replace(SODEC_PRESETS["paper"].fgm, timm_name=None, depth=1)
    )
    _check_paper_roundtrip(cfg, tmp_path)


def test_paper_preset_shapes_on_meta_device():
    """The paper preset's UNet and ViT have SD 2.1's and ViT-L's sizes (meta device: no memory)."""
    from sodec.models.fidelity_guidance import build_vit
    from sodec.models.one_step import _diffusers

    paper = SODEC_PRESETS["paper"]
    unet_cls = _diffusers()[3]
    with torch.device("meta"):
        unet = unet_cls(**paper.unet.diffusers_kwargs())
        vit = build_vit(paper.fgm)
    n_unet = sum(p.numel() for p in unet.parameters())
    n_vit = sum(p.numel() for p in vit.parameters())
    assert 860e6 < n_unet < 870e6  # SD 2.1's UNet: 865.9 M parameters
    assert vit.embed_dim == 1024 and 300e6 < n_vit < 310e6  # DINOv2 ViT-L/14
    assert paper.codec.latent_channels == 220
    assert isinstance(paper.unet, UNetConfig)


# -- the pooled guidance preview (FGMConfig.guidance_size, the small preset's decode-time saving) ---

PREVIEW = dataclasses.replace(TINY, fgm=dataclasses.replace(TINY.fgm, guidance_size=2))


@pytest.fixture(scope="module")
def preview_model(tmp_path_factory) -> api.Model:
    return saved_model(PREVIEW, 2, "sodec-tiny-preview", tmp_path_factory)


def test_guidance_preview_has_a_fixed_size_and_steers_the_output(preview_model):
    m = preview_model.module
    assert m.cfg.fgm.guidance_size == 2  # the config travels in the checkpoint
    c = TINY.codec.latent_channels
    for h, w in ((1, 1), (4, 6), (9, 5)):
        y_hat = torch.randn(1, c, h, w)
        assert m.guidance_image(y_hat).shape == (1, 3, 32, 32)
    y_hat, w = torch.randn(1, c, 4, 6), torch.randn(1, 2 * c, 4, 6)
    # D_a sees only the pooled latent: a change that keeps every cell's mean keeps the preview...
    bump = torch.zeros_like(y_hat)
    bump[..., 0, 0], bump[..., 0, 1] = 1.0, -1.0  # same 2x3 cell, zero mean change
    with torch.no_grad():
        torch.testing.assert_close(m.guidance_image(y_hat), m.guidance_image(y_hat + bump))
        # ...while a changed preview changes the decoded image (the guidance path is live).
        a = m.decode_latent(y_hat, w)
        b = m.decode_latent(y_hat, w, x_f=torch.ones(1, 3, 32, 32))
    assert not torch.allclose(a, b)


def test_guidance_preview_trains_against_the_pooled_original(preview_model):
    from sodec.losses import distortion_terms

    m = preview_model.module
    x = torch.rand(2, 3, 64, 128)
    out = m(x)
    assert out.x_hat.shape == x.shape and out.x_fidelity.shape == (2, 3, 32, 32)
    terms = distortion_terms({"align": 1.0}, x, out.x_hat, out.x_fidelity, None)
    pooled = torch.nn.functional.adaptive_avg_pool2d(x, (32, 32))
    torch.testing.assert_close(terms["align"], ((out.x_fidelity - pooled) * 255).pow(2).mean())


def test_guidance_preview_tiled_decode_equals_one_tile_and_round_trips(preview_model):
    m = preview_model.module
    c = TINY.codec.latent_channels
    y_hat, w = torch.randn(1, c, 8, 12), torch.randn(1, 2 * c, 8, 12)
    with torch.no_grad(), deterministic_attention():
        direct = m.decode_latent(y_hat, w).clamp(0, 1)
    assert torch.equal(direct, m.reconstruct(y_hat, w, tile=16))
    img = random_image(150, 90, seed=4)
    data = api.compress(preview_model, img)
    assert api.decompress(data, preview_model, tile=12).shape == img.shape
