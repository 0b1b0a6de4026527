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
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import UsageError


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

    def say(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

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
    )
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
        help="pytorch-fid pt_inception-2015-12-05-6726825d.pth for FID/KID (else looked for in the weights dir)",
    )
    p.add_argument("--limit", type=int, help="only the first N images (sorted by path)")
    p.add_argument(
        "--decode-steps",
        type=_ints,
        default=[],
        help="also decode each diffusion model's files with N DDIM steps of the same UNet (e.g. 50): "
        "the multi-step decoder one-step SODEC replaces",
    )
    p.add_argument("--device", default="cpu", help="where the metric networks run (codecs run on CPU)")
    common(p)
    p.set_defaults(func=run)
