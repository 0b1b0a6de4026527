"""Safetensors checkpoints that carry their config, and sha256 checks before use.

A checkpoint is one ``.safetensors`` file: the model's ``state_dict`` plus string metadata
``sodec.format`` (this layout's version), ``sodec.kind`` (which model class) and
``sodec.config`` (the frozen config as JSON). Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import config as config_mod
from .errors import WeightsError
from .fileio import atomic_write_via  # re-exported: trainer and older callers import it from here

FORMAT = "1"

# kind -> (config class, builder). Model modules register themselves here so this file does not
# import diffusers/timm for a plain codec.
_BUILDERS: dict[str, Callable[[Any], nn.Module]] = {}


def register_kind(kind: str, builder: Callable[[Any], nn.Module]) -> None:
    _BUILDERS[kind] = builder


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    kind: str,
    cfg: Any,
    extra: dict[str, str] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> str:
    """Write ``model``'s weights with its config; returns the file's sha256."""
    if state_dict is None:
        # Paper-preset SODEC models leave the frozen SD weights out (they load from base_weights).
        own = getattr(model, "checkpoint_state_dict", None)
        state_dict = own() if own is not None else model.state_dict()
    sd = state_dict
    tensors = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    meta = {"sodec.format": FORMAT, "sodec.kind": kind, "sodec.config": config_mod.to_json(cfg)}
    meta.update(extra or {})
    atomic_write_via(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return sha256_file(path)


def read_checkpoint(
    path: str | os.PathLike[str], expected_sha256: str | None = None
) -> tuple[str, Any, dict[str, torch.Tensor], dict[str, str]]:
    """-> (kind, config, state_dict, metadata); sha256 is checked before anything is parsed."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if expected_sha256 is not None:
        got = sha256_file(path)
        if got != expected_sha256:
            raise WeightsError(f"{path.name}: sha256 {got[:12]}… does not match the expected {expected_sha256[:12]}…")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path.name}: not a readable safetensors checkpoint ({e})") from None
    if meta.get("sodec.format") != FORMAT or "sodec.kind" not in meta or "sodec.config" not in meta:
        raise WeightsError(f"{path.name}: not a sodec checkpoint (missing sodec.* metadata)")
    try:
        cfg = config_mod.from_json(meta["sodec.config"])
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path.name}: bad config in checkpoint ({e})") from None
    return meta["sodec.kind"], cfg, state, meta


def build_model(kind: str, cfg: Any, **kwargs: Any) -> nn.Module:
    if kind not in _BUILDERS:
        # Import lazily so that registering kinds never costs a diffusers import for codecs.
        from .models import registry_kinds  # noqa: F401

    if kind not in _BUILDERS:
        raise WeightsError(f"unknown model kind {kind!r}")
    return _BUILDERS[kind](cfg, **kwargs)


def load_checkpoint(
    path: str | os.PathLike[str], expected_sha256: str | None = None, **build_kwargs: Any
) -> tuple[nn.Module, dict[str, str]]:
    """Rebuild the model from its own config and load the weights strictly.

    ``build_kwargs`` go to the model's constructor (e.g. ``base_weights=DIR`` for a paper-preset
    SODEC model whose frozen SD weights live in a diffusers folder)."""
    from .models.vae_codec import tables_from_checkpoint

    kind, cfg, state, meta = read_checkpoint(path, expected_sha256)
    with tables_from_checkpoint():  # the file holds the entropy models' tables
        model = build_model(kind, cfg, **build_kwargs)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, ValueError) as e:
        first = str(e).splitlines()[0][:200]
        raise WeightsError(f"{Path(path).name}: weights do not fit the {kind} config ({first})") from None
    model.eval()
    return model, meta
