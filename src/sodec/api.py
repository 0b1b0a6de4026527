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

from . import container, fileinfo, mean_colour, registry
from .checkpoint import load_checkpoint, sha256_file
from .errors import (
    CorruptedError,
    DesyncError,
    FormatError,
    LimitsError,
    SodecError,
    UsageError,
    WeightsError,
    WrongModelError,
    out_of_memory,
)
from .models.vae_codec import VAECodec, tables_from_checkpoint

PAD_MULTIPLE = fileinfo.PAD_MULTIPLE  # z sits at stride 64; SODEC's UNet needs its latent divisible by 8 (= 64 px)


@dataclass
class Model:
    """A model ready to code: the network, the id written into files, and its weights hash."""

    module: nn.Module
    kind: str
    model_id: str
    sha256: str
    # Whether compress() gives the picture a replicated margin by default (registry field
    # ``margin``; docs/format.md, "Margin"). A checkpoint loaded by path has none unless asked.
    margin: bool = False

    @property
    def codec(self) -> VAECodec:
        return self.module if isinstance(self.module, VAECodec) else self.module.codec  # type: ignore[return-value]

    @property
    def weights_id(self) -> bytes:
        return bytes.fromhex(self.sha256[:8])


def load_model(
    model: str | os.PathLike[str] | None = None,
    quality: int | None = None,
    base_weights: str | os.PathLike[str] | None = None,
) -> Model:
    """A shipped model by name/family/quality, or a checkpoint file by path.

    ``base_weights``: for paper-preset SODEC checkpoints, the diffusers folder (or hub id) with
    the SD UNet/VAE (e.g. a downloaded SD-Turbo); it overrides the one the checkpoint names.
    """
    kw = {"base_weights": base_weights} if base_weights is not None else {}
    if registry.names_checkpoint(model):
        path = Path(model)
        sha = sha256_file(path) if path.is_file() else ""
        module, meta = load_checkpoint(path, sha or None, **kw)
        mid = meta.get("sodec.model_id") or registry.model_id_for_path(path)
        return Model(module, meta["sodec.kind"], mid, sha)
    entry = registry.resolve(None if model is None else str(model), quality)
    module, meta = load_checkpoint(entry.path, entry.sha256, **kw)
    if meta["sodec.kind"] != entry.kind:
        raise WrongModelError(f"{entry.file} holds a {meta['sodec.kind']} model, registry says {entry.kind}")
    return Model(module, entry.kind, entry.name, entry.sha256, entry.margin)


def load_encoder(
    model: str | None = None, quality: int | None = None, base_weights: str | os.PathLike[str] | None = None
) -> Model:
    """The model :func:`compress` needs, as :func:`load_model` takes it: a SODEC model encodes
    with its codec alone (paper Fig. 2a; the diffusion decoder only decodes), so for one only the
    codec's weights (``codec.*``) are loaded into a :class:`VAECodec` with the whole model's id
    and sha256: the files it writes are byte-identical to the whole model's, without importing
    diffusers/timm or building the UNet. Other models load as :func:`load_model` loads them.
    Raises what :func:`load_model` raises (:class:`WeightsError`, :class:`WrongModelError`,
    :class:`UsageError`)."""
    if registry.names_checkpoint(model):
        path = Path(str(model))
        if not path.is_file():
            return load_model(model, quality, base_weights=base_weights)  # its WeightsError
        kind = _checkpoint_kind(path)
        sha, model_id, margin = None, None, False
    else:
        entry = registry.resolve(model, quality)
        path, kind, sha, model_id, margin = entry.path, entry.kind, entry.sha256, entry.name, entry.margin
    if kind != "sodec":
        return load_model(model, quality, base_weights=base_weights)
    from .checkpoint import read_checkpoint

    if sha is None:
        sha = sha256_file(path)
    kind_read, cfg, state, meta = read_checkpoint(path, sha)
    if kind_read != kind:
        raise WrongModelError(f"{path.name} holds a {kind_read} model, registry says {kind}")
    with tables_from_checkpoint():  # the file holds the entropy models' tables
        codec = VAECodec(cfg.codec)
    try:
        codec.load_state_dict({k[len("codec.") :]: v for k, v in state.items() if k.startswith("codec.")}, strict=True)
    except (RuntimeError, KeyError, ValueError) as e:
        raise WeightsError(
            f"{path.name}: codec weights do not fit its config ({str(e).splitlines()[0][:200]})"
        ) from None
    codec.eval()
    model_id = model_id or meta.get("sodec.model_id") or registry.model_id_for_path(path)
    return Model(codec, "sodec", model_id, sha, margin)


