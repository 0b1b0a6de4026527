"""Training losses: rate from likelihoods, distortion terms, SODEC's alignment loss.

Loss networks (LPIPS, DISTS, discriminators) live here, never inside a model, so they never land in
a model checkpoint. A perceptual term whose backbone weights are absent is dropped with one
warning: training still runs (the paper's d = k_M MSE + k_P LPIPS degrades to MSE).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import WeightsError


def bits(likelihoods: Mapping[str, Tensor]) -> Tensor:
    """Total estimated bits (-log2 likelihood) over all latents (an estimate, not file bytes)."""
    return sum((-torch.log(lk).sum() / math.log(2)) for lk in likelihoods.values())  # type: ignore[return-value]


def bpp(likelihoods: Mapping[str, Tensor], num_pixels: int) -> Tensor:
    return bits(likelihoods) / num_pixels


def mse255(x_hat: Tensor, x: Tensor) -> Tensor:
    """MSE on the 0..255 scale: the unit CompressAI's lambda values are quoted in."""
    return F.mse_loss(x_hat, x) * 255.0**2


BORDER_RING = 16  # px: the ring benchmarks/quality_checks.py's border check compares with the interior


def border_mse255(x_hat: Tensor, x: Tensor, ring: int = BORDER_RING) -> Tensor:
    """MSE (0..255 scale) over the outer ``ring`` pixels of each (B, 3, H, W) crop only.

    Every convolution zero-pads at a crop's edge, which is where the network meets an image's
    edge, and the encoder spends few bits there: the shipped small models' 16-px ring decodes
    2.3-2.7 dB worse than the interior (issue 11's border check, goal <= 1 dB). Added to ``mse``
    with its own weight, this term raises the weight of the ring's pixels in the distortion, so
    the rate-distortion trade moves bits and capacity toward the edge.
    """
    h, w = x.shape[-2:]
    if h <= 2 * ring or w <= 2 * ring:
        return mse255(x_hat, x)
    mask = torch.ones(h, w, dtype=torch.bool, device=x.device)
    mask[ring:-ring, ring:-ring] = False
    return ((x_hat - x)[..., mask] ** 2).mean() * 255.0**2


GRID_PERIOD = 16


def grid_energy255(x_hat: Tensor, x: Tensor, period: int = GRID_PERIOD) -> Tensor:
    """Mean squared periodic part of the luminance error, in (0-255 levels)^2: the error (channel
    mean, like benchmarks/quality_checks.grid_peak) averaged over all ``period`` x ``period``
    cells of the crop at each phase, less its mean. A pattern locked to the codec's 16-px stride
    or the 8-px latent grid (and their harmonics) survives the average; content does not (its
    part shrinks as 1/cells). Shapes: (B, 3, H, W) in [0, 1] -> scalar; H, W are cropped to
    multiples of ``period``.

    Why: a joint leg weighted towards LPIPS/DISTS drew a dotted texture on the 8-px grid over
    kodim16's sky (configs/sodec-small-q1-joint2.toml); MSE sees it only as a little noise.
    """
    h, w = x.shape[-2] // period * period, x.shape[-1] // period * period
    e = (x_hat[..., :h, :w] - x[..., :h, :w]).mean(1) * 255  # (B, H, W)
    cells = e.reshape(e.shape[0], h // period, period, w // period, period).mean((1, 3))  # (B, p, p)
    return (cells - cells.mean((1, 2), keepdim=True)).pow(2).mean()


def ms_ssim_loss(x_hat: Tensor, x: Tensor) -> Tensor:
    """1 - MS-SSIM (data range 1); crops of 160 px or less use only the scales that fit.

    pytorch_msssim's ``ms_ssim`` asserts a side > 160 px even when given fewer weights, so small
    training crops go through :func:`sodec.metrics.ms_ssim_k` (its per-scale loop on k scales).
    """
    from pytorch_msssim import ms_ssim

    from .metrics import ms_ssim_k, ms_ssim_scales

    x_hat = x_hat.clamp(0, 1)
    k = max(1, ms_ssim_scales(*x.shape[-2:]))
    if k == 5:
        return 1.0 - ms_ssim(x_hat, x, data_range=1.0)
    return 1.0 - ms_ssim_k(x_hat, x, k)


class PerceptualLosses(nn.Module):
    """Holds the frozen loss networks a stage asks for; absent weights drop the term."""

    def __init__(self, names: list[str], weights_dir: str | None = None) -> None:
        super().__init__()
        from .perceptual import dists_model, lpips_model

        self.nets = nn.ModuleDict()
        self.missing: dict[str, str] = {}
        for name in names:
            try:
                if name == "dists":
                    self.nets[name] = dists_model(weights_dir)
                elif name.startswith("lpips_"):
                    self.nets[name] = lpips_model(name.split("_", 1)[1], weights_dir)
            except WeightsError as e:
                self.missing[name] = str(e)
                warnings.warn(f"loss {name!r} disabled: {e}", stacklevel=2)

    def forward(self, name: str, x_hat: Tensor, x: Tensor) -> Tensor | None:
        """Mean of the term over the crops of the batch that are not flat (:func:`flat_crops`);
        zero (with a graph) when every crop is flat."""
        net = self.nets[name] if name in self.nets else None  # ModuleDict has no .get()  # noqa: SIM401
        if net is None:
            return None
        keep = ~flat_crops(x)
        if not bool(keep.any()):
            return (x_hat * 0).sum()
        x_hat, x = x_hat[keep], x[keep]
        if name == "dists":
            return net(x_hat, x, require_grad=True, batch_average=True)
        return net(x_hat * 2 - 1, x * 2 - 1).mean()


def flat_crops(x: Tensor, threshold: float = 0.5 / 255) -> Tensor:
    """(B,) bool: crops of (B, 3, H, W) in [0, 1] with no texture (mean |discrete Laplacian| per
    sample below ``threshold``, half a level): flat colours and linear slopes. Measured on
    192-px crops: the fills of data.paint_flat_region (slopes rounded to uint8, clipped at 0 and
    255) reach 0.41 levels; of 480 photo crops of the training sets the flattest has 0.54, the
    1st percentile 1.4.

    LPIPS and DISTS normalise features by their local energy, so on a flat crop they blow up the
    faintest noise (measured on a flat (30, 160, 60) 192-px crop: ±1 level of Gaussian noise
    scores DISTS 0.15 and LPIPS-VGG 0.11, a uniform 1-level shift 0.00): such a crop would own
    the batch's clipped gradient. MSE alone trains on them (data.paint_flat_region).
    """
    lap = x[..., 1:-1, 1:-1] * 4 - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]
    return lap.abs().flatten(1).mean(1) < threshold


