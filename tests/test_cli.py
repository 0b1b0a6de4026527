"""The `sodec` command, tested by calling main(argv) (issues 2, 12, 13)."""

from __future__ import annotations

import io
import os
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import random_image
from sodec import api, cli, container, fileinfo, registry
from sodec.checkpoint import save_checkpoint
from sodec.cli import main
from sodec.config import CODEC_PRESETS
from sodec.errors import (
    FormatError,
    LimitsError,
    OutputExistsError,
    TruncatedError,
    UnsupportedInputError,
    UsageError,
)
from sodec.models.vae_codec import VAECodec


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    m = VAECodec(CODEC_PRESETS["tiny"]).eval()
    m.update(force=True)
    path = tmp_path_factory.mktemp("cli") / "codec-tiny.safetensors"
    save_checkpoint(path, m, "codec", m.cfg, {"sodec.model_id": "codec-tiny"})
    return str(path)


@pytest.fixture
def png(tmp_path):
    p = tmp_path / "in.png"
    Image.fromarray(random_image(40, 70)).save(p)
    return p


@pytest.fixture
def no_model_load(monkeypatch):
    """Any model load fails the test: what runs under it must be refused before one."""

    def refuse(*a, **k):
        raise AssertionError("a model was loaded")

    for mod, name in ((cli, "load_encoder"), (api, "load_model"), (api, "model_for")):
        monkeypatch.setattr(mod, name, refuse)


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sodec: error:"), err  # one line, no traceback
    return lines[0]


def test_compress_decompress_info(tmp_path, png, model_path, capsys):
    out = tmp_path / "a.sodec"
    assert main(["compress", str(png), "-o", str(out), "--model", model_path]) == 0
    err = capsys.readouterr().err
    assert "bpp" in err and "codec-tiny" in err and "encode" in err and "model load" in err
    rec = tmp_path / "a.png"
    assert main(["decompress", str(out), "-o", str(rec), "--model", model_path]) == 0
    assert np.asarray(Image.open(rec)).shape == (40, 70, 3)
    assert main(["info", str(out), "--json"]) == 0
    info = capsys.readouterr().out
    assert '"width": 70' in info and f'"file_bytes": {out.stat().st_size}' in info
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "bpp" in text
    # Plain words, not Python reprs: "padded_to 128x64", "streams z 24, y 96, ..."
    assert "128x64" in text and not any(c in text for c in "{}[]'"), text


def test_quiet_prints_nothing_and_the_single_dash_spelling_is_gone(tmp_path, png, model_path, capsys):
    assert main(["compress", str(png), "-o", str(tmp_path / "q.sodec"), "--model", model_path, "-q"]) == 0
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit) as e:
        main(["compress", str(png), "-o", str(tmp_path / "r.sodec"), "--model", model_path, "-quiet"])
    assert e.value.code == 2 and not (tmp_path / "r.sodec").exists()


def test_default_output_names_never_touch_the_original(tmp_path, png, model_path):
    original = png.read_bytes()
    assert main(["compress", str(png), "--model", model_path, "-q"]) == 0
    assert (tmp_path / "in.sodec").is_file()
    assert main(["decompress", str(tmp_path / "in.sodec"), "--model", model_path, "-q"]) == 0
    assert (tmp_path / "in.sodec.png").is_file()  # INPUT.png: cannot be the source photo's name
    assert png.read_bytes() == original


def test_no_silent_overwrite(tmp_path, png, model_path, capsys):
    s, out = tmp_path / "a.sodec", tmp_path / "a.png"
    for path in (s, out):
        path.write_bytes(b"mine")
    assert main(["compress", str(png), "-o", str(s), "--model", model_path]) == OutputExistsError.exit_code
    assert "-f" in _one_error_line(capsys.readouterr().err) and s.read_bytes() == b"mine"
    assert main(["compress", str(png), "-o", str(s), "--model", model_path, "-q", "-f"]) == 0
    assert s.read_bytes()[:4] == b"SODC"
    assert main(["decompress", str(s), "-o", str(out), "--model", model_path]) == OutputExistsError.exit_code
    _one_error_line(capsys.readouterr().err)
    assert out.read_bytes() == b"mine"
    assert main(["decompress", str(s), "-o", str(out), "--model", model_path, "-q", "--force"]) == 0
    assert Image.open(out).size == (70, 40)


