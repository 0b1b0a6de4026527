"""PSNR by distance from the image edge: where a border ring's deficit sits (docs/design.md).

    python benchmarks/border_profile.py [--model NAME] [--images 6]

For each Kodak image (the first ``--images``, taken every fourth from kodim01): the model's decode,
its codec's x_vae (g_s of the same bits) and AVIF at the closest file size, each summed into
distance bins 0-2, 2-4, 4-8, 8-16, 16-32 and beyond px from the nearest edge; prints PSNR per bin.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BINS = (0, 2, 4, 8, 16, 32, 10**6)


def edge_distance(h: int, w: int) -> np.ndarray:
    """(H, W) distance in pixels to the nearest image edge."""
    rows = np.minimum(np.arange(h), h - 1 - np.arange(h))[:, None]
    cols = np.minimum(np.arange(w), w - 1 - np.arange(w))[None, :]
    return np.minimum(rows, cols)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="sodec-small-q2")
    p.add_argument("--images", type=int, default=6)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "kodak")
    a = p.parse_args(argv)
    import torch

    from sodec import api, baselines
    from sodec.image_io import read_image

    model = api.load_model(a.model)
    avif = baselines.get("avif")
    files = sorted(a.data.glob("kodim*.png"))[::4][: a.images]
    sums: dict[str, np.ndarray] = {}
    counts = np.zeros(len(BINS) - 1)
    for f in files:
        img = read_image(f)[0]
        data = api.compress(model, img)
        x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            x_vae = model.codec.float()(x).x_hat.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255
        av = min((avif.encode(img, q) for q in range(0, 50, 3)), key=lambda b: abs(len(b) - len(data)))
        decodes = {a.model: api.decompress(data, model), "x_vae": x_vae.round(), "avif": avif.decode(av)}
        dist = edge_distance(*img.shape[:2])
        idx = np.digitize(dist, BINS[1:-1])
        counts += np.bincount(idx.ravel(), minlength=len(counts))
        for k, dec in decodes.items():
            err = ((dec.astype(np.float64) - img) ** 2).mean(-1)
            sums[k] = sums.get(k, 0) + np.bincount(idx.ravel(), err.ravel(), minlength=len(counts))
    head = " / ".join(f"{lo}-{hi}" if hi < 10**6 else f">={lo}" for lo, hi in itertools.pairwise(BINS))
    print(f"PSNR dB by distance from the edge (px: {head}), {len(files)} Kodak images")
    for k, s in sums.items():
        print(f"{k:20s} " + " / ".join(f"{10 * np.log10(255**2 / v):.1f}" for v in s / counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