def distortion_terms(
    losses: Mapping[str, float],
    x: Tensor,
    x_hat: Tensor,
    x_fidelity: Tensor | None,
    perceptual: PerceptualLosses | None,
) -> dict[str, Tensor]:
    """Unweighted loss terms named as in the stage config (``gan`` is the trainer's)."""
    out: dict[str, Tensor] = {}
    for name in losses:
        if name == "mse":
            out[name] = mse255(x_hat, x)
        elif name == "border_mse":
            out[name] = border_mse255(x_hat, x)
        elif name == "ms_ssim":
            out[name] = ms_ssim_loss(x_hat, x)
        elif name == "grid":
            out[name] = grid_energy255(x_hat, x)
        elif name == "align":
            # SODEC's L_align = MSE(x, x_f): keeps the fidelity decoder's image faithful (Sec. 3.4).
            if x_fidelity is None:
                raise ValueError("the align loss needs a model with a fidelity decoder")
            # A pooled-latent preview (FGMConfig.guidance_size) is compared with the original
            # averaged over the same cells.
            target = x if x_fidelity.shape == x.shape else F.adaptive_avg_pool2d(x, x_fidelity.shape[-2:])
            out[name] = mse255(x_fidelity, target)
        elif name in ("dists", "lpips_alex", "lpips_vgg"):
            v = perceptual(name, x_hat, x) if perceptual is not None else None
            if v is not None:
                out[name] = v
    return out


class PatchDiscriminator(nn.Module):
    """HiFiC's conditional discriminator, reduced: a PatchGAN on the image, conditioned on y_hat.

    y_hat (B, C, h, w) is squeezed to 12 channels by a 1x1 conv and upsampled 16x (nearest) to
    the image size, then concatenated with the image (Mentzer et al. 2020, Sec. 4). Returns
    per-patch logits (B, 1, H/16, W/16). Lives here, never in a model checkpoint.
    """

    def __init__(self, latent_channels: int | None = None, width: int = 64) -> None:
        super().__init__()
        self.cond = nn.LazyConv2d(12, 1) if latent_channels is None else nn.Conv2d(latent_channels, 12, 1)
        sn = nn.utils.parametrizations.spectral_norm
        layers: list[nn.Module] = []
        cin = 3 + 12
        for cout in (width, width * 2, width * 4, width * 8):
            layers += [sn(nn.Conv2d(cin, cout, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            cin = cout
        layers.append(nn.Conv2d(cin, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, y_hat: Tensor) -> Tensor:
        c = F.interpolate(self.cond(y_hat), size=x.shape[-2:], mode="nearest")
        return self.net(torch.cat([x * 2 - 1, c], dim=1))
