"""Image-quality metrics for evaluation: per image, and FID/KID over a set of 256x256 patches.

Every metric returns a :class:`Metric` record: a value, or ``None`` with the reason it is missing
(weights absent, image too small, ...). Nothing is silently dropped and nothing is ever computed
from random or downloaded weights.

Per image, on (H, W, 3) uint8 RGB pairs at their native size (never resized):

=============  ===========================================================================
psnr           10 log10(255^2 / MSE) over all pixels and channels; capped at 100 dB (below)
ms_ssim        Wang et al. 2003 via ``pytorch_msssim`` (data_range 1, 11-px Gaussian window,
               the paper's 5 scale weights); fewer scales on small images (``ms_ssim_scales``)
lpips_alex     Zhang et al. 2018, LPIPS v0.1, AlexNet, inputs in [-1, 1], spatial mean
lpips_vgg      the same with VGG16 (SODEC's plotted LPIPS looks like this one: report both)
dists          Ding et al. 2020, official ``DISTS_pytorch`` network, inputs in [0, 1]
haarpsi        Reisenhofer et al. 2018, ``piq.haarpsi``
vsi            Zhang et al. 2014, ``piq.vsi``
fsim           Zhang et al. 2011, FSIMc (``piq.fsim``, chromatic)
gmsd           Xue et al. 2014, ``piq.gmsd``
=============  ===========================================================================

LPIPS and DISTS load their backbones through :mod:`sodec.perceptual` (sha256-checked offline
copies). FID (Heusel et al. 2017) and KID (Bińkowski et al. 2018) need the TF-ported Inception of
``pytorch-fid`` (``pt_inception-2015-12-05-6726825d.pth``); without that file they are recorded as
missing, with the reason. Patching protocol: HiFiC's FID/256 (Mentzer et al. 2020) as coded in
MS-ILLM's NeuralCompression (``update_patch_fid``); see :func:`fid_patches` and docs/evaluation.md.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .errors import UsageError, WeightsError

PSNR_CAP_DB = 100.0  # identical images have infinite PSNR; a finite cap keeps JSON and means finite
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003 (Asilomar), the 5 scale exponents
MS_SSIM_WIN = 11


@dataclass(frozen=True)
class Metric:
    """One metric's outcome: ``value``, or ``value=None`` and ``missing`` = why not.

    ``note`` says how a present value was obtained when that differs from the default
    (e.g. MS-SSIM on fewer scales, PSNR at its cap).
    """

    value: float | None
    missing: str | None = None
    note: str | None = None

    @classmethod
    def absent(cls, reason: str) -> Metric:
        return cls(None, reason)

    @property
    def ok(self) -> bool:
        return self.value is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value}
        if self.missing is not None:
            out["missing"] = self.missing
        if self.note is not None:
            out["note"] = self.note
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Metric:
        return cls(d.get("value"), d.get("missing"), d.get("note"))


@dataclass(frozen=True)
class MetricInfo:
    name: str
    label: str
    higher_is_better: bool
    source: str


# Order = column order of every table and plot.
PER_IMAGE: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo("psnr", "PSNR (dB)", True, "10 log10(255^2/MSE), RGB"),
        MetricInfo("ms_ssim", "MS-SSIM", True, "pytorch_msssim, data_range 1"),
        MetricInfo("lpips_alex", "LPIPS-Alex", False, "lpips v0.1 alex"),
        MetricInfo("lpips_vgg", "LPIPS-VGG", False, "lpips v0.1 vgg"),
        MetricInfo("dists", "DISTS", False, "DISTS_pytorch"),
        MetricInfo("haarpsi", "HaarPSI", True, "piq.haarpsi"),
        MetricInfo("vsi", "VSI", True, "piq.vsi"),
        MetricInfo("fsim", "FSIM", True, "piq.fsim (chromatic)"),
        MetricInfo("gmsd", "GMSD", False, "piq.gmsd"),
    )
}
SET_LEVEL: dict[str, MetricInfo] = {
    "fid": MetricInfo("fid", "FID/256", False, "pytorch-fid Inception, 256x256 patches"),
    "kid": MetricInfo("kid", "KID/256", False, "polynomial-kernel MMD^2, 256x256 patches"),
}


def check_pair(ref: np.ndarray, dist: np.ndarray) -> None:
    for a in (ref, dist):
        if not isinstance(a, np.ndarray) or a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
            raise UsageError(
                f"metrics take (H, W, 3) uint8 RGB arrays, got {getattr(a, 'shape', type(a))} {getattr(a, 'dtype', '')}"
            )
    if ref.shape != dist.shape:
        raise UsageError(f"reference {ref.shape} and reconstruction {dist.shape} differ in size")


def to_unit(image: np.ndarray, device: str | torch.device = "cpu") -> Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.array(image, copy=True)).to(device).permute(2, 0, 1)[None].float().div_(255.0)


# --- pixel metrics ------------------------------------------------------------------------------


def psnr(ref: np.ndarray, dist: np.ndarray) -> Metric:
    """PSNR on the 0..255 scale, MSE over all pixels and the three channels (float64)."""
    check_pair(ref, dist)
    mse = float(np.mean((ref.astype(np.float64) - dist.astype(np.float64)) ** 2))
    if mse == 0.0:
        return Metric(PSNR_CAP_DB, note=f"identical images: capped at {PSNR_CAP_DB:g} dB")
    value = 10.0 * math.log10(255.0**2 / mse)
    if value > PSNR_CAP_DB:
        return Metric(PSNR_CAP_DB, note=f"capped at {PSNR_CAP_DB:g} dB (was {value:.2f})")
    return Metric(value)


def ms_ssim_scales(height: int, width: int) -> int:
    """Scales MS-SSIM can use: each halving must leave the 11-px window room.

    ``pytorch_msssim`` needs the smaller side > (win - 1) * 2^(scales - 1), i.e. > 160 px for the
    standard 5 scales; 0 means even single-scale SSIM does not fit.
    """
    side = min(height, width)
    scales = 5
    while scales > 0 and side <= (MS_SSIM_WIN - 1) * 2 ** (scales - 1):
        scales -= 1
    return scales


def ms_ssim(ref: np.ndarray, dist: np.ndarray, device: str | torch.device = "cpu") -> Metric:
    """MS-SSIM (Wang et al. 2003) in [0, 1] RGB, data_range 1, channels averaged.

    Images smaller than 161 px on a side use the first k < 5 scales with their weights
    renormalised to sum to 1 (``note`` says so); such values are not comparable with 5-scale ones.
    """
    from pytorch_msssim import ms_ssim as _ms_ssim

    check_pair(ref, dist)
    h, w = ref.shape[:2]
    k = ms_ssim_scales(h, w)
    if k == 0:
        return Metric.absent(f"image {w}x{h} is smaller than MS-SSIM's {MS_SSIM_WIN}-px window")
    x, y = to_unit(dist, device), to_unit(ref, device)
    with torch.inference_mode():
        if k == 5:
            return Metric(float(_ms_ssim(x, y, data_range=1.0)))
        v = _ms_ssim_scales(x, y, k)
    return Metric(v, note=f"{k} of 5 scales (smaller side {min(h, w)} px < 161), weights renormalised")


def ms_ssim_k(x: Tensor, y: Tensor, k: int) -> Tensor:
    """``pytorch_msssim.ms_ssim`` (1.0.0) on k < 5 scales.

    Its public function asserts > 160 px whatever the weights, so this repeats its level loop
    (the same private ``_ssim`` per level, 2x2 average pooling between levels) with the first k
    weights renormalised; at k = 5 it equals the public function (tested).
    """
    import torch.nn.functional as F
    from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim

    weights = x.new_tensor(MS_SSIM_WEIGHTS[:k])
    if k < 5:  # the published five sum to 1.0001; the library uses them as they are
        weights = weights / weights.sum()
    win = _fspecial_gauss_1d(MS_SSIM_WIN, 1.5).repeat([x.shape[1], 1, 1, 1])
    mcs = []
    for i in range(k):
        ssim_c, cs = _ssim(x, y, win=win, data_range=1.0, size_average=False, K=(0.01, 0.03))
        if i < k - 1:
            mcs.append(torch.relu(cs))
            pad = [s % 2 for s in x.shape[2:]]
            x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
    stack = torch.stack([*mcs, torch.relu(ssim_c)], dim=0)  # (levels, N, C)
    return torch.prod(stack ** weights.view(-1, 1, 1), dim=0).mean()  # differentiable: also a loss


def _ms_ssim_scales(x: Tensor, y: Tensor, k: int) -> float:
    return float(ms_ssim_k(x, y, k))


# --- network metrics ----------------------------------------------------------------------------


def _piq(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    import piq

    fns: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
        "haarpsi": lambda x, y: piq.haarpsi(x, y, data_range=1.0),
        "vsi": lambda x, y: piq.vsi(x, y, data_range=1.0),
        "fsim": lambda x, y: piq.fsim(x, y, data_range=1.0, chromatic=True),
        "gmsd": lambda x, y: piq.gmsd(x, y, data_range=1.0),
    }
    return fns[name]


class MetricSuite:
    """Computes every per-image metric for (reference, reconstruction) pairs.

    The LPIPS/DISTS networks are built once (frozen, eval mode) from the verified offline
    backbones; a network whose weights cannot be found stays missing, with the reason, in every
    record. ``device`` is where the metric networks run.
    """

    def __init__(
        self,
        weights_dir: str | os.PathLike[str] | None = None,
        device: str | torch.device = "cpu",
        names: Iterable[str] = tuple(PER_IMAGE),
    ) -> None:
        from .perceptual import dists_model, lpips_model

        self.names = list(names)
        unknown = [n for n in self.names if n not in PER_IMAGE]
        if unknown:
            raise UsageError(f"unknown metrics {unknown}; known: {', '.join(PER_IMAGE)}")
        self.device = torch.device(device)
        self.nets: dict[str, nn.Module] = {}
        self.missing: dict[str, str] = {}
        builders: dict[str, Callable[[], nn.Module]] = {
            "lpips_alex": lambda: lpips_model("alex", weights_dir),
            "lpips_vgg": lambda: lpips_model("vgg", weights_dir),
            "dists": lambda: dists_model(weights_dir),
        }
        for name in self.names:
            if name not in builders:
                continue
            try:
                with warnings.catch_warnings():
                    # lpips passes torchvision's deprecated ``pretrained`` flag; harmless here.
                    warnings.simplefilter("ignore", UserWarning)
                    self.nets[name] = builders[name]().to(self.device)
            except WeightsError as e:
                self.missing[name] = f"weights unavailable: {e}"

    def _network(self, name: str, x: Tensor, y: Tensor) -> float:
        net = self.nets[name]
        if name == "dists":
            return float(net(x, y, batch_average=True))
        return float(net(x * 2 - 1, y * 2 - 1).mean())  # LPIPS v0.1 takes [-1, 1]

    def __call__(self, ref: np.ndarray, dist: np.ndarray) -> dict[str, Metric]:
        """(H, W, 3) uint8 pair -> {metric name: Metric}, in :data:`PER_IMAGE` order."""
        check_pair(ref, dist)
        x, y = to_unit(dist, self.device), to_unit(ref, self.device)  # (1, 3, H, W)
        out: dict[str, Metric] = {}
        for name in self.names:
            if name in self.missing:
                out[name] = Metric.absent(self.missing[name])
            elif name == "psnr":
                out[name] = psnr(ref, dist)
            elif name == "ms_ssim":
                out[name] = ms_ssim(ref, dist, self.device)
            else:
                try:
                    with torch.inference_mode():
                        v = self._network(name, x, y) if name in self.nets else float(_piq(name)(x, y))
                except (RuntimeError, ValueError, AssertionError) as e:
                    # e.g. AlexNet's pooling needs >= 32 px; the reason goes into the record.
                    h, w = ref.shape[:2]
                    out[name] = Metric.absent(f"cannot compute on a {w}x{h} image: {str(e).splitlines()[0][:160]}")
                    continue
                # e.g. a flat image gives 0/0 in some similarity maps; NaN must not reach means or JSON
                out[name] = Metric(v) if math.isfinite(v) else Metric.absent(f"not finite ({v}) on this pair")
        return out


# --- set-level: FID / KID on 256x256 patches ----------------------------------------------------

FID_PATCH = 256
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
# torch.hub convention: the suffix of the file name is the start of the file's sha256.
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
KID_SUBSETS = 100  # torch-fidelity / torchmetrics defaults
KID_SUBSET_SIZE = 1000


def fid_patches(image: np.ndarray, size: int = FID_PATCH) -> np.ndarray:
    """HiFiC's FID/256 patching: (H, W, 3) -> (N, size, size, 3) uint8.

    Non-overlapping size x size tiles on a grid starting at (0, 0), then again on the grid
    shifted by size/2 in both directions; tiles that would cross the border are dropped (no
    padding, no resizing). A 768x512 Kodak image gives 3*2 + 2*1 = 8 patches. Same patches as
    NeuralCompression's ``update_patch_fid`` (its shifted pass runs when both sides are
    >= 1.5 * size, exactly when a shifted tile fits).
    """
    h, w = image.shape[:2]
    out = []
    for off in (0, size // 2):
        for top in range(off, h - size + 1, size):
            for left in range(off, w - size + 1, size):
                out.append(image[top : top + size, left : left + size])
    if not out:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack(out)


def find_inception(
    explicit: str | os.PathLike[str] | None = None, weights_dir: str | os.PathLike[str] | None = None
) -> tuple[Path | None, str]:
    """-> (the Inception weights file, '') or (None, why there is none)."""
    if explicit:
        p = Path(explicit)
        return (p, "") if p.is_file() else (None, f"Inception weights file not found: {p}")
    from .perceptual import weights_dir as find_dir

    d = find_dir(weights_dir)
    if d is not None and (d / FID_WEIGHTS_FILE).is_file():
        return d / FID_WEIGHTS_FILE, ""
    where = str(d) if d is not None else "no weights dir (--weights-dir / SODEC_WEIGHTS_DIR)"
    return None, (
        f"FID/KID need pytorch-fid's Inception weights {FID_WEIGHTS_FILE} (pass --inception FILE or put it in "
        f"the weights dir); none found in {where}, and they are never downloaded or replaced by random weights"
    )


class InceptionFeatures:
    """pytorch-fid's TF-ported InceptionV3 (the one FID is defined with): images -> 2048-d pool3.

    Built with piq's copy of pytorch-fid's network, with the user's file loaded strictly in place
    of its download. Input (N, 3, 256, 256) in [0, 1]; the network itself resizes to 299x299
    bilinearly, as pytorch-fid does (feature extraction, not a change to the evaluated images).
    """

    def __init__(self, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> None:
        from unittest import mock

        from piq.feature_extractors import fid_inception

        from .checkpoint import sha256_file

        path = Path(path)
        sha = sha256_file(path)
        if not sha.startswith(FID_WEIGHTS_SHA256_PREFIX):
            raise WeightsError(
                f"{path.name}: sha256 {sha[:12]}… is not pytorch-fid's Inception ({FID_WEIGHTS_SHA256_PREFIX}…)"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only, no code
        except Exception as e:
            raise WeightsError(f"{path.name}: cannot read ({e})") from None
        with (
            warnings.catch_warnings(),
            mock.patch.object(fid_inception, "load_state_dict_from_url", lambda *a, **k: state),
        ):
            # piq passes torchvision's deprecated ``pretrained``; torchvision also warns about init
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            self.net = fid_inception.InceptionV3(output_blocks=[3], resize_input=True, normalize_input=True)
        self.net.eval().requires_grad_(False).to(device)
        self.device = torch.device(device)

    def __call__(self, patches: np.ndarray, batch: int = 16) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, 2048) float64."""
        feats = []
        with torch.inference_mode():
            for i in range(0, len(patches), batch):
                x = torch.from_numpy(patches[i : i + batch]).to(self.device).permute(0, 3, 1, 2).float() / 255.0
                feats.append(self.net(x)[0].flatten(1).double().cpu().numpy())
        return np.concatenate(feats) if feats else np.zeros((0, 2048))


