"""Border padding of the networks (models/padding.py; CodecConfig.padding, SodecConfig.padding)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from sodec import api
from sodec.config import CODEC_PRESETS, SODEC_PRESETS, from_json, to_json
from sodec.models.padding import ReplicateConvTranspose2d, set_padding
from sodec.models.sodec import SodecModel
from sodec.models.vae_codec import VAECodec

REPLICATE_CODEC = dataclasses.replace(CODEC_PRESETS["tiny"], norm="gdn", padding="replicate")


@pytest.mark.parametrize("k,s,p,op", [(3, 2, 1, 1), (5, 2, 2, 1), (4, 2, 1, 0), (3, 1, 1, 0)])
def test_replicate_transposed_conv_keeps_size_and_interior(k, s, p, op):
    torch.manual_seed(0)
    ref = nn.ConvTranspose2d(3, 4, k, stride=s, padding=p, output_padding=op)
    rep = nn.ConvTranspose2d(3, 4, k, stride=s, padding=p, output_padding=op)
    rep.load_state_dict(ref.state_dict())
    set_padding(rep, "replicate")
    assert isinstance(rep, ReplicateConvTranspose2d)
    x = torch.randn(1, 3, 7, 9)
    a, b = ref(x), rep(x)
    assert a.shape == b.shape
    m = s * k  # outputs that see no padded input at all
    torch.testing.assert_close(a[..., m:-m, m:-m], b[..., m:-m, m:-m])
    assert not torch.allclose(a, b)  # the border differs: the padding is really used
    # A constant input gives the same s-periodic pattern at the border as inside (a transposed
    # conv of stride s is periodic by nature), which zero padding breaks.
    c = rep(torch.ones(1, 3, 6, 6) * 0.7)
    torch.testing.assert_close(c[..., s:, :], c[..., :-s, :])
    torch.testing.assert_close(c[..., s:], c[..., :-s])
    c0 = ref(torch.ones(1, 3, 6, 6) * 0.7)
    assert not torch.allclose(c0[..., s:, :], c0[..., :-s, :])


def test_set_padding_keeps_parameters_and_switches_back():
    codec = VAECodec(dataclasses.replace(CODEC_PRESETS["tiny"], norm="gdn"))
    before = {k: v.clone() for k, v in codec.state_dict().items()}
    set_padding(codec, "replicate")
    after = codec.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    convs = [m for m in codec.g_a.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.padding_mode == "replicate" for m in convs)
    set_padding(codec, "zeros")
    assert all(m.padding_mode == "zeros" for m in convs)
    assert not any(isinstance(m, ReplicateConvTranspose2d) for m in codec.modules())
    with pytest.raises(ValueError, match="padding 'circular'"):
        set_padding(codec, "circular")


def test_config_field_is_validated_and_travels():
    assert from_json(to_json(REPLICATE_CODEC)) == REPLICATE_CODEC
    # Checkpoints written before the field existed read as zero padding.
    assert from_json(to_json(CODEC_PRESETS["tiny"])).padding == "zeros"
    with pytest.raises(ValueError, match="padding"):
        dataclasses.replace(CODEC_PRESETS["tiny"], padding="reflect-ish")
    with pytest.raises(ValueError, match="padding"):
        dataclasses.replace(SODEC_PRESETS["tiny"], padding="nope")


def test_replicate_codec_encodes_a_flat_image_as_a_flat_latent():
    """With every layer replicating its edge, a flat image gives a spatially constant y and z,
    whatever the weights: the border's latents are those of the interior. (A stride-2 transposed
    conv makes a constant periodic, so h_s and g_s are flat only as far as training makes them.)
    With zero padding the border latents differ."""
    torch.manual_seed(1)
    codec = VAECodec(REPLICATE_CODEC).eval()
    zeros = VAECodec(dataclasses.replace(REPLICATE_CODEC, padding="zeros")).eval()
    zeros.load_state_dict(codec.state_dict())
    x = torch.empty(1, 3, 128, 192)
    x[:, 0], x[:, 1], x[:, 2] = 30 / 255, 160 / 255, 60 / 255
    with torch.no_grad():
        y = codec.g_a(x)
        z = codec.h_a(y)
        y0 = zeros.g_a(x)
    for t in (y, z):
        torch.testing.assert_close(t, t[..., :1, :1].expand_as(t), atol=1e-5, rtol=1e-4)
    assert (y0 - y0[..., 2:3, 2:3]).abs().amax().item() > 1e-3


def test_replicate_latent_decoder_keeps_a_flat_latent_flat():
    """D_m (nearest upsampling + convs) and the UNet's convs keep a constant constant with
    replicate padding: a flat latent decodes to a flat image, border included."""
    cfg = dataclasses.replace(SODEC_PRESETS["tiny-tae"], padding="replicate")
    torch.manual_seed(3)
    model = SodecModel(cfg).eval()
    latent = torch.full((1, 32, 8, 12), 0.3)
    with torch.no_grad():
        img = model.diffusion.latent_decoder(latent)
    torch.testing.assert_close(img, img[..., :1, :1].expand_as(img), atol=1e-5, rtol=1e-4)
    set_padding(model.diffusion, "zeros")
    with torch.no_grad():
        img0 = model.diffusion.latent_decoder(latent)
    assert (img0 - img0[..., 20:21, 20:21]).abs().amax().item() > 1e-4


def test_replicate_models_round_trip_through_the_api(tmp_path):
    """Bitstreams of replicate-padded models decode exactly to the encoder's y_hat (the symbol
    CRC checks it), for a plain codec and a SODEC model, at a size that is not a multiple of 64."""
    from sodec.checkpoint import save_checkpoint

    torch.manual_seed(2)
    img = (np.random.default_rng(0).random((70, 100, 3)) * 255).astype(np.uint8)
    codec = VAECodec(REPLICATE_CODEC).eval()
    codec.update(force=True)
    save_checkpoint(tmp_path / "c.safetensors", codec, "codec", REPLICATE_CODEC)
    cfg = dataclasses.replace(SODEC_PRESETS["tiny"], codec=REPLICATE_CODEC, padding="replicate")
    model = SodecModel(cfg).eval()
    model.codec.update(force=True)
    save_checkpoint(tmp_path / "s.safetensors", model, "sodec", cfg)
    for name in ("c.safetensors", "s.safetensors"):
        m = api.load_model(tmp_path / name)
        out = api.decompress(api.compress(m, img), m)
        assert out.shape == img.shape
    m = api.load_model(tmp_path / "s.safetensors")
    assert m.module.cfg.padding == "replicate"
    assert any(isinstance(x, ReplicateConvTranspose2d) for x in m.module.codec.g_s.modules())
    assert all(
        c.padding_mode == "replicate" for c in m.module.transform.modules() if isinstance(c, nn.Conv2d) and c.padding[0]
    )


@pytest.mark.parametrize("kind", ["codec", "sodec"])
def test_training_stage_sets_padding_and_the_checkpoint_keeps_it(tmp_path, kind):
    """Stage ``padding``: the starting model's weights are kept, its configs say "replicate", and
    the checkpoint it saves rebuilds with replicate padding."""
    from sodec.checkpoint import load_checkpoint, save_checkpoint
    from sodec.training.stages import StageConfig
    from sodec.training.trainer import build_stage_model

    torch.manual_seed(0)
    if kind == "codec":
        cfg = CODEC_PRESETS["tiny"]
        start = VAECodec(cfg).eval()
    else:
        cfg = SODEC_PRESETS["tiny-tae"]
        start = SodecModel(cfg).eval()
    path = tmp_path / "start.safetensors"
    save_checkpoint(path, start, kind, cfg)
    model, got = build_stage_model(StageConfig(name="pad", init=str(path), padding="replicate", objective="codec"))
    assert got == kind
    for k, v in start.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    saved = tmp_path / "saved.safetensors"
    save_checkpoint(saved, model, kind, model.cfg)
    again, _ = load_checkpoint(saved)
    codec_cfg = again.cfg if kind == "codec" else again.cfg.codec
    assert codec_cfg.padding == "replicate"
    if kind == "sodec":
        assert again.cfg.padding == "replicate"
        assert again.codec.cfg.padding == "replicate"
    assert any(isinstance(m, ReplicateConvTranspose2d) for m in again.modules())
    with pytest.raises(ValueError, match="padding"):
        StageConfig(name="bad", init=str(path), padding="mirror")
