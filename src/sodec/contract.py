"""The decoding contract: what is exact and what is within a tolerance (docs/reliability.md).

* **Symbols are exact.** The integer symbols the entropy decoder returns are the encoder's, bit
  for bit, on every machine, thread count and device; a CRC-32 of them travels in the header and
  a file whose decoded symbols differ is refused (:class:`~sodec.errors.DesyncError`).
* **Pixels are within a tolerance.** Synthesis (g_s, the diffusion decoder) is floating point,
  and CPUs, thread counts and libraries sum in different orders, so a pixel can land one level
  apart after rounding to 8 bits. Against a reference decode, a conforming decoder keeps every
  sample within :data:`MAX_ABS_LEVELS` levels and the whole image at or above
  :data:`MIN_PSNR_DB`, as JPEG's conformance testing (ISO/IEC 10918-2) bounds an IDCT's error
  instead of requiring exact pixels.

This module needs numpy only, so conformance checks run without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_ABS_LEVELS = 2  # per 8-bit sample, against the reference decode
MIN_PSNR_DB = 50.0  # whole image against the reference decode (identical images: infinite)


@dataclass(frozen=True)
class PixelDiff:
    """How a decode differs from a reference decode of the same file."""

    max_abs: int  # largest |difference| over all samples, in 8-bit levels
    differing: int  # samples that differ at all
    psnr_db: float  # PSNR against the reference; inf when identical

    @property
    def conforms(self) -> bool:
        return self.max_abs <= MAX_ABS_LEVELS and self.psnr_db >= MIN_PSNR_DB

    def __str__(self) -> str:
        return f"max |diff| {self.max_abs} levels, {self.differing} samples differ, PSNR {self.psnr_db:.2f} dB"


def compare_pixels(decoded: np.ndarray, reference: np.ndarray) -> PixelDiff:
    """decoded, reference: (H, W, 3) uint8 of the same shape -> their :class:`PixelDiff`.

    Raises ValueError when the shapes differ (a shape is part of what is exact).
    """
    if decoded.shape != reference.shape:
        raise ValueError(f"shape {decoded.shape} differs from the reference {reference.shape}")
    d = decoded.astype(np.int16) - reference.astype(np.int16)
    mse = float(np.mean(d.astype(np.float64) ** 2))
    psnr = float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)
    return PixelDiff(int(np.abs(d).max(initial=0)), int(np.count_nonzero(d)), psnr)
