"""Transformation module T_s (paper Sec. 3.2, Fig. 2b).

Maps the codec's quantized latent and the hyper-synthesis output into the diffusion model's
latent space, where the one-step UNet treats the result as the noisy latent at t = 999::

    y_hat (B, C, h, w) ─┐
                        ├─ concat ─ conv3x3 ─ residual blocks ─ conv + PixelShuffle(2) ─ conv3x3 ─▶ y_t
    w (B, 2C, h, w) ────┘                                                         (B, 4, 2h, 2w)

The paper gives no layer details (docs/design.md); a small residual upsampler is our choice.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import CodecConfig, TransformConfig
from .vae_codec import ResidualBlock


class TransformationModule(nn.Module):
    def __init__(self, codec: CodecConfig, cfg: TransformConfig) -> None:
        super().__init__()
        c, n = codec.latent_channels, cfg.hidden_channels
        self.head = nn.Conv2d(3 * c, n, 3, padding=1)
        self.body = nn.Sequential(*[ResidualBlock(n) for _ in range(cfg.residual_blocks)])
        self.up = nn.Sequential(nn.Conv2d(n, 4 * (n // 2), 3, padding=1), nn.PixelShuffle(2), nn.SiLU())
        self.tail = nn.Conv2d(n // 2, cfg.out_channels, 3, padding=1)

    def forward(self, y_hat: Tensor, w: Tensor) -> Tensor:
        """(B, C, h, w), (B, 2C, h, w) -> y_t (B, 4, 2h, 2w)."""
        h = self.head(torch.cat([y_hat, w], dim=1))
        return self.tail(self.up(h + self.body(h)))
