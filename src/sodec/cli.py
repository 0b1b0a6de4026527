"""``sodec``: a thin argparse layer over :mod:`sodec.api` and the library.

Habits follow cwebp/dwebp and gzip/zstd: ``-o`` names the output, ``-`` means stdin/stdout, a
one-line summary per file goes to stderr (``-q`` silences it), errors are one line with a
distinct exit code (:mod:`sodec.errors`). Outputs are written to a temp file and renamed, so a
failure or a kill leaves no partial file; an existing file is never replaced without ``-f``, and
the input is never the output.

Start-up: this module imports neither torch nor the models at import time. ``--help``,
``models`` and ``info`` never import torch; ``compress``/``decompress`` check every input and
output (existence, folders, permissions, pixel limits) before torch or a model loads, and load
the model once for all the files of a call. ``benchmarks/startup.py`` measures it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .container import DEFAULT_MAX_PIXELS  # the container module is torch-free (struct, zlib)
from .errors import LimitsError, OutputExistsError, SodecError, UsageError, out_of_memory

EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug in sodec, not bad input
IMAGE_SUFFIXES = {".png": "PNG", ".ppm": "PPM", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}
# Names that say "image": compress writes a .sodec file, which no viewer opens under such a name.
IMAGE_NAMES = {*IMAGE_SUFFIXES, ".jpg", ".jpeg", ".webp", ".avif", ".jxl", ".gif", ".heic", ".pgm", ".pnm"}

EXIT_CODES = """\
exit codes: 0 ok; 2 usage (bad option, missing input, missing output folder); 3 not a .sodec
file; 4 truncated; 5 corrupted; 6 wrong or missing model; 7 over --max-pixels or out of
memory; 8 unreadable input image; 9 bad weights; 10 output exists (use -f); 1 the output
could not be written (disk full, folder gone meanwhile); 130 interrupted.
With several files, each failure is reported on its own line and the rest are still coded;
the exit code is then that of the first failure."""


# -- small helpers --------------------------------------------------------------------------------


def _memory_error(e: BaseException) -> LimitsError | None:
    """Running out of memory as the one-line LimitsError (:func:`sodec.errors.out_of_memory`)."""
    return out_of_memory(e, "finish (try a smaller --tile or a smaller image)")


def _limit(args: argparse.Namespace) -> int | None:
    """--max-pixels: absent -> the default limit, 0 -> no limit."""
    return DEFAULT_MAX_PIXELS if args.max_pixels is None else (args.max_pixels or None)


def _progress_on(args: argparse.Namespace) -> bool:
    """A progress bar only for a person watching: a terminal on stderr, and no -q."""
    return not args.quiet and sys.stderr.isatty()


def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"is a directory: {path}") from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None


def _write_output(path: str, data: bytes, force: bool) -> None:
    from .fileio import atomic_write_via

    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    # Checked again here (first before any work): the file may have appeared since.
    if not force and os.path.lexists(path):
        raise OutputExistsError(f"{path} exists; -f/--force replaces it")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    try:
        atomic_write_via(path, write)
    except OSError as e:  # disk full, folder removed meanwhile, ...
        raise SodecError(f"cannot write {path}: {e.strerror or e}") from None


# -- planning: every input and output checked before any work --------------------------------------


@dataclass
class Job:
    """One file of a call: where it comes from, where it goes, and why it failed (if it did)."""

    src: str  # a path, or "-" for stdin
    dst: str  # a path, or "-" for stdout
    error: SodecError | None = None


def _same_file(a: str, b: str) -> bool:
    if a == "-" or b == "-":
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _check_job(job: Job, force: bool) -> None:
    src, dst = job.src, job.dst
    if src != "-":
        p = Path(src)
        if not p.exists():
            raise UsageError(f"no such file: {src}")
        if p.is_dir():
            raise UsageError(f"is a directory: {src}")
        if not os.access(p, os.R_OK):
            raise UsageError(f"cannot read {src}: permission denied")
    if dst == "-":
        if sys.stdout.isatty():
            raise UsageError("refusing to write binary data to a terminal; use -o FILE or a pipe")
        return
    if _same_file(src, dst):
        raise UsageError(f"input and output are the same file: {dst}")
    out = Path(dst)
    parent = out.parent
    if not parent.is_dir():
        raise UsageError(f"output folder does not exist: {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to {parent}: permission denied")
    if out.is_dir():
        raise UsageError(f"output {dst} is a folder")
    # access() says yes to root everywhere and knows nothing of /proc or read-only mounts: make
    # (and remove) the temp file the output will be written through, before any coding work.
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise UsageError(f"cannot write to {parent}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(probe)
    if not force and os.path.lexists(out):
        raise OutputExistsError(f"{dst} exists; -f/--force replaces it")


def plan(inputs: list[str], output: str | None, default: Callable[[str], str], force: bool) -> list[Job]:
    """Map inputs to outputs and check each pair; no torch, no image decoding.

    ``output``: None (each output next to its input, named by ``default``), ``-`` (stdout, one
    input only), a folder (given as ``DIR/``, or an existing folder when there are several
    inputs), or a file (one input only). Refusals of the whole call raise; a pair that fails
    its own checks carries the error in ``Job.error`` (with one input, it raises).
    """
    if "-" in inputs and len(inputs) > 1:
        raise UsageError("- (stdin) must be the only input")
    folder: Path | None = None
    if output is not None and output != "-":
        named_folder = output.endswith(("/", os.sep))
        if named_folder or (len(inputs) > 1 and Path(output).is_dir()):
            folder = Path(output)
            if not folder.is_dir():
                raise UsageError(f"output folder does not exist: {output}")
        elif Path(output).is_dir():
            raise UsageError(f"-o {output} is a folder: write {output.rstrip('/')}/ to put the output in it")
        elif len(inputs) > 1:
            raise UsageError(f"{len(inputs)} inputs need -o DIR/ (a folder), not a file")
    elif output == "-" and len(inputs) > 1:
        raise UsageError("-o - (stdout) takes one input only")
    jobs: list[Job] = []
    seen: dict[str, str] = {}
    for src in inputs:
        if src == "-":
            if folder is not None:
                raise UsageError("stdin has no file name: use -o FILE or -o -")
            dst = output if output is not None else "-"
        elif folder is not None:
            dst = str(folder / Path(default(src)).name)
        else:
            dst = output if output is not None else default(src)
        job = Job(src, dst)
        try:
            _check_job(job, force)
            key = os.path.abspath(dst) if dst != "-" else "-"
            if key in seen:
                raise UsageError(f"{src} and {seen[key]} would both be written to {dst}")
            seen[key] = src
        except SodecError as e:
            if len(inputs) == 1:
                raise
            job.error = e
        jobs.append(job)
    return jobs


def _refuse_outputs(jobs: list[Job], bad: Callable[[str], bool], why: str) -> None:
    """Fail each job whose output name ``bad`` rejects ("output DST: why"); with one job, raise."""
    for job in jobs:
        if job.error is None and bad(job.dst):
            err = UsageError(f"output {job.dst}: {why}")
            if len(jobs) == 1:
                raise err
            job.error = err


# -- running many files ------------------------------------------------------------------------


@dataclass
class Batch:
    """Runs the jobs of one call: a bar over files on a terminal, one line per file or failure,
    and the exit code of the first failure (0 when every file was written)."""

    args: argparse.Namespace
    jobs: list[Job]
    first_error: SodecError | None = None
    done: int = 0
    failed: int = 0
    coding_s: float = 0.0  # encode/decode time, summed over files (model load not included)
    load_s: float = 0.0  # model loading, all models of the call
    bar: Any = field(default=None, repr=False)

    def say(self, msg: str) -> None:
        if self.args.quiet:
            return
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr)

    def fail(self, job: Job, e: SodecError) -> None:
        job.error = e
        self.failed += 1
        self.first_error = self.first_error or e
        msg = str(e)
        name = "stdin" if job.src == "-" else job.src
        if name not in msg:  # which file, even when there is one
            msg = f"{name}: {msg}"
        # Errors print even with -q (like every other error of the CLI).
        if self.bar is not None:
            self.bar.write(f"sodec: error: {msg}", file=sys.stderr)
        else:
            print(f"sodec: error: {msg}", file=sys.stderr)

    def run(self, work: Callable[[Job], None]) -> None:
        """Call ``work(job)`` for each job; a typed error (or running out of memory) fails that
        file only. Anything else is a bug and stops the call with its traceback."""
        if len(self.jobs) > 1 and _progress_on(self.args):
            from tqdm import tqdm

            self.bar = tqdm(total=len(self.jobs), unit="file", file=sys.stderr, dynamic_ncols=True)
        try:
            for job in self.jobs:
                try:
                    if job.error is not None:
                        raise job.error
                    work(job)
                    self.done += 1
                except SodecError as e:
                    self.fail(job, e)
                except (MemoryError, RuntimeError) as e:
                    err = _memory_error(e)
                    if err is None:
                        raise
                    self.fail(job, err)
                if self.bar is not None:
                    self.bar.update(1)
        finally:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    def finish(self, t0: float) -> int:
        if len(self.jobs) > 1:
            self.say(
                f"{len(self.jobs)} files: {self.done} written, {self.failed} failed; "
                f"model loading {self.load_s:.2f} s, coding {self.coding_s:.2f} s, "
                f"{time.perf_counter() - t0:.2f} s in all (after start-up)"
            )
        return 0 if self.first_error is None else self.first_error.exit_code


@contextmanager
def _tile_bar(enabled: bool) -> Iterator[None]:
    """A bar over the tiles of a tiled decode (images past the model's tile size)."""
    if not enabled:
        yield
        return
    from tqdm import tqdm

    from .tiling import report_tiles

    bar = None

    def report(done: int, total: int) -> None:
        nonlocal bar
        if bar is None or done == 1:  # a new tiled pass (SODEC: guidance image, then image)
            if bar is not None:
                bar.close()
            bar = tqdm(total=total, unit="tile", file=sys.stderr, leave=False, dynamic_ncols=True)
        bar.update(done - bar.n)

    try:
        with report_tiles(report):
            yield
    finally:
        if bar is not None:
            bar.close()


# -- models --------------------------------------------------------------------------------------


def _is_path(model: str | None) -> bool:
    """As :func:`sodec.api.load_model` tells a checkpoint path from a model name."""
    from .registry import names_checkpoint

    return names_checkpoint(model)


def check_model_option(model: str | None, quality: int | None) -> None:
    """Refuse an unknown model name or quality, or a missing checkpoint file, before any work
    (the registry is JSON: no torch needed)."""
    from . import registry
    from .errors import WeightsError

    if _is_path(model):
        if not Path(str(model)).is_file():
            raise WeightsError(f"weights file not found: {model}")
    else:
        registry.resolve(model, quality)


def load_encoder(model: str | None, quality: int | None, base_weights: str | None) -> Any:
    """What ``compress`` loads: :func:`sodec.api.load_encoder` (a SODEC model's codec alone)."""
    from . import api

    return api.load_encoder(model, quality, base_weights)


# -- commands ------------------------------------------------------------------------------------


def _probe_size(raw: bytes) -> tuple[int, int] | None:
    """(W, H) from an image's header without decoding it; None when Pillow cannot tell."""
    from PIL import Image

    from .image_io import pillow_limit_lifted

    try:
        # Pillow's own pixel limit lifted (and its warning silenced): --max-pixels is the limit.
        with warnings.catch_warnings(), pillow_limit_lifted():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(raw)) as im:
                return im.size
    except Exception:  # unreadable: read_image says why, in its own words
        return None


