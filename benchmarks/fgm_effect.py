"""What the fidelity guidance (FGM, paper Sec. 3.3) does inside a SODEC model's UNet.

    python benchmarks/fgm_effect.py [--model sodec-small-q2] [--images 4] [--crop 256]

For ``--images`` Kodak images spread over the set (kodim01, 07, 13, 19 by default; a centre crop of ``--crop`` px) the file's latents
are decoded three ways: with the image's own condition c_g, with the null condition (the FGM
ablation of ``sodec evaluate``'s ``@no_fgm`` run) and with another image's c_g. Printed per image:

* how far apart two images' conditions are (relative L2 of c_g);
* at every cross-attention layer (attn2), how much the guided output differs from the null one
  and from the other image's (relative L2), and how much it varies over positions (relative L2
  of its deviation from the spatial mean: near 0 means a per-channel bias, the same everywhere);
* the mean absolute pixel change (0-255 levels) from guided to null and to another image's c_g.

docs/design.md ("The guidance carries no local detail in the small preset") quotes a run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def rel(a, b) -> float:
    return float((a - b).norm() / a.norm().clamp_min(1e-12))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="sodec-small-q2")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--crop", type=int, default=256, help="centre crop, a multiple of 64")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "kodak")
    a = p.parse_args(argv)
    import torch

    from sodec import api
    from sodec.image_io import read_image

    model = api.load_model(a.model)
    net = model.module.eval()
    if model.kind != "sodec":
        raise SystemExit(f"{a.model} is a plain codec: it has no guidance")
    found = sorted(a.data.glob("*.png"))
    files = found[:: max(1, len(found) // max(a.images, 1))][: a.images]
    if len(files) < 2:
        raise SystemExit(f"need at least 2 images in {a.data}")
    outs: dict[tuple[str, str], torch.Tensor] = {}
    tag = {"now": ""}

    def hook(name: str):
        def record(mod, inp, out):
            outs[(tag["now"], name)] = out.detach()

        return record

    for name, mod in net.named_modules():
        if name.endswith("attn2"):
            mod.register_forward_hook(hook(name))

    def latents(f: Path):
        img = read_image(f)[0]
        h, w = img.shape[:2]
        top, left = (h - a.crop) // 2 // 64 * 64, (w - a.crop) // 2 // 64 * 64
        x = torch.from_numpy(img[top : top + a.crop, left : left + a.crop].copy()).permute(2, 0, 1)[None]
        y_hat, w_, _ = net.codec.encode_latents(x.float() / 255)
        return y_hat, w_, net.fgm(net.guidance_image(y_hat).clamp(0, 1))

    with torch.no_grad():
        lat = [latents(f) for f in files]
        rows = []
        for i, (y_hat, w_, c_g) in enumerate(lat):
            c_other = lat[(i + 1) % len(lat)][2]
            dec = {}
            for t, c in (("guided", c_g), ("null", net.null_condition(y_hat)), ("other", c_other)):
                tag["now"] = t
                dec[t] = net.decode_latent(y_hat, w_, c_g=c).clamp(0, 1) * 255
            layers = sorted({n for _, n in outs})
            g = [outs[("guided", n)] for n in layers]
            rows.append(
                (
                    files[i].name,
                    rel(c_g, c_other),
                    np.mean([rel(x, outs[("null", n)]) for x, n in zip(g, layers, strict=True)]),
                    np.mean([rel(x, outs[("other", n)]) for x, n in zip(g, layers, strict=True)]),
                    np.mean([rel(x, x.mean(1, keepdim=True)) for x in g]),
                    float((dec["guided"] - dec["null"]).abs().mean()),
                    float((dec["guided"] - dec["other"]).abs().mean()),
                )
            )
    print(f"{a.model}, {len(files)} Kodak centre crops of {a.crop} px; attn2 figures: mean over {len(layers)} layers")
    print(
        "| image | c_g vs next image's | attn2: guided vs null | guided vs other c_g | spatial variation | pixels: guided vs null | vs other c_g |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.2f} | {r[4]:.3f} | {r[5]:.2f} lv | {r[6]:.2f} lv |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
