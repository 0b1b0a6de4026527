"""SODEC: the whole model of the paper's Figure 2, assembled from its boxes.

Encode: the codec (vae_codec.py) writes y_hat and z_hat. Decode::

    bytes ─▶ z_hat ─▶ w = H_s(z_hat) ─▶ y_hat
    y_hat ─▶ D_a ─▶ x_f ─▶ FGM (ViT + F_p) ─▶ c_g                          (fidelity_guidance.py)
      (small preset: D_a decodes y_hat pooled to the ViT's input size; FGMConfig.guidance_size)
    (y_hat, w) ─▶ T_s ─▶ y_t ─▶ UNet(y_t, t=999, c_g) ─▶ y_0 ─▶ D_m ─▶ x_hat  (transform.py, one_step.py)

Large images decode tile by tile (sodec.tiling). ``set_decode_steps(n)`` swaps the single step
for an n-step DDIM loop of the same UNet (speed baseline only).

Two presets (config.SODEC_PRESETS): ``paper`` (SD 2.1 / SD-Turbo UNet and VAE, DINOv2 ViT-L, whose
frozen weights come from ``base_weights``: a diffusers folder with unet/ and vae/ and optionally
vit/model.safetensors, or a hub id) and ``small`` (same graph, CPU widths, everything trained
here and stored in the sodec checkpoint).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import SodecConfig
from ..determinism import deterministic_attention
from ..errors import WeightsError
from ..tiling import tiled_decode
from .fidelity_guidance import FidelityGuidance
from .one_step import OneStepDiffusion, _diffusers
from .padding import set_padding
from .transform import TransformationModule
from .vae_codec import VAECodec, synthesis_transform

# Key prefixes of weights that come from the base model (not stored in a paper-preset checkpoint).
BASE_PREFIXES = ("diffusion.unet.", "diffusion.vae.", "fgm.vit.")


@dataclass
class SodecOutput:
    """What :meth:`SodecModel.forward` returns in training."""

    x_hat: Tensor  # (B, 3, H, W) final reconstruction
    y_hat: Tensor  # (B, C, H/16, W/16)
    likelihoods: dict[str, Tensor]
    x_fidelity: Tensor | None = None  # (B, 3, H, W) D_a's preliminary image x_f
    extra_losses: dict[str, Tensor] | None = None  # e.g. {"kl": ...} when pre-training the VAE
    latent: Tensor | None = None  # (B, c, H/8, W/8) y_0, the latent D_m decodes (latent loss)


def _is_base_key(key: str) -> bool:
    return key.startswith(BASE_PREFIXES) and "lora_" not in key


class SodecModel(nn.Module):
    def __init__(self, cfg: SodecConfig, base_weights: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.codec = VAECodec(cfg.codec)
        self.fidelity_decoder = synthesis_transform(cfg.codec)  # D_a, initialised from g_s
        self.fidelity_decoder.load_state_dict(self.codec.g_s.state_dict())
        self.fgm = FidelityGuidance(cfg.fgm)
        self.transform = TransformationModule(cfg.codec, cfg.transform)
        self.diffusion = OneStepDiffusion(cfg.unet, cfg.vae, cfg.diffusion, cfg.latent_decoder)
        source = base_weights if base_weights is not None else cfg.base_weights
        if source is not None:
            self.load_base(source)
        self.diffusion.add_lora()
        for part in (self.transform, self.diffusion):
            set_padding(part, cfg.padding)
        self.decode_steps = 1

    # -- the paper-preset base weights ----------------------------------------------------------

    def load_base(self, source: str | os.PathLike[str]) -> None:
        """Load the frozen SD UNet/VAE (and ViT) from a diffusers folder or a hub id.

        Key names are those of the public checkpoints (diffusers layout), so a downloaded
        SD-Turbo / SD 2.1 folder loads unchanged.
        """
        AutoencoderKL, _, _, UNet2DConditionModel = _diffusers()
        local = Path(source)
        # safetensors only: a folder's pickled .bin files are never read.
        kw = {"use_safetensors": True, **({"local_files_only": True} if local.exists() else {})}
        try:
            unet = UNet2DConditionModel.from_pretrained(str(source), subfolder="unet", **kw)
            vae = AutoencoderKL.from_pretrained(str(source), subfolder="vae", **kw)
        except (OSError, ValueError) as e:
            raise WeightsError(f"cannot load SD UNet/VAE from {source!s}: {str(e).splitlines()[0][:200]}") from None
        for name, mine, theirs in (("unet", self.diffusion.unet, unet), ("vae", self.diffusion.vae, vae)):
            missing, unexpected = mine.load_state_dict(theirs.state_dict(), strict=False)
            if missing or unexpected:
                raise WeightsError(
                    f"{name} in {source!s} does not match the preset ({len(missing)} missing, {len(unexpected)} unexpected keys)"
                )
        vit_file = local / "vit" / "model.safetensors"
        if vit_file.is_file():
            from safetensors.torch import load_file

            self.fgm.vit.load_state_dict(load_file(str(vit_file)), strict=True)

    def save_base(self, folder: str | os.PathLike[str]) -> None:
        """Write the UNet and VAE in the public diffusers layout (unet/, vae/) and the ViT."""
        AutoencoderKL, _, _, UNet2DConditionModel = _diffusers()
        folder = Path(folder)
        unet_sd = {
            k.replace(".base_layer", ""): v for k, v in self.diffusion.unet.state_dict().items() if "lora_" not in k
        }
        unet = UNet2DConditionModel(**self.cfg.unet.diffusers_kwargs())
        unet.load_state_dict(unet_sd, strict=True)
        unet.save_pretrained(folder / "unet")
        vae = AutoencoderKL(**self.cfg.vae.diffusers_kwargs())
        vae.load_state_dict(self.diffusion.vae.state_dict(), strict=True)
        vae.save_pretrained(folder / "vae")
        from safetensors.torch import save_file

        (folder / "vit").mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in self.fgm.vit.state_dict().items()}, str(folder / "vit" / "model.safetensors")
        )

    def checkpoint_state_dict(self) -> dict[str, Tensor]:
        """What a sodec checkpoint stores: everything (small), or all but the base (paper)."""
        sd = self.state_dict()
        if self.cfg.base_weights is None:
            return sd
        return {k: v for k, v in sd.items() if not _is_base_key(k)}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        if self.cfg.base_weights is not None:
            # Base weights came from load_base; the checkpoint holds the rest, strictly.
            own = {k for k in self.state_dict() if not _is_base_key(k)}
            missing = own - set(state_dict)
            extra = set(state_dict) - set(self.state_dict())
            if strict and (missing or extra):
                raise RuntimeError(f"checkpoint does not fit: {len(missing)} missing, {len(extra)} unexpected keys")
            strict = False
        # The codec resizes its CDF buffers to the checkpoint's (CompressAI's own loader).
        codec_sd = {k[len("codec.") :]: v for k, v in state_dict.items() if k.startswith("codec.")}
        if codec_sd:
            self.codec.load_state_dict(codec_sd, strict=strict)
        rest = {k: v for k, v in state_dict.items() if not k.startswith("codec.")}
        result = nn.Module.load_state_dict(
            self,
            {**{f"codec.{k}": v for k, v in self.codec.state_dict().items()}, **rest},
            strict=strict,
            assign=assign,
        )
        return result

    # -- CompressAI housekeeping, delegated to the codec -----------------------------------------

    def update(self, scale_table=None, force: bool = False) -> bool:
        return self.codec.update(scale_table, force=force)

    def aux_loss(self) -> Tensor:
        return self.codec.aux_loss()

    # -- training -------------------------------------------------------------------------------

    def forward(self, x: Tensor, objective: str = "sodec", target_latent: Tensor | None = None) -> SodecOutput:
        """x: (B, 3, H, W) in [0, 1], H, W multiples of 64.

        objective "sodec": the whole graph; "codec": the codec alone (stage 1, x_hat = g_s);
        "vae": the SD VAE alone (pre-training a D_m that has no public weights); "decoder": D_m
        alone on ``target_latent`` (B, c, H/8, W/8), the latent space's own encoding of x
        (distilling the small preset's D_m from TAEF2's decoder).
        """
        if objective == "vae":
            z, kl = self.diffusion.encode(x)
            return SodecOutput(self.diffusion.decode(z), z, {}, None, {"kl": kl})
        if objective == "decoder":
            if target_latent is None:
                raise ValueError("objective 'decoder' needs the target latent")
            return SodecOutput(self.diffusion.decode(target_latent), target_latent, {}, latent=target_latent)
        # The codec runs in float32 even under bf16 autocast: likelihoods and GDN need the range.
        with torch.autocast(x.device.type, enabled=False):
            y_hat, w, likelihoods = self.codec.encode_latents(x.float())
        if objective == "codec":
            return SodecOutput(self.codec.g_s(y_hat), y_hat, likelihoods)
        x_f = self.guidance_image(y_hat)
        y_0 = self.decode_to_latent(y_hat, w, self.fgm(x_f.clamp(0, 1)))
        return SodecOutput(self.diffusion.decode(y_0), y_hat, likelihoods, x_f, latent=y_0)

    def guidance_image(self, y_hat: Tensor) -> Tensor:
        """x_f, the fidelity decoder's image that the FGM encodes (paper Sec. 3.3).

        Full size (B, 3, 16h, 16w) as in the paper, or, with ``fgm.guidance_size`` = g, D_a applied
        to y_hat average-pooled to g x g cells: a (B, 3, 16g, 16g) preview at the ViT's input size.
        """
        g = self.cfg.fgm.guidance_size
        if g is None:
            return self.fidelity_decoder(y_hat)
        return self.fidelity_decoder(F.adaptive_avg_pool2d(y_hat, (g, g)))

    def decode_latent(self, y_hat: Tensor, w: Tensor, x_f: Tensor | None = None, c_g: Tensor | None = None) -> Tensor:
        """(y_hat, w) -> x_hat (B, 3, 16h, 16w); the decode path of Fig. 2 after entropy decoding.

        ``c_g`` (the guidance condition) may be given precomputed, as tiled decoding does.
        """
        if c_g is None:
            if x_f is None:
                x_f = self.guidance_image(y_hat)
            c_g = self.fgm(x_f.clamp(0, 1))
        return self.diffusion.decode(self.decode_to_latent(y_hat, w, c_g))

    def decode_to_latent(self, y_hat: Tensor, w: Tensor, c_g: Tensor) -> Tensor:
        """(y_hat, w, c_g) -> y_0 (B, c, 2h, 2w): T_s, then the UNet's step(s)."""
        y_t = self.transform(y_hat, w)
        if self.decode_steps == 1:
            return self.diffusion.denoise(y_t, c_g)
        return self.diffusion.multistep(y_t, c_g, self.decode_steps)

    # -- decoding -------------------------------------------------------------------------------

    def set_decode_steps(self, steps: int) -> None:
        """1 = SODEC's single step; n > 1 = the multi-step baseline (speed comparison only)."""
        if steps < 1:
            raise ValueError("decode steps must be >= 1")
        self.decode_steps = steps

    def null_condition(self, y_hat: Tensor) -> Tensor:
        """The FGM ablation's condition: zeros (B, tokens, cond_dim) in place of c_g.

        Zero tokens make every cross-attention key and value its projection's bias (none in the
        diffusers attention used here), so cross-attention adds only its output bias: the UNet
        decodes y_t without guidance from x_f (evaluation's ``<model>@no_fgm`` run, Fig. 3).
        """
        return y_hat.new_zeros(y_hat.shape[0], self.cfg.fgm.tokens, self.cfg.fgm.cond_dim)

    @torch.no_grad()
    def reconstruct(self, y_hat: Tensor, w: Tensor, tile: int | None = None, guidance: bool = True) -> Tensor:
        """Decoded image (1, 3, 16h, 16w) in [0, 1], tile by tile past ``tile`` latents.

        The guidance condition is computed once from the whole x_f (itself decoded in tiles), so
        every tile is steered alike and tiles blend without seams. Attention runs on its
        thread-count-independent path (sodec.determinism); convolutions may still round a sample
        one level apart between thread counts, within the decoding contract (sodec.contract). ``guidance=False`` decodes with :meth:`null_condition`
        instead of c_g (the FGM ablation; evaluation only).
        """
        tile = tile or self.cfg.tile
        overlap = self.cfg.tile_overlap
        with deterministic_attention():
            if max(y_hat.shape[-2:]) <= tile:
                return self.decode_latent(y_hat, w, c_g=None if guidance else self.null_condition(y_hat)).clamp(0, 1)
            if not guidance:
                c_g = self.null_condition(y_hat)
            elif self.cfg.fgm.guidance_size is None:
                x_f = tiled_decode(lambda y: self.fidelity_decoder(y).clamp(0, 1), (y_hat,), 16, tile, overlap)
                c_g = self.fgm(x_f)
                del x_f
            else:  # a fixed-size preview of the whole image: no tiles needed
                c_g = self.fgm(self.guidance_image(y_hat).clamp(0, 1))
            return tiled_decode(
                lambda y, w_: self.decode_latent(y, w_, c_g=c_g).clamp(0, 1), (y_hat, w), 16, tile, overlap
            )
