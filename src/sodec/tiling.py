"""Tiled synthesis with overlap and linear blending: bounded memory at any image size.

Decoders (the codec's g_s, SODEC's diffusion decoder) run on overlapping windows of the latent;
each window's pixels are weighted by a ramp across the overlap and the weights renormalised, so
seams vanish. An image that fits in one tile is decoded in one call, identical to no tiling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

# Who hears of each decoded tile: ``callback(done, total)`` (the CLI's progress bar). Set with
# ``report_tiles``; a context variable so the decoders' signatures stay as they are.
_tile_callback: ContextVar[Callable[[int, int], None] | None] = ContextVar("tile_callback", default=None)


@contextmanager
def report_tiles(callback: Callable[[int, int], None]) -> Iterator[None]:
    """Within the block, every tiled decode calls ``callback(tiles done, tiles total)`` after each
    tile (one tiled pass after another: SODEC decodes its guidance image, then the image)."""
    token = _tile_callback.set(callback)
    try:
        yield
    finally:
        _tile_callback.reset(token)


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
    report, done = _tile_callback.get(), 0
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
            done += 1
            if report is not None:
                report(done, len(ys) * len(xs))
    assert out is not None
    return out / norm


def tiled_analysis(fn: Callable[[Tensor], Tensor], x: Tensor, stride: int, tile: int, margin: int) -> Tensor:
    """Apply a strided analysis transform ``fn: (1, 3, H, W) -> (1, C, H/stride, W/stride)`` in tiles.

    The latent grid is cut into ``tile`` x ``tile`` cores; each core is computed from a pixel
    window that reaches ``margin`` latents (``margin * stride`` px) past it on every side where the
    image goes on, and only the core is kept. When ``margin * stride`` covers the transform's
    receptive-field radius, every kept latent sees exactly the pixels it sees in an untiled pass,
    so the two differ only by floating-point summation order (a stray symbol at a rounding
    boundary, never a desync: the decoder decodes what was written). Windows start at multiples
    of ``stride`` px, so every strided layer samples the same positions as in the whole image.
    An image whose latent fits one tile is transformed in one call, identical to no tiling.
    Memory is bounded by one window's activations instead of the whole image's.
    """
    H, W = x.shape[-2:]
    if H % stride or W % stride:
        raise ValueError(f"image size {W}x{H} is not a multiple of the stride {stride}")
    return _tiled_cells(fn, x, stride, 1, tile, margin)


def tiled_upsample(fn: Callable[[Tensor], Tensor], z: Tensor, scale: int, tile: int, margin: int) -> Tensor:
    """Apply an upsampling transform ``fn: (1, C, h, w) -> (1, C', scale*h, scale*w)`` in tiles.

    The dual of :func:`tiled_analysis`: cores of ``tile`` x ``tile`` input cells, each computed
    from a window reaching ``margin`` cells further, keeping only the core's ``scale``-times larger
    output. With ``margin`` past ``fn``'s receptive-field radius the result equals an untiled call
    up to summation order; an input that fits one tile is one call, identical to no tiling.
    """
    return _tiled_cells(fn, z, 1, scale, tile, margin)


def _tiled_cells(
    fn: Callable[[Tensor], Tensor], x: Tensor, cell_in: int, cell_out: int, tile: int, margin: int
) -> Tensor:
    """Shared loop of :func:`tiled_analysis` and :func:`tiled_upsample`: ``fn`` maps ``cell_in``
    input samples to ``cell_out`` output samples per grid cell along each side; cores of ``tile``
    cells are computed from windows ``margin`` cells wider and kept alone. One call when it fits."""
    h, w = x.shape[-2] // cell_in, x.shape[-1] // cell_in
    if h <= tile and w <= tile:
        return fn(x)
    out: Tensor | None = None
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            th, tw = min(tile, h - y0), min(tile, w - x0)
            a0, a1 = max(0, y0 - margin), min(h, y0 + th + margin)
            b0, b1 = max(0, x0 - margin), min(w, x0 + tw + margin)
            piece = fn(x[..., a0 * cell_in : a1 * cell_in, b0 * cell_in : b1 * cell_in])
            if out is None:
                out = piece.new_empty(piece.size(0), piece.size(1), h * cell_out, w * cell_out)
            oy, ox = (y0 - a0) * cell_out, (x0 - b0) * cell_out
            out[..., y0 * cell_out : (y0 + th) * cell_out, x0 * cell_out : (x0 + tw) * cell_out] = piece[
                ..., oy : oy + th * cell_out, ox : ox + tw * cell_out
            ]
    assert out is not None
    return out
