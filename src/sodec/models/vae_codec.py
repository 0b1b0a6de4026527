"""VAE compression module: SODEC's learned codec (paper Sec. 3.1, Fig. 2a).

SODEC starts from HiFiC's codec (Mentzer et al., 2020): a 16x-downsampling analysis transform,
a mean-scale hyperprior whose hyper-latent z sits at stride 64, and a generator-style synthesis
transform. We keep that graph and code both latents with CompressAI's entropy models and rANS
coder::

        x ──g_a──▶ y ──h_a──▶ z ──Q──▶ z_hat ──▶ [EntropyBottleneck] ──▶ z bytes
                   │                      │
                   │                 h_s (float64)
                   │                      ▼
                   │               w = (scales, means)  (2C channels, stride 16)
                   └──Q(y - means)+means─▶ y_hat ──▶ [GaussianConditional(w)] ──▶ y bytes
                                          │
                                         g_s ──▶ x_vae  (SODEC's preliminary reconstruction)

Determinism: the decoder must derive exactly the encoder's CDF indexes and means from z_hat.
h_s therefore runs in float64 (rounded to float32 once at the end) so that summation-order
differences between thread counts or batch sizes stay ~1e-16 relative and vanish in that
rounding; a CRC of the integer symbols travels in the file so any remaining mismatch is
refused (DesyncError) instead of decoding to a wrong image. See docs/design.md.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..config import CodecConfig
from ..tiling import tiled_analysis, tiled_decode, tiled_upsample

# CompressAI's entropy models and rANS coder, imported without its point-cloud/torch_geometric
# subpackages (seconds of start-up): the same modules, so the same bitstreams. See _compressai.py.
from ._compressai import (
    GDN,
    BufferedRansEncoder,
    CheckerboardMaskedConv2d,
    CompressionModel,
    EntropyBottleneck,
    GaussianConditional,
    RansDecoder,
    conv,
    deconv,
)
from .padding import set_padding

# Encoding in tiles (VAECodec.analysis): cores of 64 latents (1024 px) computed from windows that
# reach 4 latents (64 px) further. g_a's receptive-field radius is 34 px (3 from the 7x7 conv,
# then 1 + 2 + 4 + 8 from the four stride-2 3x3 convs and 16 from the last 3x3 conv at stride 16),
# so the margin covers it and tiled latents equal untiled ones up to float summation order.
ENCODE_TILE, ENCODE_MARGIN = 64, 4
# The checkerboard context model likewise (VAECodec._context), in both encoder and decoder: cores
# of 64 latents, windows 2 latents wider (the masked 5x5 conv's radius; its parameter net is 1x1).
CONTEXT_TILE, CONTEXT_MARGIN = 64, 2

# CompressAI's default Gaussian scale table (64 log-spaced scales in [0.11, 256]).
SCALES_MIN, SCALES_MAX, SCALES_LEVELS = 0.11, 256.0, 64


def scale_table() -> Tensor:
    return torch.exp(torch.linspace(np.log(SCALES_MIN), np.log(SCALES_MAX), SCALES_LEVELS))


class ChannelNorm2d(nn.Module):
    """HiFiC's ChannelNorm: normalise each pixel over channels (no batch statistics).

    Unlike BatchNorm it behaves the same in training and at test time and for any batch size,
    which a codec needs; unlike GroupNorm it does not mix spatial positions, so tiles decode
    like the whole image.
    """

    def __init__(self, channels: int, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, keepdim=True, unbiased=False)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class ResidualBlock(nn.Module):
    """x + conv(act(norm(conv(x)))) at latent resolution; ``norm=False`` for the GDN codec."""

    def __init__(self, channels: int, norm: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, channels, 3, padding=1)]
        layers += [ChannelNorm2d(channels), nn.ReLU(inplace=True)] if norm else [nn.LeakyReLU(inplace=True)]
        layers.append(nn.Conv2d(channels, channels, 3, padding=1))
        if norm:
            layers.append(ChannelNorm2d(channels))
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def unit_gain_init(module: nn.Module) -> None:
    """Initialise every conv of ``module`` to keep its input's variance (weights N(0, 1/fan_in)).

    PyTorch's default conv init (kaiming-uniform with a = sqrt(5)) has variance 1/(3 fan_in), so
    each layer shrinks the signal by about sqrt(3): through g_a and g_s (12 convs in the small
    preset) the image reaches the output attenuated ~1000x and the network starts as a constant.
    Adam then grows the gain by about lr per step and layer, and colour, the largest-scale signal,
    was learned last: a GDN codec trained 300 steps on eight flat colours still decoded (30, 160,
    60) as grey; with this init it fits them in ~75 steps (benchmarks/overfit_flat_colours.py,
    docs/design.md). Gain 1, not He's sqrt(2): GDN is not a ReLU, and inverse GDN grows with its
    input, so He's gain overflowed. A transposed conv of stride s has fan_in C_in k^2 / s^2.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            k = layer.kernel_size[0] * layer.kernel_size[1]
            if isinstance(layer, nn.ConvTranspose2d):
                fan_in = layer.in_channels * k / (layer.stride[0] * layer.stride[1])
            else:
                fan_in = layer.in_channels // layer.groups * k
            nn.init.normal_(layer.weight, 0.0, (1.0 / fan_in) ** 0.5)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def analysis_transform(cfg: CodecConfig) -> nn.Sequential:
    """g_a: (B, 3, H, W) -> (B, C, H/16, W/16); ChannelNorm + ReLU or GDN after each conv."""
    ch = cfg.encoder_channels

    def act(c: int) -> list[nn.Module]:
        return [GDN(c)] if cfg.norm == "gdn" else [ChannelNorm2d(c), nn.ReLU()]

    layers: list[nn.Module] = [nn.Conv2d(3, ch[0], 7, padding=3), *act(ch[0])]
    for cin, cout in itertools.pairwise(ch):
        layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), *act(cout)]
    layers.append(nn.Conv2d(ch[-1], cfg.latent_channels, 3, padding=1))
    return nn.Sequential(*layers)