def test_the_input_is_never_the_output(tmp_path, png, model_path, capsys):
    original = png.read_bytes()
    for extra in ([], ["-f"]):
        assert main(["compress", str(png), "-o", str(png), "--model", model_path, *extra]) == UsageError.exit_code
        assert "same file" in _one_error_line(capsys.readouterr().err)
    assert png.read_bytes() == original
    s = tmp_path / "a.sodec"
    main(["compress", str(png), "-o", str(s), "--model", model_path, "-q"])
    os.link(s, tmp_path / "b.sodec")  # another name for the same file counts as the same file
    code = main(["decompress", str(s), "-o", str(tmp_path / "b.sodec"), "-f", "--model", model_path])
    assert code == UsageError.exit_code


def test_folders_as_output(tmp_path, png, model_path, capsys, monkeypatch):
    folder = tmp_path / "out"
    folder.mkdir()
    # An existing folder without a trailing slash, one input: refused in one line, nothing done.
    with monkeypatch.context() as m:
        m.setattr(cli, "load_encoder", lambda *a: pytest.fail("a model was loaded"))
        assert main(["compress", str(png), "-o", str(folder), "--model", model_path]) == UsageError.exit_code
    assert "is a folder" in _one_error_line(capsys.readouterr().err)
    assert main(["compress", str(png), "-o", f"{folder}/", "--model", model_path, "-q"]) == 0
    assert (folder / "in.sodec").is_file()
    assert main(["decompress", str(folder / "in.sodec"), "-o", f"{folder}/", "--model", model_path, "-q"]) == 0
    assert (folder / "in.sodec.png").is_file()
    missing = tmp_path / "nowhere"
    assert main(["compress", str(png), "-o", f"{missing}/", "--model", model_path]) == UsageError.exit_code
    assert "does not exist" in _one_error_line(capsys.readouterr().err)
    assert main(["compress", str(png), "-o", str(missing / "a.sodec"), "--model", model_path]) == 2
    assert not missing.exists()


def test_refusals_come_before_the_model_loads(tmp_path, png, model_path, capsys, no_model_load):
    bogus = ["--model", model_path]
    assert main(["compress", str(tmp_path / "missing.png"), *bogus]) == UsageError.exit_code
    assert "no such file" in _one_error_line(capsys.readouterr().err)
    assert main(["compress", str(png), "-o", str(tmp_path / "no" / "a.sodec"), *bogus]) == UsageError.exit_code
    capsys.readouterr()
    assert main(["compress", str(png), "--max-pixels", "100", *bogus]) == LimitsError.exit_code
    assert "--max-pixels 0" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "in.sodec").exists()
    with pytest.raises(SystemExit) as e:
        main(["compress", str(png), "--quality", "0"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["decompress", "x.sodec", "--tile", "10"])
    assert e.value.code == 2
    # Unknown model names and qualities, missing checkpoints: from the registry's JSON alone.
    assert main(["compress", str(png), "--model", "no-such-model"]) == UsageError.exit_code
    assert main(["compress", str(png), "--model", "codec-small", "-Q", "9"]) == UsageError.exit_code
    assert main(["compress", str(png), "--model", str(tmp_path / "none.safetensors")]) == 9
    assert main(["decompress", "x.sodec", "--model", str(tmp_path / "none.safetensors")]) == 9


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_output_folder_is_refused(tmp_path, png, model_path, capsys, no_model_load):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["compress", str(png), "-o", f"{ro}/", "--model", model_path]) == UsageError.exit_code
        assert "permission denied" in _one_error_line(capsys.readouterr().err)
    finally:
        ro.chmod(0o700)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc (a folder no one can create files in)")
