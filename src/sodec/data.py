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


class CropSampler:
    """Draws batches of random crops with random horizontal flips.

    Images smaller than the crop are padded by edge replication (never resized).
    """

    def __init__(self, files: Sequence[Path], crop: int, seed: int) -> None:
        if not files:
            raise ValueError("no training images")
        self.files = list(files)
        self.crop = crop
        self.seed = seed
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
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)