def synthesis_transform(cfg: CodecConfig) -> nn.Sequential:
    """g_s (and SODEC's fidelity decoder D_a): (B, C, h, w) -> (B, 3, 16h, 16w).

    "channel": HiFiC's layout (ChannelNorm + ReLU); "gdn": inverse GDN after each upsampling
    and residual blocks without normalisation (Ballé et al. 2018's synthesis with HiFiC's blocks).
    """
    ch = cfg.decoder_channels
    gdn = cfg.norm == "gdn"
    layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)]
    if not gdn:
        layers.append(ChannelNorm2d(ch[0]))
    layers += [ResidualBlock(ch[0], norm=not gdn) for _ in range(cfg.residual_blocks)]
    for cin, cout in itertools.pairwise(ch):
        layers.append(nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1))
        layers += [GDN(cout, inverse=True)] if gdn else [ChannelNorm2d(cout), nn.ReLU()]
    layers.append(nn.Conv2d(ch[-1], 3, 7, padding=3))
    return set_padding(nn.Sequential(*layers), cfg.padding)


def hyper_analysis(cfg: CodecConfig) -> nn.Sequential:
    """h_a: (B, C, h, w) -> (B, Z, h/4, w/4)."""
    n = cfg.hyper_channels
    return nn.Sequential(
        conv(cfg.latent_channels, n, stride=1, kernel_size=3),
        nn.LeakyReLU(inplace=True),
        conv(n, n, stride=2, kernel_size=5),
        nn.LeakyReLU(inplace=True),
        conv(n, cfg.hyper_latent_channels, stride=2, kernel_size=5),
    )