def test_an_output_folder_that_takes_no_files_is_refused_before_work(tmp_path, png, model_path, capsys, no_model_load):
    # access() says "writable" to root, and /proc takes no new files even from root: the output
    # is checked by creating its temp file, before the image is read or a model loaded.
    assert main(["compress", str(png), "-o", "/proc/x.sodec", "--model", model_path]) == UsageError.exit_code
    assert "cannot write to /proc" in _one_error_line(capsys.readouterr().err)
    sod = tmp_path / "x.sodec"
    sod.write_bytes(b"SODEC")  # never read: the output is refused first
    assert main(["decompress", str(sod), "-o", "/proc/y.png"]) == UsageError.exit_code
    assert "cannot write to /proc" in _one_error_line(capsys.readouterr().err)


def test_compress_refuses_an_image_name_for_its_output(tmp_path, png, model_path, capsys, no_model_load):
    for name in ("x.jpg", "x.PNG", "x.webp"):
        assert main(["compress", str(png), "-o", str(tmp_path / name), "--model", model_path]) == UsageError.exit_code
        assert "writes a .sodec file" in _one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_an_error_names_the_file_even_when_there_is_one(tmp_path, png, model_path, capsys):
    s = tmp_path / "a.sodec"
    assert main(["compress", str(png), "-o", str(s), "--model", model_path, "-q"]) == 0
    cut = tmp_path / "cut.sodec"
    cut.write_bytes(s.read_bytes()[:30])
    assert main(["decompress", str(cut), "-o", str(tmp_path / "c.png")]) == TruncatedError.exit_code
    assert _one_error_line(capsys.readouterr().err).startswith(f"sodec: error: {cut}: ")


def test_compress_max_pixels(tmp_path, png, model_path):
    # 70x40 is coded padded to 128x64 = 8192 pixels: the limit counts that area.
    args = ["compress", str(png), "--model", model_path, "-q", "-o"]
    assert main([*args, str(tmp_path / "a.sodec"), "--max-pixels", "8191"]) == LimitsError.exit_code
    assert main([*args, str(tmp_path / "a.sodec"), "--max-pixels", "8192"]) == 0
    assert main([*args, str(tmp_path / "b.sodec"), "--max-pixels", "0"]) == 0  # 0 = no limit


