"""Whole-process wall time of the `sodec` command, per command, as a user runs it.

    python benchmarks/startup.py [--kodak DIR] [--repeats 5] [--threads 2] [--json results/startup.json]
                                 [--readme README.md] [--no-batch]

Each measurement starts a fresh process (``sodec ...``, the installed console script) and times
it from spawn to exit; reported is the median of ``--repeats`` runs (the 24 separate calls are
timed once each, their sum reported). Measured:

* ``sodec --help``, ``sodec models``, ``sodec info FILE``: must not import torch (goal <= 0.3 s);
* the time to refuse a missing input (``sodec compress missing.png``);
* ``compress``/``decompress`` of one Kodak image with a plain codec model and with a SODEC
  model; the CLI prints its encode/decode and model-load times, so the start-up (process,
  imports, reading the image, writing the file: wall - encode/decode - model load) and the
  overhead beside coding (wall - encode/decode) are reported apart (goal: overhead <= 3 s);
* 24 Kodak images in one call (``sodec compress *.png -o DIR/``) against 24 separate calls; goal:
  the single call saves at least 23 x the one-file start-up, taken as the mean of wall - encode
  over those 24 separate calls.

The machine's load average is recorded before and after (the numbers mean little on a busy
machine). ``--readme`` writes the table between ``<!-- startup:start -->`` and
``<!-- startup:end -->``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_KODAK = REPO.parent / "shared" / "data" / "kodak"


def sodec_cmd() -> list[str]:
    """The installed console script (what users run), else ``python -m sodec.cli``."""
    exe = shutil.which("sodec")
    return [exe] if exe else [sys.executable, "-m", "sodec.cli"]


def run(argv: list[str], env: dict[str, str], expect: int = 0) -> tuple[float, float, str]:
    """-> (wall seconds from spawn to exit, the child's CPU seconds (user + sys), stderr).

    CPU seconds hardly change with the machine's load; on a quiet machine they bound the wall
    time of single-threaded work (start-up, imports), so they are the figure to read when the
    load average is high."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run([*sodec_cmd(), *argv], capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if p.returncode != expect:
        raise SystemExit(f"sodec {' '.join(argv)}: exit {p.returncode}, expected {expect}\n{p.stderr}")
    return dt, cpu, p.stderr


def _printed(stderr: str, what: str) -> float:
    """A time the CLI printed: 'encode 0.23 s', 'decode 1.50 s', 'model load 0.80 s'."""
    m = re.search(rf"{what} ([0-9.]+) s", stderr)
    return float(m[1]) if m else 0.0


def median_run(argv: list[str], env: dict[str, str], repeats: int, before: list[str] | None = None, expect: int = 0):
    """Median over ``repeats`` fresh runs; ``before`` (a command) runs untimed before each."""
    walls, cpus, coding, loads = [], [], [], []
    for _ in range(repeats):
        if before:
            subprocess.run([*sodec_cmd(), *before], capture_output=True, env=env, check=False)
        dt, cpu, err = run(argv, env, expect)
        walls.append(dt)
        cpus.append(cpu)
        coding.append(_printed(err, "encode") or _printed(err, "decode"))
        loads.append(_printed(err, "model load"))
    return {
        "wall_s": statistics.median(walls),
        "wall_all_s": walls,
        "cpu_s": statistics.median(cpus),
        "coding_s": statistics.median(coding),
        "model_load_s": statistics.median(loads),
    }


def install_size() -> dict[str, Any]:
    """Bytes on disk of sodec and every distribution it requires (transitively, no extras)."""
    from importlib import metadata

    seen: dict[str, int] = {}
    todo = ["sodec"]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        size = 0
        for f in dist.files or []:
            with contextlib.suppress(OSError):
                size += (dist.locate_file(f)).stat().st_size
        seen[key] = size
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            todo.append(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0])
    top = sorted(seen.items(), key=lambda kv: -kv[1])
    return {"total_mb": sum(seen.values()) / 2**20, "distributions": len(seen), "largest": top[:6]}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore"}
    kodak = sorted(Path(args.kodak).glob("kodim*.png"))
    if not kodak:
        raise SystemExit(f"no kodim*.png in {args.kodak}")
    img = kodak[0]
    r = args.repeats
    out: dict[str, Any] = {"load_before": os.getloadavg(), "image": img.name}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        c_file, s_file = tmp / "codec.sodec", tmp / "sodec.sodec"
        run(["compress", str(img), "-o", str(c_file), "-m", args.codec_model, "-q"], env)
        run(["compress", str(img), "-o", str(s_file), "-m", args.sodec_model, "-q"], env)
        res: dict[str, Any] = {}
        res["help"] = median_run(["--help"], env, r)
        res["models"] = median_run(["models"], env, r)
        res["info"] = median_run(["info", str(s_file)], env, r)
        res["refuse missing input"] = median_run(["compress", str(tmp / "missing.png")], env, r, expect=2)
        for label, model, f in (("codec", args.codec_model, c_file), ("sodec", args.sodec_model, s_file)):
            o = tmp / f"{label}-out.sodec"
            res[f"compress ({label})"] = median_run(["compress", str(img), "-o", str(o), "-m", model, "-f"], env, r)
            res[f"decompress ({label})"] = median_run(["decompress", str(f), "-o", str(tmp / "o.png"), "-f"], env, r)
        out["commands"] = res
        if not args.no_batch:
            files = kodak[:24]
            sep_dir, one_dir = tmp / "separate", tmp / "one"
            sep_dir.mkdir()
            one_dir.mkdir()
            # Not -q: each call prints its encode time, so each call's start-up (wall - encode) is
            # measured on the very calls the single call is compared with.
            runs = [run(["compress", str(f), "-o", f"{sep_dir}/", "-m", args.batch_model], env) for f in files]
            separate, separate_cpu = sum(r[0] for r in runs), sum(r[1] for r in runs)
            startups = [r[0] - _printed(r[2], "encode") for r in runs]
            one, one_cpu, _ = run(
                ["compress", *map(str, files), "-o", f"{one_dir}/", "-m", args.batch_model, "-q"], env
            )
            same = all(
                (sep_dir / f"{f.stem}.sodec").read_bytes() == (one_dir / f"{f.stem}.sodec").read_bytes() for f in files
            )
            out["batch"] = {
                "files": len(files),
                "model": args.batch_model,
                "separate_s": separate,
                "one_call_s": one,
                "separate_cpu_s": separate_cpu,
                "separate_startup_mean_s": statistics.mean(startups),
                "one_call_cpu_s": one_cpu,
                "same_bytes": same,
            }
    out["load_after"] = os.getloadavg()
    out["environment"] = {
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "command": " ".join(sodec_cmd()),
    }
    out["install"] = install_size()
    return out


