"""One-step diffusion decoder (paper Sec. 3.2, Fig. 2b): SD UNet once at t = 999, SD VAE decoder.

The UNet predicts noise (epsilon parametrisation, as SD 2.1 was trained), so the clean latent
follows in closed form from the DDPM forward process at t = 999:

    y_0 = (y_t - sqrt(1 - abar_t) * eps_theta(y_t, t, c_g)) / sqrt(abar_t)

Keeping SD's own parametrisation lets the frozen pretrained UNet (plus LoRA) be used as trained;
an x0- or v-prediction head would need the prior to be re-learned. The VAE decoder D_m maps y_0
to pixels. ``multistep`` runs the same UNet for N DDIM steps from y_t, as multi-step diffusion
codecs (DiffEIC) do: it exists for the speed comparison only.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from ..config import AutoencoderConfig, DiffusionConfig, UNetConfig


def _diffusers():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    return AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel


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
    def __init__(self, unet: UNetConfig, vae: AutoencoderConfig, diffusion: DiffusionConfig) -> None:
        super().__init__()
        AutoencoderKL, _, DDPMScheduler, UNet2DConditionModel = _diffusers()
        self.unet_cfg, self.vae_cfg, self.diffusion_cfg = unet, vae, diffusion
        self.unet = UNet2DConditionModel(**unet.diffusers_kwargs())
        self.vae = AutoencoderKL(**vae.diffusers_kwargs())
        self.vae.encoder.requires_grad_(False)  # only D_m (the decoder) is used at decode time
        sched = DDPMScheduler(**_schedule(diffusion))
        self.register_buffer("alphas_cumprod", sched.alphas_cumprod.clone().float(), persistent=False)
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

    def denoise(self, y_t: Tensor, cond: Tensor) -> Tensor:
        """y_t: (B, 4, h, w) taken as the noisy latent at t; cond: (B, T, D) -> y_0 (B, 4, h, w)."""
        t = self.diffusion_cfg.timestep
        abar = self.alphas_cumprod[t]
        eps = self.unet(y_t, self.timestep(y_t.size(0), y_t.device), encoder_hidden_states=cond).sample
        return (y_t - (1 - abar).sqrt() * eps) / abar.sqrt()

    def decode(self, y_0: Tensor) -> Tensor:
        """D_m: (B, 4, h, w) scaled latent -> (B, 3, 8h, 8w) image in [0, 1] (not clamped)."""
        x = self.vae.decode(y_0 / self.vae_cfg.scaling_factor).sample
        return x * 0.5 + 0.5

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """SD VAE encoder E_m (used only to pre-train the small VAE): -> (scaled latent, KL).

        The posterior mean is decoded, not a sample: SODEC only ever uses D_m on latents made by
        T_s, and with sampling a freshly initialised VAE sees unit-variance noise on near-zero
        means and sat at the mean image for hundreds of steps on CPU. The KL term still keeps
        the latent near the prior's scale.
        """
        dist = self.vae.encode(x * 2 - 1).latent_dist
        return dist.mode() * self.vae_cfg.scaling_factor, dist.kl().mean()

    @torch.no_grad()
    def multistep(self, y_t: Tensor, cond: Tensor, steps: int) -> Tensor:
        """The same UNet run for ``steps`` DDIM steps from y_t at t = 999 (baseline, speed only)."""
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
            eps = self.unet(latent, tt, encoder_hidden_states=cond).sample
            latent = sched.step(eps, t, latent).prev_sample
        return latent
