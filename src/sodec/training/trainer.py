"""The one training entry point: runs any :class:`StageConfig`, on one process or many.

Multi-process data parallel runs go through ``torchrun`` (torch.distributed + DDP): the same
command works on one CPU, several GPUs (NCCL) or several nodes; CPU processes use gloo. Each rank
draws its own crops (the sampler is a function of seed, step, rank), gradients are averaged by DDP,
rank 0 writes checkpoints and logs.

Run folder layout::

    stage.json              the resolved stage config
    train_state.safetensors model + optimizer state + step (resume point, every N steps)
    model.safetensors       final weights with config (what scripts/ship_model.py ships)
    model.sha256
    log.csv                 step, loss terms, bpp estimate, lambda, lr, s/step
    val.csv                 validation: bpp from real bytes, PSNR
"""

from __future__ import annotations

import csv
import fnmatch
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoint import atomic_write_via, build_model, load_checkpoint, save_checkpoint
from ..config import from_dict
from ..data import CropSampler, list_images, load_rgb, split_holdout
from ..losses import PerceptualLosses, bpp, distortion_terms
from .stages import StageConfig

PERCEPTUAL = ("lpips_alex", "lpips_vgg", "dists")


@dataclass
class StageResult:
    run_dir: Path
    checkpoint: Path
    sha256: str
    steps: int
    seconds: float
    last: dict[str, float]


def _dist() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; initialises the group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world, int(os.environ.get("LOCAL_RANK", "0"))


def _model_kind(model: nn.Module) -> str:
    from ..models.vae_codec import VAECodec

    return "codec" if isinstance(model, VAECodec) else "sodec"


def build_stage_model(
    stage: StageConfig, previous: Path | None = None, weights_dir: str | None = None
) -> tuple[nn.Module, str]:
    """The stage's starting model: a checkpoint (or the previous stage's), or a fresh preset."""
    init = stage.init
    if init == "@previous":
        if previous is None:
            raise ValueError(f"stage {stage.name!r} starts from the previous stage, but there is none")
        init = str(previous)
    if init is not None:
        path = Path(init)
        if not path.is_file():
            from .. import registry

            path = registry.resolve(init).path
        model, meta = load_checkpoint(path)
        kind = meta["sodec.kind"]
    else:
        kind, _, preset = (stage.preset or "").partition(":")
        from ..models.presets import preset_config

        model = build_model(kind, preset_config(kind, preset))
    if stage.init_codec is not None:
        _load_codec_into(model, stage.init_codec)
    if stage.init_latent_decoder is not None:
        _init_latent_decoder(model, weights_dir)
    if stage.codec_context is not None:
        model = _with_codec_context(model, kind, stage.codec_context)
    if stage.padding is not None:
        model = _with_padding(model, kind, stage.padding)
    return model, kind


def _with_padding(model: nn.Module, kind: str, padding: str) -> nn.Module:
    """The same model with every network padding by ``padding`` at the border (stage
    ``padding``): its configs say so, so the checkpoint it saves rebuilds that way; every weight
    and buffer is kept (models/padding.py changes no parameter)."""
    import dataclasses

    from ..models.padding import set_padding

    cfg = model.cfg  # type: ignore[union-attr]
    if kind == "codec":
        model.cfg = dataclasses.replace(cfg, padding=padding)  # type: ignore[union-attr]
    else:
        model.cfg = dataclasses.replace(cfg, padding=padding, codec=dataclasses.replace(cfg.codec, padding=padding))  # type: ignore[union-attr]
        model.codec.cfg = model.cfg.codec  # type: ignore[union-attr]
    return set_padding(model, padding)


