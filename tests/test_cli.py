"""The `sodec` command, tested by calling main(argv) (issue 2)."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import random_image
from sodec import api
from sodec.checkpoint import save_checkpoint
from sodec.cli import main
from sodec.config import CODEC_PRESETS
from sodec.errors import FormatError, TruncatedError, UnsupportedInputError, UsageError
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


def test_compress_decompress_info(tmp_path, png, model_path, capsys):
    out = tmp_path / "a.sodec"
    assert main(["compress", str(png), "-o", str(out), "--model", model_path]) == 0
    err = capsys.readouterr().err
    assert "bpp" in err and "codec-tiny" in err
    rec = tmp_path / "a.png"
    assert main(["decompress", str(out), "-o", str(rec), "--model", model_path]) == 0
    assert np.asarray(Image.open(rec)).shape == (40, 70, 3)
    assert main(["info", str(out), "--json"]) == 0
    info = capsys.readouterr().out
    assert '"width": 70' in info and f'"file_bytes": {out.stat().st_size}' in info
    assert main(["info", str(out)]) == 0
    assert "bpp" in capsys.readouterr().out


def test_quiet_prints_nothing(tmp_path, png, model_path, capsys):
    assert main(["compress", str(png), "-o", str(tmp_path / "q.sodec"), "--model", model_path, "-quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_default_output_names(tmp_path, png, model_path):
    assert main(["compress", str(png), "--model", model_path, "-q"]) == 0
    assert (tmp_path / "in.sodec").is_file()
    assert main(["decompress", str(tmp_path / "in.sodec"), "--model", model_path, "-q"]) == 0
    assert (tmp_path / "in.png").is_file()


class _Std:
    def __init__(self, data: bytes = b"") -> None:
        self.buffer = io.BytesIO(data)


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
    err = capsys.readouterr().err
    assert err.startswith("sodec: error:") and err.count("\n") == 1  # one line, no traceback
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
    assert main(["compress", str(junk), "--model", "no-such-model"]) != 0


def test_grayscale_is_converted_with_a_note(tmp_path, model_path, capsys):
    p = tmp_path / "g.png"
    Image.fromarray(random_image(20, 20)[..., 0], "L").save(p)
    assert main(["compress", str(p), "-o", str(tmp_path / "g.sodec"), "--model", model_path]) == 0
    assert "note: L: grayscale coded as RGB" in capsys.readouterr().err


def test_output_suffix_selects_a_lossless_format(tmp_path, png, model_path):
    s = tmp_path / "a.sodec"
    main(["compress", str(png), "-o", str(s), "--model", model_path, "-q"])
    assert main(["decompress", str(s), "-o", str(tmp_path / "a.ppm"), "--model", model_path, "-q"]) == 0
    assert Image.open(tmp_path / "a.ppm").size == (70, 40)
    assert (
        main(["decompress", str(s), "-o", str(tmp_path / "a.jpg"), "--model", model_path, "-q"])
        == UnsupportedInputError.exit_code
    )


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


def test_models_lists_the_registry(capsys):
    assert main(["models"]) == 0
    assert "codec-small" in capsys.readouterr().out


def test_api_and_cli_agree(tmp_path, png, model_path):
    s = tmp_path / "a.sodec"
    main(["compress", str(png), "-o", str(s), "--model", model_path, "-q"])
    m = api.load_model(model_path)
    img = np.asarray(Image.open(png).convert("RGB"))
    assert api.compress(m, img) == s.read_bytes()  # deterministic encoder, same bytes
