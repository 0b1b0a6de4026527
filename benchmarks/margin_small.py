"""Where the replicated margin pays for itself: small pictures, files with and without it.

    python benchmarks/margin_small.py [--sizes 64 96 128 192 256 384] [--crops 12] [--weights-dir DIR]

A picture's outer 16 px code worse than its inside (docs/design.md, "Border ring"); in a small
picture they are most of it. For square crops of each side (``--crops`` random crops from the
training photos, never Kodak: this chooses a default), ``sodec-small-q1`` and ``-q2`` code each
with ``margin=False`` and ``margin=True`` (whole ``sodec.api`` calls) and the script prints the
mean bpp (file bytes), PSNR and LPIPS-Alex of each. The margin pays where its point lies above
the no-margin rate-distortion curve, read between the two rate points (linear in log-bpp); the
last columns give that gain at the margin point's bpp (dB, and LPIPS lower is better).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _interp(x: float, x0: float, y0: float, x1: float, y1: float) -> float:
    """The no-margin curve at bpp ``x``, linear in log-bpp through its two rate points."""
    t = (np.log(x) - np.log(x0)) / (np.log(x1) - np.log(x0))
    return float(y0 + t * (y1 - y0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128, 192, 256, 384])
    p.add_argument("--crops", type=int, default=12)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "train")
    p.add_argument("--models", nargs=2, default=["sodec-small-q1", "sodec-small-q2"])
    p.add_argument("--weights-dir")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    from sodec import api
    from sodec.image_io import read_image
    from sodec.metrics import MetricSuite

    suite = MetricSuite(a.weights_dir, names=["psnr", "lpips_alex"])
    models = [api.load_model(n) for n in a.models]
    files = sorted(f for f in a.data.iterdir() if f.suffix.lower() in {".png", ".jpg", ".jpeg"})
    rng = np.random.default_rng(a.seed)
    print(f"{a.crops} crops per side from {a.data.name}/; means; gain = margin point minus the no-margin curve")
    print(
        f"{'side':>5s} {'model':16s} {'bpp off':>8s} {'bpp on':>8s} {'PSNR off':>8s} {'PSNR on':>8s} "
        f"{'LPIPS off':>9s} {'LPIPS on':>9s} {'gain dB':>8s} {'gain LPIPS':>10s}"
    )
    for side in a.sizes:
        crops = []
        for _ in range(a.crops):
            img = read_image(files[int(rng.integers(len(files)))])[0]
            h, w = img.shape[:2]
            if min(h, w) < side:
                continue
            y0, x0 = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
            crops.append(img[y0 : y0 + side, x0 : x0 + side])
        res: dict[tuple[int, bool], dict[str, float]] = {}
        for i, model in enumerate(models):
            for margin in (False, True):
                rows = []
                for img in crops:
                    data = api.compress(model, img, margin=margin)
                    m = suite(img, api.decompress(data, model))
                    rows.append((8 * len(data) / side**2, m["psnr"].value, m["lpips_alex"].value))
                res[i, margin] = dict(zip(("bpp", "psnr", "lpips"), np.mean(rows, 0), strict=True))
        for i, name in enumerate(a.models):
            off, on = res[i, False], res[i, True]
            lo, hi = res[0, False], res[1, False]
            gain = [on[k] - _interp(on["bpp"], lo["bpp"], lo[k], hi["bpp"], hi[k]) for k in ("psnr", "lpips")]
            print(
                f"{side:5d} {name:16s} {off['bpp']:8.4f} {on['bpp']:8.4f} {off['psnr']:8.2f} {on['psnr']:8.2f} "
                f"{off['lpips']:9.4f} {on['lpips']:9.4f} {gain[0]:+8.2f} {gain[1]:+10.4f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
