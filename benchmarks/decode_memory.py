"""Peak resident memory of decoding a 3840x2160 image with the small SODEC preset.

    python benchmarks/decode_memory.py [--width 3840 --height 2160] [--model NAME_OR_PATH]

Encodes a synthetic UHD image in one process, then decodes it in a fresh process and reports that
process's peak RSS (VmHWM) and its growth over the RSS after the model loaded. Goal: <= 3 GiB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np
from sodec import api
def status(field):
    for line in open('/proc/self/status'):
        if line.startswith(field + ':'):
            return int(line.split()[1]) * 1024
model = api.load_model(sys.argv[2]) if sys.argv[2] != '-' else None
data = open(sys.argv[1], 'rb').read()
if model is None:
    model = api.model_for(api.container.unpack(data).header)
base = status('VmRSS')
t = time.perf_counter()
img = api.decompress(data, model)
dt = time.perf_counter() - t
# VmHWM, not ru_maxrss: Linux carries the parent's maxrss into a forked child's rusage.
peak = status('VmHWM')
print(json.dumps({"shape": list(img.shape), "seconds": dt, "rss_after_load": base, "peak_rss": peak}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=3840)
    p.add_argument("--height", type=int, default=2160)
    p.add_argument("--model", default=None, help="model name or checkpoint (default: a random small SODEC)")
    p.add_argument("--json")
    p.add_argument("--readme", help="also write the result into this README's generated 'memory' section")
    a = p.parse_args(argv)
    import numpy as np
    import torch

    from sodec import api
    from sodec.checkpoint import save_checkpoint
    from sodec.config import SODEC_PRESETS
    from sodec.models.sodec import SodecModel

    with tempfile.TemporaryDirectory() as tmp:
        if a.model is None:
            torch.manual_seed(0)
            m = SodecModel(SODEC_PRESETS["small"]).eval()
            m.update(force=True)
            model_arg = str(Path(tmp) / "sodec-small-random.safetensors")
            save_checkpoint(model_arg, m, "sodec", SODEC_PRESETS["small"], {"sodec.model_id": "sodec-small-random"})
            del m
        else:
            model_arg = a.model
        model = api.load_model(model_arg)
        g = np.random.default_rng(0)
        yy, xx = np.mgrid[0 : a.height, 0 : a.width]
        img = np.stack([(xx // 7 + yy // 5) % 256, (yy // 3) % 256, (xx // 11) % 256], -1).astype(np.int16)
        img = np.clip(img + g.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)
        t = time.perf_counter()
        data = api.compress(model, img)
        enc = time.perf_counter() - t
        f = Path(tmp) / "uhd.sodec"
        f.write_bytes(data)
        del model, img
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(f), model_arg], capture_output=True, text=True, check=True
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
    gib = 1 << 30
    r.update(encode_seconds=enc, bytes=len(data), size=f"{a.width}x{a.height}")
    print(
        f"decode {r['size']}: {r['seconds']:.1f} s, peak RSS {r['peak_rss'] / gib:.2f} GiB "
        f"(+{(r['peak_rss'] - r['rss_after_load']) / gib:.2f} GiB over the loaded model); goal <= 3 GiB "
        f"[encode {enc:.1f} s, {len(data)} bytes; parent peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20):.2f} GiB]"
    )
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=2))
    if a.readme:
        from sodec.reporting import replace_section

        line = (
            f"Decoding {r['size']} with `{a.model or 'a random small SODEC'}` "
            f"(`python benchmarks/decode_memory.py`): peak RSS **{r['peak_rss'] / gib:.2f} GiB** "
            f"({(r['peak_rss'] - r['rss_after_load']) / gib:+.2f} GiB over the loaded model; goal <= 3 GiB), {r['seconds']:.0f} s."
        )
        replace_section(a.readme, "memory", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
