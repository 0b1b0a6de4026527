"""Registers every model kind with :mod:`sodec.checkpoint` (imported lazily)."""

from __future__ import annotations

from ..checkpoint import register_kind
from .vae_codec import VAECodec

register_kind("codec", VAECodec)
