"""Does replicate padding fix the border ring of a trained codec? A short fine-tune with each mode.

    python benchmarks/padding_finetune.py --padding zeros --seconds 720
    python benchmarks/padding_finetune.py --padding replicate --seconds 720   # (side by side: 1 thread each)

Starts from a shipped codec (default ``codec-small-q2``), switches every convolution of g_a, g_s,
h_a and h_s to ``--padding`` (models/padding.py; "zeros" is the control), fine-tunes everything
on MSE (0..255) + lambda * bpp (the noisy-proxy rate) for ``--seconds`` on 8 crops of 192 px of
the training photos (10 % flat/frame crops, data.paint_flat_region), then reports on the first
``--images`` Kodak images: bpp from the .sodec bytes, PSNR, the 16-px border ring's PSNR deficit
against the interior (benchmarks/quality_checks.py's ``border``), and the flat-patch errors.
Before any step the script also reports the starting point with the new padding, untrained.
z's quantiles stay as shipped. Nothing is saved unless ``--save`` names a file (a state_dict in safetensors).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def report(model, kodak: list[Path]) -> dict:
    from sodec import api
    from sodec.image_io import read_image

    bpps, psnrs, gaps = [], [], []
    for p in kodak:
        img = read_image(p)[0]
        data = api.compress(model, img)
        dec = api.decompress(data, model)
        ring = np.ones(img.shape[:2], bool)
        ring[16:-16, 16:-16] = False
        bpps.append(8 * len(data) / (img.shape[0] * img.shape[1]))
        psnrs.append(psnr(img, dec))
        gaps.append(psnr(img[~ring], dec[~ring]) - psnr(img[ring], dec[ring]))
    flat = []
    for colour in ((30, 160, 60), (200, 30, 30)):
        img = np.empty((256, 256, 3), np.uint8)
        img[:] = colour
        dec = api.decompress(api.compress(model, img), model).astype(int)
        err = np.abs(dec - img).max(-1)
        flat.append((int(err.max()), int(err[32:-32, 32:-32].max())))
    return {"bpp": np.mean(bpps), "psnr": np.mean(psnrs), "ring_gap": np.mean(gaps), "flat": flat}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="codec-small-q2")
    p.add_argument("--padding", choices=("zeros", "replicate"), required=True)
    p.add_argument("--seconds", type=float, default=720)
    p.add_argument("--rate-weight", type=float, default=2000.0, help="lambda on bpp (MSE on 0..255)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--images", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save", type=Path)
    a = p.parse_args(argv)
    from sodec import api
    from sodec.data import CropSampler, list_images
    from sodec.losses import bpp, mse255
    from sodec.models.padding import set_padding

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = api.load_model(a.model)
    codec = model.codec.float()
    for part in (codec.g_a, codec.g_s, codec.h_a, codec.h_s):
        set_padding(part, a.padding)
    kodak = sorted((SHARED / "data" / "kodak").glob("kodim*.png"))[: a.images]
    fmt = "{tag}: Kodak {n} bpp {bpp:.4f}, PSNR {psnr:.2f} dB, ring gap {ring_gap:+.2f} dB; flat (max, interior) {flat}"
    print(fmt.format(tag=f"{a.padding}, untrained", n=len(kodak), **report(model, kodak)), flush=True)
    files = list_images(SHARED / "data" / "train") + list_images(SHARED / "data" / "train-extra")
    sampler = CropSampler(files, 192, seed=0, flat_fraction=0.1)
    params = [q for n, q in codec.named_parameters() if not n.endswith("quantiles")]
    opt = torch.optim.Adam(params, lr=a.lr)
    codec.train()
    t0, step = time.time(), 0
    while time.time() - t0 < a.seconds:
        x = sampler.batch(step, 8)
        out = codec(x)
        loss = mse255(out.x_hat, x) + a.rate_weight * bpp(out.likelihoods, x.shape[0] * x.shape[2] * x.shape[3])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
    codec.eval()
    codec.update(force=True)
    print(fmt.format(tag=f"{a.padding}, {step} steps", n=len(kodak), **report(model, kodak)))
    if a.save:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in codec.state_dict().items()}, str(a.save))
    return 0


if __name__ == "__main__":
    sys.exit(main())
