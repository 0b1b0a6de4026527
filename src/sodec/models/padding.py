"""How convolutions extend the picture past its border (issue 11's border, flat and small-image checks).

PyTorch convolutions pad with zeros, so every layer sees a black frame around the image; issue
11's border symptoms were suspected to come from it: the codec's encoder spends fewer bits on the outer latents (8-10 bits per position
against 15 inside, docs/design.md), the decoders darken the outermost pixels, a flat patch
comes back with its largest errors at the corners, and a 64x64 image, all border, decodes worse
than the same pixels inside a larger picture. With ``"replicate"`` every convolution extends its
input by repeating the edge, as sodec already extends an image to a multiple of 64
(``api.compress``): a region near the border then looks to each layer more like one inside. A
flat image gives an exactly constant y and z, and D_m keeps a constant latent flat; a stride-2
transposed convolution turns a constant into a periodic pattern, which edge replication does not
continue, so h_s and g_s are flat at the border only as far as training makes them
(tests/test_padding.py). A short fine-tune of a zero-padded codec did not shrink its border ring
(benchmarks/padding_finetune.py, docs/design.md): the option is for training from scratch.

``set_padding(module, mode)`` changes the convolutions of ``module`` in place and keeps every
parameter and its name, so a model trained with zero padding can be fine-tuned with the other
mode from its own checkpoint (the mode travels in the configs: ``CodecConfig.padding``,
``SodecConfig.padding``).

* ``nn.Conv2d``: PyTorch's own ``padding_mode`` (``"replicate"``).
* ``nn.ConvTranspose2d``, which has no padding mode: its class becomes
  :class:`ReplicateConvTranspose2d`, which extends its input by ``ceil(k / s)`` cells by edge
  replication, runs the same transposed convolution and crops ``s`` times that from the output:
  since shifting the input by one cell shifts the output by ``s``, the interior is unchanged and
  the output size is the same.
* Masked convolutions (the checkerboard context) are left alone: they read only decoded
  neighbours, whose zeros are part of what the encoder and decoder agree on.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

PADDINGS = ("zeros", "replicate")


class ReplicateConvTranspose2d(nn.ConvTranspose2d):
    """A transposed convolution whose input is extended by edge replication (module doc)."""

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:  # type: ignore[override]
        if output_size is not None:
            raise ValueError("ReplicateConvTranspose2d takes no output_size")
        rh = math.ceil(self.kernel_size[0] / self.stride[0])
        rw = math.ceil(self.kernel_size[1] / self.stride[1])
        y = super().forward(F.pad(x, (rw, rw, rh, rh), mode="replicate"))
        sh, sw = self.stride[0] * rh, self.stride[1] * rw
        return y[..., sh : y.size(-2) - sh, sw : y.size(-1) - sw]


def check_padding(mode: str) -> None:
    if mode not in PADDINGS:
        raise ValueError(f"padding {mode!r}: use one of {', '.join(PADDINGS)}")


def set_padding(module: nn.Module, mode: str) -> nn.Module:
    """Every convolution of ``module`` pads by ``mode`` ("zeros" or "replicate"); returns ``module``.

    Raises ValueError for another mode. Parameters, buffers and their names do not change.
    """
    check_padding(mode)
    for layer in module.modules():
        if "Masked" in type(layer).__name__:
            continue
        if type(layer) in (nn.ConvTranspose2d, ReplicateConvTranspose2d):
            layer.__class__ = ReplicateConvTranspose2d if mode == "replicate" else nn.ConvTranspose2d
        elif isinstance(layer, nn.Conv2d) and any(p != 0 for p in layer.padding) and layer.padding_mode in PADDINGS:
            layer.padding_mode = mode
    return module
