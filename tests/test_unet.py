"""The in-project UNet and ViT of the small preset (models/unet.py, models/vit.py) against the
libraries they stand in for: same parameter names, same outputs on the same random weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sodec.config import SODEC_PRESETS, UNetConfig
from sodec.models.one_step import OneStepDiffusion, _unet_class
from sodec.models.unet import ConditionalUNet, supported
from sodec.models.vit import VisionTransformer

SMALL = SODEC_PRESETS["small"].unet
CONFIGS = {
    "small": SMALL,
    "tiny-tae": SODEC_PRESETS["tiny-tae"].unet,
    # Two layers per block, four levels, attention at the top: the paths the presets do not take.
    "deep": UNetConfig(
        block_out_channels=(8, 16, 16, 24),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=2,
        attention_head_dim=(2, 4, 4, 8),
        cross_attention_dim=12,
        norm_num_groups=4,
        in_channels=5,
        out_channels=3,
        lora_rank=0,
    ),
}


def _randomise(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = module.state_dict()
    for v in state.values():
        v.copy_(torch.randn(v.shape, generator=g) * 0.2)
    return state


@pytest.mark.parametrize("name", list(CONFIGS))
def test_unet_matches_diffusers(name: str) -> None:
    cfg = CONFIGS[name]
    theirs = _unet_class()(**cfg.diffusers_kwargs()).eval()
    mine = ConditionalUNet(cfg).eval()
    assert sorted(mine.state_dict()) == sorted(theirs.state_dict())
    mine.load_state_dict(_randomise(theirs, 1), strict=True)
    torch.manual_seed(2)
    # Sizes not divisible by the down path's factor: the up path must land on the skip sizes.
    for hw, t in (((16, 24), 999), ((13, 9), 500), ((5, 7), 0)):
        x = torch.randn(2, cfg.in_channels, *hw)
        c = torch.randn(2, 7, cfg.cross_attention_dim)
        tt = torch.full((2,), t)
        with torch.no_grad():
            a = mine(x, tt, encoder_hidden_states=c)
            b = theirs(x, tt, encoder_hidden_states=c).sample
        assert a.shape == b.shape == (2, cfg.out_channels, *hw)
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (hw, (a - b).abs().max().item())


def test_unet_timestep_matters_and_gradients_flow() -> None:
    cfg = CONFIGS["tiny-tae"]
    net = ConditionalUNet(cfg)
    _randomise(net, 3)
    x = torch.randn(1, cfg.in_channels, 8, 8, requires_grad=True)
    c = torch.randn(1, 4, cfg.cross_attention_dim, requires_grad=True)
    a, b = net(x, 999, c), net(x, 10, c)
    assert not torch.allclose(a, b)
    a.square().mean().backward()
    assert x.grad.abs().sum() > 0 and c.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())


def test_which_unet_a_preset_gets() -> None:
    """Without LoRA (small presets): in-project; with LoRA (paper, tiny): diffusers, as before."""
    assert supported(SMALL) and supported(SODEC_PRESETS["tiny-tae"].unet)
    assert not supported(SODEC_PRESETS["paper"].unet) and not supported(SODEC_PRESETS["tiny"].unet)
    assert not supported(dataclasses.replace(SMALL, up_block_types=("UpBlock2D",) * 2 + ("AttnUpBlock2D",)))
    with pytest.raises(ValueError, match="diffusers"):
        ConditionalUNet(SODEC_PRESETS["tiny"].unet)
    p = SODEC_PRESETS["tiny-tae"]
    d = OneStepDiffusion(p.unet, p.vae, p.diffusion, p.latent_decoder)
    assert isinstance(d.unet, ConditionalUNet)
    # Residual prediction starts as the identity: y_0 = y_t.
    y = torch.randn(1, 32, 6, 5)
    assert torch.equal(d.denoise(y, torch.randn(1, 3, p.unet.cross_attention_dim)), y)


@pytest.mark.parametrize("size", [(64, 8, 64, 2, 2), (48, 16, 24, 3, 4)])
def test_vit_matches_timm(size: tuple[int, int, int, int, int]) -> None:
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    s, p, d, depth, heads = size
    theirs = timm_vit.VisionTransformer(
        img_size=s, patch_size=p, embed_dim=d, depth=depth, num_heads=heads, num_classes=0
    ).eval()
    mine = VisionTransformer(s, p, d, depth, heads).eval()
    assert sorted(mine.state_dict()) == sorted(theirs.state_dict())
    mine.load_state_dict(_randomise(theirs, 4), strict=True)
    assert mine.patch_embed.num_patches == theirs.patch_embed.num_patches
    assert mine.num_prefix_tokens == theirs.num_prefix_tokens
    x = torch.randn(2, 3, s, s)
    with torch.no_grad():
        a, b = mine.forward_features(x), theirs.forward_features(x)
    assert a.shape == b.shape == (2, 1 + (s // p) ** 2, d)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
