"""Preset configs by (kind, name): what ``preset = "codec:small"`` in a stage file means."""

from __future__ import annotations

from typing import Any

from ..config import CODEC_PRESETS


def preset_config(kind: str, name: str) -> Any:
    if kind == "codec":
        if name not in CODEC_PRESETS:
            raise ValueError(f"unknown codec preset {name!r}; known: {sorted(CODEC_PRESETS)}")
        return CODEC_PRESETS[name]
    if kind == "sodec":
        from ..config import SODEC_PRESETS  # type: ignore[attr-defined]

        if name not in SODEC_PRESETS:
            raise ValueError(f"unknown sodec preset {name!r}; known: {sorted(SODEC_PRESETS)}")
        return SODEC_PRESETS[name]
    raise ValueError(f"unknown model kind {kind!r} (codec or sodec)")
