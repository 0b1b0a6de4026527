"""The small preset's conditional UNet (paper Sec. 3.2: the one-step denoiser), without diffusers.

Why in-project: at paper scale the UNet is SD 2.1's, loaded and LoRA-adapted through diffusers
(``one_step.py``). The small preset trains its UNet from scratch and needs none of that, but
importing diffusers' UNet module costs about 7 s on a 2-core machine (it pulls in
``torch._dynamo``, peft, transformers and every diffusers model: ``python -X importtime``,
docs/design.md), more than the whole decode. A SODEC ``decompress`` has to start in about 3 s
(issue 13), so a UNet without adapters is built here.

What: the architecture of diffusers' ``UNet2DConditionModel`` for SD-2.x-style configs (ResNet
blocks with a time embedding, linear-projection transformer blocks with self- and
cross-attention and a GEGLU feed-forward, a cross-attention mid block, nearest-neighbour
upsampling), written from that architecture's description with the same parameter names, so a
state dict moves between the two unchanged. ``tests/test_unet.py`` loads random weights into both
and checks that their outputs agree on several configs, including odd latent sizes.
:func:`supported` says which :class:`~sodec.config.UNetConfig` this covers; anything else (LoRA,
other block types) is built by diffusers.

Shapes: ``forward(sample (B, C_in, h, w), timestep (B,) or scalar, encoder_hidden_states
(B, T, cross_attention_dim)) -> (B, C_out, h, w)``; any h, w (the up path matches the skip sizes).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import UNetConfig

DOWN_TYPES = ("DownBlock2D", "CrossAttnDownBlock2D")
UP_TYPES = ("UpBlock2D", "CrossAttnUpBlock2D")
RESNET_EPS = 1e-5  # diffusers' UNet2DConditionModel norm_eps default
TRANSFORMER_NORM_EPS = 1e-6  # the GroupNorm in front of each transformer (Transformer2DModel)


def supported(cfg: UNetConfig) -> bool:
    """True when this module builds ``cfg`` exactly: no LoRA adapter, SD-2.x block types."""
    return (
        cfg.lora_rank <= 0
        and cfg.use_linear_projection
        and all(t in DOWN_TYPES for t in cfg.down_block_types)
        and all(t in UP_TYPES for t in cfg.up_block_types)
        and len(cfg.down_block_types) == len(cfg.up_block_types) == len(cfg.block_out_channels)
        and len(cfg.attention_head_dim) == len(cfg.block_out_channels)
    )


def timestep_features(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal features of t: (B,) -> (B, dim), cosines first (``flip_sin_to_cos=True``,
    frequency shift 0, max period 10 000: the SD UNet's settings)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(dim, out)
        self.linear_2 = nn.Linear(out, out)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding added between; 1x1 shortcut if C changes."""

    def __init__(self, c_in: int, c_out: int, temb: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in, eps=RESNET_EPS)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out, eps=RESNET_EPS)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Attention(nn.Module):
    """Multi-head attention, q from x and k, v from ``context`` (x itself for self-attention)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        ctx = x if context is None else context
        b, n, d = x.shape

        def split(t: Tensor) -> Tensor:  # (B, L, d) -> (B, heads, L, d / heads)
            return t.view(b, -1, self.heads, d // self.heads).transpose(1, 2)

        o = F.scaled_dot_product_attention(split(self.to_q(x)), split(self.to_k(ctx)), split(self.to_v(ctx)))
        return self.to_out[0](o.transpose(1, 2).reshape(b, n, d))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x: Tensor) -> Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        # Index 1 is diffusers' dropout slot: kept so the parameter names match.
        self.net = nn.ModuleList([GEGLU(dim, 4 * dim), nn.Identity(), nn.Linear(4 * dim, dim)])

    def forward(self, x: Tensor) -> Tensor:
        return self.net[2](self.net[0](x))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the condition, GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, context_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2D(nn.Module):
    """GroupNorm, linear projection in, one transformer block over the h*w tokens, out, + input."""

    def __init__(self, channels: int, heads: int, context_dim: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=TRANSFORMER_NORM_EPS)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(channels, heads, context_dim)])
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, c, h, w = x.shape
        t = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)  # (B, hw, C)
        t = self.proj_in(t)
        for block in self.transformer_blocks:
            t = block(t, context)
        t = self.proj_out(t)
        return x + t.reshape(b, h, w, c).permute(0, 3, 1, 2)


class Downsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        # Nearest to the next skip's size: 2x, or one less where the down path rounded up.
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class DownBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, temb: int, cfg: UNetConfig, heads: int, attn: bool, down: bool):
        super().__init__()
        n, g = cfg.layers_per_block, cfg.norm_num_groups
        self.resnets = nn.ModuleList([ResnetBlock2D(c_in if j == 0 else c_out, c_out, temb, g) for j in range(n)])
        if attn:
            self.attentions = nn.ModuleList([Transformer2D(c_out, heads, cfg.cross_attention_dim, g) for _ in range(n)])
        else:
            self.attentions = None
        self.downsamplers = nn.ModuleList([Downsample(c_out)]) if down else None

    def forward(self, x: Tensor, temb: Tensor, context: Tensor) -> tuple[Tensor, list[Tensor]]:
        skips = []
        for j, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[j](x, context)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    def __init__(
        self, c_in: int, c_out: int, c_prev: int, temb: int, cfg: UNetConfig, heads: int, attn: bool, up: bool
    ):
        super().__init__()
        n, g = cfg.layers_per_block + 1, cfg.norm_num_groups
        # Layer j takes the previous output (c_prev first, then c_out) and one skip: c_out wide,
        # except the last, whose skip comes from the level above (c_in).
        self.resnets = nn.ModuleList(
            [
                ResnetBlock2D((c_prev if j == 0 else c_out) + (c_in if j == n - 1 else c_out), c_out, temb, g)
                for j in range(n)
            ]
        )
        if attn:
            self.attentions = nn.ModuleList([Transformer2D(c_out, heads, cfg.cross_attention_dim, g) for _ in range(n)])
        else:
            self.attentions = None
        self.upsamplers = nn.ModuleList([Upsample(c_out)]) if up else None

    def forward(
        self, x: Tensor, skips: list[Tensor], size: tuple[int, int] | None, temb: Tensor, context: Tensor
    ) -> Tensor:
        """skips: this block's skip tensors (used last first); size: the next level's (h, w)."""
        for j, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[j](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, size)
        return x


class MidBlock(nn.Module):
    def __init__(self, c: int, temb: int, cfg: UNetConfig, heads: int) -> None:
        super().__init__()
        g = cfg.norm_num_groups
        self.resnets = nn.ModuleList([ResnetBlock2D(c, c, temb, g), ResnetBlock2D(c, c, temb, g)])
        self.attentions = nn.ModuleList([Transformer2D(c, heads, cfg.cross_attention_dim, g)])

    def forward(self, x: Tensor, temb: Tensor, context: Tensor) -> Tensor:
        x = self.resnets[0](x, temb)
        return self.resnets[1](self.attentions[0](x, context), temb)


class ConditionalUNet(nn.Module):
    """SD-2.x-style conditional UNet with diffusers' ``UNet2DConditionModel`` parameter names.

    Args: cfg, a :class:`UNetConfig` for which :func:`supported` holds (else ``ValueError``).
    ``attention_head_dim[i]`` is the number of heads at level i, as in diffusers' SD 2.x configs.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        if not supported(cfg):
            raise ValueError("this UNet config needs diffusers (LoRA or block types not built in-project)")
        self.cfg = cfg
        ch = cfg.block_out_channels
        temb = 4 * ch[0]
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        self.down_blocks = nn.ModuleList()
        c_prev = ch[0]
        for i, kind in enumerate(cfg.down_block_types):
            self.down_blocks.append(
                DownBlock(
                    c_prev,
                    ch[i],
                    temb,
                    cfg,
                    cfg.attention_head_dim[i],
                    attn=kind == "CrossAttnDownBlock2D",
                    down=i < len(ch) - 1,
                )
            )
            c_prev = ch[i]
        self.mid_block = MidBlock(ch[-1], temb, cfg, cfg.attention_head_dim[-1])
        self.up_blocks = nn.ModuleList()
        rch, rheads = ch[::-1], cfg.attention_head_dim[::-1]
        c_out = rch[0]
        for i, kind in enumerate(cfg.up_block_types):
            c_prev, c_out = c_out, rch[i]
            c_in = rch[min(i + 1, len(ch) - 1)]
            self.up_blocks.append(
                UpBlock(
                    c_in,
                    c_out,
                    c_prev,
                    temb,
                    cfg,
                    rheads[i],
                    attn=kind == "CrossAttnUpBlock2D",
                    up=i < len(ch) - 1,
                )
            )
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, ch[0], eps=RESNET_EPS)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    def forward(self, sample: Tensor, timestep: Tensor | int, encoder_hidden_states: Tensor) -> Tensor:
        """sample (B, C_in, h, w), timestep (B,) or scalar, condition (B, T, D) -> (B, C_out, h, w)."""
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(sample.size(0))
        temb = self.time_embedding(timestep_features(t, self.cfg.block_out_channels[0]).to(sample.dtype))
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, s = block(x, temb, encoder_hidden_states)
            skips.extend(s)
        x = self.mid_block(x, temb, encoder_hidden_states)
        for block in self.up_blocks:
            n = len(block.resnets)
            mine = skips[-n:]
            del skips[-n:]
            x = block(x, mine, skips[-1].shape[-2:] if skips else None, temb, encoder_hidden_states)
        return self.conv_out(F.silu(self.conv_norm_out(x)))