def _with_codec_context(model: nn.Module, kind: str, context: str) -> nn.Module:
    """The same model with its codec's entropy context set to ``context`` (stage
    ``codec_context``): rebuilt from the changed config, every existing weight kept; the new
    context model starts at zero residual, i.e. as the plain hyperprior."""
    import dataclasses

    from ..models.vae_codec import tables_from_checkpoint

    codec_cfg = model.cfg if kind == "codec" else model.cfg.codec  # type: ignore[union-attr]
    if codec_cfg.context == context:
        return model
    if codec_cfg.context != "none":
        raise ValueError(f"codec_context: the codec already has context {codec_cfg.context!r}")
    new_codec = dataclasses.replace(codec_cfg, context=context)
    cfg = new_codec if kind == "codec" else dataclasses.replace(model.cfg, codec=new_codec)  # type: ignore[arg-type]
    with tables_from_checkpoint():  # the tables come from the old model's state
        new = build_model(kind, cfg)
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(".context_model." not in f".{k}" for k in missing):
        raise ValueError(f"codec_context: weights do not carry over ({unexpected[:3]}, {missing[:3]})")
    return new


def _init_latent_decoder(model: nn.Module, weights_dir: str | None) -> None:
    """D_m <- TAEF2's decoder where the layers match (stage ``init_latent_decoder = "taef2"``)."""
    from ..models.taef2 import load_taef2

    if getattr(getattr(model, "cfg", None), "latent_decoder", None) is None:
        raise ValueError("init_latent_decoder: the model has no TAE latent decoder (small preset only)")
    _, teacher = load_taef2(weights_dir, parts=("decoder",))
    model.diffusion.latent_decoder.init_from(teacher)  # type: ignore[union-attr]


def _load_codec_into(model: nn.Module, source: str) -> None:
    """Copy a trained codec into a SODEC model: its codec, and D_a initialised from g_s."""
    from .. import registry

    path = Path(source) if Path(source).is_file() else registry.resolve(source).path
    codec, meta = load_checkpoint(path)
    if meta["sodec.kind"] != "codec" or not hasattr(model, "codec"):
        raise ValueError(f"init_codec: {path} is not a codec checkpoint, or the model has no codec")
    if codec.cfg != model.codec.cfg:  # type: ignore[union-attr]
        raise ValueError("init_codec: the codec's config differs from the model's codec config")
    model.codec.load_state_dict(codec.state_dict())  # type: ignore[union-attr]
    model.fidelity_decoder.load_state_dict(codec.g_s.state_dict())  # type: ignore[union-attr]


def _latent_space_nets(
    model: nn.Module, stage: StageConfig, weights_dir: str | None
) -> tuple[nn.Module, nn.Module | None]:
    """(frozen TAEF2 encoder, frozen TAEF2 decoder or None) for latent targets and distillation."""
    from ..models.taef2 import load_taef2

    if getattr(getattr(model, "cfg", None), "latent_space", None) != "taef2":
        raise ValueError(f"stage {stage.name!r}: latent/distill losses need a model in TAEF2's latent space")
    parts = ("encoder", "decoder") if "distill" in stage.losses else ("encoder",)
    enc, dec = load_taef2(weights_dir, parts=parts)
    return enc, dec


