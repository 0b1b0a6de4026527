"""Frozen architecture configs for every part of SODEC, and their JSON form.

Every checkpoint carries the config it was built from (see :mod:`sodec.checkpoint`), so a model is
always rebuilt from its own file, never from hyperparameters retyped elsewhere. Two presets exist
for each part: ``paper`` (the sizes SODEC uses, see docs/design.md) and ``small`` (the same graph
at widths that train and decode on a laptop CPU).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class CodecConfig:
    """HiFiC-style VAE compression module (paper Fig. 2a; HiFiC, Mentzer et al. 2020).

    Encoder: a 7x7 stride-1 conv then four stride-2 convs (16x down), ChannelNorm + ReLU, then a
    3x3 conv to ``latent_channels``. Decoder mirrors it with ``residual_blocks`` residual blocks
    at latent resolution. Mean-scale hyperprior: h_a downsamples 4x more (z at stride 64).
    """

    latent_channels: int = 220  # C: HiFiC's bottleneck width, which SODEC keeps
    encoder_channels: tuple[int, ...] = (60, 120, 240, 480, 960)
    decoder_channels: tuple[int, ...] = (960, 480, 240, 120, 60)
    residual_blocks: int = 9
    hyper_channels: int = 320  # width inside h_a / h_s
    hyper_latent_channels: int = 320  # channels of z
    # Normalisation in g_a / g_s. "channel": HiFiC's ChannelNorm + ReLU (the paper's codec).
    # "gdn": Ballé's GDN in g_a, inverse GDN in g_s, residual blocks without normalisation. At
    # 16-channel full-resolution widths ChannelNorm sets every pixel's feature vector to unit
    # variance, so brightness and saturation survive only in its direction; the small codec
    # trained that way lost whole hues (issue 11; docs/design.md).
    norm: str = "channel"
    # Entropy model of y. "none": the mean-scale hyperprior alone (HiFiC, the paper's codec).
    # "checkerboard": He et al. 2021's two-pass checkerboard context on top of it (as ELIC uses):
    # anchors are coded from the hyperprior, the other half of y also from a masked 5x5
    # convolution of the decoded anchors (VAECodec.context_model; docs/format.md).
    context: str = "none"
    # How g_a, g_s, h_a, h_s (and D_a, built like g_s) pad at the image border: "zeros" (PyTorch's
    # default, the paper's codec) or "replicate" (edge replication, as the image itself is padded
    # to a multiple of 64): a border region then looks to every layer like an interior one and a
    # flat image stays flat through the codec (models/padding.py; issue 11's border checks).
    padding: str = "zeros"

    def __post_init__(self) -> None:
        if self.padding not in ("zeros", "replicate"):
            raise ValueError(f"padding {self.padding!r}: use 'zeros' or 'replicate'")
        if len(self.encoder_channels) != 5 or len(self.decoder_channels) != 5:
            raise ValueError("encoder/decoder need 5 widths (1 full-res + 4 stride-2 stages)")
        if self.norm not in ("channel", "gdn"):
            raise ValueError(f"norm {self.norm!r}: use 'channel' or 'gdn'")
        if self.context not in ("none", "checkerboard"):
            raise ValueError(f"context {self.context!r}: use 'none' or 'checkerboard'")

    @property
    def stride(self) -> int:
        """Pixels per z element along one side: every input is padded to a multiple of it."""
        return 64

    @property
    def latent_stride(self) -> int:
        return 16


CODEC_PRESETS: dict[str, CodecConfig] = {
    "paper": CodecConfig(),
    "small": CodecConfig(
        latent_channels=64,
        # Narrow full-resolution layers: they dominate CPU time (measured 2x faster than 24).
        encoder_channels=(16, 32, 64, 96, 128),
        decoder_channels=(128, 96, 64, 32, 16),
        residual_blocks=3,
        hyper_channels=96,
        hyper_latent_channels=48,
    ),
    # A few channels only: for tests.
    "tiny": CodecConfig(
        latent_channels=8,
        encoder_channels=(4, 8, 8, 8, 8),
        decoder_channels=(8, 8, 8, 8, 4),
        residual_blocks=1,
        hyper_channels=8,
        hyper_latent_channels=4,
    ),
}

# The small codec with GDN (see CodecConfig.norm): what stage 1 trains from now on.
CODEC_PRESETS["small-gdn"] = dataclasses.replace(CODEC_PRESETS["small"], norm="gdn")


@dataclass(frozen=True)
class TransformConfig:
    """Transformation module T_s (paper Fig. 2b): (y_hat, w) at stride 16 -> y_t, 4 ch at stride 8.

    The paper does not publish its layers; ours: 3x3 conv on concat(y_hat, w), residual blocks,
    one 2x pixel-shuffle upsampling, 3x3 conv to the diffusion latent's channels.
    """

    hidden_channels: int = 512
    residual_blocks: int = 2
    out_channels: int = 4


# LoRA targets as in OSEDiff (which SODEC builds on): attention projections, feed-forward and the
# resnet convolutions of the UNet.
LORA_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
)


@dataclass(frozen=True)
class UNetConfig:
    """diffusers ``UNet2DConditionModel`` arguments; the defaults are SD 2.1's (= SD-Turbo's)."""

    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    layers_per_block: int = 2
    # diffusers' historical name: for SD 2.x this is the number of heads per block.
    attention_head_dim: tuple[int, ...] = (5, 10, 20, 20)
    cross_attention_dim: int = 1024
    use_linear_projection: bool = True
    norm_num_groups: int = 32
    sample_size: int = 96
    # Latent channels in and out: SD's VAE has 4, TAEF2 (the small preset's latent space) 32.
    in_channels: int = 4
    out_channels: int = 4
    # LoRA (peft) on the frozen UNet; rank 0 = no adapter, the UNet itself trains (small preset:
    # there is no pretrained prior at that size to keep frozen).
    lora_rank: int = 4
    lora_targets: tuple[str, ...] = LORA_TARGETS

    def diffusers_kwargs(self) -> dict:
        return {
            "sample_size": self.sample_size,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "down_block_types": self.down_block_types,
            "up_block_types": self.up_block_types,
            "block_out_channels": self.block_out_channels,
            "layers_per_block": self.layers_per_block,
            "attention_head_dim": self.attention_head_dim,
            "cross_attention_dim": self.cross_attention_dim,
            "use_linear_projection": self.use_linear_projection,
            "norm_num_groups": self.norm_num_groups,
            "act_fn": "silu",
            "flip_sin_to_cos": True,
            "freq_shift": 0,
        }


@dataclass(frozen=True)
class AutoencoderConfig:
    """diffusers ``AutoencoderKL`` arguments; the defaults are the SD 2.1 VAE's (8x, 4 ch)."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    sample_size: int = 768
    # Self-attention in the mid block (SD's VAE has it). At 1/8 resolution it attends over every
    # latent pixel: 0.17 s of a 0.43 s small-preset decode at 768x512, so the small preset drops it.
    mid_block_attention: bool = True

    def diffusers_kwargs(self) -> dict:
        n = len(self.block_out_channels)
        return {
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ("DownEncoderBlock2D",) * n,
            "up_block_types": ("UpDecoderBlock2D",) * n,
            "block_out_channels": self.block_out_channels,
            "layers_per_block": self.layers_per_block,
            "latent_channels": self.latent_channels,
            "norm_num_groups": self.norm_num_groups,
            "sample_size": self.sample_size,
            "scaling_factor": self.scaling_factor,
            "mid_block_add_attention": self.mid_block_attention,
            "act_fn": "silu",
        }