def cmd_compress(args: argparse.Namespace) -> int:
    from . import fileinfo, registry
    from .image_io import read_image

    t0 = time.perf_counter()
    limit = _limit(args)
    check_model_option(args.model, args.quality)
    jobs = plan(args.inputs, args.output, lambda s: str(Path(s).with_suffix(".sodec")), args.force)
    _refuse_outputs(
        jobs,
        lambda dst: dst != "-" and Path(dst).suffix.lower() in IMAGE_NAMES,
        "compress writes a .sodec file, not an image; name it .sodec",
    )
    batch = Batch(args, jobs)
    model = None
    # Known before any model loads, so the size checks below count the margin's canvas too.
    margin = registry.default_margin(args.model, args.quality) if args.margin is None else args.margin == "on"

    def one(job: Job) -> None:
        nonlocal model
        raw = _read_input(job.src)
        name = "stdin" if job.src == "-" else job.src
        size = _probe_size(raw)
        if size is not None:  # refuse a huge image before decoding it or loading a model
            fileinfo.check_size(*size, limit, margin=margin)
        image, notes = read_image(raw, name=name, max_pixels=limit)
        for n in notes:
            batch.say(f"note: {name}: {n}")
        h, w = image.shape[:2]
        fileinfo.check_size(w, h, limit, margin=margin)
        from . import api

        if model is None:
            t = time.perf_counter()
            model = load_encoder(args.model, args.quality, args.weights)
            batch.load_s += time.perf_counter() - t
        t = time.perf_counter()
        data = api.compress(model, image, max_pixels=limit, margin=margin)
        dt = time.perf_counter() - t
        batch.coding_s += dt
        _write_output(job.dst, data, args.force)
        load = f", model load {batch.load_s:.2f} s" if batch.done == 0 and len(jobs) == 1 else ""
        batch.say(
            f"{name} -> {job.dst}: {w}x{h}, {len(data)} bytes, {8 * len(data) / (w * h):.4f} bpp, "
            f"model {model.model_id}; encode {dt:.2f} s{load}"
        )

    batch.run(one)
    return batch.finish(t0)


