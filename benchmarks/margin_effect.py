"""What the replicated margin (docs/format.md, "Margin") costs and buys: one model, files with and without.

    python benchmarks/margin_effect.py [--model NAME] [--images 24] [--weights-dir DIR]

For each Kodak image (the first ``--images``), the same model codes it with ``margin=False`` and
``margin=True`` (whole ``sodec.api`` calls); prints the mean bpp (file bytes), PSNR, MS-SSIM,
LPIPS-VGG, DISTS and the 16-px border ring's PSNR deficit against the interior for each. The
LPIPS/DISTS columns need the offline backbones (``--weights-dir`` or ``SODEC_WEIGHTS_DIR``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from sodec.metrics import border_ring_gap as ring_gap  # noqa: E402  (the issue's 16-px ring check)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="sodec-small-q2")
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "kodak")
    p.add_argument("--weights-dir")
    a = p.parse_args(argv)

    from sodec import api
    from sodec.image_io import read_image
    from sodec.metrics import MetricSuite

    model = api.load_model(a.model)
    suite = MetricSuite(a.weights_dir, names=["psnr", "ms_ssim", "lpips_vgg", "dists"])
    files = sorted(a.data.glob("kodim*.png"))[: a.images]
    rows: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for f in files:
        img = read_image(f)[0]
        for margin in (False, True):
            data = api.compress(model, img, margin=margin)
            dec = api.decompress(data, model)
            r = {k: float(v.value) for k, v in suite(img, dec).items() if v.value is not None}
            r.update(bpp=8 * len(data) / (img.shape[0] * img.shape[1]), ring_gap_db=ring_gap(img, dec))
            rows[margin].append(r)
    print(f"{a.model}, {len(files)} Kodak images, means (ring gap: 16-px ring's PSNR deficit, dB)")
    keys = list(rows[False][0])
    print(f"{'margin':8s} " + " ".join(f"{k:>11s}" for k in keys))
    for margin, rs in rows.items():
        print(f"{'on' if margin else 'off':8s} " + " ".join(f"{np.mean([r[k] for r in rs]):11.4f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
