"""Mean-colour side information: the image's mean RGB travels in the file; the decoder matches it.

A generative decoder at 0.05-0.1 bpp drifts in colour: sodec-small-q2 left Kodak images' mean
colour up to 6.3 levels off the original's, and its codec's own reconstruction (x_vae) is biased
by about +3 levels. Diffusion restoration corrects this by matching the output's low frequencies
to a trusted reference (the colour correction of StableSR, Wang et al. 2023); a codec has
the original at encode time, so it can send the exact statistic instead. The encoder writes the
mean of each channel as a third stream of 6 bytes (0.00012 bpp on a Kodak image, counted in the
file's bpp like every byte); the decoder shifts its output so that its mean is that value.

Only the global mean is sent: a per-channel offset removes a colour cast without touching
contrast or texture. It cannot repair local colour errors (a red object decoded orange), which
the models themselves must get right. Files without the stream (written before it existed)
decode as they always did.

Stream layout (docs/format.md): three little-endian uint16, R, G, B, each the channel's mean in
units of 1/64 level (0..16320, i.e. 0..255 levels), rounded to nearest.
"""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
import torch

from . import container
from .errors import FormatError

STREAM_BYTES = 6
UNITS_PER_LEVEL = 64  # 1/64 level: far below the final rounding to whole levels
MAX_VALUE = 255 * UNITS_PER_LEVEL
TOLERANCE = 1e-3 / 255  # the decoded mean's precision before rounding to levels
MAX_ITERATIONS = 8


def encode(image: np.ndarray) -> bytes:
    """The 6-byte stream of an (H, W, 3) uint8 image: each channel's mean in 1/64 levels."""
    mean = image.reshape(-1, 3).mean(0, dtype=np.float64)  # (3,) levels
    return struct.pack("<3H", *(round(float(m) * UNITS_PER_LEVEL) for m in mean))


def decode(stream: bytes) -> tuple[float, float, float]:
    """The stream -> mean (R, G, B) in levels 0..255; FormatError for a malformed stream."""
    if len(stream) != STREAM_BYTES:
        raise FormatError(f"the mean-colour stream holds {len(stream)} bytes, not {STREAM_BYTES}")
    values = struct.unpack("<3H", stream)
    if max(values) > MAX_VALUE:
        raise FormatError(f"mean colour {max(values) / UNITS_PER_LEVEL:.2f} levels is above 255")
    r, g, b = (v / UNITS_PER_LEVEL for v in values)
    return r, g, b


def strip(data: bytes) -> bytes:
    """A .sodec file without its mean-colour stream (nor the grayscale flag, which came later):
    for a file without the margin, the file sodec 0.1 wrote for the same image; either way it
    decodes to what the decoder makes on its own. The margin flag stays (it says where the
    picture sits). A two-stream file comes back unchanged."""
    box = container.unpack(data)
    if len(box.streams) != 3:
        return data
    header = dataclasses.replace(
        box.header,
        stream_lengths=box.header.stream_lengths[:2],
        # the margin flag stays: it says where the picture sits, which the streams depend on
        flags=container.FLAG_PAD_REPLICATE | (box.header.flags & container.FLAG_MARGIN),
    )
    return container.pack(header, list(box.streams[:2]))


@torch.inference_mode()
def match(x: torch.Tensor, mean: tuple[float, float, float]) -> torch.Tensor:
    """Shift (1, 3, H, W) ``x`` in [0, 1] in place so that each channel's mean is ``mean`` (levels).

    Adds one offset d per channel and clips to [0, 1]. Clipping undoes part of the offset, so d is
    refined by fixed-point steps d += mean - mean(clip(x + d)), to 1/1000 level or at most
    ``MAX_ITERATIONS`` steps. Not Newton steps: dividing by the share of unclipped samples makes d
    hypersensitive when nearly all clip (a float difference between machines then moved samples
    by 3 levels); each plain step moves d by at most the change of a mean, so decodes stay within
    the decoding contract. A mostly saturated output may end short of the mean; a photo's
    converges in 2-3 steps. Returns ``x``, which may be a view (the crop of a padded decode).
    """
    target = torch.tensor(mean, dtype=torch.float64).div_(255.0)  # (3,)
    n = x.shape[0] * x.shape[2] * x.shape[3]
    d = torch.zeros(3, dtype=torch.float64)
    for _ in range(MAX_ITERATIONS):
        y = (x + d.to(x.dtype).view(1, 3, 1, 1)).clamp_(0.0, 1.0)
        # Row sums in float32, their total in float64: a 4K image's float32 total would be off
        # by more than the tolerance, and a float64 copy of the image would cost 200 MB.
        err = target - y.sum(dim=3).to(torch.float64).sum(dim=(0, 2)) / n
        if float(err.abs().max()) <= TOLERANCE:
            break
        d += err
    return x.add_(d.to(x.dtype).view(1, 3, 1, 1)).clamp_(0.0, 1.0)