def hyper_synthesis(cfg: CodecConfig) -> nn.Sequential:
    """h_s: (B, Z, h/4, w/4) -> w = (B, 2C, h, w), the scales and means of y."""
    n = cfg.hyper_channels
    return nn.Sequential(
        deconv(cfg.hyper_latent_channels, n, stride=2, kernel_size=5),
        nn.LeakyReLU(inplace=True),
        deconv(n, n * 3 // 2, stride=2, kernel_size=5),
        nn.LeakyReLU(inplace=True),
        conv(n * 3 // 2, cfg.latent_channels * 2, stride=1, kernel_size=3),
    )


class CheckerboardContext(nn.Module):
    """Checkerboard context model (He et al. 2021, "Checkerboard Context Model for Efficient
    Learned Image Compression", CVPR; the spatial half of ELIC's, He et al. 2022).

    y's positions with even row + column are the *anchors*: coded first, from the hyperprior
    alone. The others are coded next, also from a masked 5x5 convolution of the decoded anchors
    (CompressAI's ``CheckerboardMaskedConv2d``), so decoding takes two parallel passes instead of
    an autoregressive scan. The parameter network is pointwise and predicts a residual on the
    hyperprior's w = (scales, means); its last layer starts at zero, so a context added to a
    trained codec starts as exactly that codec's entropy model (and is then fitted, codec frozen:
    configs/codec-context.toml). Like h_s it runs in float64 (VAECodec._context).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        c2 = 2 * channels
        self.context = CheckerboardMaskedConv2d(channels, c2, kernel_size=5, padding=2)
        self.params = nn.Sequential(
            nn.Conv2d(2 * c2, 3 * channels, 1),
            nn.GELU(),
            nn.Conv2d(3 * channels, 3 * channels, 1),
            nn.GELU(),
            nn.Conv2d(3 * channels, c2, 1),
        )
        nn.init.zeros_(self.params[-1].weight)
        nn.init.zeros_(self.params[-1].bias)

    @staticmethod
    def anchor_mask(h: int, w: int, device: torch.device | None = None) -> Tensor:
        """(1, 1, h, w) bool, True at the anchors ((row + col) even), which are decoded first."""
        r, c = torch.arange(h, device=device), torch.arange(w, device=device)
        return ((r[:, None] + c[None]) % 2 == 0)[None, None]

    def forward(self, y_hat_anchors: Tensor | None, w: Tensor) -> Tensor:
        """(scales, means) (B, 2C, h, w) from w (B, 2C, h, w) and, for the non-anchors, the
        decoded anchors (B, C, h, w; zero elsewhere). ``None``: the anchors' parameters."""
        ctx = torch.zeros_like(w) if y_hat_anchors is None else self.context(y_hat_anchors)
        return w + self.params(torch.cat([ctx, w], 1))


@dataclass
class CodecOutput:
    """What :meth:`VAECodec.forward` returns (training and evaluation)."""

    x_hat: Tensor  # (B, 3, H, W) preliminary reconstruction x_vae
    y_hat: Tensor  # (B, C, H/16, W/16) quantized latent (straight-through in training)
    w: Tensor  # (B, 2C, H/16, W/16) hyper-synthesis output, input of the transformation module
    likelihoods: dict[str, Tensor]  # "y", "z": per-element likelihoods


@dataclass
class CodecStreams:
    """The codec's bitstreams for one image and the checksum of the symbols they hold."""

    y: bytes
    z: bytes
    symbols_crc: int  # CRC-32 over the int32 symbols of z then y (little-endian)
    latent_hw: tuple[int, int]  # (h, w) of y_hat; z is (h/4, w/4)


@dataclass
class CodecDecoded:
    """What :meth:`VAECodec.decompress` returns."""

    y_hat: Tensor  # (1, C, h, w)
    w: Tensor  # (1, 2C, h, w)
    x_vae: Tensor | None  # (1, 3, 16h, 16w), None when synthesis was skipped (tiled decode)


_FILL_TABLES = True


@contextmanager
def tables_from_checkpoint() -> Iterator[None]:
    """Build codecs whose CDF tables a checkpoint will fill (``load_state_dict`` resizes and
    loads them): computing them first costs the scipy.stats import (about 0.5 s of start-up,
    see sodec.models._compressai) for tables that are thrown away."""
    global _FILL_TABLES
    before, _FILL_TABLES = _FILL_TABLES, False
    try:
        yield
    finally:
        _FILL_TABLES = before


def _unit_float(x: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [0, 1] the way :func:`sodec.api.to_tensor` does; float passes."""
    return x.float().div(255.0) if x.dtype == torch.uint8 else x


def _symbols_crc(*symbols: Tensor) -> int:
    crc = 0
    for s in symbols:
        crc = zlib.crc32(s.to(torch.int32).cpu().numpy().astype("<i4").tobytes(), crc)
    return crc


class VAECodec(CompressionModel):
    """The learned codec: ``forward`` (likelihoods), ``compress`` (bytes), ``decompress``."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.coded_bits: Tensor | None = None  # set by encode_latents in training
        self.cfg = cfg
        self.g_a = analysis_transform(cfg)
        self.g_s = synthesis_transform(cfg)
        if cfg.norm == "gdn":
            # ChannelNorm renormalises every layer; GDN does not, so the init must keep the gain.
            unit_gain_init(self.g_a)
            unit_gain_init(self.g_s)
        self.h_a = hyper_analysis(cfg)
        self.h_s = hyper_synthesis(cfg)
        self.entropy_bottleneck = EntropyBottleneck(cfg.hyper_latent_channels)
        self.gaussian_conditional = GaussianConditional(None)
        self.context_model = CheckerboardContext(cfg.latent_channels) if cfg.context == "checkerboard" else None
        for part in (self.g_a, self.h_a, self.h_s):  # g_s: synthesis_transform sets it
            set_padding(part, cfg.padding)
        # The scale table lives in the checkpoint; fill it now so a fresh model can code too,
        # unless a checkpoint's tables are about to replace it (tables_from_checkpoint).
        if _FILL_TABLES:
            self.gaussian_conditional.update_scale_table(scale_table(), force=True)

    # Entropy-table buffers, whose sizes depend on the weights they were built from.
    _TABLES = ("_quantized_cdf", "_offset", "_cdf_length")
    _CONSTANT = "likelihood_lower_bound.bound"

    def load_state_dict(self, state_dict, strict: bool = True):  # type: ignore[override]
        """CompressAI's loader, with entropy tables resized to the checkpoint's whatever they held.

        CompressAI resizes only empty table buffers; a codec whose tables were already built (a
        fresh model, or one inside a SODEC checkpoint loaded before) would refuse another
        checkpoint's tables of a different length.
        """
        own = dict(self.named_buffers())
        # The entropy models' likelihood floor (1e-9) is a constant of their construction, not
        # learned, and the shipped checkpoints up to sodec 0.2 hold it as 0 (it went through a
        # float16 round trip). Coding never reads it, but training does: with a floor of 0 one
        # latent far from its predicted mean makes the rate infinite and the step NaN. So the
        # model keeps its own value.
        state_dict = {
            k: own[k].clone() if k.endswith(self._CONSTANT) and k in own else v for k, v in state_dict.items()
        }
        for key, value in state_dict.items():
            if key.rsplit(".", 1)[-1] in self._TABLES and key in own and own[key].shape != value.shape:
                own[key].resize_(value.shape)
        return super().load_state_dict(state_dict, strict=strict)

    # -- shared pieces -------------------------------------------------------------------------

    def hyper_synthesis(self, z_hat: Tensor) -> Tensor:
        """w = h_s(z_hat), computed in float64 and rounded to float32 once (see module doc).

        z_hat: (B, Z, h/4, w/4) -> w: (B, 2C, h, w). Past 16 z cells (1024 px) a side it runs in
        tiles with a 4-cell margin (h_s's receptive-field radius is about 2 cells): float64
        transposed convolutions on the CPU go through a column buffer of Cout*25 values per input
        cell, 0.5 GB for a 12 MP image. Encoder and decoder tile alike, so they agree.
        """
        tensors = {k: v.double() for k, v in self.h_s.state_dict(keep_vars=True).items()}
        w = tiled_upsample(lambda t: functional_call(self.h_s, tensors, (t.double(),)).float(), z_hat, 4, 16, 4)
        return w

    @staticmethod
    def split_params(w: Tensor) -> tuple[Tensor, Tensor]:
        scales, means = w.chunk(2, dim=1)
        return scales, means

    def _context(self, y_hat_anchors: Tensor | None, w: Tensor) -> Tensor:
        """The context model in float64, rounded to float32 once: encoder and decoder must agree
        on every CDF index and mean it gives, as for h_s (module doc).

        y_hat_anchors: (B, C, h, w) or None; w: (B, 2C, h, w) -> (B, 2C, h, w). Past
        :data:`CONTEXT_TILE` latents a side it runs in tiles with a :data:`CONTEXT_MARGIN` margin
        (the masked 5x5 conv's radius is 2; the rest is pointwise): in float64 its activations
        (4C channels per latent) peaked at 0.7 GB for a 12 MP image, more than g_a's tiles.
        Encoder and decoder tile alike, so they agree; a latent that fits one tile (images up
        to 1024 px a side, and every training crop) is one call, as before tiling.
        """
        assert self.context_model is not None
        tensors = {k: v.double() for k, v in self.context_model.state_dict(keep_vars=True).items()}
        n_w = w.size(1)

        def run(t: Tensor) -> Tensor:  # t: (B, 2C [+ C], h', w') = [w, anchors] along channels
            t = t.double()
            anchors = t[:, n_w:] if t.size(1) > n_w else None
            return functional_call(self.context_model, tensors, (anchors, t[:, :n_w])).float()

        packed = w if y_hat_anchors is None else torch.cat([w, y_hat_anchors.to(w.dtype)], 1)
        return tiled_upsample(run, packed, 1, CONTEXT_TILE, CONTEXT_MARGIN)

    def entropy_params(self, y: Tensor, w: Tensor) -> Tensor:
        """The (scales, means) (B, 2C, h, w) each element of y (B, C, h, w) is coded with.

        Without a context model that is w = h_s(z_hat). With the checkerboard context
        (:class:`CheckerboardContext`) the anchors keep their parameters from w alone and the
        other positions get them from w and the anchors rounded as the decoder sees them
        (straight-through in training, as :meth:`encode_latents` rounds y).
        """
        if self.context_model is None:
            return w
        anchor = CheckerboardContext.anchor_mask(*y.shape[-2:], device=y.device)  # (1, 1, h, w)
        p_anchor = self._context(None, w)
        means = self.split_params(p_anchor)[1]
        y_round = torch.round(y - means) + means
        y_hat = y + (y_round - y).detach() if self.training else y_round
        return torch.where(anchor, p_anchor, self._context(torch.where(anchor, y_hat, 0.0), w))

    # -- training / evaluation -----------------------------------------------------------------

    def encode_latents(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """x: (B, 3, H, W) in [0, 1], H, W multiples of 64 -> (y_hat, w, likelihoods).

        y_hat equals what :meth:`decompress` returns for the same image in eval mode.
        """
        y = self.g_a(x)
        z = self.h_a(y)
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        w = self.hyper_synthesis(z_hat)
        scales, means = self.split_params(self.entropy_params(y, w))
        _, y_likelihoods = self.gaussian_conditional(y, scales, means=means)
        # The decoder sees hard-rounded latents even in training (straight-through), so what it
        # learns on is what it will get from the bitstream; the rate uses the noisy proxy.
        y_round = self.gaussian_conditional.quantize(y, "dequantize", means)
        y_hat = y + (y_round - y).detach() if self.training else y_round
        if self.training:
            # What the entropy coder would spend on these latents (rounded symbols, not the
            # noisy proxy): a rate target is steered by this, since the proxy can be far off
            # at low rates. No gradient; it rides along for the trainer to read.
            with torch.no_grad():
                _, y_lh = self.gaussian_conditional(y, scales, means=means, training=False)
                _, z_lh = self.entropy_bottleneck(z, training=False)
                self.coded_bits = -(torch.log2(y_lh).sum() + torch.log2(z_lh).sum())
        return y_hat, w, {"y": y_likelihoods, "z": z_likelihoods}

    def forward(self, x: Tensor) -> CodecOutput:
        """x: (B, 3, H, W) in [0, 1], H and W multiples of 64."""
        y_hat, w, likelihoods = self.encode_latents(x)
        return CodecOutput(self.g_s(y_hat), y_hat, w, likelihoods)

    # -- bitstreams ----------------------------------------------------------------------------

    @torch.no_grad()
    def compress(self, x: Tensor) -> CodecStreams:
        """x: (1, 3, H, W), float in [0, 1] or uint8 in [0, 255], H and W multiples of 64 -> the
        two streams. A uint8 image is converted tile by tile (bounded memory for large images)."""
        if x.dim() != 4 or x.size(0) != 1:
            raise ValueError("compress codes one image at a time: expected (1, 3, H, W)")
        y = self.analysis(x)
        z = self.h_a(y)
        z_string = self.entropy_bottleneck.compress(z)[0]
        z_hat = self.entropy_bottleneck.decompress([z_string], z.shape[-2:])
        scales, means = self.split_params(self.entropy_params(y, self.hyper_synthesis(z_hat)))
        indexes = self.gaussian_conditional.build_indexes(scales)
        symbols = self.gaussian_conditional.quantize(y, "symbols", means)
        if self.context_model is None:
            y_string = self.gaussian_conditional.compress(y, indexes, means=means)[0]
        else:
            # One rANS stream: all anchors first, then the rest (each in (channel, row, col)
            # order), so the decoder can decode the anchors before it needs the others' CDFs.
            anchor = CheckerboardContext.anchor_mask(y.size(2), y.size(3))[0, 0]
            encoder, tables = BufferedRansEncoder(), self._tables()
            for part in (anchor, ~anchor):
                encoder.encode_with_indexes(
                    symbols[0][:, part].reshape(-1).tolist(), indexes[0][:, part].reshape(-1).tolist(), *tables
                )
            y_string = encoder.flush()
        crc = _symbols_crc(self._z_symbols(z_hat), symbols)
        return CodecStreams(y_string, z_string, crc, (y.size(2), y.size(3)))

    def _tables(self) -> tuple[list, list, list]:
        """GaussianConditional's CDF tables as the rANS coder takes them."""
        gc = self.gaussian_conditional
        return (
            gc._quantized_cdf.tolist(),
            gc._cdf_length.reshape(-1).int().tolist(),
            gc._offset.reshape(-1).int().tolist(),
        )

    def analysis(self, x: Tensor, tile: int | None = None) -> Tensor:
        """y = g_a(x) for coding, in tiles of ``tile`` latents past one tile (bounded memory).

        x: (1, 3, H, W) float in [0, 1] or uint8, H and W multiples of 64 -> y: (1, C, H/16, W/16). An image up
        to ``16 * tile`` px on each side is transformed in one call, as :meth:`forward` does.
        """
        return tiled_analysis(lambda t: self.g_a(_unit_float(t)), x, 16, tile or ENCODE_TILE, ENCODE_MARGIN)

    def _z_symbols(self, z_hat: Tensor) -> Tensor:
        medians = self.entropy_bottleneck._get_medians().detach().reshape(1, -1, 1, 1)
        return torch.round(z_hat - medians)

    @torch.no_grad()
    def decompress_latent(self, y: bytes, z: bytes, latent_hw: tuple[int, int]) -> tuple[Tensor, Tensor, int]:
        """Bytes -> (y_hat, w, crc of the decoded symbols). No synthesis."""
        h, w_ = latent_hw
        if h % 4 or w_ % 4:
            raise ValueError("latent size must be a multiple of 4 (images padded to 64)")
        z_hat = self.entropy_bottleneck.decompress([z], (h // 4, w_ // 4))
        w = self.hyper_synthesis(z_hat)
        if self.context_model is not None:
            return self._decompress_checkerboard(y, w, z_hat)
        scales, means = self.split_params(w)
        indexes = self.gaussian_conditional.build_indexes(scales)
        y_hat = self.gaussian_conditional.decompress([y], indexes, means=means)
        crc = _symbols_crc(self._z_symbols(z_hat), torch.round(y_hat - means))
        return y_hat, w, crc

    def _decompress_checkerboard(self, y: bytes, w: Tensor, z_hat: Tensor) -> tuple[Tensor, Tensor, int]:
        """The two passes of :meth:`compress`'s checkerboard stream: anchors, then the rest."""
        c, (h, w_) = self.cfg.latent_channels, w.shape[-2:]
        anchor = CheckerboardContext.anchor_mask(h, w_)[0, 0]
        decoder = RansDecoder()
        decoder.set_stream(y)
        symbols = torch.zeros(c, h, w_, dtype=torch.int32)
        tables = self._tables()

        def decode(part: Tensor, params: Tensor) -> Tensor:
            scales, means = self.split_params(params)
            indexes = self.gaussian_conditional.build_indexes(scales)[0][:, part]
            values = decoder.decode_stream(indexes.reshape(-1).tolist(), *tables)
            symbols[:, part] = torch.tensor(values, dtype=torch.int32).reshape(c, -1)
            return means

        p_anchor = self._context(None, w)
        y_hat_anchors = torch.where(anchor, symbols[None] + decode(anchor, p_anchor), 0.0)
        params = torch.where(anchor, p_anchor, self._context(y_hat_anchors, w))
        y_hat = symbols[None] + decode(~anchor, params)
        return y_hat, w, _symbols_crc(self._z_symbols(z_hat), symbols)

    @torch.no_grad()
    def decompress(self, streams: CodecStreams, synthesize: bool = True) -> CodecDecoded:
        """Streams -> y_hat and the preliminary reconstruction x_vae = g_s(y_hat).

        Raises :class:`~sodec.errors.DesyncError` when the decoded symbols' CRC differs from the
        one the encoder recorded.
        """
        from ..errors import DesyncError

        y_hat, w, crc = self.decompress_latent(streams.y, streams.z, streams.latent_hw)
        if crc != streams.symbols_crc:
            raise DesyncError(
                "decoded symbols do not match the encoder's (entropy-decoder desync); refusing to produce a wrong image"
            )
        x_vae = self.g_s(y_hat).clamp_(0, 1) if synthesize else None
        return CodecDecoded(y_hat, w, x_vae)

    @torch.no_grad()
    def reconstruct(self, y_hat: Tensor, w: Tensor, tile: int | None = None) -> Tensor:
        """The standalone codec's decoder x_vae = g_s(y_hat), tiled past ``tile`` latents
        (default 64 = 1024 px, 4-latent overlap) so memory stays bounded at any size."""
        return tiled_decode(lambda y: self.g_s(y).clamp(0, 1), (y_hat,), 16, tile or 64, 4)
