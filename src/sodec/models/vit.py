"""A plain ViT encoder for the small preset's fidelity guidance module (paper Sec. 3.3), without timm.

Why in-project: the paper preset's FGM encoder is a pretrained timm ViT (DINOv2), and timm stays
its loader. The small preset trains a two-block ViT from scratch, and importing timm costs about
2 s (it imports torchvision), a large part of a SODEC ``decompress`` that has to start in about
3 s (issue 13).

What: the architecture of timm's ``VisionTransformer`` with its defaults (class token, learned
position embedding over class + patch tokens, pre-norm blocks with qkv-bias attention and a GELU
MLP of ratio 4, LayerNorm eps 1e-6, a final norm), written from that description with timm's
parameter names, so a state dict moves between the two unchanged; ``tests/test_unet.py`` checks
that ``forward_features`` agrees with timm's on the same weights.

Shapes: ``forward_features(x (B, 3, S, S)) -> (B, 1 + (S / patch)^2, embed_dim)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LN_EPS = 1e-6


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch: int, dim: int) -> None:
        super().__init__()
        self.num_patches = (img_size // patch) ** 2
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT with timm's parameter names; ``num_prefix_tokens`` = 1 (the class token)."""

    num_prefix_tokens = 1

    def __init__(self, img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        # timm's default ("jax"-free) init for a ViT trained from scratch: linear layers
        # truncated-normal with std 0.02 and zero bias.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """x: (B, 3, S, S), normalised as the caller trained it -> tokens (B, 1 + N, D)."""
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(t.size(0), -1, -1), t], dim=1) + self.pos_embed
        for block in self.blocks:
            t = block(t)
        return self.norm(t)
