"""TAEF2: the pretrained tiny autoencoder that gives the small preset its diffusion latent space.

In the paper (Sec. 3.2, Fig. 2b) the one-step UNet works in the latent space of SD's VAE: the
frozen VAE encoder defines the target latent of every training image, and its decoder is D_m.
No SD-sized VAE fits the small preset's CPU budget, so the small preset uses TAEF2, the "tiny
autoencoder" that Ollin Boer Bohan distilled from the FLUX.2 VAE (public repo
``madebyollin/taesd``, commit 5cccb12, MIT licence, "Copyright (c) 2023 Ollin Boer Bohan"):

- the frozen :class:`TAEEncoder` gives the target latent of each training image (training only;
  ``scripts/cache_latents.py`` caches them, they never ship);
- :class:`TAEDecoder` initialises D_m, which the project then fine-tunes (or distils into a
  narrower :class:`TAEConfig`); what ships is that trained decoder, never these tensors unchanged.

This is a re-implementation from the architecture described in ``shared/weights/taef2/README.md``
(no upstream code is copied). For the pretrained config the module names reproduce the source's
state-dict keys (``<index>.conv.<0|2|4>.*``, ``<index>.pool.<0|1|3>.*``), so its safetensors files
load with ``strict=True``.

Conventions (README):
    image   (B, 3, H, W) RGB in [0, 1] (not [-1, 1]); H, W multiples of 8
    latent  (B, 32, H/8, W/8), any real values (Kodak: std ~0.85, range about [-6, 7])
    output  (B, 3, H, W), about [0, 1]; the decoder squashes the latent by 3 * tanh(z / 3) first
            and has no final activation: clamp to [0, 1] for an image (``TAEDecoder.decode``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from ..checkpoint import sha256_file
from ..config import TAEConfig
from ..errors import UnsupportedInputError, WeightsError
from ..perceptual import weights_dir as _weights_dir

# Published sha256 of the float16 safetensors files (shared/weights/taef2/README.md).
TAEF2_FILES = {
    "encoder": ("taef2_encoder.safetensors", "c007b713b4bef792986d5313738bbfc175f68708a37512d16881d41538ae582f"),
    "decoder": ("taef2_decoder.safetensors", "c63bb56beda7bc33f2a4be0184eb3d11d50405d62ab0997e69cd33911ccc8934"),
}
TAEF2_SUBDIR = "taef2"

# TAESD's 8-bit storage mapping for latents: q = clamp(z / 6 + 0.5, 0, 1), stored as round(255 q).
LATENT_8BIT_RANGE = 6.0


TAEF2_CONFIG = TAEConfig()
DOWNSCALE = 8  # three stride-2 steps


def _conv(c_in: int, c_out: int, *, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)


class GlobalBranch(nn.Sequential):
    """1x1 conv (no bias) -> GroupNorm -> ReLU -> 1x1 conv (no bias). Keys ``0``, ``1``, ``3``.

    GroupNorm normalises over the whole image, so this branch carries image-wide statistics
    (colour cast, brightness) into the 1/8-resolution blocks; nothing else in the network does.
    """

    def __init__(self, width: int, expand: int, groups: int) -> None:
        hidden = width * expand
        super().__init__(
            nn.Conv2d(width, hidden, 1, bias=False),
            nn.GroupNorm(groups, hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, width, 1, bias=False),
        )


class ResBlock(nn.Module):
    """(B, C, h, w) -> (B, C, h, w): ``relu(x + conv3(relu(conv2(relu(conv1(x))))))``.

    With a global branch, ``x <- x + pool(x)`` first, and that sum is the block's input for both
    the convs and the identity path. No normalisation in the conv path.
    """

    def __init__(self, width: int, global_branch: GlobalBranch | None = None) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(width, width), nn.ReLU(), _conv(width, width), nn.ReLU(), _conv(width, width))
        if global_branch is not None:
            # Registered after ``conv`` only when present, so plain blocks have no ``pool`` keys.
            self.pool = global_branch
        self.has_pool = global_branch is not None

    def forward(self, x: Tensor) -> Tensor:
        if self.has_pool:
            x = x + self.pool(x)
        return torch.relu(x + self.conv(x))


def _blocks(cfg: TAEConfig, n: int, with_global: bool) -> list[nn.Module]:
    def branch() -> GlobalBranch | None:
        return GlobalBranch(cfg.width, cfg.global_expand, cfg.global_groups) if with_global else None

    return [ResBlock(cfg.width, branch()) for _ in range(n)]


def _check_image_size(h: int, w: int, what: str) -> None:
    if h % DOWNSCALE or w % DOWNSCALE or h == 0 or w == 0:
        raise UnsupportedInputError(f"{what}: {h}x{w} is not a positive multiple of {DOWNSCALE} (pad it first)")


class SoftClamp(nn.Module):
    """``c * tanh(z / c)``: squashes latents smoothly into (-c, c); identity near 0."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, z: Tensor) -> Tensor:
        return self.c * torch.tanh(z / self.c)


