"""``sodec bench``: encode/decode latency, throughput and peak memory of the learned codecs.

    sodec bench [--model NAME ...] [--sizes 512x512,768x512] [--repeats 5] [--warmup 1]
                [--image PATH] [--decode-steps 1,4] [--threads N] [--out results/bench.json]

For each model and size: ``warmup`` untimed encode+decode, then ``repeats`` timed ones; latency
is the median (robust to a busy machine), throughput = megapixels / median seconds. Peak memory
is the process's resident set size sampled every 2 ms during the warm-up and timed calls
(psutil; the kernel's ``ru_maxrss`` high-water mark when psutil is absent), reported absolute and
as the increase over the RSS right after the model was loaded (the working memory of coding; in
one process, allocator caches from earlier sizes carry over, so run sizes ascending); CUDA peak
allocation too when the model sits on a GPU.

Multi-step decoders: when ``model.module`` has ``set_decode_steps(n)`` (a diffusion decoder
with a configurable step count), each ``--decode-steps`` value is timed separately; models
without it are timed once and the record says so. Nothing here depends on such a model existing.

Input: ``--image`` centre-cropped (or edge-padded when smaller) to each size, so the entropy
coder sees natural content; without it, a seeded synthetic image (smooth colour field + fine
noise), identical on every machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:  # numpy is imported where used: `sodec --help` imports this module
    import numpy as np

DEFAULT_SIZES = ((512, 512), (768, 512))  # (width, height): the paper's 512^2 and Kodak's size


def parse_sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        try:
            w, h = (int(v) for v in part.lower().strip().split("x"))
        except ValueError:
            raise UsageError(f"sizes are WxH, comma-separated (e.g. 512x512,768x512), got {part!r}") from None
        if w < 1 or h < 1:
            raise UsageError(f"size {part!r} must be positive")
        out.append((w, h))
    return out


def synthetic_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8: a bilinearly upsampled 8x8 colour field plus mild noise (seeded)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    field = torch.rand(1, 3, 8, 8, generator=g)
    smooth = F.interpolate(field, size=(height, width), mode="bilinear", align_corners=False)
    noisy = smooth * 0.85 + torch.rand(1, 3, height, width, generator=g) * 0.15
    return noisy[0].permute(1, 2, 0).mul(255).round().clamp(0, 255).to(torch.uint8).numpy()


def fit_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centre crop to (height, width); edge-pad first where the image is smaller (bench only)."""
    import numpy as np

    h, w = image.shape[:2]
    ph, pw = max(0, height - h), max(0, width - w)
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="edge")
        h, w = image.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    return np.ascontiguousarray(image[top : top + height, left : left + width])


