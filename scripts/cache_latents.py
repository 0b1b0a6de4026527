"""Cache TAEF2 target latents of the training images (small preset, training only; never shipped).

    python scripts/cache_latents.py DIR [DIR ...] [--out ~/.cache/sodec/latents/taef2-crop256]
                                    [--crop 256] [--stride 256] [--flip] [--max-side 0]
                                    [--weights-dir W] [--dtype float16] [--threads 1]

The frozen TAEF2 encoder (models/taef2.py) defines the diffusion latent the one-step decoder is
trained towards (the role SD's VAE encoder plays in the paper). Encoding costs ~10 s per megapixel
on one CPU thread, so it runs once here, not at every training step.

What is stored, and why
-----------------------
* **Latents of crops, not crops of a latent** (``--crop S``, default 256, the trainer's crop in
  the anneal stage). TAEF2 is not local: its 1/8-resolution blocks (encoder and decoder) carry a
  GroupNorm over the whole image, so the latent of a crop differs from the same window of the
  whole image's latent (rms 0.19-0.22 against a latent std of 0.85, on Kodak and BSD crops of
  256 px), and the pretrained decoder turns the window of the whole-image latent into a 256-px crop
  3-4 dB worse (kodim05 23.4 vs 26.4 dB, kodim15 25.6 vs 29.9 dB) than the crop's own latent.
  A trainer that decodes crops needs the crop's own latent as its target. Each image (cropped to
  the top-left H8 x W8, multiples of 8) is covered by a grid of S x S windows at ``--stride``
  (the last row/column of windows is moved in to end at the border), each encoded on its own;
  an image narrower than S gives windows of its own width. The crop size must match the trainer's.
* ``--flip`` also encodes each window mirrored left-right: the latent is far from equivariant
  (rms 0.92 between E(flip x) and flip E(x)), so a flip augmentation needs its own latent.
* ``--crop 0``: one latent of the whole image, for whole-image decoding (validation, holdout).
* No resize by default: ``sodec.data`` trains on crops of the original photos, and a 768-px
  resize would save only a third of the encoding time (60 % of the photos are <= 512 px
  already) while throwing away the detail D_m has to learn to produce. ``--max-side N`` resizes
  (Lanczos) so the long side is at most N; the resized uint8 image is then stored too (key
  ``image``), so the trainer never has to reproduce the resize bit for bit.
* float16 latents by default: rounding error <= 2^-11 relative (about 3e-3 at the largest
  values), far below what training resolves, and half the disk and RAM of float32.

Layout (no pickle): ``<out>/<folder name>/<relative path>.safetensors`` per image holding
``latents`` (N, 32, S/8, S/8) with ``boxes`` (N, 4) int32 rows ``[top, left, height, width]`` in
pixels of the (cropped, possibly resized) image, and ``latents_flip`` (same shape, the latent of
``window.flip(-1)``) with ``--flip``; with ``--crop 0`` a single ``latent`` (32, H8/8, W8/8).
``image`` (H8, W8, 3) uint8 when resized. Plus ``<out>/index.json``::

    {"format": "sodec-latent-cache/2", "model": "taef2",
     "weights": {"taef2_encoder.safetensors": "<sha256>"}, "dtype": "float16", "max_side": 0,
     "crop": 256, "stride": 256, "flip": false, "torch": "2.14.1",
     "images": [{"source": "/abs/path.jpg", "source_sha256": "...", "source_hw": [H, W],
       "hw": [H8, W8], "resized": false, "file": "train/x.safetensors", "windows": 6,
       "latent_shape": [32, 32, 32], "seconds": 1.9}, ...]}

The index is rewritten (atomically) after every image, so an interrupted run resumes where it
stopped: entries whose source sha256 matches are kept, the rest re-encoded. A folder made with
other weights or settings is refused (UsageError) rather than mixed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sodec.checkpoint import atomic_write_via, sha256_file
from sodec.data import list_images, load_rgb
from sodec.errors import SodecError, UsageError
from sodec.models.taef2 import DOWNSCALE, TAEF2_FILES, load_taef2

FORMAT = "sodec-latent-cache/2"
DEFAULT_OUT_ROOT = Path.home() / ".cache" / "sodec" / "latents"


def prepare(arr: np.ndarray, max_side: int) -> tuple[np.ndarray, bool]:
    """uint8 (H, W, 3) -> (uint8 (H8, W8, 3), resized?): optional resize, then crop to multiples of 8."""
    h, w = arr.shape[:2]
    resized = bool(max_side) and max(h, w) > max_side
    if resized:
        s = max_side / max(h, w)
        size = (max(DOWNSCALE, round(w * s)), max(DOWNSCALE, round(h * s)))
        arr = np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.LANCZOS))
        h, w = arr.shape[:2]
    h8, w8 = h - h % DOWNSCALE, w - w % DOWNSCALE
    if h8 == 0 or w8 == 0:
        raise UsageError(f"image of {h}x{w} px is smaller than {DOWNSCALE}x{DOWNSCALE}")
    return np.array(arr[:h8, :w8]), resized  # a writable copy, whatever load_rgb returned


def _starts(n: int, size: int, stride: int) -> list[int]:
    """Window starts covering [0, n): every ``stride`` px, the last moved in to end at n (all % 8 == 0)."""
    starts = list(range(0, n - size + 1, stride))
    if starts[-1] + size < n:
        starts.append(n - size)
    return starts


def windows(h: int, w: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """``[top, left, height, width]`` of the S x S windows covering an H x W image (H, W % 8 == 0).

    ``crop == 0`` gives the whole image; a side shorter than the crop gives windows of that side.
    """
    if crop == 0:
        return [(0, 0, h, w)]
    ch, cw = min(crop, h), min(crop, w)
    return [(top, left, ch, cw) for top in _starts(h, ch, stride) for left in _starts(w, cw, stride)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="folders of training images (searched recursively)")
    ap.add_argument("--out", type=Path, help=f"cache folder (default {DEFAULT_OUT_ROOT}/taef2-crop<S>[-flip])")
    ap.add_argument("--crop", type=int, default=256, help="window size in px, a multiple of 8 (0: whole image)")
    ap.add_argument("--stride", type=int, help="window step in px, a multiple of 8 (default: the crop)")
    ap.add_argument("--flip", action="store_true", help="also encode every window mirrored left-right")
    ap.add_argument("--weights-dir", help="folder holding taef2/ (else $SODEC_WEIGHTS_DIR)")
    ap.add_argument("--max-side", type=int, default=0, help="resize so the long side is <= this (0: never)")
    ap.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    ap.add_argument("--limit", type=int, default=0, help="encode at most this many new images (0: all)")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except SodecError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


def run(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    if args.max_side < 0:
        raise UsageError("--max-side must be >= 0")
    stride = args.stride if args.stride is not None else args.crop
    if args.crop < 0 or args.crop % 8 or stride < 0 or stride % 8 or (args.crop and not stride):
        raise UsageError("--crop and --stride must be multiples of 8 (crop 0: whole image)")
    torch.set_num_threads(args.threads)
    enc, _ = load_taef2(args.weights_dir, parts=("encoder",))
    # channels_last: 20-25 % less CPU per window on this machine's oneDNN convs (latents agree
    # with the default layout to ~4e-6, below float16's resolution).
    enc = enc.to(memory_format=torch.channels_last)
    fname, enc_sha = TAEF2_FILES["encoder"]
    settings = {
        "format": FORMAT,
        "model": "taef2",
        "weights": {fname: enc_sha},
        "dtype": args.dtype,
        "max_side": args.max_side,
        "crop": args.crop,
        "stride": stride if args.crop else 0,
        "flip": args.flip,
    }
    default_name = f"taef2-crop{args.crop}" + ("-flip" if args.flip else "") if args.crop else "taef2-whole"
    out: Path = (args.out or DEFAULT_OUT_ROOT / default_name).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / "index.json"
    old: dict[str, dict] = {}
    if index_path.is_file():
        prev = json.loads(index_path.read_text())
        diff = sorted(k for k, v in settings.items() if prev.get(k) != v)
        if diff:
            # Mixing settings in one folder would leave files the index no longer describes.
            raise UsageError(f"{index_path} was made with other {', '.join(diff)}: choose another --out or delete it")
        old = {e["file"]: e for e in prev.get("images", [])}

    jobs = []
    names = [f.resolve().name for f in args.folders]
    if len(set(names)) != len(names):
        raise UsageError("two input folders share a name; their cache subfolders would collide")
    for folder in args.folders:
        folder = folder.resolve()
        try:
            files = list_images(folder)
        except FileNotFoundError as e:
            raise UsageError(str(e)) from None
        for src in files:
            jobs.append((src, f"{folder.name}/{src.relative_to(folder).with_suffix('.safetensors')}"))

    entries: list[dict] = []

    def write_index() -> None:
        doc = {**settings, "torch": torch.__version__, "images": entries}
        atomic_write_via(index_path, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))

    dtype = getattr(torch, args.dtype)
    t_start, done, kept = time.perf_counter(), 0, 0
    for i, (src, rel) in enumerate(jobs):
        src_sha = sha256_file(src)
        prev = old.get(rel)
        if prev and prev["source_sha256"] == src_sha and (out / rel).is_file():
            entries.append(prev)
            kept += 1
            continue
        if args.limit and done >= args.limit:
            continue  # keep listing the cached ones below
        arr = load_rgb(src)
        img, resized = prepare(arr, args.max_side)
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
        boxes = windows(*img.shape[:2], args.crop, settings["stride"])
        t0 = time.perf_counter()
        with torch.inference_mode():
            # One window at a time: each is encoded on its own (GroupNorm sees that window only).
            crops = [x[..., top : top + ch, left : left + cw] for top, left, ch, cw in boxes]
            lat = torch.stack([enc(c.contiguous(memory_format=torch.channels_last))[0] for c in crops]).to(dtype)
            lat_flip = (
                torch.stack([enc(c.flip(-1).contiguous(memory_format=torch.channels_last))[0] for c in crops]).to(dtype)
                if args.flip
                else None
            )
        secs = time.perf_counter() - t0
        if args.crop:
            tensors = {"latents": lat, "boxes": torch.tensor(boxes, dtype=torch.int32)}
            if lat_flip is not None:
                tensors["latents_flip"] = lat_flip
        else:
            tensors = {"latent": lat[0]}
        if resized:
            tensors["image"] = torch.from_numpy(img)
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        meta = {"source": str(src), "source_sha256": src_sha, "encoder_sha256": enc_sha}
        atomic_write_via(dest, lambda tmp, t=tensors, m=meta: save_file(t, tmp, metadata=m))
        entries.append(
            {
                "source": str(src),
                "source_sha256": src_sha,
                "source_hw": list(arr.shape[:2]),
                "hw": list(img.shape[:2]),
                "resized": resized,
                "file": rel,
                "windows": len(boxes),
                "latent_shape": list(lat.shape[1:]),
                "seconds": round(secs, 3),
            }
        )
        write_index()
        done += 1
        elapsed = time.perf_counter() - t_start
        print(
            f"[{i + 1}/{len(jobs)}] {rel} {img.shape[1]}x{img.shape[0]} px, {len(boxes)} windows, {secs:.1f} s "
            f"(new {done}, kept {kept}, {elapsed / 60:.1f} min)",
            flush=True,
        )
    write_index()
    print(f"done: {done} encoded, {kept} kept, {time.perf_counter() - t_start:.0f} s -> {index_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
