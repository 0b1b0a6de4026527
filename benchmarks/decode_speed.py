"""Decode time of each SODEC component, one step vs 50 steps, in one run on one machine.

    python benchmarks/decode_speed.py [--presets small,paper] [--steps 50] [--repeats 3] [--json out.json]

For each preset: entropy decoding (bytes -> y_hat, w, with h_s), the fidelity decoder D_a, the
FGM (ViT + projector), the transformation module T_s, one UNet step, the VAE decoder, then the
whole one-step decode from bytes (sodec.api.decompress), the same decode with N DDIM steps of the
same UNet, their ratio, and the one-step decode's overhead over the sum of its components.
Small preset at Kodak size (768x512), paper preset at 256x256. Timings are medians of warm
repeats; weights are random unless a trained model is shipped (timing does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sodec import api
from sodec.checkpoint import save_checkpoint
from sodec.config import SODEC_PRESETS
from sodec.determinism import deterministic_attention
from sodec.models.sodec import SodecModel

SIZES = {"small": (512, 768), "paper": (256, 256)}


def timeit(fn, repeats: int, warm: bool = True) -> float:
    if warm:
        fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def test_image(h: int, w: int) -> np.ndarray:
    kodak = Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak" / "kodim23.png"
    if kodak.is_file() and (h, w) == (512, 768):
        from sodec.image_io import read_image

        return read_image(kodak)[0]
    g = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx + yy) % 256, (2 * yy) % 256, (3 * xx) % 256], -1)
    return np.clip(base + g.integers(-10, 11, (h, w, 3)), 0, 255).astype(np.uint8)


def load(preset: str, tmp: Path) -> tuple[api.Model, str]:
    from sodec import registry

    for e in registry.models():
        if e.kind == "sodec" and e.family.endswith(preset):
            return api.load_model(e.name), f"shipped {e.name}"
    cfg = SODEC_PRESETS[preset]
    if cfg.base_weights is not None:
        cfg = type(cfg)(**{**cfg.__dict__, "base_weights": None})  # random SD weights here
    torch.manual_seed(0)
    module = SodecModel(cfg).eval()
    module.update(force=True)
    path = tmp / f"sodec-{preset}-random.safetensors"
    save_checkpoint(path, module, "sodec", cfg, {"sodec.model_id": f"sodec-{preset}-random"})
    return api.load_model(path), "random weights"


def bench(preset: str, steps: int, repeats: int, tmp: Path) -> dict:
    model, source = load(preset, tmp)
    m = model.module
    h, w = SIZES[preset]
    img = test_image(h, w)
    data = api.compress(model, img)
    box = api.container.unpack(data)
    wp, hp = api.padded_size(w, h, box.header.margin)  # the canvas the file codes
    hw = (hp // 16, wp // 16)
    with torch.inference_mode(), deterministic_attention():
        y_hat, w_, _ = model.codec.decompress_latent(box.streams[1], box.streams[0], hw)
        x_f = m.guidance_image(y_hat).clamp(0, 1)
        c_g = m.fgm(x_f)
        y_t = m.transform(y_hat, w_)
        y_0 = m.diffusion.denoise(y_t, c_g)
        parts = {
            "entropy decoding + h_s": timeit(
                lambda: model.codec.decompress_latent(box.streams[1], box.streams[0], hw), repeats
            ),
            # full size (paper) or the pooled-latent preview (small preset, FGMConfig.guidance_size)
            f"fidelity decoder D_a ({'x'.join(map(str, x_f.shape[-2:]))} guidance image)": timeit(
                lambda: m.guidance_image(y_hat), repeats
            ),
            "FGM (ViT + projector)": timeit(lambda: m.fgm(x_f), repeats),
            "transform T_s": timeit(lambda: m.transform(y_hat, w_), repeats),
            "UNet, one step": timeit(lambda: m.diffusion.denoise(y_t, c_g), repeats),
            "VAE decoder D_m": timeit(lambda: m.diffusion.decode(y_0), repeats),
        }
    one = timeit(lambda: api.decompress(data, model), repeats)
    m.set_decode_steps(steps)
    try:
        # Already warm (same networks as the one-step runs): no extra warm-up of a long decode.
        many = timeit(lambda: api.decompress(data, model), max(1, repeats // 3), warm=False)
    finally:
        m.set_decode_steps(1)
    total = sum(parts.values())
    return {
        "preset": preset,
        "weights": source,
        "size": f"{w}x{h}",
        "components_s": parts,
        "sum_of_components_s": total,
        "one_step_decode_s": one,
        f"{steps}_step_decode_s": many,
        "ratio": many / one,
        "one_step_overhead_pct": 100 * (one / total - 1),
        "bytes": len(data),
    }


def render(results: list[dict], steps: int, header: bool = True) -> str:
    """Markdown tables for the README (and stdout)."""
    out: list[str] = []
    if header:
        out.append(f"Command: `python benchmarks/decode_speed.py`; {platform.machine()} CPU, median of warm repeats.")
    for r in results:
        many = r.get(f"{steps}_step_decode_s")
        out += [
            "",
            f"**{r['preset']} preset, {r['size']}** ({r['weights']}; {r['threads']} thread(s))",
            "",
            "| component | seconds |",
            "|---|---|",
            *(f"| {k} | {v:.4f} |" for k, v in r["components_s"].items()),
            f"| sum of components | {r['sum_of_components_s']:.4f} |",
            f"| **one-step decode, from bytes** | {r['one_step_decode_s']:.4f} |",
            f"| **{steps}-step decode, same networks** | {many:.4f} |",
            "",
            f"{steps}-step / one-step: **{r['ratio']:.1f}x**; one-step decode vs the sum of its components: "
            f"{r['one_step_overhead_pct']:+.1f}%",
        ]
        if r["preset"] == "small" and steps == 50:
            # The small preset's goals, checked on this run's numbers. Issue 11 set the decode budget
            # to 2.5 s per Kodak image and dropped the 50-step / one-step ratio as a small-preset
            # target (the pretrained D_m, not the UNet, now takes most of a decode); it is reported.
            goals = [
                ("768x512 one-step decode <= 2.5 s", r["size"] == "768x512" and r["one_step_decode_s"] <= 2.5),
                ("one-step <= 10% above its components", r["one_step_overhead_pct"] <= 10),
            ]
            out += ["", "Goals: " + "; ".join(f"{g}: {'met' if ok else 'MISSED'}" for g, ok in goals)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="small,paper")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json")
    p.add_argument("--render", nargs="+", help="print/README tables from saved --json files instead of measuring")
    p.add_argument("--readme", help="also write the table into this README's generated section")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    results: list[dict] = []
    if a.render:
        # Rebuild the table from saved runs (--json) without measuring again.
        for f in a.render:
            saved = json.loads(Path(f).read_text())
            results += [{**r, "threads": saved["threads"]} for r in saved["results"]]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for preset in a.presets.split(","):
                results.append({**bench(preset, a.steps, a.repeats, Path(tmp)), "threads": torch.get_num_threads()})
                print(render([results[-1]], a.steps, header=False))
                sys.stdout.flush()
    out = render(results, a.steps)
    if a.render:
        print(out)
    if a.json:
        Path(a.json).write_text(json.dumps({"threads": torch.get_num_threads(), "results": results}, indent=2))
    if a.readme:
        from sodec.reporting import replace_section

        if not replace_section(a.readme, "speed", out):
            print(f"{a.readme} has no speed section", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
