"""A training stage as data: what trains, what is frozen, the losses, the rate weight.

SODEC's rate annealing (paper Sec. 3.4, see docs/design.md) is three of these in a row:
1. codec at a high rate (small lambda),
2. the diffusion parts with the codec frozen (distortion only),
3. everything jointly while lambda rises to the target.
Stage files are TOML; :func:`load_stage` turns one into a frozen :class:`StageConfig`, and
the resolved config is written into every run folder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from ..config import from_dict

KNOWN_LOSSES = (
    "mse",
    "border_mse",
    "ms_ssim",
    "grid",
    "lpips_alex",
    "lpips_vgg",
    "dists",
    "align",
    "gan",
    "kl",
    "latent",
    "distill",
)
OBJECTIVES = ("sodec", "codec", "vae", "decoder")


@dataclass(frozen=True)
class StageConfig:
    name: str
    # Where the model comes from: a checkpoint path / registered model name, or a fresh preset
    # "<kind>:<preset>" (e.g. "codec:small", "sodec:small"). ``init`` wins when both are set.
    init: str | None = None
    preset: str | None = None
    # Codec weights to put into a SODEC model's codec and fidelity decoder D_a (the paper
    # initialises both from the pre-trained codec): a checkpoint path or registered name.
    init_codec: str | None = None
    # What the forward pass trains (SODEC models only): the whole graph ("sodec"), the codec
    # alone ("codec", stage 1), the SD VAE alone ("vae", pre-training a D_m with no public
    # weights), or D_m alone on the latent space's own latents ("decoder": distilling the small
    # preset's D_m from TAEF2's decoder).
    objective: str = "sodec"
    # "taef2": before training, D_m takes TAEF2's decoder weights where its layers match
    # (TAEDecoder.init_from; needs the weights folder). None: D_m as built or loaded.
    init_latent_decoder: str | None = None
    # "checkerboard": give the starting model's codec that entropy context (CodecConfig.context)
    # before training, a new module that starts as the plain hyperprior (its residual is zero),
    # all other weights kept. Fitted with the codec frozen, the bits shrink and the decoded
    # latents stay the same up to where they round (configs/codec-context.toml).
    codec_context: str | None = None
    # "replicate" or "zeros": before training, every network of the starting model pads its
    # convolutions that way at the image border (CodecConfig.padding and SodecConfig.padding,
    # models/padding.py), all weights kept. None: as the model was built or loaded.
    padding: str | None = None
    # fnmatch globs over parameter names; everything not matched is frozen (requires_grad False).
    train: tuple[str, ...] = ("*",)
    # Distortion terms and their weights (mse is on the 0..255 scale, like CompressAI's lambda).
    losses: dict[str, float] = field(default_factory=lambda: {"mse": 1.0})
    # loss = sum(w_k L_k) + lambda(step) * bpp; lambda moves from rate_weight to rate_weight_end.
    rate_weight: float = 0.0
    rate_weight_end: float | None = None
    anneal: str = "log"  # "linear" or "log" interpolation of lambda over the stage's steps
    # Instead of a lambda schedule, a rate target: lambda starts at rate_weight and is steered
    # toward the coded bpp the stage asks for, measured as rate_control says (see
    # Trainer.update_rate_weight).
    target_bpp: float | None = None
    rate_gain: float = 0.01  # log-lambda change per step per unit log(bpp / target), clipped
    # What the target is measured on: "crops" (each training batch) or "holdout" (the held-out
    # images, whole, every rate_every steps). Small crops can code at a very different rate
    # from whole images (measured: 0.13 vs 0.33 bpp, same model, same photos).
    rate_control: str = "crops"
    rate_every: int = 20
    lr: float = 1e-4
    lr_schedule: str = "cosine"  # "constant" or "cosine" (to lr/10 at the end)
    warmup_steps: int = 0
    aux_lr: float = 1e-3  # EntropyBottleneck quantiles (CompressAI's auxiliary loss)
    grad_clip: float = 1.0
    steps: int = 1000
    batch_size: int = 8
    crop: int = 128
    seed: int = 0
    # The crops and the per-step quantization noise follow this seed when given (``seed`` still
    # draws the held-out split), so a further leg from the same model sees new crops while its
    # rate target is measured on the same held-out photos as the legs before it.
    sample_seed: int | None = None
    data: str = "../shared/data/train"
    # More image folders trained on beside ``data`` (the held-out split is drawn over all of them).
    extra_data: tuple[str, ...] = ()
    holdout: float = 0.05
    # Share of training crops given a flat colour fill, block or thin frame reaching the crop
    # border (data.paint_flat_region): photos hold too few flat saturated areas and frames.
    flat_fraction: float = 0.0
    val_images: int = 4
    validate_every: int = 500
    checkpoint_every: int = 250
    log_every: int = 10
    # Discriminator learning rate (only used when losses has "gan").
    disc_lr: float = 1e-4
    # "bf16": the forward pass and losses under bfloat16 autocast (GPU training); the codec's
    # transforms and entropy models stay float32 inside it. "none": float32 throughout.
    amp: str = "none"
    # A wall-clock budget for the stage in seconds (0 = none): the stage ends at steps or at this
    # time, whichever comes first, and the lr / lambda schedules run on the larger of the two
    # fractions done, so a time-boxed run (a lent GPU) still anneals to its end values. The clock
    # starts when this process starts the stage: a resumed stage gets its whole budget again.
    max_seconds: float = 0.0

    @property
    def crop_seed(self) -> int:
        """The seed of the crop sampler and of the per-step noise: sample_seed, else seed."""
        return self.seed if self.sample_seed is None else self.sample_seed

    def __post_init__(self) -> None:
        unknown = set(self.losses) - set(KNOWN_LOSSES)
        if unknown:
            raise ValueError(f"stage {self.name!r}: unknown losses {sorted(unknown)}; known: {KNOWN_LOSSES}")
        if self.init is None and self.preset is None:
            raise ValueError(f"stage {self.name!r}: give init (a checkpoint) or preset (kind:preset)")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"stage {self.name!r}: objective is one of {OBJECTIVES}")
        # Terms the objective's forward pass cannot produce: "kl" would silently be left out of the
        # loss, "align" / "gan" would fail only at the first step (no x_f; no codec latent for D).
        cannot = {
            "sodec": {"kl", "distill"},
            "codec": {"kl", "align", "latent", "distill"},
            "vae": {"align", "gan", "latent", "distill"},
            "decoder": {"kl", "align", "gan", "latent"},
        }[self.objective]
        unusable = cannot & set(self.losses)
        if unusable:
            raise ValueError(f"stage {self.name!r}: objective {self.objective!r} cannot use losses {sorted(unusable)}")
        if self.anneal not in ("linear", "log") or self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"stage {self.name!r}: anneal is linear|log, lr_schedule constant|cosine")
        if self.target_bpp is not None and not (
            self.target_bpp > 0 and self.rate_weight > 0 and self.rate_weight_end is None and self.rate_gain > 0
        ):
            raise ValueError(
                f"stage {self.name!r}: target_bpp > 0 needs a starting rate_weight > 0, rate_gain > 0 and no rate_weight_end"
            )
        if self.rate_control not in ("crops", "holdout") or self.rate_every < 1:
            raise ValueError(f"stage {self.name!r}: rate_control is crops|holdout, rate_every >= 1")
        if (
            self.rate_control == "holdout"
            and self.target_bpp is not None
            and not (self.holdout > 0 and self.val_images > 0)
        ):
            raise ValueError(f"stage {self.name!r}: rate_control = holdout needs holdout > 0 and val_images > 0")
        if self.amp not in ("none", "bf16") or self.max_seconds < 0:
            raise ValueError(f"stage {self.name!r}: amp is none|bf16, max_seconds >= 0")
        if self.init_latent_decoder not in (None, "taef2"):
            raise ValueError(f"stage {self.name!r}: init_latent_decoder is 'taef2' or absent")
        if not 0.0 <= self.flat_fraction <= 1.0:
            raise ValueError(f"stage {self.name!r}: flat_fraction is in [0, 1]")
        if self.padding not in (None, "zeros", "replicate"):
            raise ValueError(f"stage {self.name!r}: padding is 'zeros', 'replicate' or absent")
        if self.steps < 1 or self.batch_size < 1 or self.crop < 64 or self.crop % 64:
            raise ValueError(f"stage {self.name!r}: steps, batch_size >= 1 and crop a multiple of 64")

    def rate_weight_at(self, step: int, done: float | None = None) -> float:
        """lambda for ``step`` (0-based): the annealing schedule of paper Sec. 3.4.

        ``done`` (0..1) overrides the fraction step / (steps - 1) (a time-boxed stage). With
        ``target_bpp`` this is only the starting value; the trainer steers lambda from there.
        """
        end = self.rate_weight if self.rate_weight_end is None else self.rate_weight_end
        t = min(1.0, step / max(1, self.steps - 1) if done is None else done)
        if t >= 1.0:
            return float(end)  # exactly the configured target (a * (b / a) ** 1 can miss b by an ulp)
        if self.anneal == "log" and self.rate_weight > 0 and end > 0:
            return float(self.rate_weight * (end / self.rate_weight) ** t)
        return float(self.rate_weight + (end - self.rate_weight) * t)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


def stage_from_dict(d: dict[str, Any], base_dir: Path | None = None) -> StageConfig:
    d = dict(d)
    if base_dir is not None:
        # Paths in a stage file are relative to that file, so configs work from any folder.
        for key in ("data", "init", "init_codec"):
            v = d.get(key)
            if isinstance(v, str) and (v.startswith("./") or v.startswith("../")):
                d[key] = str((base_dir / v).resolve())
        if isinstance(d.get("extra_data"), list):
            d["extra_data"] = [
                str((base_dir / v).resolve()) if isinstance(v, str) and v.startswith((".", "..")) else v
                for v in d["extra_data"]
            ]
    if "losses" in d:
        d["losses"] = {k: float(v) for k, v in d["losses"].items()}
    return from_dict(StageConfig, d)


def load_stage(path: str | Path, **overrides: Any) -> StageConfig:
    path = Path(path)
    with open(path, "rb") as f:
        data = tomllib.load(f)
    if "stage" in data and isinstance(data["stage"], list):
        raise ValueError(f"{path} is a schedule (several [[stage]]); use load_schedule")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return stage_from_dict(data, path.parent)


def load_schedule(path: str | Path, **overrides: Any) -> list[StageConfig]:
    """A TOML file with ``[defaults]`` and several ``[[stage]]`` tables, run in order.

    A stage without ``init`` or ``preset`` starts from the previous stage's final checkpoint
    (filled in by the trainer at run time, since that path only exists then).
    """
    path = Path(path)
    with open(path, "rb") as f:
        data = tomllib.load(f)
    defaults = data.get("defaults", {})
    stages = []
    for i, table in enumerate(data.get("stage", [])):
        merged = {**defaults, **table, **{k: v for k, v in overrides.items() if v is not None}}
        if i > 0 and "init" not in table and "preset" not in table:
            merged["init"] = "@previous"
        stages.append(stage_from_dict(merged, path.parent))
    if not stages:
        raise ValueError(f"{path}: no [[stage]] tables")
    return stages