def cmd_decompress(args: argparse.Namespace) -> int:
    from . import fileinfo

    t0 = time.perf_counter()
    limit = _limit(args)
    if args.model:
        check_model_option(args.model, None)
    jobs = plan(args.inputs, args.output, lambda s: s + ".png", args.force)
    _refuse_outputs(
        jobs,
        lambda dst: dst != "-" and Path(dst).suffix.lower() not in IMAGE_SUFFIXES,
        "write .png, .ppm, .bmp or .tif (lossless)",
    )
    batch = Batch(args, jobs)
    models: dict[str, Any] = {}  # model id -> loaded model: each loads once per call

    def one(job: Job) -> None:
        data = _read_input(job.src)
        name = "stdin" if job.src == "-" else job.src
        header = fileinfo.check_file(data, limit)  # container, CRCs, pixel limits: no model yet
        from . import api
        from .image_io import encode_image_file

        key = args.model or header.model_id
        if key not in models:
            t = time.perf_counter()
            if args.model:
                models[key] = api.load_model(args.model, base_weights=args.weights)
            else:
                models[key] = api.model_for(header, args.weights)
            batch.load_s += time.perf_counter() - t
        model = models[key]
        t = time.perf_counter()
        with _tile_bar(_progress_on(args)):
            image = api.decompress(data, model, max_pixels=limit, tile=args.tile, base_weights=args.weights)
        dt = time.perf_counter() - t
        batch.coding_s += dt
        suffix = ".png" if job.dst == "-" else Path(job.dst).suffix
        _write_output(job.dst, encode_image_file(image, suffix, header.grayscale), args.force)
        load = f", model load {batch.load_s:.2f} s" if batch.done == 0 and len(jobs) == 1 else ""
        batch.say(
            f"{name} -> {job.dst}: {image.shape[1]}x{image.shape[0]}{', grayscale' if header.grayscale else ''}, "
            f"model {model.model_id}; decode {dt:.2f} s{load}"
        )

    batch.run(one)
    return batch.finish(t0)