def trace_sqrt_product(x1: np.ndarray, x2: np.ndarray) -> float:
    """Tr sqrt(S1 S2) for the sample covariances of feature rows x1 (n1, d), x2 (n2, d).

    S1 S2 is similar to the PSD matrix S1^½ S2 S1^½, so its eigenvalues are real and >= 0 and the
    trace of its principal square root is the sum of their square roots. With centred rows
    A = x1 - mean, B = x2 - mean: S1 S2 = AᵀA BᵀB / ((n1-1)(n2-1)), whose non-zero eigenvalues are
    those of (A Bᵀ)(A Bᵀ)ᵀ / (...) — so the trace is the nuclear norm of A Bᵀ over
    sqrt((n1-1)(n2-1)). That is exact and needs only an n1 x n2 SVD (few patches); with many
    patches the d x d eigen-decomposition is used instead.
    """
    a = x1 - x1.mean(0)
    b = x2 - x2.mean(0)
    n1, n2, d = len(a), len(b), a.shape[1]
    norm = math.sqrt((n1 - 1) * (n2 - 1))
    if n1 * n2 <= d * d:
        return float(np.linalg.svd(a @ b.T, compute_uv=False).sum() / norm)
    s1, s2 = a.T @ a / (n1 - 1), b.T @ b / (n2 - 1)
    ev, vec = np.linalg.eigh(s1)
    root = (vec * np.sqrt(np.clip(ev, 0, None))) @ vec.T
    inner = np.linalg.eigvalsh(root @ s2 @ root)
    return float(np.sqrt(np.clip(inner, 0, None)).sum())


