"""Mean bpp (from the bytes written), PSNR, MS-SSIM and encode/decode seconds on a folder.

    python scripts/eval_codec.py [--data ../shared/data/kodak] [--model NAME ...] [--json out.json]
        [--readme README.md] [--registry]   # write the README table / models.json's kodak_bpp

Every image is coded whole (no resizing), compressed to a real .sodec file and decoded from those
bytes; bpp = 8 * file bytes / pixels, header included. Defaults: every shipped model, Kodak.
For the full comparison (perceptual metrics, classical codecs) use ``sodec evaluate``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sodec import api, registry
from sodec.data import list_images
from sodec.errors import SodecError
from sodec.image_io import read_image
from sodec.metrics import ms_ssim


def evaluate(model_name: str, files: list[Path], lpips_net: torch.nn.Module | None) -> dict:
    model = api.load_model(model_name)
    rows = []
    for f in files:
        img, _ = read_image(f)
        t0 = time.perf_counter()
        data = api.compress(model, img)
        t1 = time.perf_counter()
        rec = api.decompress(data, model)
        t2 = time.perf_counter()
        mse = float(np.mean((rec.astype(np.float64) - img.astype(np.float64)) ** 2))
        a, b = (torch.from_numpy(np.array(x)).permute(2, 0, 1)[None].float() / 255 for x in (img, rec))
        rows.append(
            {
                "image": f.name,
                "bytes": len(data),
                "bpp": 8 * len(data) / (img.shape[0] * img.shape[1]),
                "psnr": 10 * math.log10(255**2 / max(mse, 1e-12)),
                # sodec.metrics: fewer scales below 161 px, absent (None) below 11 px
                "ms_ssim": ms_ssim(img, rec).value,
                "lpips_alex": float(lpips_net(a * 2 - 1, b * 2 - 1)) if lpips_net is not None else None,
                "encode_s": t1 - t0,
                "decode_s": t2 - t1,
            }
        )
    keys = ("bpp", "psnr", "ms_ssim", "lpips_alex", "encode_s", "decode_s")
    present = {k: [r[k] for r in rows if r[k] is not None] for k in keys}
    mean = {k: float(np.mean(v)) if v else None for k, v in present.items()}
    return {"model": model_name, "images": len(rows), "mean": mean, "per_image": rows}


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(here.parent / "shared" / "data" / "kodak"))
    p.add_argument("--model", action="append", help="model name (repeatable); default: all shipped")
    p.add_argument(
        "--weights-dir", help="LPIPS backbone weights (else $SODEC_WEIGHTS_DIR); without them LPIPS is 'missing'"
    )
    p.add_argument("--json")
    p.add_argument("--readme", help="also write the table into this README's generated section")
    p.add_argument(
        "--registry",
        action="store_true",
        help="also record each shipped model's mean bpp as its kodak_bpp in sodec/weights/models.json",
    )
    a = p.parse_args(argv)
    files = list_images(a.data)
    names = a.model or [e.name for e in registry.models()]
    results = []
    try:
        from sodec.perceptual import lpips_model

        lpips_net, lpips_note = lpips_model("alex", a.weights_dir), "LPIPS-Alex v0.1"
    except SodecError as e:
        lpips_net, lpips_note = None, f"LPIPS missing: {e}"
    head = [
        f"{len(files)} images from `{Path(a.data).name}`, whole images, bpp from the .sodec bytes; "
        f"{torch.get_num_threads()} CPU threads; {lpips_note}. Command: `python scripts/eval_codec.py`. "
        "Sorted by bpp, so each SODEC model sits next to the plain codec at a similar rate.",
        "",
        "| model | kind | mean bpp (file bytes) | PSNR dB | MS-SSIM | LPIPS-Alex | encode s | decode s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for name in names:
        r = evaluate(name, files, lpips_net)
        results.append(r)
        m = r["mean"]
        lp = "missing" if m["lpips_alex"] is None else f"{m['lpips_alex']:.4f}"
        ssim = "n/a" if m["ms_ssim"] is None else f"{m['ms_ssim']:.4f}"
        kind = api.load_model(name).kind
        rows.append(
            (
                m["bpp"],
                f"| {name} | {kind} | {m['bpp']:.4f} | {m['psnr']:.2f} | {ssim} | {lp} "
                f"| {m['encode_s']:.2f} | {m['decode_s']:.2f} |",
            )
        )
        print(rows[-1][1], file=sys.stderr, flush=True)  # progress; the sorted table follows
    lines = head + [row for _, row in sorted(rows)]
    print("\n".join(lines))
    sys.stdout.flush()
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    if a.registry:
        reg_path = registry.weights_folder() / "models.json"
        reg = json.loads(reg_path.read_text())
        measured = {r["model"]: round(r["mean"]["bpp"], 4) for r in results}
        for entry in reg["models"]:
            if entry["name"] in measured:
                entry["kodak_bpp"] = measured[entry["name"]]
        reg_path.write_text(json.dumps(reg, indent=2) + "\n")
    if a.readme:
        from sodec.reporting import replace_section

        if not replace_section(a.readme, "codec", "\n".join(lines)):
            print(f"{a.readme} has no codec section", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