def _info_value(v: Any) -> str:
    """A value of ``sodec info`` as text: 0.12345, 768x512 for a size, "z 1612, y 2560" for a dict."""
    if isinstance(v, float):
        return f"{v:.5f}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_info_value(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "x".join(map(str, v)) if len(v) == 2 and all(isinstance(x, int) for x in v) else ", ".join(map(str, v))
    return str(v)


def cmd_info(args: argparse.Namespace) -> int:
    from .fileinfo import info

    try:
        meta = info(_read_input(args.input), max_pixels=_limit(args))
    except SodecError as e:  # name the file, as compress and decompress do
        name = "stdin" if args.input == "-" else args.input
        if name in str(e):
            raise
        raise type(e)(f"{name}: {e}") from None
    if args.json:
        print(json.dumps(meta, indent=2))
    else:
        for k, v in meta.items():
            print(f"{k:16s} {_info_value(v)}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from . import registry

    entries = registry.models()
    default = registry.default_name()
    for e in entries:
        rate = f"{e.kodak_bpp:.4f} bpp on Kodak" if e.kodak_bpp is not None else "rate not measured"
        mark = "*" if e.name == default else " "
        margin = "margin" if e.margin else ""
        print(f"{mark} {e.name:20s} {e.kind:6s} q{e.quality}  {rate:19s}  {margin:6s}  {e.description}")
    if not args.quiet and entries:
        print(
            "(* = the default; bpp = 8 x file bytes / pixels, mean over the 24 Kodak images; "
            "margin = compress centres the picture in a replicated margin by default, --margin off to skip)"
        )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import tomllib

    from .training.stages import load_schedule, load_stage
    from .training.trainer import run_schedule, run_stage

    overrides = {
        "steps": args.steps,
        "rate_weight": args.rate_weight,
        "target_bpp": args.target_bpp,
        # Folders given on the command line are relative to where it runs, not to the stage file.
        "data": str(Path(args.data).resolve()) if args.data else None,
        "extra_data": [str(Path(d).resolve()) for d in args.extra_data] if args.extra_data is not None else None,
        "max_seconds": args.max_seconds,
        "init": str(Path(args.init).resolve()) if args.init and Path(args.init).exists() else args.init,
    }
    out = args.out or str(Path("runs") / Path(args.config).stem)
    kw = {"resume": not args.restart, "weights_dir": args.weights_dir, "progress": _progress_on(args)}
    try:
        with open(args.config, "rb") as f:
            is_schedule = isinstance(tomllib.load(f).get("stage"), list)
        if is_schedule:
            results = run_schedule(load_schedule(args.config, **overrides), out, **kw)
        else:
            results = [run_stage(load_stage(args.config, **overrides), out, **kw)]
    except (ValueError, FileNotFoundError, FloatingPointError, tomllib.TOMLDecodeError) as e:
        # Bad stage files, refused run folders, missing data: the user's to fix, not a crash.
        raise UsageError(str(e).splitlines()[0]) from None
    for r in results:
        if not args.quiet:
            print(
                f"{r.run_dir}: {r.steps} steps, {r.seconds:.0f} s of training -> {r.checkpoint} (sha256 {r.sha256[:12]}…)",
                file=sys.stderr,
            )
    return 0


# -- the parser ----------------------------------------------------------------------------------


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
        return v

    parse.__name__ = "int"
    return parse


def _tile(text: str) -> int:
    v = _int_at_least(12)(text)
    if v % 4:
        raise argparse.ArgumentTypeError(f"must be a multiple of 4 above 8, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="sodec",
        description="SODEC image codec: one-step diffusion decoding. `sodec COMMAND --help` for each command.",
        epilog=EXIT_CODES,
        formatter_class=fmt,
    )
    p.add_argument("--version", action="version", version=f"sodec {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors (no summary, no bar)")

    def writing(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "-f", "--force", action="store_true", help="replace existing output files (never the input itself)"
        )

    max_pixels_help = (
        "refuse images (padded to a multiple of 64) of more pixels than this; "
        f"default {DEFAULT_MAX_PIXELS} (as libpng/Pillow); 0 = no limit"
    )
    weights_help = "diffusers folder (or hub id) with the SD UNet/VAE, for paper-preset SODEC models only"

    c = sub.add_parser(
        "compress",
        help="images -> .sodec files",
        description="Encode images (PNG, JPEG, WebP, TIFF, BMP, PPM/PGM, JPEG XL, ...) to .sodec files. "
        "Several files in one call load the model once.",
        epilog=EXIT_CODES,
        formatter_class=fmt,
    )
    c.add_argument("inputs", nargs="+", metavar="INPUT", help="image file(s), or - for stdin (alone)")
    c.add_argument(
        "-o",
        "--output",
        help="output file, - for stdout, or DIR/ (trailing slash) to write DIR/NAME.sodec; "
        "several inputs need a folder (default: each INPUT with its suffix replaced by .sodec)",
    )
    c.add_argument(
        "-m",
        "--model",
        help="model name (sodec models), family, or a .safetensors checkpoint (default: the shipped default, sodec models marks it)",
    )
    c.add_argument(
        "-Q",
        "--quality",
        type=_int_at_least(1),
        help="rate point within the model family: 1 = smallest files (default: the family's highest)",
    )
    c.add_argument("--max-pixels", type=_int_at_least(0), default=None, help=max_pixels_help)
    c.add_argument(
        "--margin",
        choices=("on", "off"),
        default=None,
        help="centre the picture in a replicated margin, so its edges code like its inside (about 19 %% more "
        "bytes, higher PSNR at the border; default: the model's registry entry, off for the shipped models; "
        "docs/format.md)",
    )
    c.add_argument("--weights", help=weights_help)
    writing(c)
    common(c)
    c.set_defaults(func=cmd_compress)

    d = sub.add_parser(
        "decompress",
        help=".sodec files -> images (PNG, PPM, BMP, TIFF by suffix)",
        description="Decode .sodec files; the model is found from each file's header. "
        "Several files in one call load each model once.",
        epilog=EXIT_CODES,
        formatter_class=fmt,
    )
    d.add_argument("inputs", nargs="+", metavar="INPUT", help=".sodec file(s), or - for stdin (alone)")
    d.add_argument(
        "-o",
        "--output",
        help="output image (.png, .ppm, .bmp, .tif: by suffix), - for PNG on stdout, or DIR/ to write "
        "DIR/NAME.sodec.png; several inputs need a folder (default: INPUT.png, e.g. photo.sodec.png, "
        "so a decode never lands on the original photo.png)",
    )
    d.add_argument("-m", "--model", help="decode with this model name or checkpoint (default: the one each file names)")
    d.add_argument("--max-pixels", type=_int_at_least(0), default=None, help=max_pixels_help)
    d.add_argument(
        "--tile",
        type=_tile,
        default=None,
        help="decode in tiles of this many latent rows/cols (x16 px; a multiple of 4, at least 12); "
        "smaller tiles use less memory (default: the model's own, 64 = 1024 px)",
    )
    d.add_argument("--weights", help=weights_help)
    writing(d)
    common(d)
    d.set_defaults(func=cmd_decompress)

    i = sub.add_parser(
        "info",
        help="what a .sodec file holds, and its bpp",
        description="Read a .sodec file's header (no model is loaded): model, size, streams, "
        "bpp = 8 x file bytes / pixels.",
    )
    i.add_argument("input", help=".sodec file, or - for stdin")
    i.add_argument("--json", action="store_true", help="print JSON instead of aligned text")
    i.add_argument("--max-pixels", type=_int_at_least(0), default=None, help=max_pixels_help)
    common(i)
    i.set_defaults(func=cmd_info)

    m = sub.add_parser(
        "models",
        help="list the shipped models and their rates",
        description="The shipped models: name, kind, rate point, measured Kodak bpp, description.",
    )
    common(m)
    m.set_defaults(func=cmd_models)

    t = sub.add_parser(
        "train",
        help="run a training stage or a schedule of stages (TOML)",
        description="Train one stage or a schedule of stages from a TOML file; resumes a run folder's state.",
    )
    t.add_argument("--config", required=True, help="stage or schedule TOML (see configs/)")
    t.add_argument("--out", help="run folder (default: runs/<config file name>)")
    t.add_argument("--steps", type=_int_at_least(1), help="override the stage's number of steps")
    t.add_argument("--rate-weight", type=float, help="override the rate weight lambda (> 0)")
    t.add_argument("--target-bpp", type=float, help="override the stage's rate target in bpp (lambda is steered to it)")
    t.add_argument("--init", help="start from this checkpoint or registered model name (overrides the stage's init)")
    t.add_argument("--data", help="override the training image folder")
    t.add_argument(
        "--extra-data", nargs="*", metavar="DIR", help="override the stage's extra image folders (none: only --data)"
    )
    t.add_argument(
        "--max-seconds",
        type=float,
        help="override each stage's wall-clock budget in seconds (0 = none: train the stage's steps)",
    )
    t.add_argument("--weights-dir", help="folder with the LPIPS/DISTS backbone weights (default: $SODEC_WEIGHTS_DIR)")
    t.add_argument("--restart", action="store_true", help="ignore an existing train_state and start over")
    common(t)
    t.set_defaults(func=cmd_train)

    from .commands import register_all

    register_all(sub, common)
    return p


# Commands after which the `sodec` process may end without interpreter teardown (see run()).
_FAST_EXIT = {"cmd_compress", "cmd_decompress"}


def main(argv: list[str] | None = None) -> int:
    """The `sodec` command line: parse ``argv`` (default sys.argv[1:]), run it, return the exit code."""
    return _main(argv)[0]


def _main(argv: list[str] | None) -> tuple[int, bool]:
    """-> (exit code, whether the command may end the process without teardown)."""
    args = build_parser().parse_args(argv)
    return _run_command(args), getattr(args.func, "__name__", "") in _FAST_EXIT


def _run_command(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except SodecError as e:
        print(f"sodec: error: {e}", file=sys.stderr)
        return e.exit_code
    except (MemoryError, RuntimeError) as e:
        err = _memory_error(e)
        if err is None:
            raise  # anything else is a bug: show its traceback
        print(f"sodec: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("sodec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def run() -> None:
    """Console entry point (``sodec``, ``python -m sodec``): :func:`main`, then exit.

    Once torch is imported, the interpreter's teardown at exit takes 0.4-1 s on a 2-core machine
    (``python -c "import torch"`` 3.0 s against 2.0 s ending in ``os._exit``), a third of a
    codec's whole start-up budget (issue 13). compress and decompress have written their files
    (atomically, every handle closed) and printed everything when :func:`main` returns, so the
    process ends there with the same exit code, its output flushed. Other commands, and any use
    of :func:`main` as a library call, exit normally.
    """
    code, fast_exit_ok = _main(None)
    if fast_exit_ok and "torch" in sys.modules:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (BrokenPipeError, OSError):
            code = code or 141
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