def goals(res: dict[str, Any], codec_model: str, sodec_model: str) -> list[tuple[str, bool, str]]:
    c = res["commands"]
    checks = []
    for k in ("help", "models", "info"):
        m = c[k]
        checks.append((f"sodec {k} <= 0.3 s", m["wall_s"] <= 0.3, f"{m['wall_s']:.2f} s wall, {m['cpu_s']:.2f} s CPU"))
    checks.append(
        (
            "refuse a missing input < 1 s",
            c["refuse missing input"]["wall_s"] < 1.0,
            f"{c['refuse missing input']['wall_s']:.2f} s",
        )
    )
    for label in ("codec", "sodec"):
        for verb in ("compress", "decompress"):
            m = c[f"{verb} ({label})"]
            over = m["wall_s"] - m["coding_s"]
            what = "encode" if verb == "compress" else "decode"
            checks.append(
                (
                    f"{verb} ({label}): wall - {what} <= 3 s",
                    over <= 3.0,
                    f"{m['wall_s']:.2f} s wall ({m['cpu_s']:.2f} s CPU), {what} {m['coding_s']:.2f} s -> {over:.2f} s",
                )
            )
    b = res.get("batch")
    if b:
        # The start-up of the compared calls themselves (mean of wall - encode over the separate
        # calls); the median of the single-command runs above is noisier against 24 calls.
        startup = b["separate_startup_mean_s"]
        saved = b["separate_s"] - b["one_call_s"]
        checks.append(
            (
                f"{b['files']} files in one call save >= {b['files'] - 1} x start-up",
                saved >= (b["files"] - 1) * startup,
                f"saved {saved:.1f} s vs {b['files'] - 1} x {startup:.2f} s (mean start-up of the separate calls)"
                f" = {(b['files'] - 1) * startup:.1f} s",
            )
        )
    return checks


