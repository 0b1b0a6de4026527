"""The library API behind ``sodec compress`` / ``decompress`` / ``info``.

``compress`` returns the bytes of a ``.sodec`` file: container header + the codec's entropy-coded
streams (docs/format.md). ``decompress`` refuses anything it cannot decode exactly with a typed
:class:`~sodec.errors.SodecError`: wrong model, corrupted or truncated bytes, headers beyond the
limits, entropy-decoder desync.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import container, registry
from .checkpoint import load_checkpoint, sha256_file
from .errors import CorruptedError, DesyncError, SodecError, UsageError, WrongModelError
from .models.vae_codec import CodecStreams, VAECodec

PAD_MULTIPLE = 64  # z sits at stride 64; SODEC's UNet needs its latent divisible by 8 (= 64 px)


@dataclass
class Model:
    """A model ready to code: the network, the id written into files, and its weights hash."""

    module: nn.Module
    kind: str
    model_id: str
    sha256: str

    @property
    def codec(self) -> VAECodec:
        return self.module if isinstance(self.module, VAECodec) else self.module.codec  # type: ignore[return-value]

    @property
    def weights_id(self) -> bytes:
        return bytes.fromhex(self.sha256[:8])


def load_model(model: str | os.PathLike[str] | None = None, quality: int | None = None) -> Model:
    """A shipped model by name/family/quality, or a checkpoint file by path."""
    if model is not None and (Path(model).suffix == ".safetensors" or os.sep in str(model)):
        path = Path(model)
        sha = sha256_file(path) if path.is_file() else ""
        module, meta = load_checkpoint(path, sha or None)
        mid = meta.get("sodec.model_id") or registry.model_id_for_path(path)
        return Model(module, meta["sodec.kind"], mid, sha)
    entry = registry.resolve(None if model is None else str(model), quality)
    module, meta = load_checkpoint(entry.path, entry.sha256)
    if meta["sodec.kind"] != entry.kind:
        raise WrongModelError(f"{entry.file} holds a {meta['sodec.kind']} model, registry says {entry.kind}")
    return Model(module, entry.kind, entry.name, entry.sha256)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float in [0, 1]."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise UsageError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float().div(255.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) float -> (H, W, 3) uint8 (round to nearest)."""
    return x[0].clamp(0, 1).mul(255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def pad_to(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """Edge-replicate padding on the bottom/right to a multiple of ``multiple`` (cropped back)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    # replicate padding needs pad < size in old torch versions only for reflect; replicate is safe.
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def compress(model: Model, image: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 image; returns the complete .sodec file."""
    h, w = image.shape[:2]
    if not (1 <= h <= container.MAX_SIDE and 1 <= w <= container.MAX_SIDE):
        raise UsageError(f"image size {w}x{h} out of range")
    x = pad_to(to_tensor(image))
    with torch.inference_mode():
        streams = model.codec.compress(x)
    header = container.Header(model.model_id, model.weights_id, w, h, (len(streams.z), len(streams.y)), streams.symbols_crc)
    return container.pack(header, [streams.z, streams.y])


def check_model(model: Model, header: container.Header) -> None:
    if header.model_id != model.model_id:
        raise WrongModelError(f"the file was made by model {header.model_id!r}, not {model.model_id!r}")
    if header.weights_id != model.weights_id:
        raise WrongModelError(
            f"the file was made by other weights of {header.model_id!r} "
            f"({header.weights_id.hex()} vs {model.weights_id.hex()})"
        )


def model_for(header: container.Header) -> Model:
    try:
        entry = registry.get(header.model_id)
    except SodecError:
        raise WrongModelError(
            f"the file was made by model {header.model_id!r}, which is not installed; pass --model PATH"
        ) from None
    return load_model(entry.name)


def decompress(
    data: bytes,
    model: Model | None = None,
    max_pixels: int | None = container.DEFAULT_MAX_PIXELS,
    tile: int | None = None,
) -> np.ndarray:
    """Decode a .sodec file to an (H, W, 3) uint8 image (the model is found from the header)."""
    box = container.unpack(data, max_pixels)
    h = box.header
    model = model or model_for(h)
    check_model(model, h)
    if len(box.streams) != 2:
        raise CorruptedError(f"expected 2 streams (z, y), found {len(box.streams)}")
    hp, wp = -(-h.height // PAD_MULTIPLE) * PAD_MULTIPLE, -(-h.width // PAD_MULTIPLE) * PAD_MULTIPLE
    streams = CodecStreams(y=box.streams[1], z=box.streams[0], symbols_crc=h.symbols_crc, latent_hw=(hp // 16, wp // 16))
    with torch.inference_mode():
        try:
            y_hat, w, crc = model.codec.decompress_latent(streams.y, streams.z, streams.latent_hw)
        except (RuntimeError, ValueError, IndexError, OverflowError) as e:
            raise CorruptedError(f"entropy decoding failed ({str(e).splitlines()[0][:120]})") from None
        if crc != h.symbols_crc:
            raise DesyncError(
                "decoded symbols do not match the encoder's (entropy-decoder desync); refusing to produce a wrong image"
            )
        x = model.module.reconstruct(y_hat, w, tile=tile)  # type: ignore[operator]
    return to_uint8(x[..., : h.height, : h.width])


def info(data: bytes, max_pixels: int | None = container.DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """What a file holds: header fields, sizes, bpp from the file's bytes (header included)."""
    box = container.unpack(data, max_pixels)
    h = box.header
    known: str | None
    try:
        known = registry.get(h.model_id).kind
    except SodecError:
        known = None
    return {
        "format_version": h.version,
        "model": h.model_id,
        "model_installed": known is not None,
        "model_kind": known,
        "weights_id": h.weights_id.hex(),
        "width": h.width,
        "height": h.height,
        "padded_to": [-(-h.width // PAD_MULTIPLE) * PAD_MULTIPLE, -(-h.height // PAD_MULTIPLE) * PAD_MULTIPLE],
        "padding": "edge-replicate, bottom/right",
        "entropy_coder": container.CODERS[h.coder],
        "streams": {"z": h.stream_lengths[0], "y": h.stream_lengths[1]} if len(h.stream_lengths) == 2 else list(h.stream_lengths),
        "header_bytes": h.header_len,
        "file_bytes": box.file_size,
        "bpp": box.bpp(),
    }