class TAEEncoder(nn.Sequential):
    """Image (B, 3, H, W) in [0, 1] -> latent (B, latent_channels, H/8, W/8), unbounded.

    H and W must be multiples of 8 (UnsupportedInputError otherwise). TAEF2 layout, as indices:
    0 conv 3->64; 1 block; 2 stride-2 conv; 3-5 blocks; 6 stride-2 conv; 7-9 blocks; 10 stride-2
    conv; 11-13 blocks with the global branch; 14 conv 64->32 (the latent, no activation).
    """

    def __init__(self, cfg: TAEConfig = TAEF2_CONFIG) -> None:
        layers: list[nn.Module] = [_conv(cfg.image_channels, cfg.width)]
        for level, n in enumerate(cfg.enc_blocks):
            if level > 0:
                layers.append(_conv(cfg.width, cfg.width, stride=2, bias=False))
            layers += _blocks(cfg, n, with_global=cfg.global_branch_at_1_8 and level == 3)
        layers.append(_conv(cfg.width, cfg.latent_channels))
        super().__init__(*layers)
        self.cfg = cfg

    def forward(self, x: Tensor) -> Tensor:
        _check_image_size(x.shape[-2], x.shape[-1], "TAE encoder input")
        return super().forward(x)


class TAEDecoder(nn.Sequential):
    """Latent (B, latent_channels, h, w), any values -> image (B, 3, 8h, 8w), about [0, 1].

    ``forward`` returns the raw output (no final activation, so gradients flow where a clamp
    would stop them; use it for training D_m); :meth:`decode` clamps it to [0, 1]. TAEF2 layout:
    0 soft clamp 3*tanh(z/3); 1 conv 32->64; 2 ReLU; 3-5 blocks with the global branch (1/8);
    6 nearest 2x upsample; 7 conv; 8-10 blocks; 11 up; 12 conv; 13-15 blocks; 16 up; 17 conv;
    18 block (full resolution); 19 conv 64->3.
    """

    def __init__(self, cfg: TAEConfig = TAEF2_CONFIG) -> None:
        layers: list[nn.Module] = [SoftClamp(cfg.latent_clamp), _conv(cfg.latent_channels, cfg.width), nn.ReLU()]
        for level, n in enumerate(cfg.dec_blocks):  # level 0 here is 1/8 resolution
            if level > 0:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), _conv(cfg.width, cfg.width, bias=False)]
            layers += _blocks(cfg, n, with_global=cfg.global_branch_at_1_8 and level == 0)
        layers.append(_conv(cfg.width, cfg.image_channels))
        super().__init__(*layers)
        self.cfg = cfg

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Latent -> image (B, 3, 8h, 8w) clamped to [0, 1] (inference; no gradients)."""
        return self(z).clamp(0.0, 1.0)

    def levels(self) -> list[dict[str, list[nn.Module]]]:
        """The layers grouped by level (1/8 first): {"entry": [...], "blocks": [...]}; the last
        level also holds the output conv under "exit"."""
        out: list[dict[str, list[nn.Module]]] = []
        layers = list(self)
        i = 3  # after soft clamp, conv, ReLU
        head = [layers[1]]
        for level, n in enumerate(self.cfg.dec_blocks):
            entry = head if level == 0 else [layers[i + 1]]  # the conv after the upsample
            if level > 0:
                i += 2
            out.append({"entry": entry, "blocks": layers[i : i + n]})
            i += n
        out[-1]["exit"] = [layers[i]]
        return out

    @torch.no_grad()
    def init_from(self, teacher: TAEDecoder) -> None:
        """Initialise from a decoder of the same width with as many blocks or more per level:
        every conv this one has takes the teacher's weights at the same place (level, block);
        blocks the teacher has beyond this one's count and its global branches are left out.
        The starting point of D_m's distillation (issue 11): close to TAEF2 from step 0."""
        if teacher.cfg.width != self.cfg.width or teacher.cfg.latent_channels != self.cfg.latent_channels:
            raise ValueError("init_from needs a teacher of the same width and latent channels")
        if any(a > b for a, b in zip(self.cfg.dec_blocks, teacher.cfg.dec_blocks, strict=True)):
            raise ValueError("init_from: the teacher has fewer blocks at some level")
        for mine, theirs in zip(self.levels(), teacher.levels(), strict=True):
            for key in ("entry", "exit"):
                for a, b in zip(mine.get(key, []), theirs.get(key, []), strict=True):
                    a.load_state_dict(b.state_dict())
            for a, b in zip(mine["blocks"], theirs["blocks"], strict=False):
                a.conv.load_state_dict(b.conv.state_dict())


