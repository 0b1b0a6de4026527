"""Picture checks of issue 11 on any models: colour, rate, borders, grids, small images.

    python benchmarks/quality_checks.py [--model NAME ...] [--images 24] [--json out.json] [--readme README.md]

Each check is a failure a user sees, measured on real decodes (whole ``api`` calls):

* ``flat``: flat saturated 256x256 patches (30, 160, 60) and (200, 30, 30) round-trip within 3
  levels (largest |error| of any sample);
* ``mean_colour``: every Kodak image's mean colour within 3 levels per channel of the original's
  (files carry the mean colour since sodec 0.2, docs/format.md; the table also gives the
  decoder's own drift, decoding the same file without that stream);
* ``border``: the 16-px border ring's PSNR within 1 dB of the interior's (mean over images);
* ``grid``: no periodic grid in the error, i.e. the error's spectrum has no peak at the 8- and
  16-px periods (power there at most 4x the median power of nearby frequencies);
* ``small_image``: ../shared/cases/crop-64x64.png coded alone decodes within 2 dB of the same
  region decoded inside the 512x512 picture it was cut from (at (128, 128));
* ``rate``: within a family, PSNR rises with the rate point (bpp).

Prints a table of PASS/FAIL per model and check with the measured values; nothing here is a
timed or pass/fail test of the suite (tests/test_quality.py holds the ones shipped models pass).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FLAT_COLOURS = ((30, 160, 60), (200, 30, 30))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def grid_peak(orig: np.ndarray, dec: np.ndarray) -> float:
    """Largest ratio of the error spectrum's power at the 8/16-px periods (and their harmonics
    below Nyquist) over the median power of the frequencies around each, along rows and columns."""
    err = dec.astype(np.float64).mean(-1) - orig.astype(np.float64).mean(-1)
    worst = 0.0
    for axis in (0, 1):
        n = err.shape[1 - axis]
        spec = (np.abs(np.fft.rfft(err - err.mean(), axis=1 - axis)) ** 2).mean(axis=axis)
        for period in (8, 16):
            for k in range(n // period, n // 2 + 1, n // period):
                if k <= 2 or k >= len(spec) - 1 or n % period:
                    continue
                lo, hi = max(1, k - 12), min(len(spec), k + 13)
                around = np.concatenate([spec[lo : k - 1], spec[k + 2 : hi]])
                worst = max(worst, float(spec[k] / max(np.median(around), 1e-12)))
    return worst


def check_model(name: str, kodak: list[Path]) -> dict:
    from sodec import api, mean_colour
    from sodec.image_io import read_image
    from sodec.metrics import border_ring_gap

    model = api.load_model(name)
    r: dict = {"model": name}
    errs = []
    for colour in FLAT_COLOURS:
        img = np.empty((256, 256, 3), np.uint8)
        img[:] = colour
        dec = api.decompress(api.compress(model, img), model)
        errs.append(int(np.abs(dec.astype(int) - img.astype(int)).max()))
    r["flat_max_err"] = max(errs)
    r["flat"] = max(errs) <= 3
    bpps, psnrs, mean_err, drift, ring_gap, peaks = [], [], [], [], [], []
    for p in kodak:
        img = read_image(p)[0]
        data = api.compress(model, img)
        dec = api.decompress(data, model)
        bpps.append(8 * len(data) / (img.shape[0] * img.shape[1]))
        psnrs.append(psnr(img, dec))
        mean_err.append(float(np.abs(dec.reshape(-1, 3).mean(0) - img.reshape(-1, 3).mean(0)).max()))
        raw = api.decompress(mean_colour.strip(data), model)
        drift.append(float(np.abs(raw.reshape(-1, 3).mean(0) - img.reshape(-1, 3).mean(0)).max()))
        ring_gap.append(border_ring_gap(img, dec))
        peaks.append(grid_peak(img, dec))
    if kodak:
        r.update(
            bpp=float(np.mean(bpps)),
            psnr=float(np.mean(psnrs)),
            mean_colour_max_err=max(mean_err),
            mean_colour=max(mean_err) <= 3,
            decoder_mean_drift=max(drift),
            border_gap_db=float(np.mean(ring_gap)),
            border=float(np.mean(ring_gap)) <= 1.0,
            grid_peak=max(peaks),
            grid=max(peaks) <= 4.0,
        )
    crop, source = SHARED / "cases" / "crop-64x64.png", SHARED / "cases" / "crop-source-512x512.png"
    if crop.is_file() and source.is_file():
        small, big = read_image(crop)[0], read_image(source)[0]
        alone = psnr(small, api.decompress(api.compress(model, small), model))
        inside = psnr(small, api.decompress(api.compress(model, big), model)[128:192, 128:192])
        r.update(small_alone_db=alone, small_inside_db=inside, small_image=inside - alone <= 2.0)
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", help="model name or checkpoint (repeatable; default: all shipped)")
    p.add_argument("--images", type=int, default=24, help="Kodak images to use (default 24)")
    p.add_argument("--data", type=Path, default=SHARED / "data" / "kodak", help="Kodak folder")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--readme", type=Path, help="also write the table into this README's 'quality' section")
    a = p.parse_args(argv)
    from sodec import registry

    names = a.model or [e.name for e in registry.models()]
    kodak = sorted(a.data.glob("kodim*.png"))[: a.images] if a.data.is_dir() else []
    results = [check_model(n, kodak) for n in names]
    # rate: within a family (name without its -qN), PSNR rises with bpp.
    families: dict[str, list[dict]] = {}
    for r in results:
        families.setdefault(r["model"].rsplit("-q", 1)[0], []).append(r)
    for members in families.values():
        members.sort(key=lambda r: r.get("bpp", 0))
        rising = all(b["psnr"] > a_["psnr"] for a_, b in itertools.pairwise(members)) if kodak else None
        for r in members:
            r["rate"] = rising if len(members) > 1 else None
    checks = ("flat", "mean_colour", "border", "grid", "small_image", "rate")
    lines = [
        f"Command: `python benchmarks/quality_checks.py`; {len(kodak)} Kodak images, whole `sodec.api` calls. "
        "flat: largest error on flat 256x256 (30, 160, 60) and (200, 30, 30), goal <= 3 levels; mean colour: "
        "worst channel of any image, goal <= 3 levels (and without the file's mean-colour stream); border: "
        "16-px ring's PSNR deficit against the interior, goal <= 1 dB; grid: error power at the 8/16-px "
        "periods over nearby frequencies, goal <= 4; small image: crop-64x64 coded alone against inside its "
        "512x512 source, goal <= 2 dB; rate: PSNR rises with bpp within a family.",
        "",
        "| model | bpp | PSNR | " + " | ".join(checks) + " |",
        "|---" * (3 + len(checks)) + "|",
    ]
    for r in results:
        detail = {
            "flat": f"{r['flat_max_err']} lv",
            "mean_colour": f"{r.get('mean_colour_max_err', float('nan')):.1f} lv;"
            f" decoder alone {r.get('decoder_mean_drift', float('nan')):.1f} lv",
            "border": f"{r.get('border_gap_db', float('nan')):+.2f} dB",
            "grid": f"x{r.get('grid_peak', float('nan')):.1f}",
            "small_image": f"{r.get('small_inside_db', float('nan')) - r.get('small_alone_db', float('nan')):+.1f} dB",
            "rate": "",
        }
        cells = [
            ("n/a" if r.get(c) is None else ("PASS" if r[c] else "FAIL")) + (f" ({detail[c]})" if detail[c] else "")
            for c in checks
        ]
        lines.append(
            f"| {r['model']} | {r.get('bpp', float('nan')):.4f} | {r.get('psnr', float('nan')):.2f} | "
            + " | ".join(cells)
            + " |"
        )
    print("\n".join(lines))
    if a.readme:
        from sodec.reporting import replace_section

        if not replace_section(a.readme, "quality", "\n".join(lines)):
            print(f"{a.readme} has no quality section", file=sys.stderr)
    if a.json:
        a.json.write_text(json.dumps(results, indent=2, default=lambda o: o.item()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
