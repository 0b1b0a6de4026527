"""How much colour a decoder adds to a grayscale photo, with and without the grayscale flag.

    python benchmarks/grayscale_tint.py [--model sodec-small-q2] [--images kodim01,kodim08,kodim23]

Each Kodak image is turned to gray (Pillow's "L", ITU-R 601 luma), coded as three equal
channels, and decoded twice from the same bytes: as written (the header's grayscale flag set,
docs/format.md "Grayscale") and with the flag cleared (what sodec 0.2.0 returned). Printed per
image: bpp from the file, the spread max(R, G, B) - min(R, G, B) in levels (mean and largest over
pixels), and PSNR against the gray original (the flag-cleared decode's channel mean, rounded).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def spread(x: np.ndarray) -> str:
    """Mean and largest max(R, G, B) - min(R, G, B) of an (H, W, 3) image, in levels."""
    s = x.max(axis=2) - x.min(axis=2)
    return f"{s.mean():.2f} / {s.max()}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="sodec-small-q2")
    p.add_argument("--images", default="kodim01,kodim08,kodim23", help="comma-separated Kodak names")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "kodak")
    a = p.parse_args(argv)
    import torch
    from PIL import Image

    from sodec import api, container
    from sodec.metrics import psnr

    def gray_psnr(x: np.ndarray, ref: np.ndarray) -> float:  # both (H, W), as three equal channels
        return psnr(np.repeat(ref[..., None], 3, axis=2), np.repeat(x.astype(np.uint8)[..., None], 3, axis=2)).value

    torch.set_num_threads(2)
    model = api.load_model(a.model)
    print(f"{a.model}: channel spread max(R,G,B) - min(R,G,B) in levels (mean / largest), PSNR dB vs the gray original")
    for name in a.images.split(","):
        gray = np.asarray(Image.open(a.data / f"{name}.png").convert("L"))
        data = api.compress(model, np.repeat(gray[..., None], 3, axis=2))
        box = container.unpack(data)
        cleared = dataclasses.replace(box.header, flags=box.header.flags & ~container.FLAG_GRAYSCALE)
        before = api.decompress(container.pack(cleared, list(box.streams)), model).astype(np.int16)
        after = api.decompress(data, model).astype(np.int16)

        print(
            f"{name}  {8 * len(data) / gray.size:.4f} bpp  flag cleared: spread {spread(before)}, "
            f"PSNR {gray_psnr(np.round(before.mean(axis=2)), gray):.2f}  |  flag set: spread {spread(after)}, "
            f"PSNR {gray_psnr(after[..., 0], gray):.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
