"""Peak resident memory of encoding a 12 MP photo (4000x3000), whole ``api`` calls.

    python benchmarks/encode_memory.py [--image PATH] [--model NAME] [--untiled] [--readme README.md]

Each measurement runs in a fresh process: read the image, load what ``sodec compress`` loads
(``api.load_encoder``: a SODEC model's codec only), ``api.compress``; it
reports that process's peak RSS (VmHWM) and the RSS once the model and image were loaded.
``--untiled`` also measures the same encode with g_a and the context model each run on the
whole image at once (the encoder before tiling) for comparison. Goal (issue 12): <= 1.5 GiB peak at 12 MP.
Default image: ../shared/cases/big-4000x3000-smooth.png, else a synthetic 4000x3000 picture.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT.parent / "shared" / "cases" / "big-4000x3000-smooth.png"

CHILD = r"""
import json, sys, time
from sodec import api
from sodec.image_io import read_image
from sodec.models import vae_codec
def status(field):
    for line in open('/proc/self/status'):
        if line.startswith(field + ':'):
            return int(line.split()[1]) * 1024
if sys.argv[3] == 'untiled':
    vae_codec.ENCODE_TILE = 1 << 20  # one window: g_a over the whole image
    vae_codec.CONTEXT_TILE = 1 << 20  # and the context model
image, _ = read_image(sys.argv[1])
model = api.load_encoder(sys.argv[2])  # what `sodec compress` loads: a SODEC model's codec only
base = status('VmRSS')
t = time.perf_counter()
data = api.compress(model, image)
dt = time.perf_counter() - t
# VmHWM, not ru_maxrss: Linux carries the parent's maxrss into a forked child's rusage.
print(json.dumps({"shape": list(image.shape), "seconds": dt, "bytes": len(data), "rss_after_load": base,
                  "peak_rss": status('VmHWM')}))
"""


def measure(image: Path, model: str, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(image), model, mode], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["killed"])[-1], "returncode": out.returncode}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", type=Path, default=None, help="image to encode (default: the 12 MP case file)")
    p.add_argument("--model", default="sodec-small-q2", help="model name or checkpoint (default: sodec-small-q2)")
    p.add_argument("--untiled", action="store_true", help="also measure g_a over the whole image (for comparison)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--readme", help="write the result into this README's generated 'encode-memory' section")
    a = p.parse_args(argv)
    gib = 1 << 30
    with tempfile.TemporaryDirectory() as tmp:
        image = a.image or (CASE if CASE.is_file() else None)
        if image is None:
            import numpy as np
            from PIL import Image

            yy, xx = np.mgrid[0:3000, 0:4000]
            arr = np.stack([(xx // 16) % 256, (yy // 12) % 256, ((xx + yy) // 28) % 256], -1).astype(np.uint8)
            image = Path(tmp) / "synthetic-4000x3000.png"
            Image.fromarray(arr).save(image)
        results = {"tiled": measure(image, a.model, "tiled")}
        if a.untiled:
            results["untiled"] = measure(image, a.model, "untiled")
    for mode, r in results.items():
        if "error" in r:
            print(f"{mode}: failed ({r['error']})")
            continue
        h, w = r["shape"][:2]
        print(
            f"{mode}: encode {w}x{h} ({w * h / 1e6:.1f} MP) with {a.model}: {r['seconds']:.1f} s, "
            f"peak RSS {r['peak_rss'] / gib:.2f} GiB (model + image loaded: {r['rss_after_load'] / gib:.2f} GiB), "
            f"{r['bytes']} bytes"
            + (f"; goal <= 1.5 GiB: {'met' if r['peak_rss'] <= 1.5 * gib else 'MISSED'}" if mode == "tiled" else "")
        )
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    if a.readme and "error" not in results["tiled"]:
        from sodec.reporting import replace_section

        r = results["tiled"]
        h, w = r["shape"][:2]
        line = (
            f"Encoding a {w}x{h} photo with `{a.model}` (`python benchmarks/encode_memory.py`): peak RSS "
            f"**{r['peak_rss'] / gib:.2f} GiB** (goal <= 1.5 GiB), {r['seconds']:.0f} s"
        )
        if "untiled" in results and "error" not in results["untiled"]:
            line += f"; without tiling the same encode peaked at {results['untiled']['peak_rss'] / gib:.2f} GiB"
        replace_section(a.readme, "encode-memory", line + ".")
    return 0


if __name__ == "__main__":
    sys.exit(main())
