"""Tiled synthesis with overlap and linear blending: bounded memory at any image size.

Decoders (the codec's g_s, SODEC's diffusion decoder) run on overlapping windows of the latent;
each window's pixels are weighted by a ramp across the overlap and the weights renormalised, so
seams vanish. An image that fits in one tile is decoded in one call, identical to no tiling.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _starts(n: int, tile: int, stride: int, align: int) -> list[int]:
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile, stride))
    last = (n - tile) // align * align
    if not starts or starts[-1] != last:
        starts.append(last)
    return starts


def _ramp(length: int, ramp: int, at_start: bool, at_end: bool) -> Tensor:
    w = torch.ones(length)
    if ramp > 0:
        r = (torch.arange(ramp, dtype=torch.float32) + 0.5) / ramp
        if not at_start:
            w[:ramp] = r
        if not at_end:
            w[length - ramp :] = r.flip(0)
    return w


def tiled_decode(
    fn: Callable[..., Tensor],
    latents: tuple[Tensor, ...],
    scale: int,
    tile: int,
    overlap: int,
    align: int = 4,
) -> Tensor:
    """Apply ``fn(*latent_windows) -> (1, 3, scale*h, scale*w)`` over overlapping windows.

    ``latents`` share their spatial size (h, w); ``tile`` and ``overlap`` are in latent units
    and multiples of ``align`` (the decoder's own downsampling needs).
    """
    h, w = latents[0].shape[-2:]
    if h <= tile and w <= tile:
        return fn(*latents)
    if tile % align or overlap % align or tile <= 2 * overlap:
        raise ValueError(f"tile {tile} / overlap {overlap} must be multiples of {align}, tile > 2*overlap")
    stride = tile - overlap
    out: Tensor | None = None
    norm = torch.zeros(1, 1, h * scale, w * scale)
    ys, xs = _starts(h, tile, stride, align), _starts(w, tile, stride, align)
    for y0 in ys:
        for x0 in xs:
            th, tw = min(tile, h - y0), min(tile, w - x0)
            win = tuple(t[..., y0 : y0 + th, x0 : x0 + tw] for t in latents)
            piece = fn(*win).float()  # (1, 3, th*scale, tw*scale)
            if out is None:
                out = torch.zeros(1, piece.size(1), h * scale, w * scale)
            wy = _ramp(th * scale, overlap * scale, y0 == 0, y0 + th >= h)
            wx = _ramp(tw * scale, overlap * scale, x0 == 0, x0 + tw >= w)
            weight = (wy[:, None] * wx[None, :])[None, None]
            sy, sx = slice(y0 * scale, (y0 + th) * scale), slice(x0 * scale, (x0 + tw) * scale)
            out[..., sy, sx] += piece * weight
            norm[..., sy, sx] += weight
    assert out is not None
    return out / norm