def select_trainable(model: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """requires_grad = matches any glob; returns the trainable names (an empty match is an error)."""
    names = []
    for name, p in model.named_parameters():
        p.requires_grad_(any(fnmatch.fnmatchcase(name, pat) for pat in patterns))
        if p.requires_grad:
            names.append(name)
    if not names:
        raise ValueError(f"no parameter matches train = {list(patterns)}")
    return names


def _lr_at(stage: StageConfig, step: int, done: float | None = None) -> float:
    """lr at ``step``: linear warm-up, then constant or cosine to lr/10 over the fraction done
    (step / (steps - 1), or ``done`` for a time-boxed stage)."""
    if stage.warmup_steps and step < stage.warmup_steps:
        return stage.lr * (step + 1) / stage.warmup_steps
    if stage.lr_schedule == "constant":
        return stage.lr
    t = min(1.0, step / max(1, stage.steps - 1) if done is None else done)
    return stage.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def _flatten_optim(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{prefix}.{idx}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return tensors, {"param_groups": sd["param_groups"]}


def _unflatten_optim(
    prefix: str, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith(prefix + "."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _drop_rows_after(path: Path, step: int) -> None:
    """Keep a CSV log's rows up to ``step`` (its first column), where this run (re)starts.

    Steps after the last checkpoint are trained again on resume, and a fresh start (step 0) begins
    a new log: either way the old rows past ``step`` would otherwise appear twice or mix runs.
    """
    if not path.is_file():
        return
    if step == 0:
        path.unlink()
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    keep = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= step]
    if len(keep) != len(rows):

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                csv.writer(f).writerows(keep)

        atomic_write_via(path, write)


def same_stage(saved: str, stage: StageConfig) -> bool:
    """Whether a run folder's stage (its JSON) is ``stage``. Fields a newer sodec added, absent
    from the saved JSON, count as their defaults: a run is not orphaned by a new option."""
    try:
        return from_dict(StageConfig, json.loads(saved)) == stage
    except (ValueError, TypeError):
        return False


class Trainer:
    """Runs one stage; ``run()`` resumes from ``train_state.safetensors`` when present."""

    def __init__(
        self,
        stage: StageConfig,
        run_dir: str | Path,
        previous: Path | None = None,
        weights_dir: str | None = None,
        progress: bool = True,
        device: str | None = None,
    ) -> None:
        self.stage = stage
        self.run_dir = Path(run_dir)
        self.rank, self.world, local = _dist()
        if device is None:
            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.progress = progress and self.rank == 0
        # A fresh preset's random init (and the discriminator's) follows the stage's seed, not
        # whatever the caller's RNG held: the same stage file starts from the same weights, so a
        # rerun reproduces a run, and every DDP rank builds the same model.
        torch.manual_seed(stage.seed)
        self.model, self.kind = build_stage_model(stage, previous, weights_dir)
        # The codec inside the model (the model itself for a plain codec).
        self.codec: nn.Module = self.model if self.kind == "codec" else self.model.codec  # type: ignore[assignment]
        self.model.to(self.device).train()
        self.trainable = select_trainable(self.model, stage.train)
        main = [p for n, p in self.model.named_parameters() if p.requires_grad and not n.endswith("quantiles")]
        aux = [p for n, p in self.model.named_parameters() if p.requires_grad and n.endswith("quantiles")]
        self.opt = torch.optim.AdamW(main, lr=stage.lr, weight_decay=0.0) if main else None
        self.aux_opt = torch.optim.Adam(aux, lr=stage.aux_lr) if aux else None
        names = [k for k in stage.losses if k in PERCEPTUAL]
        self.perceptual = PerceptualLosses(names, weights_dir).to(self.device) if names else None
        # The latent space's frozen encoder (target latents) and, for "distill", its decoder:
        # loss networks, like LPIPS, so they never enter a checkpoint.
        self.latent_encoder = self.teacher_decoder = None
        if stage.objective == "decoder" or {"latent", "distill"} & set(stage.losses):
            self.latent_encoder, self.teacher_decoder = _latent_space_nets(self.model, stage, weights_dir)
            self.latent_encoder.to(self.device)
            if self.teacher_decoder is not None:
                self.teacher_decoder.to(self.device).requires_grad_(False)
        if self.device.type == "cuda":
            # TF32 matmuls/convs for what runs in float32 (the codec): ~8x fp32 on Hopper.
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True  # fixed crop size: pick the fastest kernels once
        self.started = time.time()
        self.disc = self.disc_opt = None
        if "gan" in stage.losses:
            from ..losses import PatchDiscriminator

            self.disc = PatchDiscriminator(self.codec.cfg.latent_channels).to(self.device)  # type: ignore[union-attr]
            self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=stage.disc_lr, betas=(0.5, 0.999))
        self.ddp: nn.Module = self.model
        if self.world > 1:
            ignore = [n for n, _ in self.model.named_parameters() if n.endswith("quantiles")]
            # Quantiles train on a data-independent aux loss: identical on every rank, no sync.
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.model, ignore)
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False,
                find_unused_parameters=True,
            )
            if self.disc is not None:
                self.disc = nn.parallel.DistributedDataParallel(self.disc, broadcast_buffers=False)
        files = list_images(stage.data) + [f for d in stage.extra_data for f in list_images(d)]
        train_files, held = split_holdout(files, stage.holdout, stage.seed)
        self.sampler = CropSampler(train_files, stage.crop, stage.crop_seed, stage.flat_fraction)
        # Validation codes real files, which says nothing while only the VAE trains.
        self.val_files = held[: stage.val_images] if stage.objective != "vae" else []
        self.rate_images: list[torch.Tensor] = []
        if stage.target_bpp is not None and stage.rate_control == "holdout":
            for f in self.val_files:
                img = load_rgb(f)
                h, w = img.shape[0] // 64 * 64, img.shape[1] // 64 * 64  # whole, no padding
                if h and w:
                    t = torch.from_numpy(np.array(img[:h, :w])).permute(2, 0, 1)[None]  # a writable copy
                    self.rate_images.append(t.float().div(255).to(self.device))  # (1, 3, h, w)
            if not self.rate_images:
                raise ValueError(f"stage {stage.name!r}: no held-out image of 64 px or more to measure the rate on")
        self.step = 0
        self.finished = False
        self.rate_weight = stage.rate_weight_at(0)  # lambda; steered when the stage has a target_bpp

    # -- state ----------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.run_dir / "train_state.safetensors"

    def save_state(self) -> None:
        if self.rank != 0:
            return
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        meta: dict[str, Any] = {
            "step": self.step,
            "stage": self.stage.to_json(),
            "rate_weight": self.rate_weight,
            # A time-boxed stage ends before its steps: a resumed schedule must not rerun it.
            "finished": self.finished,
        }
        for prefix, opt in (("opt", self.opt), ("aux", self.aux_opt), ("dopt", self.disc_opt)):
            if opt is not None:
                t, m = _flatten_optim(prefix, opt)
                tensors.update({k: v.cpu().contiguous() for k, v in t.items()})
                meta[prefix] = m
        if self.disc is not None:
            disc = self.disc.module if hasattr(self.disc, "module") else self.disc
            tensors.update({f"disc.{k}": v.detach().cpu().contiguous() for k, v in disc.state_dict().items()})
        atomic_write_via(
            self.state_path, lambda tmp: save_file(tensors, tmp, metadata={"sodec.train": json.dumps(meta)})
        )

    def load_state(self) -> bool:
        if not self.state_path.is_file():
            return False
        from safetensors import safe_open

        with safe_open(str(self.state_path), framework="pt") as f:
            meta = json.loads(f.metadata()["sodec.train"])
        tensors = load_file(str(self.state_path))
        if not same_stage(meta["stage"], self.stage):
            raise ValueError(f"{self.state_path} was written by a different stage config; use a new run folder")
        model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(model_sd, strict=True)
        for prefix, opt in (("opt", self.opt), ("aux", self.aux_opt), ("dopt", self.disc_opt)):
            if opt is not None:
                _unflatten_optim(prefix, opt, tensors, meta[prefix])
        if self.disc is not None:
            disc = self.disc.module if hasattr(self.disc, "module") else self.disc
            disc.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("disc.")})
        self.step = int(meta["step"])
        self.rate_weight = float(meta.get("rate_weight", self.stage.rate_weight_at(self.step)))
        return True

    # -- one step -------------------------------------------------------------------------------

    def done_fraction(self) -> float | None:
        """How much of a time-boxed stage is done (max of steps and seconds); None otherwise."""
        if not self.stage.max_seconds:
            return None
        by_time = (time.time() - self.started) / self.stage.max_seconds
        return min(1.0, max(self.step / max(1, self.stage.steps - 1), by_time))

    def train_step(self, x: torch.Tensor) -> dict[str, float]:
        stage = self.stage
        done = self.done_fraction()
        lam = self.rate_weight if stage.target_bpp is not None else stage.rate_weight_at(self.step, done)
        lr = _lr_at(stage, self.step, done)
        if self.opt is not None:
            for g in self.opt.param_groups:
                g["lr"] = lr
        codec = self.codec
        codec.coded_bits = None
        target_latent = teacher_image = None
        if self.latent_encoder is not None:
            with torch.no_grad():
                target_latent = self.latent_encoder(x)  # (B, 32, H/8, W/8)
                if self.teacher_decoder is not None:
                    teacher_image = self.teacher_decoder(target_latent)  # (B, 3, H, W)
        use_amp = stage.amp == "bf16" and self.kind != "codec"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            if self.kind == "codec":
                out = self.ddp(x)
            elif stage.objective == "decoder":
                out = self.ddp(x, objective="decoder", target_latent=target_latent)
            else:
                out = self.ddp(x, objective=stage.objective)
            n_pix = x.size(0) * x.size(2) * x.size(3)
            # bits of the rounded latents (what entropy coding spends) when the codec ran
            coded = None if codec.coded_bits is None else codec.coded_bits / n_pix
            # No likelihoods while only the VAE or D_m trains: the rate term is then zero.
            rate = bpp(out.likelihoods, n_pix) if out.likelihoods else x.new_zeros(())
            x_hat = out.x_hat.float()
            terms = distortion_terms(stage.losses, x, x_hat, getattr(out, "x_fidelity", None), self.perceptual)
            if "latent" in stage.losses:
                # Paper Sec. 3.4: the one-step output's latent against the latent space's own
                # encoding of the image (MSE per element).
                terms["latent"] = torch.nn.functional.mse_loss(out.latent.float(), target_latent)  # type: ignore[union-attr]
            if "distill" in stage.losses:
                terms["distill"] = torch.nn.functional.mse_loss(x_hat, teacher_image) * 255.0**2
        for k, v in (getattr(out, "extra_losses", None) or {}).items():
            if k in stage.losses:
                terms[k] = v
        loss = sum(stage.losses[k] * v.float() for k, v in terms.items()) + lam * rate
        if not torch.isfinite(loss):
            # Going on would only write NaN weights into every later checkpoint.
            raise FloatingPointError(
                f"stage {stage.name!r}: non-finite loss at step {self.step} "
                f"({ {k: float(v.detach()) for k, v in terms.items()} }); lower lr or resume from the last checkpoint"
            )
        if self.disc is not None:
            g_adv = self.disc(x_hat, out.y_hat.detach())
            terms["gan"] = torch.nn.functional.softplus(-g_adv).mean()
            loss = loss + stage.losses["gan"] * terms["gan"]
        if self.opt is not None:
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            params = [p for g in self.opt.param_groups for p in g["params"]]
            if stage.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, stage.grad_clip)
            self.opt.step()
        if self.disc is not None and self.disc_opt is not None:
            real = self.disc(x, out.y_hat.detach())
            fake = self.disc(x_hat.detach(), out.y_hat.detach())
            d_loss = torch.nn.functional.softplus(-real).mean() + torch.nn.functional.softplus(fake).mean()
            self.disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.disc_opt.step()
            terms["disc"] = d_loss.detach()
        if self.aux_opt is not None:
            aux_loss = self.model.aux_loss()  # type: ignore[operator]
            self.aux_opt.zero_grad(set_to_none=True)
            aux_loss.backward()
            self.aux_opt.step()
            terms["aux"] = aux_loss.detach()
        rec = {k: float(v.detach()) for k, v in terms.items()}
        rec.update(loss=float(loss.detach()), bpp_est=float(rate.detach()), rate_weight=lam, lr=lr)
        if coded is not None:
            rec["bpp_coded"] = float(coded)
        if stage.target_bpp is not None and stage.rate_control == "crops":
            # Steered by the coded rate: the noisy proxy can be off by 2x at low rates.
            self.rate_weight = self.update_rate_weight(coded if coded is not None else rate.detach())
        elif stage.target_bpp is not None:
            rec["bpp_holdout"] = float("nan")  # a column in every row; measured every rate_every steps
            if (self.step + 1) % stage.rate_every == 0:
                rec["bpp_holdout"] = self.holdout_coded_bpp()
                self.rate_weight = self.update_rate_weight(torch.tensor(rec["bpp_holdout"]), steps=stage.rate_every)
        return rec

    def holdout_coded_bpp(self) -> float:
        """Coded bpp of the held-out images, whole (rate_control = "holdout"), header excluded."""
        codec = self.codec
        bits = pixels = 0.0
        with torch.no_grad():
            for x in self.rate_images:
                codec.encode_latents(x)  # in training mode: records coded_bits
                bits += float(codec.coded_bits)  # type: ignore[arg-type]
                pixels += x.shape[-2] * x.shape[-1]
        return bits / pixels

    def update_rate_weight(self, rate: torch.Tensor, steps: int = 1) -> float:
        """Steer lambda toward ``target_bpp`` (a rate target instead of a lambda schedule).

        log lambda moves by ``rate_gain * clip(log(bpp / target), -1, 1)`` per step: up while the
        batch's coded rate (bits of the rounded latents under the model's own entropy model,
        i.e. what the entropy coder writes, less the container header) is above the target, down
        below it. The gain averages the noisy per-batch rate over ~1/gain steps. Every DDP rank uses the mean rate of all ranks, so
        lambda (and the weights) stay identical across ranks; lambda is saved with the train state,
        so resume continues from the same value. With rate_control = "holdout" the rate is that of
        the held-out images, measured every ``rate_every`` steps, and one update covers them all.
        """
        r = rate.detach().double().reshape(1).clone()
        if self.world > 1:
            dist.all_reduce(r)
            r /= self.world
        target = float(self.stage.target_bpp)  # type: ignore[arg-type]
        err = max(-1.0, min(1.0, math.log(max(float(r), 1e-9) / target)))
        return float(self.rate_weight * math.exp(self.stage.rate_gain * steps * err))

    # -- validation -----------------------------------------------------------------------------

    def validate(self) -> dict[str, float]:
        """bpp from real .sodec bytes (header included) and PSNR on the held-out images."""
        from .. import api

        self.model.eval()
        try:
            self.model.update(force=True)  # type: ignore[operator]
        except AttributeError:
            self.model.codec.update(force=True)  # type: ignore[union-attr,operator]
        m = api.Model(self.model.cpu() if self.device.type != "cpu" else self.model, self.kind, "train", "0" * 64)
        bpps, psnrs = [], []
        for f in self.val_files:
            img = load_rgb(f)
            data = api.compress(m, img)
            rec = api.decompress(data, m)
            bpps.append(8 * len(data) / (img.shape[0] * img.shape[1]))
            mse = np.mean((rec.astype(np.float64) - img.astype(np.float64)) ** 2)
            psnrs.append(10 * math.log10(255**2 / max(mse, 1e-10)))
        self.model.to(self.device).train()
        return {
            "val_bpp": float(np.mean(bpps)) if bpps else float("nan"),
            "val_psnr": float(np.mean(psnrs)) if psnrs else float("nan"),
        }

    # -- loop -----------------------------------------------------------------------------------

    def run(self, resume: bool = True) -> StageResult:
        stage = self.stage
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            (self.run_dir / "stage.json").write_text(stage.to_json())
        if resume and self.load_state() and self.rank == 0:
            print(f"[{stage.name}] resumed at step {self.step}", file=sys.stderr)
        log_path = self.run_dir / "log.csv"
        if self.rank == 0:
            for path in (log_path, self.run_dir / "val.csv"):
                _drop_rows_after(path, self.step)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=stage.steps, initial=self.step, desc=stage.name, dynamic_ncols=True, file=sys.stderr)
        t_start = time.time()
        rec: dict[str, float] = {}
        writer = None
        self.started = time.time()
        while self.step < stage.steps:
            if stage.max_seconds and time.time() - self.started >= stage.max_seconds:
                break
            # Noise (quantization proxy) is seeded per step: resume repeats the same draws.
            torch.manual_seed(hash((stage.crop_seed, self.step, self.rank)) & 0x7FFFFFFF)
            x = self.sampler.batch(self.step, stage.batch_size, self.rank).to(self.device)
            t0 = time.time()
            rec = self.train_step(x)
            rec["s_per_step"] = time.time() - t0
            self.step += 1
            if self.rank == 0 and (self.step % stage.log_every == 0 or self.step == stage.steps):
                new = not log_path.exists()
                with open(log_path, "a", newline="") as f:
                    if writer is None or new:
                        writer = sorted(rec)
                    w = csv.writer(f)
                    if new:
                        w.writerow(["step", *writer])
                    w.writerow([self.step, *(f"{rec.get(k, float('nan')):.6g}" for k in writer)])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.3g}", bpp=f"{rec['bpp_est']:.3f}", s=f"{rec['s_per_step']:.2f}")
            if self.step % stage.checkpoint_every == 0 and self.step < stage.steps:
                self.save_state()
            if self.rank == 0 and self.val_files and stage.validate_every and self.step % stage.validate_every == 0:
                self._log_val()
        if bar is not None:
            bar.close()
        self.finished = True
        self.save_state()
        return self.finish(time.time() - t_start, rec)

    def _log_val(self) -> dict[str, float]:
        v = self.validate()
        path = self.run_dir / "val.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "val_bpp", "val_psnr"])
            w.writerow([self.step, f"{v['val_bpp']:.5f}", f"{v['val_psnr']:.3f}"])
        print(
            f"[{self.stage.name}] step {self.step}: val bpp {v['val_bpp']:.4f} PSNR {v['val_psnr']:.2f}",
            file=sys.stderr,
        )
        return v

    def finish(self, seconds: float, rec: dict[str, float]) -> StageResult:
        ckpt = self.run_dir / "model.safetensors"
        sha = ""
        if self.rank == 0:
            last = dict(rec)
            self.model.eval()
            # The shipped file must code: its entropy tables are built here whether or not a
            # validation pass (which also builds them) ran.
            self.codec.update(force=True)  # type: ignore[operator]
            cfg = self.model.cfg  # type: ignore[attr-defined]
            # Saved before the last validation: an hour's weights must not hang on a pass that
            # only reports (one failed when the library changed under a running job).
            sha = save_checkpoint(ckpt, self.model, self.kind, cfg, {"sodec.stage": self.stage.name})
            (self.run_dir / "model.sha256").write_text(f"{sha}  model.safetensors\n")
            every = self.stage.validate_every
            if self.val_files and not (every and self.step % every == 0):  # else run() just did it
                last.update(self._log_val())
                self.model.eval()  # validate() hands the model back in train mode
            rec = last
        if dist.is_initialized():
            dist.barrier()
        return StageResult(self.run_dir, ckpt, sha, self.step, seconds, rec)