class PeakRSS:
    """Samples this process's RSS on a thread; ``peak`` is the highest value seen (bytes)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0
        self.before = 0
        self._stop = threading.Event()
        try:
            import psutil

            self._proc: Any = psutil.Process()
        except ImportError:  # pragma: no cover - psutil ships with the test environment
            self._proc = None

    def current(self) -> int:
        return self._rss()

    def _rss(self) -> int:
        if self._proc is not None:
            return int(self._proc.memory_info().rss)
        import resource

        # ru_maxrss is the lifetime high-water mark (KiB on Linux): an upper bound only
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    @contextmanager
    def watch(self) -> Iterator[PeakRSS]:
        self.before = self.peak = self._rss()
        self._stop.clear()
        t = threading.Thread(target=self._loop, daemon=True)
        t.start()
        try:
            yield self
        finally:
            self._stop.set()
            t.join()
            self.peak = max(self.peak, self._rss())

    @property
    def method(self) -> str:
        return "psutil RSS sampled every 2 ms" if self._proc is not None else "getrusage ru_maxrss (lifetime peak)"


def _median_timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times, out


def _set_steps(model: Any, steps: int | None) -> bool:
    """Apply a decode step count when the model supports one; False when it has no such knob."""
    setter = getattr(model.module, "set_decode_steps", None)
    if not callable(setter):
        return False
    if steps is not None:
        setter(steps)
    return True


def _cuda_peak(model: Any) -> Callable[[], float | None]:
    import torch

    params = next(iter(model.module.parameters()), None)
    if params is None or params.device.type != "cuda":
        return lambda: None
    torch.cuda.reset_peak_memory_stats(params.device)
    return lambda: torch.cuda.max_memory_allocated(params.device) / 2**20


def bench_model(
    name: str,
    sizes: list[tuple[int, int]],
    repeats: int = 5,
    warmup: int = 1,
    image: np.ndarray | None = None,
    decode_steps: list[int] | None = None,
) -> list[dict[str, Any]]:
    """Time one model at each size (and each decode step count it supports) -> records."""
    from .. import api

    model = api.load_model(name)
    has_steps = _set_steps(model, None)
    step_list: list[int | None] = list(decode_steps) if (decode_steps and has_steps) else [None]
    mem = PeakRSS()
    loaded = mem.current()  # the baseline memory figures are relative to: model loaded, nothing coded
    records = []
    for w, h in sizes:
        x = fit_image(image, w, h) if image is not None else synthetic_image(w, h)
        for steps in step_list:
            _set_steps(model, steps)
            cuda_peak = _cuda_peak(model)
            # warm-up calls run inside the watch: their allocations are the working set too
            with mem.watch():
                for _ in range(warmup):
                    api.compress(model, x)
                enc_times, data = _median_timed(lambda x=x: api.compress(model, x), repeats)
            enc_mem = (mem.peak, mem.peak - loaded)
            with mem.watch():
                for _ in range(warmup):
                    api.decompress(data, model)
                dec_times, out = _median_timed(lambda d=data: api.decompress(d, model), repeats)
            dec_mem = (mem.peak, mem.peak - loaded)
            if out.shape != x.shape:
                raise UsageError(f"{name} decoded {out.shape} for a {x.shape} input")
            mp = w * h / 1e6
            enc, dec = statistics.median(enc_times), statistics.median(dec_times)
            records.append(
                {
                    "model": model.model_id,
                    "kind": model.kind,
                    "width": w,
                    "height": h,
                    "decode_steps": steps,
                    "decode_steps_note": None
                    if has_steps
                    else (
                        "model has no set_decode_steps(): its decoder's step count is fixed" if decode_steps else None
                    ),
                    "bytes": len(data),
                    "bpp": 8 * len(data) / (w * h),
                    "encode_ms_median": enc * 1e3,
                    "decode_ms_median": dec * 1e3,
                    "encode_ms_all": [t * 1e3 for t in enc_times],
                    "decode_ms_all": [t * 1e3 for t in dec_times],
                    "encode_mpix_per_s": mp / enc,
                    "decode_mpix_per_s": mp / dec,
                    "encode_peak_rss_mb": enc_mem[0] / 2**20,
                    "encode_rss_increase_mb": enc_mem[1] / 2**20,
                    "decode_peak_rss_mb": dec_mem[0] / 2**20,
                    "decode_rss_increase_mb": dec_mem[1] / 2**20,
                    "cuda_peak_mb": cuda_peak(),
                    "memory_method": mem.method,
                }
            )
    return records


def format_table(records: list[dict[str, Any]]) -> str:
    head = ["model", "size", "steps", "bpp", "enc ms", "dec ms", "enc MP/s", "dec MP/s", "enc RSS MB", "dec RSS MB"]
    rows = [head] + [
        [
            r["model"],
            f"{r['width']}x{r['height']}",
            "-" if r["decode_steps"] is None else str(r["decode_steps"]),
            f"{r['bpp']:.4f}",
            f"{r['encode_ms_median']:.1f}",
            f"{r['decode_ms_median']:.1f}",
            f"{r['encode_mpix_per_s']:.2f}",
            f"{r['decode_mpix_per_s']:.2f}",
            f"{r['encode_peak_rss_mb']:.0f} (+{r['encode_rss_increase_mb']:.0f})",
            f"{r['decode_peak_rss_mb']:.0f} (+{r['decode_rss_increase_mb']:.0f})",
        ]
        for r in records
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import registry
    from ..image_io import read_image, write_atomic

    if args.repeats < 1 or args.warmup < 0:
        raise UsageError("--repeats must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    models = args.model or [e.name for e in registry.models()]
    if not models:
        raise UsageError("no shipped models to benchmark; pass --model")
    image = read_image(args.image)[0] if args.image else None
    try:
        steps = [int(s) for s in args.decode_steps.split(",")] if args.decode_steps else None
    except ValueError:
        raise UsageError(f"--decode-steps takes comma-separated integers, got {args.decode_steps!r}") from None
    if steps is not None and min(steps) < 1:
        raise UsageError(f"--decode-steps must be >= 1, got {steps}")
    records = []
    for name in models:
        records += bench_model(name, parse_sizes(args.sizes), args.repeats, args.warmup, image, steps)
    out = Path(args.out or Path("results") / "bench.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "protocol": f"median of {args.repeats} timed calls after {args.warmup} warm-up; input "
        + (f"{args.image} centre-cropped" if args.image else "seeded synthetic image"),
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "records": records,
    }
    write_atomic(out, (json.dumps(doc, indent=1) + "\n").encode())
    if not args.quiet:
        print(format_table(records), flush=True)
        print(f"wrote {out}", file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("bench", help="encode/decode latency, throughput and peak memory of the models")
    p.add_argument(
        "--model", "-m", action="append", help="model name or checkpoint; repeatable (default: every shipped model)"
    )
    p.add_argument(
        "--sizes", default=",".join(f"{w}x{h}" for w, h in DEFAULT_SIZES), help="WxH list (default 512x512,768x512)"
    )
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    p.add_argument("--image", help="image to crop inputs from (default: seeded synthetic image)")
    p.add_argument("--decode-steps", help="comma-separated step counts for models with set_decode_steps()")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's, i.e. OMP_NUM_THREADS)")
    p.add_argument("--out", "-o", help="JSON output (default results/bench.json)")
    common(p)
    p.set_defaults(func=run)
