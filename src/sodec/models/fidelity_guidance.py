"""Fidelity guidance module (FGM, paper Sec. 3.3, Fig. 2c).

The fidelity decoder D_a turns y_hat into a preliminary image x_f; a ViT encodes x_f and the
projector F_p maps its tokens to the UNet's cross-attention condition c_g, which takes the place
of the text embedding, steering the one-step output toward the original::

    x_f (B, 3, H, W) ─ resize to img_size ─ ImageNet norm ─ ViT ─▶ (B, N, D) ─ F_p ─▶ c_g (B, T, cond_dim)

F_p: LayerNorm + MLP over channels (D -> cond_dim), then a learned linear mix over tokens
(N -> T; T = 77 in the paper preset, SD 2.1's text length). The ViT is timm's at paper scale,
models/vit.py's (the same architecture and parameter names) in the small preset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import FGMConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_vit(cfg: FGMConfig) -> nn.Module:
    """The ViT returning token features; random init, weights loaded later.

    ``cfg.timm_name`` set (paper preset, a pretrained architecture): timm's model with
    ``num_classes=0``. Unset (small preset, trained from scratch): the in-project plain ViT
    (models/vit.py, timm's parameter names), which spares a decode timm's import.
    """
    if cfg.timm_name is not None:
        import timm

        return timm.create_model(cfg.timm_name, pretrained=False, num_classes=0, img_size=cfg.img_size)
    from .vit import VisionTransformer

    return VisionTransformer(cfg.img_size, cfg.patch_size, cfg.embed_dim, cfg.depth, cfg.num_heads)


class Projector(nn.Module):
    """F_p: (B, N, D) ViT tokens -> (B, T, cond_dim) condition."""

    def __init__(self, n_in: int, d_in: int, n_out: int, d_out: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_in)
        self.mlp = nn.Sequential(nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out))
        self.mix = nn.Linear(n_in, n_out)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.mlp(self.norm(tokens))  # (B, N, d_out)
        return self.mix(h.transpose(1, 2)).transpose(1, 2)  # (B, T, d_out)


class FidelityGuidance(nn.Module):
    def __init__(self, cfg: FGMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vit = build_vit(cfg)
        n_tokens = self.vit.patch_embed.num_patches + getattr(self.vit, "num_prefix_tokens", 1)
        self.projector = Projector(n_tokens, cfg.embed_dim, cfg.tokens, cfg.cond_dim)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x_f: Tensor) -> Tensor:
        """x_f: (B, 3, H, W) in [0, 1] -> c_g: (B, tokens, cond_dim)."""
        s = self.cfg.img_size
        # The ViT has a fixed input size; any image is resized to it (guidance only, the decoded
        # pixels are never resized).
        # float32 even under bf16 autocast: the antialiased resize has no bf16 backward on CPU.
        with torch.autocast(x_f.device.type, enabled=False):
            x = F.interpolate(x_f.float(), size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        tokens = self.vit.forward_features((x - self.mean) / self.std)  # (B, N, D)
        return self.projector(tokens)