def frechet_distance(x1: np.ndarray, x2: np.ndarray) -> float:
    """FID between feature sets: ||mu1 - mu2||^2 + Tr S1 + Tr S2 - 2 Tr sqrt(S1 S2) (float64)."""
    x1, x2 = np.asarray(x1, np.float64), np.asarray(x2, np.float64)
    if len(x1) < 2 or len(x2) < 2:
        raise ValueError("FID needs at least 2 feature vectors per set")
    diff = x1.mean(0) - x2.mean(0)
    tr1 = float(np.sum(np.var(x1, axis=0, ddof=1)))
    tr2 = float(np.sum(np.var(x2, axis=0, ddof=1)))
    return float(diff @ diff + tr1 + tr2 - 2.0 * trace_sqrt_product(x1, x2))


def kernel_inception_distance(
    x1: np.ndarray, x2: np.ndarray, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE, seed: int = 0
) -> tuple[float, float]:
    """KID: unbiased MMD^2 with k(a, b) = (aᵀb / d + 1)^3, mean and std over random subsets.

    As torch-fidelity / torchmetrics: ``subsets`` draws of ``min(subset_size, n)`` rows per set
    without replacement, from a seeded generator so reruns agree.
    """
    x1, x2 = np.asarray(x1, np.float64), np.asarray(x2, np.float64)
    m = min(subset_size, len(x1), len(x2))
    if m < 2:
        raise ValueError("KID needs at least 2 feature vectors per set")
    d = x1.shape[1]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        a = x1[rng.choice(len(x1), m, replace=False)]
        b = x2[rng.choice(len(x2), m, replace=False)]
        kxx, kyy, kxy = (a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3
        mmd = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
        vals.append(mmd)
    return float(np.mean(vals)), float(np.std(vals))


class PatchFeatureSet:
    """Collects Inception features of reference and reconstructed patches for one codec run.

    With no extractor (weights absent) it only remembers why, and reports FID/KID missing.
    """

    def __init__(self, extractor: InceptionFeatures | None, missing: str = "") -> None:
        self.extractor = extractor
        self.missing = missing
        self.ref: list[np.ndarray] = []
        self.dist: list[np.ndarray] = []

    def add(self, ref: np.ndarray, dist: np.ndarray) -> None:
        check_pair(ref, dist)
        if self.extractor is None:
            return
        pr, pd = fid_patches(ref), fid_patches(dist)
        if len(pr):
            self.ref.append(self.extractor(pr))
            self.dist.append(self.extractor(pd))

    def result(self) -> dict[str, Metric]:
        if self.extractor is None:
            return {k: Metric.absent(self.missing) for k in SET_LEVEL}
        n = sum(len(f) for f in self.ref)
        if n < 2:
            reason = f"{n} patch(es) of {FID_PATCH}x{FID_PATCH}: images too small or too few for FID/KID"
            return {k: Metric.absent(reason) for k in SET_LEVEL}
        fr, fd = np.concatenate(self.ref), np.concatenate(self.dist)
        note = f"{n} patches of {FID_PATCH}x{FID_PATCH}" + (
            " (fewer than the 2048 feature dimensions: FID is biased upward, compare only like with like)"
            if n < 2048
            else ""
        )
        kid, kid_std = kernel_inception_distance(fd, fr)
        return {
            "fid": Metric(frechet_distance(fd, fr), note=note),
            "kid": Metric(kid, note=f"{note}; std over subsets {kid_std:.2e}"),
        }


def set_metric_factory(
    inception: str | os.PathLike[str] | None = None,
    weights_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
) -> Callable[[], PatchFeatureSet]:
    """Loads the Inception once (or records why not) and returns a maker of per-run collectors."""
    path, reason = find_inception(inception, weights_dir)
    extractor: InceptionFeatures | None = None
    if path is not None:
        try:
            extractor = InceptionFeatures(path, device)
        except WeightsError as e:
            reason = f"Inception weights refused: {e}"
    return lambda: PatchFeatureSet(extractor, reason)


def mean_metric(values: Sequence[Metric]) -> Metric:
    """Set mean of per-image values; missing if any image lacks the metric (a mean over a subset
    of images would not be comparable with other codecs' means)."""
    if not values:
        return Metric.absent("no images")
    absent = [m for m in values if not m.ok]
    if absent:
        return Metric.absent(f"missing on {len(absent)} of {len(values)} images: {absent[0].missing}")
    notes = sorted({m.note for m in values if m.note})
    note = f"{len([m for m in values if m.note])} of {len(values)} images: {notes[0]}" if notes else None
    return Metric(float(np.mean([m.value for m in values])), note=note)
