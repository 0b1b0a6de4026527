"""The checkerboard context model of the codec (CodecConfig.context, issue 11 item 2).

Coding: anchors then the rest in one rANS stream; the decoder must rebuild exactly the encoder's
CDF indexes and means from the decoded anchors, at any thread count. Training: a context added
to a trained codec starts as that codec's entropy model and, fitted, makes the files smaller.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from helpers import random_image
from sodec import api
from sodec.checkpoint import save_checkpoint
from sodec.config import CODEC_PRESETS
from sodec.models.vae_codec import CheckerboardContext, VAECodec

CFG = dataclasses.replace(CODEC_PRESETS["tiny"], norm="gdn", context="checkerboard")


def _codec(seed: int = 0, perturb: float = 0.3) -> VAECodec:
    """A codec whose context is not the zero residual it starts as (so the context path matters)."""
    torch.manual_seed(seed)
    codec = VAECodec(CFG).eval()
    torch.nn.init.normal_(codec.context_model.params[-1].weight, std=perturb)
    codec.update(force=True)
    return codec


def test_anchor_mask_is_a_checkerboard():
    m = CheckerboardContext.anchor_mask(3, 4)[0, 0]
    assert m.tolist() == [[True, False, True, False], [False, True, False, True], [True, False, True, False]]


def test_bitstream_gives_forward_latents_exactly():
    codec = _codec()
    x = torch.rand(1, 3, 128, 192)
    with torch.no_grad():
        streams = codec.compress(x)
        dec = codec.decompress(streams)
        y_hat, w, _ = codec.encode_latents(x)
    assert torch.equal(dec.y_hat, y_hat), "y_hat from the bitstream must equal encode_latents' exactly"
    torch.testing.assert_close(dec.w, w, rtol=0, atol=0)  # T_s still gets h_s's output


def test_context_changes_the_stream_and_a_wrong_context_desyncs():
    """The non-anchors really are coded with the context's parameters: decoding with another
    context desynchronises (refused by the symbols' CRC), the anchors alone would not tell."""
    codec, other = _codec(perturb=0.3), _codec(perturb=0.3)
    torch.nn.init.normal_(other.context_model.params[-1].weight, std=0.3)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        s = codec.compress(x)
        _, _, crc = other.decompress_latent(s.y, s.z, s.latent_hw)
    assert crc != s.symbols_crc


def test_zero_residual_context_codes_the_same_latents_as_the_plain_hyperprior():
    """At its start (zero last layer) the context model is the plain hyperprior: same y_hat."""
    torch.manual_seed(1)
    plain = VAECodec(dataclasses.replace(CFG, context="none")).eval()
    plain.update(force=True)
    with_ctx = VAECodec(CFG).eval()
    missing, unexpected = with_ctx.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("context_model.") for k in missing)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        a, b = plain.compress(x), with_ctx.compress(x)
        assert torch.equal(plain.decompress(a).y_hat, with_ctx.decompress(b).y_hat)
    assert a.symbols_crc == b.symbols_crc  # same symbols; only their order in the stream differs


def test_tiled_context_matches_untiled_and_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past CONTEXT_TILE latents the context model runs in tiles (bounded encode memory, issue 11):
    the parameters equal the untiled ones up to summation order, a margin short of the masked
    conv's radius would not, and a file coded in tiles decodes to the forward pass's y_hat."""
    from sodec.models import vae_codec

    codec = _codec()
    x = torch.rand(1, 3, 192, 320)  # latent (12, 20): 2 x 3 tiles of 8
    with torch.no_grad():
        y_hat, w, _ = codec.encode_latents(x)  # one tile at the default size
        anchors = torch.where(CheckerboardContext.anchor_mask(12, 20), y_hat, 0.0)
        whole = codec._context(anchors, w)
        monkeypatch.setattr(vae_codec, "CONTEXT_TILE", 8)
        assert (codec._context(anchors, w) - whole).abs().max() < 1e-5
        assert (codec._context(None, w) - codec.context_model(None, w)).abs().max() < 1e-5
        monkeypatch.setattr(vae_codec, "CONTEXT_MARGIN", 0)
        assert (codec._context(anchors, w) - whole).abs().max() > 1e-3
        monkeypatch.setattr(vae_codec, "CONTEXT_MARGIN", 2)
        dec = codec.decompress(codec.compress(x))  # encoder and decoder both tiled: no desync
    assert torch.equal(dec.y_hat, y_hat)


@pytest.mark.parametrize("hw", [(1, 1), (17, 33), (80, 130)])
def test_any_size_round_trips_through_the_api(tmp_path, hw):
    codec = _codec()
    path = tmp_path / "ctx.safetensors"
    save_checkpoint(path, codec, "codec", codec.cfg, {"sodec.model_id": "codec-tiny-context"})
    model = api.load_model(path)
    img = random_image(*hw)
    out = api.decompress(api.compress(model, img), model)
    assert out.shape == img.shape and out.dtype == np.uint8


def test_decodes_at_another_thread_count(tmp_path):
    """Encoded with 1 thread, decoded with 2 in another process: the float64 context gives the
    same CDF indexes and means (a mismatch would raise DesyncError)."""
    codec = _codec()
    path = tmp_path / "ctx.safetensors"
    save_checkpoint(path, codec, "codec", codec.cfg, {"sodec.model_id": "codec-tiny-context"})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = api.load_model(path)
        data = api.compress(model, random_image(200, 264, seed=3))
    finally:
        torch.set_num_threads(threads)
    (tmp_path / "a.sodec").write_bytes(data)
    code = textwrap.dedent(
        f"""
        import torch
        torch.set_num_threads(2)
        from sodec import api
        m = api.load_model({str(path)!r})
        print(api.decompress(open({str(tmp_path / "a.sodec")!r}, "rb").read(), m).shape)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(200, 264, 3)" in r.stdout


def test_training_stage_adds_a_context_and_fitting_it_lowers_the_rate(tmp_path):
    """Stage ``codec_context``: the model gets a zero-start context, the other weights are kept;
    a few steps on the rate alone (codec frozen) make the coded bits smaller."""
    from sodec.training.stages import StageConfig
    from sodec.training.trainer import build_stage_model

    torch.manual_seed(0)
    plain = VAECodec(dataclasses.replace(CFG, context="none")).eval()
    plain.update(force=True)
    path = tmp_path / "plain.safetensors"
    save_checkpoint(path, plain, "codec", plain.cfg, {"sodec.model_id": "codec-tiny"})
    stage = StageConfig(name="ctx", init=str(path), codec_context="checkerboard", objective="codec")
    model, kind = build_stage_model(stage)
    assert kind == "codec" and model.cfg.context == "checkerboard"
    for k, v in plain.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    # fit the context on one smooth image's latents: bits must drop below the plain hyperprior's
    img = np.clip(np.cumsum(np.random.default_rng(0).normal(0, 6, (128, 128, 3)), axis=1) + 128, 0, 255)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        before = len(model.compress(x).y)
    opt = torch.optim.Adam(model.context_model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        _, _, lh = model.encode_latents(x)
        loss = -torch.log2(lh["y"]).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.update(force=True)
    with torch.no_grad():
        after = len(model.compress(x).y)
    assert after < before, (before, after)
