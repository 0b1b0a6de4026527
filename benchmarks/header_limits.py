"""How fast, and with how little memory, a header claiming a huge image is refused.

    python benchmarks/header_limits.py [--repeat 1000] [--json out.json]

The target (issue 5): a header claiming 1,000,000 x 1,000,000 pixels is rejected in < 10 ms
with < 50 MB of extra memory. Each path is timed over ``--repeat`` calls; the target applies to
the 99th percentile (the worst call is printed too: on a loaded machine it measures the
scheduler). "first" is the first call, which also pays lazy imports (the CLI imports Pillow
then). Memory is the tracemalloc peak of one call (Python allocations) and the process RSS
growth over all calls (native allocations too, e.g. a tensor). Exit status 1 on a missed target.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import psutil

from sodec import api, container, errors
from sodec.cli import main as cli_main

TARGET_S = 0.010
TARGET_BYTES = 50 * 2**20


def huge_file(header_only: bool) -> bytes:
    h = container.Header("codec-small-q1", b"\0\0\0\0", 1_000_000, 1_000_000, (8, 8), 0)
    data = container.pack(h, [bytes(8), bytes(8)])
    return data[: container.parse_header(data, max_pixels=None).header_len] if header_only else data


def measure(name: str, call: Callable[[], None], repeat: int) -> dict[str, float | str]:
    def once() -> float:
        t = time.perf_counter()
        try:
            call()
        except errors.LimitsError:
            return time.perf_counter() - t
        raise AssertionError(f"{name}: no LimitsError")

    first = once()  # cold: lazy imports, caches
    tracemalloc.start()
    once()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    times = [once() for _ in range(repeat)]
    rss1 = proc.memory_info().rss
    return {
        "path": name,
        "first_ms": 1e3 * first,
        "median_ms": 1e3 * statistics.median(times),
        "p99_ms": 1e3 * statistics.quantiles(times, n=100)[98] if len(times) > 1 else 1e3 * times[0],
        "max_ms": 1e3 * max(times),
        "tracemalloc_peak_kib": peak / 1024,
        "rss_delta_mib": (rss1 - rss0) / 2**20,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=1000)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    head, whole = huge_file(True), huge_file(False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "huge.sodec"
        path.write_bytes(head)
        out = str(Path(tmp) / "out.png")

        def cli(cmd: str) -> Callable[[], None]:
            def run() -> None:
                argv = ["decompress", str(path), "-o", out, "-q"] if cmd == "decompress" else ["info", str(path)]
                with contextlib.redirect_stderr(io.StringIO()):  # its one-line error message
                    rc = cli_main(argv)
                if rc != errors.LimitsError.exit_code:
                    raise AssertionError("sodec did not exit with the LimitsError code")
                raise errors.LimitsError("(exit code 7)")

            return run

        rows = [
            measure("container.parse_header (header only)", lambda: container.parse_header(head), args.repeat),
            measure("api.info (whole file)", lambda: api.info(whole), args.repeat),
            measure("api.decompress (header only)", lambda: api.decompress(head), args.repeat),
            measure("api.decompress (whole file)", lambda: api.decompress(whole), args.repeat),
            measure("sodec decompress (CLI main)", cli("decompress"), max(1, args.repeat // 2)),
            measure("sodec info (CLI main)", cli("info"), max(1, args.repeat // 2)),
        ]
        Path(out).unlink(missing_ok=True)
    print(f"header claiming 1000000x1000000 px; targets: < {1e3 * TARGET_S:.0f} ms, < {TARGET_BYTES >> 20} MB extra")
    print(
        f"{'path':38s} {'first ms':>9s} {'median ms':>10s} {'p99 ms':>8s} {'max ms':>8s} {'tracemalloc KiB':>16s} {'RSS +MiB':>9s}"
    )
    ok = True
    for r in rows:
        print(
            f"{r['path']:38s} {r['first_ms']:9.3f} {r['median_ms']:10.4f} {r['p99_ms']:8.3f} {r['max_ms']:8.3f} "
            f"{r['tracemalloc_peak_kib']:16.1f} {r['rss_delta_mib']:9.2f}"
        )
        ok &= float(r["p99_ms"]) < 1e3 * TARGET_S and float(r["tracemalloc_peak_kib"]) * 1024 < TARGET_BYTES
        ok &= float(r["rss_delta_mib"]) * 2**20 < TARGET_BYTES
    if args.json:
        args.json.write_text(json.dumps({"targets_met": ok, "results": rows}, indent=2) + "\n")
    print("targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