def _checkpoint_kind(path: Path) -> str | None:
    """``sodec.kind`` from a checkpoint's metadata, without reading its tensors (None: unreadable,
    left for the full loader to report)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as f:
            return (f.metadata() or {}).get("sodec.kind")
    except Exception:  # any unreadable file: api.load_model gives the typed error
        return None


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float in [0, 1]."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise UsageError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float().div(255.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) float -> (H, W, 3) uint8 (round to nearest)."""
    return x[0].clamp(0, 1).mul(255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def pad_to(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """Edge-replicate padding on the bottom/right to a multiple of ``multiple`` (cropped back; files
    with the margin pad every side instead, :func:`sodec.fileinfo.canvas`)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    # replicate padding needs pad < size in old torch versions only for reflect; replicate is safe.
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def check_encode_size(
    width: int, height: int, max_pixels: int | None = container.DEFAULT_MAX_PIXELS, margin: bool = False
) -> None:
    """Refuse an image the encoder should not start on: a side out of the format's range
    (:class:`UsageError`), or a padded area over ``max_pixels`` (:class:`LimitsError`; None = no
    limit). Needs no model and no torch work (:func:`sodec.fileinfo.check_size`)."""
    fileinfo.check_size(width, height, max_pixels, margin=margin)


def compress(
    model: Model,
    image: np.ndarray,
    max_pixels: int | None = container.DEFAULT_MAX_PIXELS,
    margin: bool | None = None,
) -> bytes:
    """Encode an (H, W, 3) uint8 image; returns the complete .sodec file.

    ``margin`` (None = the model's default, :attr:`Model.margin`): centre the picture in its
    canvas with at least :data:`sodec.fileinfo.MARGIN` px of edge replication on every side
    (header flag bit 3, docs/format.md "Margin"). The codecs were trained on crops cut from
    inside photos and code a picture's own edges (a scan's frame, most Kodak images) poorly
    against the canvas edge; the margin moves that edge out of the picture, for more bytes
    (about 19 % on Kodak with ``sodec-small-q2``; the shipped models default to off, as the
    bytes buy PSNR but no LPIPS/DISTS at matched bytes, docs/design.md "Margin").

    An image whose three channels are equal everywhere (a grayscale photo read as RGB) is marked
    grayscale in the header (docs/format.md, "Grayscale"), so decoders return it without the
    faint colour a generative decoder may add.

    Memory is bounded at any size: g_a runs in tiles of 1024 px (:meth:`VAECodec.analysis`), so a
    12 MP photo encodes in about a gigabyte; an image that fits one tile is coded untiled.
    Raises :class:`UsageError` for a bad array or size, :class:`LimitsError` over ``max_pixels``
    (padded area; None = no limit) or when memory runs out.
    """
    margin = model.margin if margin is None else bool(margin)
    h, w = image.shape[:2]
    check_encode_size(w, h, max_pixels, margin)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise UsageError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    try:
        # Padded while still uint8 and handed over as uint8: the codec converts each tile to
        # float as it goes, so no full-size float copy of a large image is ever made.
        wp, hp, left, top = fileinfo.canvas(w, h, margin)
        pad = ((top, hp - h - top), (left, wp - w - left), (0, 0))
        padded = np.pad(image, pad, mode="edge") if (wp, hp) != (w, h) else image
        x = torch.from_numpy(np.array(padded, copy=True)).permute(2, 0, 1)[None]  # (1, 3, Hp, Wp) uint8
        with torch.inference_mode():
            streams = model.codec.compress(x)
    except (MemoryError, RuntimeError) as e:
        err = out_of_memory(e, f"encode a {w}x{h} image")
        if err is None:
            raise
        raise err from e
    colour = mean_colour.encode(image)
    flags = container.FLAG_PAD_REPLICATE | (container.FLAG_GRAYSCALE if is_grayscale(image) else 0)
    flags |= container.FLAG_MARGIN if margin else 0
    header = container.Header(
        model.model_id,
        model.weights_id,
        w,
        h,
        (len(streams.z), len(streams.y), len(colour)),
        streams.symbols_crc,
        flags=flags,
    )
    return container.pack(header, [streams.z, streams.y, colour])


def is_grayscale(image: np.ndarray) -> bool:
    """True if every pixel of an (H, W, 3) uint8 image has R = G = B."""
    return bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]))


def check_model(model: Model, header: container.Header) -> None:
    if header.model_id != model.model_id:
        raise WrongModelError(f"the file was made by model {header.model_id!r}, not {model.model_id!r}")
    if header.weights_id != model.weights_id:
        raise WrongModelError(
            f"the file was made by other weights of {header.model_id!r} "
            f"({header.weights_id.hex()} vs {model.weights_id.hex()})"
        )


def model_for(header: container.Header, base_weights: str | os.PathLike[str] | None = None) -> Model:
    try:
        entry = registry.get(header.model_id)
    except SodecError:
        raise WrongModelError(
            f"the file was made by model {header.model_id!r}, which is not installed; pass --model PATH"
        ) from None
    return load_model(entry.name, base_weights=base_weights)


padded_size = fileinfo.padded_size  # (W, H[, margin]) -> the padded area the codec works on


# Zero bytes appended to each stream before it reaches CompressAI's rANS decoder. That decoder
# (compressai/cpp_exts/rans/rans_interface.cpp) reads 32-bit words with no bounds check: a
# hostile stream that passes the CRCs (a re-sealed file) makes it read past the buffer, which
# was a segfault (tests/data/regressions/). It consumes at most one word per symbol outside
# bypass mode; bypass mode can turn each 4-bit "15" continuation it reads into 15 more nibbles,
# so at most 15 bytes per stream byte. Valid streams never read into the padding, so decoding
# is unchanged. See docs/reliability.md.
def _stream_padding(length: int, n_symbols: int) -> int:
    return 16 * length + 8 * n_symbols + 4096


def check_stream(name: str, length: int, n_symbols: int) -> None:
    """Refuse a stream length the rANS encoder cannot produce for ``n_symbols`` symbols.

    CompressAI's encoder writes whole 32-bit words, ends with a 2-word flush, and writes into a
    buffer of one word per symbol, so a real stream is a multiple of 4 bytes in [8, 4n].
    """
    if length % 4 or length < 8 or length > max(8, 4 * n_symbols):
        raise FormatError(f"{name} stream of {length} bytes is impossible for {n_symbols} symbols")


def _decode_failed(e: BaseException) -> SodecError:
    oom = out_of_memory(e, "decode this image")
    if oom is not None:
        return oom
    msg = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
    return CorruptedError(f"entropy decoding failed ({msg})")


@dataclass
class DecodedLatents:
    """The integer-exact part of decoding: what the bitstream determines before any synthesis."""

    header: container.Header
    y_hat: torch.Tensor  # (1, C, H/16, W/16), padded size
    w: torch.Tensor  # (1, 2C, H/16, W/16): h_s output (scales, means)
    model: Model
    mean_colour: tuple[float, float, float] | None = None  # levels; None in files without the stream

    def finish(self, x: torch.Tensor) -> np.ndarray:
        """A decoder's (1, 3, Hp, Wp) output in [0, 1] -> the (H, W, 3) uint8 image: cropped to the
        header's size (where the header's canvas puts the picture), its mean matched to the
        file's mean colour (:mod:`sodec.mean_colour`), and for a grayscale file the channels
        averaged, so R = G = B exactly."""
        h = self.header
        _, _, left, top = fileinfo.canvas(h.width, h.height, h.margin)
        x = x[..., top : top + h.height, left : left + h.width]
        if self.mean_colour is not None:
            mean_colour.match(x, self.mean_colour)
        if self.header.grayscale:
            x = x.mean(dim=1, keepdim=True).expand_as(x)
        return to_uint8(x)


def decode_latents(
    data: bytes,
    model: Model | None = None,
    max_pixels: int | None = container.DEFAULT_MAX_PIXELS,
    base_weights: str | os.PathLike[str] | None = None,
) -> DecodedLatents:
    """Bytes -> checked latents; raises a SodecError for anything it cannot decode exactly.

    Every check that needs no model runs before one is loaded or a tensor is made: the
    container (CRCs, lengths against the file size, ``max_pixels``), the padded area against
    ``max_pixels``, then each stream's length against its symbol count. The decoded symbols'
    CRC must equal the encoder's (:class:`DesyncError` otherwise).
    """
    box = container.unpack(data, max_pixels)
    h = box.header
    wp, hp = padded_size(h.width, h.height, h.margin)
    if max_pixels is not None and wp * hp > max_pixels:
        # A 2^24 x 1 image passes the pixel limit but is decoded at 2^24 x 64.
        raise LimitsError(
            f"image of {h.width}x{h.height} is decoded padded to {wp}x{hp}, over the limit of {max_pixels} pixels"
        )
    if len(box.streams) not in (2, 3):
        raise FormatError(f"a codec file holds 2 or 3 streams (z, y, mean colour), this one {len(box.streams)}")
    # Files of sodec <= 0.1 have no mean-colour stream; it is checked before any model work.
    colour = mean_colour.decode(box.streams[2]) if len(box.streams) == 3 else None
    model = model or model_for(h, base_weights)
    check_model(model, h)
    cfg = model.codec.cfg
    latent_hw = (hp // 16, wp // 16)
    n_y = cfg.latent_channels * latent_hw[0] * latent_hw[1]
    n_z = cfg.hyper_latent_channels * (latent_hw[0] // 4) * (latent_hw[1] // 4)
    z, y = box.streams[:2]
    check_stream("z", len(z), n_z)
    check_stream("y", len(y), n_y)
    z_padded = z + bytes(_stream_padding(len(z), n_z))
    y_padded = y + bytes(_stream_padding(len(y), n_y))
    with torch.inference_mode():
        try:
            y_hat, w, crc = model.codec.decompress_latent(y_padded, z_padded, latent_hw)
        except (RuntimeError, ValueError, IndexError, OverflowError, MemoryError) as e:
            raise _decode_failed(e) from None
    if crc != h.symbols_crc:
        raise DesyncError(
            "decoded symbols do not match the encoder's (entropy-decoder desync); refusing to produce a wrong image"
        )
    return DecodedLatents(h, y_hat, w, model, colour)


def decompress(
    data: bytes,
    model: Model | None = None,
    max_pixels: int | None = container.DEFAULT_MAX_PIXELS,
    tile: int | None = None,
    base_weights: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """Decode a .sodec file to an (H, W, 3) uint8 image (the model is found from the header).
    A grayscale file (``container.parse_header(data).grayscale``) comes back with R = G = B."""
    if tile is not None and (tile <= 8 or tile % 4):
        raise UsageError(f"tile {tile}: use a multiple of 4 above 8 (latent rows/cols)")
    lat = decode_latents(data, model, max_pixels, base_weights)
    with torch.inference_mode():
        try:
            x = lat.model.module.reconstruct(lat.y_hat, lat.w, tile=tile)  # type: ignore[operator]
        except MemoryError as e:
            raise _decode_failed(e) from None
        return lat.finish(x)


def info(data: bytes, max_pixels: int | None = container.DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """What a file holds: header fields, sizes, bpp from the file's bytes (header included).
    Reads the container only (:func:`sodec.fileinfo.info`, which needs no torch)."""
    return fileinfo.info(data, max_pixels)