def render(res: dict[str, Any], args: argparse.Namespace) -> str:
    env = res["environment"]
    lines = [
        f"Command: `python benchmarks/startup.py`; whole process from spawn to exit (`{Path(env['command']).name}`), "
        f"median of {args.repeats} runs, {res['image']} (768x512), {env['threads']} thread(s), {env['cpus']} CPUs, "
        f"load average {res['load_before'][0]:.1f} before / {res['load_after'][0]:.1f} after.",
        "",
        "| command | wall | CPU (user+sys) | of which encode/decode (wall) | model load (wall) |",
        "|---|---|---|---|---|",
    ]
    names = {
        "help": "`sodec --help`",
        "models": "`sodec models`",
        "info": "`sodec info a.sodec`",
        "refuse missing input": "`sodec compress missing.png` (refused)",
        "compress (codec)": f"`sodec compress` ({args.codec_model})",
        "decompress (codec)": f"`sodec decompress` ({args.codec_model})",
        "compress (sodec)": f"`sodec compress` ({args.sodec_model})",
        "decompress (sodec)": f"`sodec decompress` ({args.sodec_model})",
    }
    for k, m in res["commands"].items():
        coding = f"{m['coding_s']:.2f} s" if m["coding_s"] else "–"
        load = f"{m['model_load_s']:.2f} s" if m["model_load_s"] else "–"
        lines.append(f"| {names.get(k, k)} | {m['wall_s']:.2f} s | {m['cpu_s']:.2f} s | {coding} | {load} |")
    b = res.get("batch")
    if b:
        lines += [
            "",
            f"{b['files']} Kodak images with {b['model']}: {b['separate_s']:.1f} s as {b['files']} calls, "
            f"{b['one_call_s']:.1f} s in one call (`sodec compress *.png -o DIR/`, one model load; saved "
            f"{b['separate_s'] - b['one_call_s']:.1f} s = {(b['separate_s'] - b['one_call_s']) / b['separate_startup_mean_s']:.1f}"
            f" x the separate calls' mean start-up of {b['separate_startup_mean_s']:.2f} s (wall - encode); CPU "
            f"{b['separate_cpu_s']:.1f} s vs {b['one_call_cpu_s']:.1f} s; "
            f"{'the same bytes' if b['same_bytes'] else 'DIFFERENT bytes'}).",
        ]
    inst = res["install"]
    lines += [
        "",
        f"Installed size of sodec and its {inst['distributions'] - 1} required distributions: "
        f"{inst['total_mb'] / 1024:.1f} GiB, mostly "
        + ", ".join(f"{n} {s / 2**30:.1f} GiB" for n, s in inst["largest"][:3])
        + ".",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from sodec import registry

    codecs = [e.name for e in registry.models() if e.kind == "codec"]
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--kodak", default=str(DEFAULT_KODAK), help=f"folder with kodim*.png (default {DEFAULT_KODAK})")
    p.add_argument(
        "--repeats", type=int, default=5, help="fresh processes per command; the median is reported (default 5)"
    )
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the timed processes (default 2)")
    p.add_argument(
        "--codec-model",
        default="codec-small-q2" if "codec-small-q2" in codecs else (codecs or [""])[0],
        help="plain codec model (default codec-small-q2)",
    )
    p.add_argument("--sodec-model", default=registry.default_name(), help="SODEC model (default: the shipped default)")
    p.add_argument("--batch-model", default=None, help="model of the 24-file comparison (default: the SODEC model)")
    p.add_argument("--no-batch", action="store_true", help="skip the 24 files one call vs 24 calls comparison")
    p.add_argument(
        "--json", default=str(REPO / "results" / "startup.json"), help="results JSON (default results/startup.json)"
    )
    p.add_argument("--readme", help="write the table into this README between the startup markers")
    args = p.parse_args(argv)
    args.batch_model = args.batch_model or args.sodec_model
    res = measure(args)
    checks = goals(res, args.codec_model, args.sodec_model)
    res["goals"] = [{"goal": g, "met": ok, "measured": m} for g, ok, m in checks]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    text = render(res, args)
    print(text)
    print()
    for g, ok, m in checks:
        print(f"[{'met' if ok else 'MISSED'}] {g}: {m}")
    if args.readme:
        from sodec.reporting import replace_section

        if not replace_section(args.readme, "startup", text):
            raise SystemExit(f"{args.readme} has no <!-- startup:start --> / <!-- startup:end --> markers")
        print(f"wrote the startup section of {args.readme}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