def latent_to_uint8(z: Tensor) -> Tensor:
    """TAESD's 8-bit storage of a latent: ``round(255 * clamp(z / 6 + 0.5, 0, 1))`` as uint8."""
    q = (z / LATENT_8BIT_RANGE + 0.5).clamp(0.0, 1.0)
    return (q * 255.0).round().to(torch.uint8)


def latent_from_uint8(q: Tensor) -> Tensor:
    """Inverse of :func:`latent_to_uint8`: ``(q / 255 - 0.5) * 6`` as float32 (values in [-3, 3])."""
    return (q.float() / 255.0 - 0.5) * LATENT_8BIT_RANGE


def taef2_paths(weights_dir: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Paths of the encoder and decoder files: ``<dir>/taef2/taef2_{encoder,decoder}.safetensors``.

    ``<dir>`` is ``weights_dir``, else ``$SODEC_WEIGHTS_DIR``, else ``~/.cache/sodec/weights`` (the
    metric backbones' convention, :func:`sodec.perceptual.weights_dir`). WeightsError, one line,
    when no folder is configured or a file is missing.
    """
    d = _weights_dir(weights_dir)
    if d is None:
        raise WeightsError(
            "TAEF2 weights not found: pass --weights-dir or set SODEC_WEIGHTS_DIR to a folder holding taef2/"
        )
    paths = {part: d / TAEF2_SUBDIR / fname for part, (fname, _) in TAEF2_FILES.items()}
    for p in paths.values():
        if not p.is_file():
            raise WeightsError(f"{p} not found: copy shared/weights/taef2/ under {d} or point SODEC_WEIGHTS_DIR at it")
    return paths


def load_verified_state(path: Path, sha256: str) -> dict[str, Tensor]:
    """The file's tensors as float32 after checking its sha256 (WeightsError when it differs)."""
    from safetensors.torch import load_file

    got = sha256_file(path)
    if got != sha256:
        raise WeightsError(
            f"{path}: sha256 {got[:12]}… differs from TAEF2's published {sha256[:12]}…; replace the file with the original"
        )
    return {k: v.float() for k, v in load_file(str(path)).items()}


def load_taef2(
    weights_dir: str | os.PathLike[str] | None = None, *, parts: tuple[str, ...] = ("encoder", "decoder")
) -> tuple[TAEEncoder | None, TAEDecoder | None]:
    """Pretrained TAEF2 (float32, eval mode): ``(encoder, decoder)``; a part not in ``parts`` is None.

    Both files are sha256-checked before loading (WeightsError if missing or different) and
    loaded with ``strict=True``. The encoder comes frozen (``requires_grad=False``): it only
    defines target latents. The decoder's parameters stay trainable: it initialises D_m.
    """
    paths = taef2_paths(weights_dir)
    enc = dec = None
    if "encoder" in parts:
        enc = TAEEncoder()
        enc.load_state_dict(load_verified_state(paths["encoder"], TAEF2_FILES["encoder"][1]), strict=True)
        enc.eval().requires_grad_(False)
    if "decoder" in parts:
        dec = TAEDecoder()
        dec.load_state_dict(load_verified_state(paths["decoder"], TAEF2_FILES["decoder"][1]), strict=True)
        dec.eval()
    return enc, dec


def taef2_sha256() -> dict[str, str]:
    """Published sha256 of each TAEF2 file (for indexes and model cards that record provenance)."""
    return {fname: sha for fname, sha in TAEF2_FILES.values()}
