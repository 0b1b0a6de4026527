"""Training data: any folder of images, random crops and flips, a seeded held-out split.

Sampling is a pure function of (seed, step, rank): resuming at step k draws exactly the crops the
uninterrupted run drew, so no RNG state needs saving. Images are decoded once and kept in memory
as uint8 (the shipped training set is ~1.3 GB decoded).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".ppm", ".tif", ".tiff"}


def list_images(root: str | Path) -> list[Path]:
    """All images below ``root`` (recursive), sorted so every machine sees the same order."""
    root = Path(root)
    if root.is_file():
        return [root]
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"no images under {root}")
    return files


def split_holdout(files: Sequence[Path], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Deterministic split by a hash of each file name: adding files never reshuffles the rest."""

    def key(p: Path) -> float:
        digest = hashlib.sha256(f"{seed}:{p.name}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    held = [p for p in files if key(p) < fraction]
    train = [p for p in files if key(p) >= fraction]
    return train, held


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def paint_flat_region(patch: np.ndarray, g: np.random.Generator) -> np.ndarray:
    """Paint a flat (or gently sloped) colour over part or all of a (H, W, 3) uint8 crop.

    Photos hold few large flat saturated areas, and fewer still that meet the image border, so a
    codec trained on photos alone renders them with texture, blotches and a dark frame, and it
    smears the thin frame a film scan has along its edges (most Kodak images have one, 1-3 px,
    70-150 levels off the picture next to it): issue 11's flat-patch and border-ring checks.
    With equal chance the region is the whole crop, a block from a corner or edge inward, or a
    frame: strips 1-4 px wide along one or more of the crop's edges. Its colour is uniform over
    RGB (saturated colours included) plus a linear slope of at most 24 levels across the crop
    along each axis, like a sky or a wall.
    """
    h, w = patch.shape[:2]
    out = patch.copy()
    colour = g.uniform(0, 255, size=3)
    slope = g.uniform(-24, 24, size=(2, 3))  # levels across the whole crop, per axis and channel
    yy = np.linspace(-0.5, 0.5, h)[:, None, None]
    xx = np.linspace(-0.5, 0.5, w)[None, :, None]
    fill = np.clip(colour + yy * slope[0] + xx * slope[1], 0, 255).round().astype(np.uint8)  # (H, W, 3)
    kind = g.random()
    if kind < 1 / 3:
        return fill
    mask = np.zeros((h, w), bool)
    if kind < 2 / 3:
        # A block from one corner or edge inward: it always reaches the border.
        rh, rw = int(g.integers(h // 4, h + 1)), int(g.integers(w // 4, w + 1))
        top = 0 if g.random() < 0.5 else h - rh
        left = 0 if g.random() < 0.5 else w - rw
        mask[top : top + rh, left : left + rw] = True
    else:
        sides = g.random(4) < 0.5
        sides[int(g.integers(4))] = True  # at least one edge
        strips = (lambda t: np.s_[:t], lambda t: np.s_[-t:], lambda t: np.s_[:, :t], lambda t: np.s_[:, -t:])
        for on, strip in zip(sides, strips, strict=True):  # top, bottom, left, right
            if on:
                mask[strip(int(g.integers(1, 5)))] = True
    out[mask] = fill[mask]
    return out


class CropSampler:
    """Draws batches of random crops with random horizontal flips.

    Images smaller than the crop are padded by edge replication (never resized). With
    ``flat_fraction`` > 0 that share of crops gets a flat colour region or frame (:func:`paint_flat_region`),
    drawn from a generator of its own so the photo crops are the same as with 0.
    """

    def __init__(self, files: Sequence[Path], crop: int, seed: int, flat_fraction: float = 0.0) -> None:
        if not files:
            raise ValueError("no training images")
        if not 0.0 <= flat_fraction <= 1.0:
            raise ValueError(f"flat_fraction is in [0, 1], got {flat_fraction}")
        self.files = list(files)
        self.crop = crop
        self.seed = seed
        self.flat_fraction = flat_fraction
        self._cache: dict[int, np.ndarray] = {}

    def _image(self, i: int) -> np.ndarray:
        if i not in self._cache:
            self._cache[i] = load_rgb(self.files[i])
        return self._cache[i]

    def batch(self, step: int, batch_size: int, rank: int = 0) -> torch.Tensor:
        """(B, 3, crop, crop) float in [0, 1], a function of (seed, step, rank) only."""
        g = np.random.default_rng([self.seed, step, rank])
        out = np.empty((batch_size, self.crop, self.crop, 3), dtype=np.uint8)
        for b in range(batch_size):
            img = self._image(int(g.integers(len(self.files))))
            h, w = img.shape[:2]
            if h < self.crop or w < self.crop:
                img = np.pad(img, ((0, max(0, self.crop - h)), (0, max(0, self.crop - w)), (0, 0)), mode="edge")
                h, w = img.shape[:2]
            top = int(g.integers(h - self.crop + 1))
            left = int(g.integers(w - self.crop + 1))
            patch = img[top : top + self.crop, left : left + self.crop]
            out[b] = patch[:, ::-1] if g.random() < 0.5 else patch
        if self.flat_fraction > 0:
            gf = np.random.default_rng([self.seed, step, rank, 1])
            for b in range(batch_size):
                if gf.random() < self.flat_fraction:
                    out[b] = paint_flat_region(out[b], gf)
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)
