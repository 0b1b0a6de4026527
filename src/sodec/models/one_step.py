"""One-step diffusion decoder (paper Sec. 3.2, Fig. 2b): SD UNet once at t = 999, SD VAE decoder.

The UNet predicts noise (epsilon parametrisation, as SD 2.1 was trained), so the clean latent
follows in closed form from the DDPM forward process at t = 999:

    y_0 = (y_t - sqrt(1 - abar_t) * eps_theta(y_t, t, c_g)) / sqrt(abar_t)

Keeping SD's own parametrisation lets the frozen pretrained UNet (plus LoRA) be used as trained;
an x0- or v-prediction head would need the prior to be re-learned. The VAE decoder D_m maps y_0
to pixels. ``multistep`` runs the same UNet for N DDIM steps from y_t, as multi-step diffusion
codecs (DiffEIC) do: it exists for the speed comparison only.

Small preset (``SodecConfig.latent_decoder``): the latent space is TAEF2's (32 channels at 1/8,
models/taef2.py) and D_m a TAESD-style decoder distilled from TAEF2's; the UNet, trained from
scratch, predicts a residual (``DiffusionConfig.prediction_type = "residual"``):
y_0 = y_t + UNet(y_t, 999, c_g), its last conv starting at zero so that y_0 starts as T_s's latent.
A UNet without LoRA (the small preset's) is models/unet.py's, diffusers' architecture and parameter
names without diffusers' import cost (issue 13).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from ..config import AutoencoderConfig, DiffusionConfig, TAEConfig, UNetConfig
from .unet import ConditionalUNet
from .unet import supported as unet_supported


def _diffusers():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    return AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel


def _unet_class():
    """diffusers' UNet2DConditionModel alone: its module, not the package's every pipeline/VAE."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    return UNet2DConditionModel


def alphas_cumprod(d: DiffusionConfig) -> Tensor:
    """abar_t for t = 0..T-1 in float32, as diffusers' DDPMScheduler computes it.

    "scaled_linear" (SD): betas = linspace(sqrt(beta_start), sqrt(beta_end), T)^2; "linear":
    linspace(beta_start, beta_end, T). Computed here so that decoding needs no scheduler import.
    """
    if d.beta_schedule == "scaled_linear":
        betas = torch.linspace(d.beta_start**0.5, d.beta_end**0.5, d.num_train_timesteps, dtype=torch.float32) ** 2
    elif d.beta_schedule == "linear":
        betas = torch.linspace(d.beta_start, d.beta_end, d.num_train_timesteps, dtype=torch.float32)
    else:
        raise ValueError(f"beta_schedule {d.beta_schedule!r}: use 'scaled_linear' or 'linear'")
    return torch.cumprod(1.0 - betas, dim=0)


def _schedule(d: DiffusionConfig) -> dict:
    """The noise schedule's arguments, shared by the training (DDPM) and sampling (DDIM) views."""
    return {
        "num_train_timesteps": d.num_train_timesteps,
        "beta_start": d.beta_start,
        "beta_end": d.beta_end,
        "beta_schedule": d.beta_schedule,
        "prediction_type": d.prediction_type,
    }