def test_running_out_of_memory_is_one_line(tmp_path, png, model_path, monkeypatch, capsys):
    def oom(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(api, "compress", oom)
    assert main(["compress", str(png), "-o", str(tmp_path / "a.sodec"), "--model", model_path]) == 7
    assert "not enough memory" in _one_error_line(capsys.readouterr().err)
    monkeypatch.setattr(api, "compress", lambda *a, **k: [][1])  # a bug still shows its traceback
    with pytest.raises(IndexError):
        main(["compress", str(png), "-o", str(tmp_path / "b.sodec"), "--model", model_path])


def test_many_files_in_one_call(tmp_path, model_path, capsys, monkeypatch):
    names = ["a", "b", "bad", "c"]
    for i, n in enumerate(names):
        Image.fromarray(random_image(24 + 8 * i, 30, seed=i)).save(tmp_path / f"{n}.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "out").mkdir()
    loads = []
    real = cli.load_encoder
    monkeypatch.setattr(cli, "load_encoder", lambda *a: loads.append(a) or real(*a))
    inputs = [str(tmp_path / f"{n}.png") for n in names] + [str(tmp_path / "missing.png")]
    code = main(["compress", *inputs, "-o", f"{tmp_path / 'out'}/", "--model", model_path])
    assert code == UnsupportedInputError.exit_code  # the first failure's code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("sodec: error:")]
    assert len(errors) == 2 and "bad.png" in errors[0] and "missing.png" in errors[1]
    assert "5 files: 3 written, 2 failed" in err and "model loading" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.sodec", "b.sodec", "c.sodec"]
    assert len(loads) == 1  # one model load for the whole call
    # The same bytes as one file per call.
    one = tmp_path / "one.sodec"
    main(["compress", str(tmp_path / "b.png"), "-o", str(one), "--model", model_path, "-q"])
    assert one.read_bytes() == (tmp_path / "out" / "b.sodec").read_bytes()
    # Decode them all next to their inputs; all good: exit 0.
    sodecs = [str(tmp_path / "out" / f"{n}.sodec") for n in ("a", "b", "c")]
    assert main(["decompress", *sodecs, "--model", model_path, "-q"]) == 0
    assert all((tmp_path / "out" / f"{n}.sodec.png").is_file() for n in ("a", "b", "c"))
    # Several inputs need a folder; two inputs may not write one output.
    assert main(["compress", *inputs[:2], "-o", str(tmp_path / "x.sodec")]) == UsageError.exit_code
    (tmp_path / "sub").mkdir()
    Image.fromarray(random_image(16, 16)).save(tmp_path / "sub" / "a.png")
    code = main(["compress", inputs[0], str(tmp_path / "sub" / "a.png"), "-o", f"{tmp_path}/", "-f", "-q"])
    assert code == UsageError.exit_code
    assert "both be written" in capsys.readouterr().err


class _Std:
    def __init__(self, data: bytes = b"") -> None:
        self.buffer = io.BytesIO(data)

    def isatty(self) -> bool:
        return False


def test_stdin_and_stdout(monkeypatch, png, model_path):
    out = _Std()
    monkeypatch.setattr(sys, "stdin", _Std(png.read_bytes()))
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["compress", "-", "-o", "-", "--model", model_path, "-q"]) == 0
    data = out.buffer.getvalue()
    assert data[:4] == b"SODC"
    out2 = _Std()
    monkeypatch.setattr(sys, "stdin", _Std(data))
    monkeypatch.setattr(sys, "stdout", out2)
    assert main(["decompress", "-", "-o", "-", "--model", model_path, "-q"]) == 0
    assert Image.open(io.BytesIO(out2.buffer.getvalue())).size == (70, 40)


@pytest.mark.parametrize(
    ("content", "error"),
    [(b"", TruncatedError), (b"not a sodec file at all", FormatError), (b"SODC\x01", TruncatedError)],
)
def test_bad_files_give_typed_exit_codes_and_no_output(tmp_path, content, error, capsys):
    bad = tmp_path / "bad.sodec"
    bad.write_bytes(content)
    out = tmp_path / "out.png"
    code = main(["decompress", str(bad), "-o", str(out)])
    assert code == error.exit_code != 0
    _one_error_line(capsys.readouterr().err)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [bad]  # no temp file left either


def test_truncated_real_file(tmp_path, png, model_path):
    out = tmp_path / "a.sodec"
    main(["compress", str(png), "-o", str(out), "--model", model_path, "-q"])
    out.write_bytes(out.read_bytes()[:-7])
    assert (
        main(["decompress", str(out), "-o", str(tmp_path / "x.png"), "--model", model_path]) == TruncatedError.exit_code
    )
    assert not (tmp_path / "x.png").exists()


def test_input_errors(tmp_path, model_path, capsys):
    assert main(["compress", str(tmp_path / "missing.png"), "--model", model_path]) == UsageError.exit_code
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 128
    p = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(p)
    assert main(["compress", str(p), "--model", model_path]) == UnsupportedInputError.exit_code
    assert "transparent" in capsys.readouterr().err
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert main(["compress", str(junk), "--model", model_path]) == UnsupportedInputError.exit_code
    assert "junk.png" in _one_error_line(capsys.readouterr().err)
    Image.fromarray(random_image(8, 8)).save(tmp_path / "ok.png")
    assert main(["compress", str(tmp_path / "ok.png"), "--model", "no-such-model"]) == UsageError.exit_code


def test_grayscale_is_converted_with_a_note(tmp_path, model_path, capsys):
    p = tmp_path / "g.png"
    Image.fromarray(random_image(20, 20)[..., 0], "L").save(p)
    assert main(["compress", str(p), "-o", str(tmp_path / "g.sodec"), "--model", model_path]) == 0
    assert "grayscale coded as RGB" in capsys.readouterr().err


def test_a_grayscale_image_decodes_to_a_grayscale_file(tmp_path, png, model_path, capsys):
    """docs/format.md, "Grayscale": R = G = B in, one channel out (PPM, colour-only, stays RGB)."""
    p = tmp_path / "g.png"
    Image.fromarray(random_image(40, 72, seed=3)[..., 0], "L").save(p)
    s = tmp_path / "g.sodec"
    assert main(["compress", str(p), "-o", str(s), "--model", model_path, "-q"]) == 0
    assert container.parse_header(s.read_bytes()).grayscale
    decoded = api.decompress(s.read_bytes(), api.load_model(model_path))
    assert (decoded[..., 0] == decoded[..., 1]).all() and (decoded[..., 1] == decoded[..., 2]).all()
    (tmp_path / "out").mkdir()
    for name, mode in (("g.png", "L"), ("g.tif", "L"), ("g.bmp", "L"), ("g.ppm", "RGB")):
        assert main(["decompress", str(s), "-o", str(tmp_path / "out" / name), "--model", model_path, "-q"]) == 0
        with Image.open(tmp_path / "out" / name) as im:
            assert (im.mode, im.size) == (mode, (72, 40)), name
    assert main(["info", str(s)]) == 0
    assert re.search(r"^grayscale\s+True$", capsys.readouterr().out, re.M)
    # A colour image keeps flags 0x01 (older readers decode it) and decodes to RGB.
    c = tmp_path / "c.sodec"
    assert main(["compress", str(png), "-o", str(c), "--model", model_path, "-q"]) == 0
    assert container.parse_header(c.read_bytes()).flags == container.FLAG_PAD_REPLICATE
    assert main(["decompress", str(c), "-o", str(tmp_path / "c.png"), "--model", model_path, "-q"]) == 0
    with Image.open(tmp_path / "c.png") as im:
        assert im.mode == "RGB"
    assert api.info(c.read_bytes())["grayscale"] is False


def test_output_suffix_selects_a_lossless_format(tmp_path, png, model_path, monkeypatch):
    s = tmp_path / "a.sodec"
    main(["compress", str(png), "-o", str(s), "--model", model_path, "-q"])
    assert main(["decompress", str(s), "-o", str(tmp_path / "a.ppm"), "--model", model_path, "-q"]) == 0
    assert Image.open(tmp_path / "a.ppm").size == (70, 40)
    # A lossy suffix is refused before decoding, like any other bad option.
    monkeypatch.setattr(api, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    assert main(["decompress", str(s), "-o", str(tmp_path / "a.jpg"), "--model", model_path]) == 2
    assert not (tmp_path / "a.jpg").exists()


def test_file_from_one_model_refused_by_another(tmp_path, png, model_path, capsys):
    torch.manual_seed(5)
    other = VAECodec(CODEC_PRESETS["tiny"]).eval()
    other.update(force=True)
    other_path = tmp_path / "codec-tiny.safetensors"  # same name, other weights
    save_checkpoint(other_path, other, "codec", other.cfg, {"sodec.model_id": "codec-tiny"})
    s = tmp_path / "a.sodec"
    main(["compress", str(png), "-o", str(s), "--model", model_path, "-q"])
    assert main(["decompress", str(s), "-o", str(tmp_path / "x.png"), "--model", str(other_path)]) == 6
    assert "other weights" in capsys.readouterr().err


def test_models_lists_every_model_with_its_rate(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for e in registry.models():
        (line,) = [ln for ln in out.splitlines() if ln[2:].split()[:1] == [e.name]]
        rate = f"{e.kodak_bpp:.4f} bpp on Kodak" if e.kodak_bpp is not None else "rate not measured"
        assert rate in line
        assert line.startswith("*") == (e.name == registry.default_name())


def test_every_option_is_described():
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    assert set(sub.choices) >= {"compress", "decompress", "info", "models", "train", "evaluate", "bench"}
    for name, sp in sub.choices.items():
        for action in sp._actions:
            if action.dest != "help":
                assert action.help, f"sodec {name}: {action.option_strings or action.dest} has no help"
        assert "-quiet" not in [s for a in sp._actions for s in a.option_strings]
    for name in ("compress", "decompress"):
        text = " ".join(sub.choices[name].format_help().split())
        assert "exit codes" in text and "first failure" in text
        assert f"default {container.DEFAULT_MAX_PIXELS}" in text and "0 = no limit" in text


def test_info_matches_the_api(tmp_path, png, model_path):
    s = tmp_path / "a.sodec"
    main(["compress", str(png), "-o", str(s), "--model", model_path, "-q"])
    data = s.read_bytes()
    assert fileinfo.info(data) == api.info(data)
    assert fileinfo.PAD_MULTIPLE == api.PAD_MULTIPLE
    assert fileinfo.padded_size(70, 40) == api.padded_size(70, 40)


def test_api_and_cli_agree(tmp_path, png, model_path):
    s = tmp_path / "a.sodec"
    main(["compress", str(png), "-o", str(s), "--model", model_path, "-q"])
    m = api.load_model(model_path)
    img = np.asarray(Image.open(png).convert("RGB"))
    assert api.compress(m, img) == s.read_bytes()  # deterministic encoder, same bytes


def test_sodec_models_encode_with_their_codec_alone(tmp_path, png):
    """compress loads only a SODEC model's codec: the same file as the whole model writes."""
    from sodec.config import SODEC_PRESETS
    from sodec.models.sodec import SodecModel

    torch.manual_seed(0)
    module = SodecModel(SODEC_PRESETS["tiny"]).eval()
    module.update(force=True)
    path = tmp_path / "tiny-sodec.safetensors"
    save_checkpoint(path, module, "sodec", module.cfg, {"sodec.model_id": "tiny-sodec"})
    enc = cli.load_encoder(str(path), None, None)
    assert isinstance(enc.module, VAECodec) and enc.kind == "sodec" and enc.model_id == "tiny-sodec"
    s = tmp_path / "a.sodec"
    assert main(["compress", str(png), "-o", str(s), "--model", str(path), "-q"]) == 0
    img = np.asarray(Image.open(png).convert("RGB"))
    full = api.load_model(path)
    assert api.compress(full, img) == s.read_bytes()
    assert main(["decompress", str(s), "-o", str(tmp_path / "a.png"), "--model", str(path), "-q"]) == 0


def test_tiled_decodes_report_each_tile(tmp_path, model_path):
    """What the CLI's tile bar listens to: one call per tile, up to the total."""
    from sodec.tiling import report_tiles

    m = api.load_model(model_path)
    data = api.compress(m, random_image(256, 320))  # a 16x20 latent
    calls: list[tuple[int, int]] = []
    with report_tiles(lambda done, total: calls.append((done, total))):
        tiled = api.decompress(data, m, tile=12)
    assert calls and calls[-1][0] == calls[-1][1] and [c[0] for c in calls] == list(range(1, len(calls) + 1))
    calls.clear()
    assert np.array_equal(api.decompress(data, m), api.decompress(data, m))
    assert calls == [] and tiled.shape == (256, 320, 3)  # outside the block nothing is reported
