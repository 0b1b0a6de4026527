"""Test helpers importable from any test module (``from helpers import ...``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
KODAK = SHARED / "data" / "kodak"
TRAIN = SHARED / "data" / "train"


WEIGHT_FILES = ("alexnet_features.safetensors", "vgg16_features.safetensors", "dists_alpha_beta.safetensors")


def shared_weights_dir() -> Path | None:
    """$SODEC_WEIGHTS_DIR, else ../shared/weights, when it holds the LPIPS/DISTS backbones."""
    for cand in (os.environ.get("SODEC_WEIGHTS_DIR"), SHARED / "weights"):
        if cand and all((Path(cand) / f).is_file() for f in WEIGHT_FILES):
            return Path(cand)
    return None


def taef2_root() -> Path | None:
    """A weights folder holding taef2/ with both files: $SODEC_WEIGHTS_DIR, else ../shared/weights."""
    from sodec.models.taef2 import TAEF2_FILES

    for cand in (os.environ.get("SODEC_WEIGHTS_DIR"), SHARED / "weights"):
        if cand and all((Path(cand) / "taef2" / f).is_file() for f, _ in TAEF2_FILES.values()):
            return Path(cand)
    return None


needs_kodak = pytest.mark.skipif(not KODAK.is_dir(), reason=f"Kodak images not found at {KODAK}")
needs_train = pytest.mark.skipif(not TRAIN.is_dir(), reason=f"training images not found at {TRAIN}")


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth-ish random RGB image (uint8): noise is unlike photos, gradients help a codec."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 3 + yy) % 256, (yy * 2) % 256, (xx + yy * 5) % 256], axis=-1)
    return np.clip(base + g.integers(-20, 21, size=(h, w, 3)), 0, 255).astype(np.uint8)