class OneStepDiffusion(nn.Module):
    """UNet + D_m. ``latent_decoder`` given: D_m is a TAE decoder of that config (small preset)
    and ``vae`` is unused; else D_m is the decoder of the diffusers AutoencoderKL (SD's VAE)."""

    def __init__(
        self,
        unet: UNetConfig,
        vae: AutoencoderConfig,
        diffusion: DiffusionConfig,
        latent_decoder: TAEConfig | None = None,
    ) -> None:
        super().__init__()
        self.unet_cfg, self.vae_cfg, self.diffusion_cfg = unet, vae, diffusion
        self.latent_decoder_cfg = latent_decoder
        # SD's UNet with LoRA (paper preset) comes from diffusers; a UNet trained from scratch
        # without adapters (small preset) is models/unet.py's, the same architecture and
        # parameter names without diffusers' seconds of imports.
        self.unet = ConditionalUNet(unet) if unet_supported(unet) else _unet_class()(**unet.diffusers_kwargs())
        if latent_decoder is None:
            AutoencoderKL = _diffusers()[0]
            self.vae = AutoencoderKL(**vae.diffusers_kwargs())
            self.vae.encoder.requires_grad_(False)  # only D_m (the decoder) is used at decode time
        else:
            from .taef2 import TAEDecoder

            # channels_last: the decoder's full-width convs at 1/2 and full resolution run ~1.4x
            # faster on CPU (1.1 -> 0.8 s at 768x512, 2 threads); load_state_dict keeps the layout.
            self.latent_decoder = TAEDecoder(latent_decoder).to(memory_format=torch.channels_last)
        if diffusion.prediction_type == "residual":
            # y_0 starts as y_t: the UNet learns a correction of T_s's latent.
            nn.init.zeros_(self.unet.conv_out.weight)
            nn.init.zeros_(self.unet.conv_out.bias)
        self.register_buffer("alphas_cumprod", alphas_cumprod(diffusion), persistent=False)
        self.lora_added = False

    # -- LoRA (peft) ----------------------------------------------------------------------------

    def add_lora(self) -> None:
        """Wrap the UNet's target layers with rank-r LoRA adapters (after base weights load)."""
        if self.unet_cfg.lora_rank <= 0 or self.lora_added:
            return
        from peft import LoraConfig

        r = self.unet_cfg.lora_rank
        cfg = LoraConfig(
            r=r, lora_alpha=r, init_lora_weights="gaussian", target_modules=list(self.unet_cfg.lora_targets)
        )
        self.unet.add_adapter(cfg)
        self.lora_added = True

    # -- the step -------------------------------------------------------------------------------

    def timestep(self, batch: int, device: torch.device) -> Tensor:
        return torch.full((batch,), self.diffusion_cfg.timestep, dtype=torch.long, device=device)

    def _unet(self, y: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        out = self.unet(y, t, encoder_hidden_states=cond)
        return out if isinstance(out, Tensor) else out.sample  # diffusers wraps it in an output class

    def denoise(self, y_t: Tensor, cond: Tensor) -> Tensor:
        """y_t: (B, c, h, w) taken as the noisy latent at t; cond: (B, T, D) -> y_0 (B, c, h, w).

        c = 4 (SD's latent) or 32 (TAEF2's). epsilon: y_0 from the DDPM forward process at t;
        residual: y_0 = y_t + UNet output (DiffusionConfig.prediction_type).
        """
        t = self.diffusion_cfg.timestep
        out = self._unet(y_t, self.timestep(y_t.size(0), y_t.device), cond)
        if self.diffusion_cfg.prediction_type == "residual":
            return y_t + out
        abar = self.alphas_cumprod[t]
        return (y_t - (1 - abar).sqrt() * out) / abar.sqrt()

    def decode(self, y_0: Tensor) -> Tensor:
        """D_m: (B, c, h, w) latent -> (B, 3, 8h, 8w) image in [0, 1] (not clamped)."""
        if self.latent_decoder_cfg is not None:
            return self.latent_decoder(y_0.contiguous(memory_format=torch.channels_last))
        x = self.vae.decode(y_0 / self.vae_cfg.scaling_factor).sample
        return x * 0.5 + 0.5

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """SD VAE encoder E_m (used only to pre-train the small VAE): -> (scaled latent, KL).

        The posterior mean is decoded, not a sample: SODEC only ever uses D_m on latents made by
        T_s, and with sampling a freshly initialised VAE sees unit-variance noise on near-zero
        means and sat at the mean image for hundreds of steps on CPU. The KL term still keeps
        the latent near the prior's scale.
        """
        if self.latent_decoder_cfg is not None:
            raise ValueError("the TAEF2 latent space has a pretrained encoder; there is no VAE to pre-train")
        dist = self.vae.encode(x * 2 - 1).latent_dist
        return dist.mode() * self.vae_cfg.scaling_factor, dist.kl().mean()

    @torch.no_grad()
    def multistep(self, y_t: Tensor, cond: Tensor, steps: int) -> Tensor:
        """The same UNet run for ``steps`` DDIM steps from y_t at t = 999 (baseline, speed only).

        Residual prediction has no noise schedule to step along: the UNet is applied ``steps``
        times at the DDIM timesteps, each output fed back (same cost per step; speed only).
        """
        if self.diffusion_cfg.prediction_type == "residual":
            latent = y_t
            for k in range(steps):
                t = self.diffusion_cfg.timestep * (steps - k) // steps
                tt = torch.full((latent.size(0),), t, dtype=torch.long, device=latent.device)
                latent = latent + self._unet(latent, tt, cond)
            return latent
        _, DDIMScheduler, _, _ = _diffusers()
        d = self.diffusion_cfg
        sched = DDIMScheduler(
            **_schedule(d),
            timestep_spacing="trailing",  # so the first step is t = 999, where y_t lives
            clip_sample=False,
            set_alpha_to_one=False,
        )
        sched.set_timesteps(steps)
        latent = y_t
        for t in sched.timesteps:
            tt = torch.full((latent.size(0),), int(t), dtype=torch.long, device=latent.device)
            eps = self._unet(latent, tt, cond)
            latent = sched.step(eps, t, latent).prev_sample
        return latent
