"""The VAE compression module (issue 2): exact latents, any size, checkpoints, registry."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import KODAK, needs_kodak, random_image
from sodec import api, contract, errors, registry
from sodec.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from sodec.config import CODEC_PRESETS, CodecConfig, from_json, to_json
from sodec.errors import UsageError, WeightsError
from sodec.models.vae_codec import VAECodec


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> api.Model:
    torch.manual_seed(0)
    m = VAECodec(CODEC_PRESETS["tiny"]).eval()
    m.update(force=True)
    path = tmp_path_factory.mktemp("c") / "codec-tiny.safetensors"
    save_checkpoint(path, m, "codec", m.cfg, {"sodec.model_id": "codec-tiny"})
    return api.load_model(path)


def test_decompressed_latent_equals_forward_quantization(tiny):
    x = api.to_tensor(random_image(128, 192))
    codec = tiny.codec
    with torch.no_grad():
        out = codec(x)
        streams = codec.compress(x)
        dec = codec.decompress(streams)
    assert torch.equal(dec.y_hat, out.y_hat), "y_hat from the bitstream must equal forward's exactly"
    assert torch.equal(dec.x_vae, out.x_hat.clamp(0, 1))
    torch.testing.assert_close(dec.w, out.w, rtol=0, atol=0)


@pytest.mark.parametrize("hw", [(1, 1), (17, 33), (64, 64), (65, 1), (512, 768)])
def test_any_size_round_trips_with_the_same_shape(tiny, hw):
    img = random_image(*hw)
    data = api.compress(tiny, img)
    out = api.decompress(data, tiny)
    assert out.shape == img.shape and out.dtype == np.uint8
    meta = api.info(data)
    assert (meta["width"], meta["height"]) == (hw[1], hw[0])
    assert meta["bpp"] == pytest.approx(8 * len(data) / (hw[0] * hw[1]))
    assert meta["file_bytes"] == len(data)


def test_padding_is_replicate_and_cropped_back(tiny):
    x = api.to_tensor(random_image(17, 33))
    padded = api.pad_to(x)
    assert padded.shape[-2:] == (64, 64)
    assert torch.equal(padded[..., :17, :33], x)
    assert torch.equal(padded[..., 16, 33:], x[..., 16, 32:33].expand(-1, -1, 31))
    assert torch.equal(padded[..., 40, :33], x[..., 16, :])


def test_checkpoint_carries_its_config(tmp_path, tiny):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, tiny.codec, "codec", tiny.codec.cfg)
    kind, cfg, _state, _meta = read_checkpoint(path)
    assert kind == "codec" and cfg == CODEC_PRESETS["tiny"]
    model, _ = load_checkpoint(path)
    assert model.cfg == cfg


def test_config_json_round_trip_and_strictness():
    for cfg in CODEC_PRESETS.values():
        assert from_json(to_json(cfg)) == cfg
    with pytest.raises(ValueError):
        from_json('{"type": "CodecConfig", "config": {"latent_channels": 8, "bogus": 1}}')
    with pytest.raises(ValueError):
        from_json('{"type": "Pickle", "config": {}}')
    with pytest.raises(ValueError):
        CodecConfig(encoder_channels=(1, 2))


def test_sha256_mismatch_and_foreign_files_are_refused(tmp_path, tiny):
    path = tmp_path / "m.safetensors"
    sha = save_checkpoint(path, tiny.codec, "codec", tiny.codec.cfg)
    with pytest.raises(WeightsError):
        load_checkpoint(path, expected_sha256="0" * 64)
    load_checkpoint(path, expected_sha256=sha)
    bad = tmp_path / "evil.safetensors"
    bad.write_bytes(b"\x80\x04K\x01.")  # a pickle, not safetensors
    with pytest.raises(WeightsError):
        load_checkpoint(bad)
    with pytest.raises(WeightsError):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_weights_of_another_architecture_are_refused(tmp_path, tiny):
    path = tmp_path / "m.safetensors"
    other = dataclasses.replace(CODEC_PRESETS["tiny"], latent_channels=12)
    save_checkpoint(path, tiny.codec, "codec", other)  # config says 12, weights say 8
    with pytest.raises(WeightsError):
        load_checkpoint(path)


def test_registry_lists_shipped_models_with_valid_hashes():
    entries = registry.models()
    assert entries, "the package ships at least one model"
    for e in entries:
        assert e.path.is_file(), e.file
        _model, meta = load_checkpoint(e.path, e.sha256)  # sha256 checked before loading
        assert meta["sodec.kind"] == e.kind
    assert registry.resolve().name == registry._load()[1]
    with pytest.raises(UsageError):
        registry.resolve("no-such-model")


def test_quality_selects_within_a_family():
    entries = registry.models()
    fam = entries[0].family
    qs = sorted(e.quality for e in entries if e.family == fam)
    for q in qs:
        assert registry.resolve(fam, q).quality == q
    with pytest.raises(UsageError):
        registry.resolve(fam, max(qs) + 10)


@needs_kodak
def test_shipped_codec_on_kodak_image():
    from sodec.image_io import read_image

    img, notes = read_image(KODAK / "kodim01.png")
    assert notes == []
    for e in (e for e in registry.models() if e.kind == "codec"):
        model = api.load_model(e.name)
        data = api.compress(model, img)
        out = api.decompress(data)  # the model is found from the file's header
        mse = np.mean((out.astype(float) - img.astype(float)) ** 2)
        psnr = 10 * np.log10(255**2 / mse)
        assert psnr > 18, (e.name, psnr)  # a trained codec, not noise
        assert 0.01 < 8 * len(data) / img[..., 0].size < 2.0


@pytest.mark.parametrize("name", ["tiny", "shipped"])
def test_training_reports_the_bits_the_entropy_coder_writes(tiny, name):
    """encode_latents in training records coded_bits: the rounded latents' bits under the model's
    own entropy model, which the rate target steers by. They must match the real streams (the
    noisy-proxy likelihoods need not: at low rates they overestimate by tens of percent)."""
    if name == "tiny":
        codec = tiny.codec
    else:
        if not registry.models():
            pytest.skip("no shipped models")
        codec = api.load_model(next(e.name for e in registry.models() if e.kind == "codec")).module.float()
    x = torch.from_numpy(random_image(128, 192, seed=7)).permute(2, 0, 1)[None].float() / 255
    codec.eval()
    streams = codec.compress(x)
    real = 8 * (len(streams.y) + len(streams.z))
    codec.train()
    try:
        codec.coded_bits = None
        with torch.no_grad():
            codec.encode_latents(x)
    finally:
        codec.eval()
    assert codec.coded_bits is not None
    # rANS adds some bytes per stream (flush, bypass-coded tails) on top of the ideal bits
    assert abs(float(codec.coded_bits) - real) <= 0.03 * real + 8 * 32, (float(codec.coded_bits), real)


def test_tiled_encode_matches_untiled(monkeypatch: pytest.MonkeyPatch) -> None:
    """g_a and h_s in tiles (bounded encode memory) give the untiled latents up to float
    summation order, the files decode without desync, and one-tile images are coded untiled."""
    from sodec.models import vae_codec
    from sodec.tiling import tiled_analysis, tiled_upsample

    model = api.load_model(Path(__file__).resolve().parent / "data" / "codec-tiny-test.safetensors")
    codec = model.codec
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:320, 0:448]
    image = np.clip(np.stack([xx % 256, yy % 256, (xx * yy) % 256], -1) + rng.integers(-20, 21, (320, 448, 3)), 0, 255)
    image = image.astype(np.uint8)
    x = api.to_tensor(image)
    with torch.inference_mode():
        whole = codec.g_a(x)
        tiled = tiled_analysis(codec.g_a, x, 16, 8, vae_codec.ENCODE_MARGIN)  # 3 x 4 tiles of 8 latents
        assert (tiled - whole).abs().max() < 1e-4
        z_hat = torch.round(codec.h_a(whole))  # (1, Z, 5, 7)
        assert (tiled_upsample(codec.h_s, z_hat, 4, 2, 4) - codec.h_s(z_hat)).abs().max() < 1e-4
        # A window smaller than the receptive field would not: the margin matters.
        assert (tiled_analysis(codec.g_a, x, 16, 8, 0) - whole).abs().max() > 1e-3
    one_tile = api.compress(model, image)
    monkeypatch.setattr(vae_codec, "ENCODE_TILE", 8)
    many_tiles = api.compress(model, image)
    # The tiled file decodes (no desync) to the untiled file's picture, up to a stray symbol.
    diff = contract.compare_pixels(api.decompress(many_tiles, model), api.decompress(one_tile, model))
    assert diff.psnr_db >= 40.0, str(diff)
    monkeypatch.setattr(vae_codec, "ENCODE_TILE", 1 << 20)
    assert api.compress(model, image) == one_tile  # fits one tile either way: identical bytes


def test_compress_refuses_over_max_pixels() -> None:
    model = api.load_model(Path(__file__).resolve().parent / "data" / "codec-tiny-test.safetensors")
    image = np.zeros((100, 130, 3), np.uint8)
    with pytest.raises(errors.LimitsError, match="padded to 192x128"):
        api.compress(model, image, max_pixels=20_000)
    assert api.compress(model, image, max_pixels=None)  # None: no limit


def test_gdn_codec_codes_and_keeps_its_config() -> None:
    """CodecConfig.norm = "gdn": GDN in g_a, inverse GDN in g_s; same coding API, bytes decode."""
    cfg = dataclasses.replace(CODEC_PRESETS["tiny"], norm="gdn")
    assert from_json(to_json(cfg)) == cfg
    torch.manual_seed(0)
    codec = VAECodec(cfg).eval()
    codec.update(force=True)
    assert any(type(m).__name__ == "GDN" for m in codec.g_a.modules())
    assert not any(type(m).__name__ == "ChannelNorm2d" for m in codec.modules())
    x = torch.rand(1, 3, 128, 192)
    out = codec(x)
    assert out.x_hat.shape == x.shape and out.y_hat.shape == (1, cfg.latent_channels, 8, 12)
    streams = codec.compress(x)
    dec = codec.decompress(streams)
    torch.testing.assert_close(dec.y_hat, codec.encode_latents(x)[0])
    with pytest.raises(ValueError, match="norm"):
        dataclasses.replace(cfg, norm="batch")


def test_a_codec_with_built_tables_loads_tables_of_another_length():
    """CompressAI resizes only empty table buffers; VAECodec resizes any (e.g. init_codec into a
    SODEC checkpoint whose codec already had tables)."""
    import torch

    from sodec.config import CODEC_PRESETS
    from sodec.models.vae_codec import VAECodec

    a, b = VAECodec(CODEC_PRESETS["tiny"]), VAECodec(CODEC_PRESETS["tiny"])
    with torch.no_grad():
        a.entropy_bottleneck.quantiles[:, :, 0] -= 5  # wider range -> longer CDFs
        a.entropy_bottleneck.quantiles[:, :, 2] += 5
    a.update(force=True)
    b.update(force=True)
    assert a.entropy_bottleneck._quantized_cdf.shape != b.entropy_bottleneck._quantized_cdf.shape
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.entropy_bottleneck._quantized_cdf, a.entropy_bottleneck._quantized_cdf)


@pytest.mark.parametrize("name", ["codec-small-q2", "sodec-small-q2"])
def test_shipped_models_keep_a_finite_rate_for_latents_far_from_their_mean(name):
    """The likelihood floor (1e-9) is the model's own, not the checkpoint's: the shipped files
    hold it as 0, with which one latent far from its predicted mean made training's rate
    infinite and the step NaN (a fine-tune from the shipped weights did so at step 0)."""
    codec = api.load_model(name).codec
    for module in (codec.gaussian_conditional, codec.entropy_bottleneck):
        assert module.likelihood_lower_bound.bound.item() == pytest.approx(1e-9)
    codec.train()
    x = torch.rand(1, 3, 64, 64)
    y = codec.g_a(x) + 1e4  # far outside anything h_s predicts
    scales, means = codec.split_params(codec.entropy_params(y, codec.hyper_synthesis(codec.h_a(y).round())))
    _, lh = codec.gaussian_conditional(y, scales, means=means)
    assert torch.isfinite(torch.log2(lh)).all()
    assert lh.min().item() == pytest.approx(1e-9)