def run_stage(stage: StageConfig, run_dir: str | Path, **kw: Any) -> StageResult:
    resume = kw.pop("resume", True)
    return Trainer(stage, run_dir, **kw).run(resume=resume)


def run_schedule(stages: list[StageConfig], run_dir: str | Path, **kw: Any) -> list[StageResult]:
    """Run stages in order; each ``@previous`` init takes the last stage's final checkpoint."""
    results: list[StageResult] = []
    previous: Path | None = None
    for i, stage in enumerate(stages):
        sub = Path(run_dir) / f"{i + 1}-{stage.name}"
        done = sub / "model.safetensors"
        if kw.get("resume", True) and done.is_file() and (sub / "train_state.safetensors").is_file():
            # A finished stage is not rerun on resume.
            from safetensors import safe_open

            with safe_open(str(sub / "train_state.safetensors"), framework="pt") as f:
                meta = json.loads(f.metadata()["sodec.train"])
            # Only when it is the same stage: an edited one goes on to run_stage, which refuses
            # the folder (a different stage config) instead of silently keeping the old result.
            if (meta["step"] >= stage.steps or meta.get("finished")) and same_stage(meta["stage"], stage):
                previous = done
                continue
        res = run_stage(stage, sub, previous=previous, **kw)
        results.append(res)
        previous = res.checkpoint
    return results