@dataclass(frozen=True)
class FGMConfig:
    """Fidelity guidance module (paper Fig. 2c): frozen ViT on x_f, trainable projector F_p.

    ``timm_name`` picks a timm architecture (paper preset: DINOv2 ViT-L/14, 1024 wide; the paper
    does not name its ViT); without it a plain timm ``VisionTransformer`` of the given size is
    built. The projector maps the ViT's tokens to ``tokens`` x ``cond_dim`` (SD 2.1's text
    embedding shape, 77 x 1024), which replaces the text condition in cross-attention.
    """

    timm_name: str | None = "vit_large_patch14_dinov2"
    img_size: int = 224
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    tokens: int = 77
    cond_dim: int = 1024
    train_vit: bool = False  # the paper freezes it; the small preset has no pretrained ViT
    # The guidance image x_f that the ViT sees. None (paper): D_a decodes the whole y_hat and x_f is
    # resized to img_size. An int g: D_a decodes y_hat average-pooled to g x g latent cells, a
    # (16g)^2 preview; the align loss then compares it with the area-downsampled original. The
    # ViT only ever sees img_size pixels, so the full-resolution D_a is wasted work at decode
    # time; on the small preset it cost as much as the UNet step (benchmarks/decode_speed.py).
    guidance_size: int | None = None

    @property
    def num_vit_tokens(self) -> int:
        return (self.img_size // self.patch_size) ** 2 + 1  # patches + class token


@dataclass(frozen=True)
class DiffusionConfig:
    """The noise schedule of SD 2.1 and the single denoising step (paper Sec. 3.2)."""

    timestep: int = 999  # SODEC denoises once, at t = 999
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    # "epsilon" (paper): the UNet predicts noise and y_0 follows from the DDPM forward process at
    # t, as SD 2.1 was trained. "residual" (small preset): y_0 = y_t + UNet(y_t, t, c_g). With no
    # pretrained prior to keep, the epsilon form only multiplies the UNet's error by
    # sqrt((1 - abar) / abar) = 14.6 at t = 999; the residual form starts as T_s's latent (the
    # UNet's last layer starts at zero) and the UNet learns the correction. docs/design.md.
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        if self.prediction_type not in ("epsilon", "residual"):
            raise ValueError(f"prediction_type {self.prediction_type!r}: use 'epsilon' or 'residual'")


@dataclass(frozen=True)
class TAEConfig:
    """Widths and depths of a TAESD-style autoencoder (models/taef2.py). The defaults are TAEF2's.

    Levels run from full resolution (level 0) to 1/8 (level 3); each stride-2 step sits between
    two levels. A narrower or shallower decoder for distillation is the same code with another
    config, e.g. ``TAEConfig(width=48, dec_blocks=(3, 3, 2, 0), global_branch_at_1_8=False)``;
    only the default config matches the pretrained files' keys and shapes.
    """

    width: int = 64  # every hidden conv; residual blocks keep it (so no block needs a skip conv)
    latent_channels: int = 32  # FLUX.2's latent width
    image_channels: int = 3
    # Residual blocks per level in the encoder, full resolution first: (1, 3, 3, 3) in TAEF2.
    enc_blocks: tuple[int, int, int, int] = (1, 3, 3, 3)
    # Residual blocks per level in the decoder, 1/8 first: (3, 3, 3, 1) in TAEF2.
    dec_blocks: tuple[int, int, int, int] = (3, 3, 3, 1)
    # Blocks at 1/8 resolution (encoder's last level, decoder's first) carry the global branch:
    # 1x1 conv to 4*width, GroupNorm(4), ReLU, 1x1 conv back; its output is added to the input.
    # GroupNorm pools over the whole image, so a decoder with it decodes a tile differently from
    # the same region inside the whole image; D_m (distilled) goes without it.
    global_branch_at_1_8: bool = True
    global_expand: int = 4  # hidden width of the global branch = global_expand * width
    global_groups: int = 4
    latent_clamp: float = 3.0  # decoder's soft clamp c * tanh(z / c)

    def __post_init__(self) -> None:
        if self.width <= 0 or self.latent_channels <= 0 or self.image_channels <= 0:
            raise ValueError("TAEConfig widths must be positive")
        if len(self.enc_blocks) != 4 or len(self.dec_blocks) != 4 or min(*self.enc_blocks, *self.dec_blocks) < 0:
            raise ValueError("TAEConfig enc_blocks/dec_blocks need 4 non-negative counts (one per level)")
        if (self.global_expand * self.width) % self.global_groups:
            raise ValueError("global branch width must be divisible by global_groups")


@dataclass(frozen=True)
class SodecConfig:
    """The whole SODEC model (paper Fig. 2): codec + fidelity decoder + T_s + UNet + VAE + FGM."""

    codec: CodecConfig = field(default_factory=CodecConfig)
    transform: TransformConfig = field(default_factory=TransformConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    fgm: FGMConfig = field(default_factory=FGMConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    # Paper preset: where the frozen SD UNet/VAE weights come from (a diffusers folder with unet/
    # and vae/, or a hub id). None: they are inside the sodec checkpoint (small preset).
    base_weights: str | None = None
    # Decoded tile size in codec-latent units (x16 px) and overlap; see sodec.tiling.
    tile: int = 64
    tile_overlap: int = 4
    # D_m in TAEF2's latent space (small preset): a TAESD-style decoder of this config replaces
    # the SD VAE (``vae`` is then unused), initialised from / distilled from TAEF2's decoder, and
    # the UNet and T_s work on its 32-channel latent. None: SD's VAE (paper preset).
    latent_decoder: TAEConfig | None = None
    # The latent space's own encoder (training only: target latents, never in a checkpoint).
    latent_space: str = "sd-vae"
    # Border padding of the decoder side: T_s, the UNet and D_m (the codec and D_a follow
    # ``codec.padding``); "zeros" or "replicate" (models/padding.py).
    padding: str = "zeros"

    def __post_init__(self) -> None:
        if self.padding not in ("zeros", "replicate"):
            raise ValueError(f"padding {self.padding!r}: use 'zeros' or 'replicate'")
        if self.latent_space not in ("sd-vae", "taef2"):
            raise ValueError(f"latent_space {self.latent_space!r}: use 'sd-vae' or 'taef2'")
        if (self.latent_space == "taef2") != (self.latent_decoder is not None):
            raise ValueError("latent_space 'taef2' goes with a latent_decoder config, 'sd-vae' without one")
        if self.latent_decoder is not None:
            c = self.latent_decoder.latent_channels
            if not (self.transform.out_channels == self.unet.in_channels == self.unet.out_channels == c):
                raise ValueError(f"T_s and the UNet must work on the latent decoder's {c} channels")


SODEC_PRESETS: dict[str, SodecConfig] = {
    "paper": SodecConfig(base_weights="stabilityai/sd-turbo"),
    # The small preset (issue 11): TAEF2's latent space and a D_m distilled from its decoder in
    # place of an SD VAE trained from scratch; the GDN codec (keeps colour); a residual UNet.
    "small": SodecConfig(
        codec=CODEC_PRESETS["small-gdn"],
        transform=TransformConfig(hidden_channels=128, residual_blocks=2, out_channels=32),
        # No attention at the top level: self-attention over every latent pixel dominates CPU
        # time there; the condition enters at 1/2 and 1/4 of the latent size and mid-block.
        unet=UNetConfig(
            block_out_channels=(64, 128, 128),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            layers_per_block=1,
            attention_head_dim=(2, 4, 4),
            cross_attention_dim=64,
            norm_num_groups=8,
            sample_size=32,
            in_channels=32,
            out_channels=32,
            lora_rank=0,
        ),
        # D_m: TAEF2's decoder without its full-resolution block (3.3 -> 0.77 s at 768x512 on 2
        # threads, channels_last; docs/design.md) and without the image-wide GroupNorm branch, so
        # that a tile decodes like the same region of the whole image. Same width as TAEF2's, so
        # it starts from TAEF2's weights (TAEDecoder.init_from) and is then distilled.
        latent_decoder=TAEConfig(width=64, dec_blocks=(3, 3, 3, 0), global_branch_at_1_8=False),
        latent_space="taef2",
        diffusion=DiffusionConfig(prediction_type="residual"),
        fgm=FGMConfig(
            timm_name=None,
            img_size=64,
            patch_size=8,
            embed_dim=64,
            depth=2,
            num_heads=2,
            tokens=16,
            cond_dim=64,
            train_vit=True,
            guidance_size=4,  # D_a renders a 64x64 preview, the ViT's input size
        ),
    ),
    # A few channels everywhere: for tests.
    "tiny": SodecConfig(
        codec=CODEC_PRESETS["tiny"],
        transform=TransformConfig(hidden_channels=8, residual_blocks=1),
        unet=UNetConfig(
            block_out_channels=(8, 16),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            layers_per_block=1,
            attention_head_dim=(2, 2),
            cross_attention_dim=16,
            norm_num_groups=4,
            sample_size=16,
            lora_rank=2,
        ),
        vae=AutoencoderConfig(
            block_out_channels=(4, 8, 8, 8), layers_per_block=1, norm_num_groups=4, scaling_factor=1.0, sample_size=64
        ),
        fgm=FGMConfig(
            timm_name=None, img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, tokens=8, cond_dim=16
        ),
        tile=16,
    ),
}

# The tiny preset on a TAE latent (tests of the small preset's graph, no pretrained weights).
SODEC_PRESETS["tiny-tae"] = dataclasses.replace(
    SODEC_PRESETS["tiny"],
    transform=TransformConfig(hidden_channels=8, residual_blocks=1, out_channels=32),
    unet=dataclasses.replace(SODEC_PRESETS["tiny"].unet, in_channels=32, out_channels=32, lora_rank=0),
    latent_decoder=TAEConfig(width=8, dec_blocks=(1, 1, 1, 0), global_branch_at_1_8=False),
    latent_space="taef2",
    diffusion=DiffusionConfig(prediction_type="residual"),
)


# ---------------------------------------------------------------------------------------------
# JSON round trip for (nested) frozen dataclasses.


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_json(cfg: Any) -> str:
    return json.dumps({"type": type(cfg).__name__, "config": to_dict(cfg)}, sort_keys=True)


def _coerce(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return from_dict(tp, value)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list for {tp}, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        return tuple(_coerce(a, v) for a, v in zip(args, value, strict=True))
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(inner[0], value)
    if tp in (int, float, str, bool):
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ValueError(f"expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild ``cls`` from :func:`to_dict` output; unknown keys are an error, not ignored."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    kwargs = {k: _coerce(hints[k], v) for k, v in data.items()}
    return cls(**kwargs)


_REGISTRY: dict[str, type] = {}


def register_config(cls: type[T]) -> type[T]:
    _REGISTRY[cls.__name__] = cls
    return cls


def from_json(text: str) -> Any:
    """Inverse of :func:`to_json`; only config classes registered here can be rebuilt."""
    obj = json.loads(text)
    cls = _REGISTRY.get(obj.get("type")) if isinstance(obj, dict) else None
    if cls is None:
        raise ValueError(f"unknown config type {obj.get('type') if isinstance(obj, dict) else obj!r}")
    return from_dict(cls, obj["config"])


for _cls in (
    CodecConfig,
    TransformConfig,
    UNetConfig,
    AutoencoderConfig,
    FGMConfig,
    DiffusionConfig,
    TAEConfig,
    SodecConfig,
):
    register_config(_cls)

__all__ = [
    "CODEC_PRESETS",
    "SODEC_PRESETS",
    "AutoencoderConfig",
    "CodecConfig",
    "DiffusionConfig",
    "FGMConfig",
    "SodecConfig",
    "TAEConfig",
    "TransformConfig",
    "UNetConfig",
    "field",
    "from_dict",
    "from_json",
    "register_config",
    "to_dict",
    "to_json",
]
