"""Registers every model kind with :mod:`sodec.checkpoint` (imported lazily)."""

from __future__ import annotations

from ..checkpoint import register_kind
from .vae_codec import VAECodec

register_kind("codec", VAECodec)


def _sodec(cfg, **kw):
    # Imported on first use: diffusers/timm cost seconds to import and a codec never needs them.
    from .sodec import SodecModel

    return SodecModel(cfg, **kw)


register_kind("sodec", _sodec)
