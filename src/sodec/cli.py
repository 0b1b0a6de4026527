"""``sodec``: a thin argparse layer over :mod:`sodec.api` and the library.

Habits follow cwebp/dwebp: ``-o`` names the output, ``-`` means stdin/stdout, a one-line summary
goes to stderr (``-quiet`` silences it), errors are one line with a distinct exit code
(:mod:`sodec.errors`). Outputs are written to a temp file and renamed, so a failure or a kill
leaves no partial file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import __version__
from .errors import SodecError, UsageError

EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug in sodec, not bad input


def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"is a directory: {path}") from None


def _write_output(path: str, data: bytes) -> None:
    from .image_io import write_atomic

    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    parent = Path(path).parent
    if not parent.is_dir():
        raise UsageError(f"output folder does not exist: {parent}")
    write_atomic(path, data)


def _limit(args: argparse.Namespace) -> int | None:
    """--max-pixels: absent -> the default limit, 0 -> no limit."""
    from .container import DEFAULT_MAX_PIXELS

    return DEFAULT_MAX_PIXELS if args.max_pixels is None else (args.max_pixels or None)


def _say(args: argparse.Namespace, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr)


def cmd_compress(args: argparse.Namespace) -> int:
    from . import api
    from .image_io import read_image

    out = args.output or ("-" if args.input == "-" else str(Path(args.input).with_suffix(".sodec")))
    raw = _read_input(args.input)
    image, notes = read_image(raw)
    for n in notes:
        _say(args, f"note: {n}")
    model = api.load_model(args.model, args.quality, base_weights=args.weights)
    t = time.perf_counter()
    data = api.compress(model, image)
    dt = time.perf_counter() - t
    _write_output(out, data)
    h, w = image.shape[:2]
    _say(
        args,
        f"{args.input} -> {out}: {w}x{h}, {len(data)} bytes, {8 * len(data) / (w * h):.4f} bpp, model {model.model_id}, {dt:.2f} s",
    )
    return 0


def cmd_decompress(args: argparse.Namespace) -> int:
    from . import api
    from .image_io import encode_image_file

    data = _read_input(args.input)
    out = args.output or ("-" if args.input == "-" else str(Path(args.input).with_suffix(".png")))
    suffix = ".png" if out == "-" else Path(out).suffix
    model = api.load_model(args.model, base_weights=args.weights) if args.model else None
    t = time.perf_counter()
    image = api.decompress(data, model, max_pixels=_limit(args), tile=args.tile, base_weights=args.weights)
    dt = time.perf_counter() - t
    _write_output(out, encode_image_file(image, suffix))
    _say(args, f"{args.input} -> {out}: {image.shape[1]}x{image.shape[0]}, {dt:.2f} s")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from . import api

    meta = api.info(_read_input(args.input), max_pixels=_limit(args))
    if args.json:
        print(json.dumps(meta, indent=2))
    else:
        for k, v in meta.items():
            print(f"{k:16s} {v:.5f}" if isinstance(v, float) else f"{k:16s} {v}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from . import registry

    for e in registry.models():
        bpp = f"{e.kodak_bpp:.4f} bpp on Kodak" if e.kodak_bpp is not None else ""
        print(f"{e.name:24s} {e.kind:6s} q{e.quality}  {bpp:20s} {e.description}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import tomllib

    from .training.stages import load_schedule, load_stage
    from .training.trainer import run_schedule, run_stage

    overrides = {"steps": args.steps, "rate_weight": args.rate_weight, "target_bpp": args.target_bpp, "data": args.data}
    out = args.out or str(Path("runs") / Path(args.config).stem)
    kw = {"resume": not args.restart, "weights_dir": args.weights_dir, "progress": not args.quiet}
    try:
        with open(args.config, "rb") as f:
            is_schedule = isinstance(tomllib.load(f).get("stage"), list)
        if is_schedule:
            results = run_schedule(load_schedule(args.config, **overrides), out, **kw)
        else:
            results = [run_stage(load_stage(args.config, **overrides), out, **kw)]
    except (ValueError, FileNotFoundError, tomllib.TOMLDecodeError) as e:
        # Bad stage files, refused run folders, missing data: the user's to fix, not a crash.
        raise UsageError(str(e).splitlines()[0]) from None
    for r in results:
        _say(args, f"{r.run_dir}: {r.steps} steps, {r.seconds:.0f} s -> {r.checkpoint} (sha256 {r.sha256[:12]}…)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sodec", description="SODEC image codec: one-step diffusion decoding.")
    p.add_argument("--version", action="version", version=f"sodec {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-quiet", "--quiet", "-q", action="store_true", help="print nothing but errors")

    c = sub.add_parser("compress", help="image -> .sodec")
    c.add_argument("input", help="image file, or - for stdin")
    c.add_argument("-o", "--output", help="output .sodec file, or - for stdout (default: INPUT.sodec)")
    c.add_argument(
        "--model", "-m", help="model name, family, or a .safetensors checkpoint (default: the shipped default)"
    )
    c.add_argument("--quality", "-Q", type=int, help="rate point within the model family (1 = smallest files)")
    c.add_argument("--weights", help="diffusers folder (or hub id) with the SD UNet/VAE for paper-preset models")
    common(c)
    c.set_defaults(func=cmd_compress)

    d = sub.add_parser("decompress", help=".sodec -> image (PNG, PPM, BMP, TIFF by suffix)")
    d.add_argument("input", help=".sodec file, or - for stdin")
    d.add_argument("-o", "--output", help="output image, or - for PNG on stdout (default: INPUT.png)")
    d.add_argument("--model", "-m", help="decode with this model/checkpoint (default: the one the file names)")
    d.add_argument("--weights", help="diffusers folder (or hub id) with the SD UNet/VAE for paper-preset models")
    d.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="refuse files claiming more pixels (default 178956970; 0 = no limit)",
    )
    d.add_argument(
        "--tile", type=int, default=None, help="decode in tiles of this many latent rows/cols (multiple of 4)"
    )
    common(d)
    d.set_defaults(func=cmd_decompress)

    i = sub.add_parser("info", help="what a .sodec file holds, and its bpp")
    i.add_argument("input")
    i.add_argument("--json", action="store_true")
    i.add_argument("--max-pixels", type=int, default=None)
    common(i)
    i.set_defaults(func=cmd_info)

    m = sub.add_parser("models", help="list the shipped models")
    common(m)
    m.set_defaults(func=cmd_models)

    t = sub.add_parser("train", help="run a training stage or a schedule of stages (TOML)")
    t.add_argument("--config", required=True, help="stage or schedule TOML (see configs/)")
    t.add_argument("--out", help="run folder (default runs/<config name>)")
    t.add_argument("--steps", type=int, help="override steps")
    t.add_argument("--rate-weight", type=float, help="override the rate weight lambda")
    t.add_argument("--target-bpp", type=float, help="override the stage's rate target (lambda is steered to it)")
    t.add_argument("--data", help="override the training image folder")
    t.add_argument("--weights-dir", help="folder with LPIPS/DISTS backbone weights (else $SODEC_WEIGHTS_DIR)")
    t.add_argument("--restart", action="store_true", help="ignore an existing train_state and start over")
    common(t)
    t.set_defaults(func=cmd_train)

    from .commands import register_all

    register_all(sub, common)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SodecError as e:
        print(f"sodec: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("sodec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
