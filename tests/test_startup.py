"""Start-up cost of the `sodec` command (issue 13): what each command imports, in a fresh process.

Import lists, not wall times, are asserted: they decide start-up and do not flake on a busy
machine. benchmarks/startup.py measures the times themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from helpers import SHARED, random_image

DATA = Path(__file__).resolve().parent / "data"
TINY = DATA / "codec-tiny-test.safetensors"
CONF_OK = DATA / "conformance" / "ok-64x64.sodec"
HEAVY = ("torch", "diffusers", "timm", "torch_geometric", "torchvision", "scipy.stats")

# Runs main(argv) in a fresh interpreter, then reports its exit code and which heavy modules
# were imported, as the last line of stderr.
_RUNNER = """
import json, sys
from sodec.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:
    rc = e.code
heavy = %r
sys.stdout.flush()
print("\\nSTARTUP " + json.dumps({"rc": rc, "imported": [m for m in heavy if m in sys.modules]}), file=sys.stderr)
"""


def run_fresh(*argv: str, cwd: Path | None = None) -> tuple[int, list[str], str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    p = subprocess.run(
        [sys.executable, "-c", _RUNNER % (HEAVY,), *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("STARTUP "), p.stderr
    rec = json.loads(last[len("STARTUP ") :])
    return rec["rc"], rec["imported"], p.stderr


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    shared = SHARED / "cases" / "photo-144x144.png"
    p = tmp_path / "photo.png"
    if shared.is_file():
        p.write_bytes(shared.read_bytes())
    else:
        Image.fromarray(random_image(144, 144)).save(p)
    return p


@pytest.mark.parametrize("argv", [["--help"], ["compress", "--help"], ["models"], ["info", str(CONF_OK)]])
def test_help_models_and_info_never_import_torch(argv: list[str]) -> None:
    rc, imported, err = run_fresh(*argv)
    assert rc == 0, err
    assert imported == [], f"sodec {' '.join(argv)} imported {imported}"


def test_refusals_come_before_torch(tmp_path: Path, photo: Path) -> None:
    """Missing input, missing or unwritable output folder, a folder as -o, an existing output,
    the input as output, bad options: one line, before torch (so well under a second)."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "exists.sodec").write_bytes(b"x")
    cases = [
        (["compress", str(tmp_path / "missing.png")], 2),
        (["compress", str(photo), "-o", str(tmp_path / "nowhere" / "a.sodec")], 2),
        (["compress", str(photo), "-o", str(tmp_path / "dir")], 2),
        (["compress", str(photo), "-o", str(tmp_path / "exists.sodec")], 10),
        (["compress", str(photo), "-o", str(photo), "-f"], 2),
        (["compress", str(photo), "--quality", "0"], 2),
        (["compress", str(photo), "--model", "no-such-model"], 2),
        (["compress", str(photo), "--max-pixels", "100"], 7),
        (["compress", str(photo), "-quiet"], 2),
        (["decompress", str(tmp_path / "missing.sodec")], 2),
        (["decompress", str(CONF_OK), "-o", str(tmp_path / "dir")], 2),
        (["decompress", str(CONF_OK), "-o", str(tmp_path / "a.jpg")], 2),
        (["decompress", str(CONF_OK), "-o", str(tmp_path / "a.png"), "--max-pixels", "100"], 7),
    ]
    for argv, code in cases:
        rc, imported, err = run_fresh(*argv)
        assert rc == code, (argv, err)
        assert "torch" not in imported, (argv, imported)
        assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "exists.sodec", "photo.png"]


def test_compress_with_a_codec_imports_no_unrelated_packages(tmp_path: Path, photo: Path) -> None:
    """CompressAI's entropy models without its point-cloud side (torch_geometric, torchvision)."""
    rc, imported, err = run_fresh("compress", str(photo), "-o", str(tmp_path / "a.sodec"), "-m", str(TINY))
    assert rc == 0, err
    assert "torch" in imported
    assert not {"torch_geometric", "torchvision", "diffusers", "timm"} & set(imported), imported


def test_compress_with_a_sodec_model_needs_no_diffusion_stack(tmp_path: Path, photo: Path) -> None:
    """A SODEC model encodes with its codec: no diffusers/timm import, no UNet built."""
    from sodec import registry

    sodec_models = [e for e in registry.models() if e.kind == "sodec"]
    if not sodec_models:
        pytest.skip("no shipped SODEC model")
    rc, imported, err = run_fresh("compress", str(photo), "-o", str(tmp_path / "a.sodec"), "-m", sodec_models[0].name)
    assert rc == 0, err
    assert not {"torch_geometric", "diffusers", "timm"} & set(imported), imported


def test_lean_compressai_is_compressai(tmp_path: Path) -> None:
    """After sodec's import, CompressAI still answers like itself (coder registry, zoo, models)."""
    code = (
        "import sodec.api, sys, compressai\n"
        "assert 'torch_geometric' not in sys.modules\n"
        "assert compressai.get_entropy_coder() == 'ans' and 'ans' in compressai.available_entropy_coders()\n"
        "from compressai.models import ScaleHyperprior\n"
        "import compressai.zoo\n"
        "print(ScaleHyperprior.__module__, compressai.zoo.__name__)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["compressai.models.google", "compressai.zoo"]


def test_decompress_with_the_small_sodec_model_imports_no_diffusion_stack(tmp_path: Path, photo: Path) -> None:
    """The small preset's UNet and ViT are the in-project modules (models/unet.py, vit.py):
    decoding imports neither diffusers (7 s here: torch._dynamo, peft, transformers) nor timm."""
    from sodec import registry

    small = [e for e in registry.models() if e.kind == "sodec"]
    if not small:
        pytest.skip("no shipped SODEC model")
    f = tmp_path / "a.sodec"
    rc, _, err = run_fresh("compress", str(photo), "-o", str(f), "-m", small[0].name)
    assert rc == 0, err
    rc, imported, err = run_fresh("decompress", str(f), "-o", str(tmp_path / "a.png"))
    assert rc == 0, err
    assert (tmp_path / "a.png").is_file()
    assert not {"torch_geometric", "torchvision", "diffusers", "timm"} & set(imported), imported


def test_console_entry_ends_without_teardown_but_keeps_output_and_exit_code(tmp_path: Path, photo: Path) -> None:
    """`python -m sodec` (= the `sodec` script, cli.run) ends compress/decompress with os._exit
    once torch is loaded: the file must be complete, the printed line flushed into a pipe, and
    the exit code kept, also when one file of a batch fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

    def sodec(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sodec", *argv], capture_output=True, text=True, env=env, timeout=300
        )

    out = tmp_path / "out"
    out.mkdir()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    p = sodec("compress", str(photo), "-m", str(TINY), "-o", str(tmp_path / "a.sodec"))
    assert p.returncode == 0, p.stderr
    assert "a.sodec" in p.stderr + p.stdout and "bpp" in p.stderr + p.stdout
    p = sodec("decompress", str(tmp_path / "a.sodec"), "-m", str(TINY), "-o", str(tmp_path / "a.png"))
    assert p.returncode == 0, p.stderr
    with Image.open(tmp_path / "a.png") as im:
        assert im.size == (144, 144)
        im.load()  # the whole PNG is there
    p = sodec("compress", str(photo), str(broken), "-m", str(TINY), "-o", f"{out}/")
    assert "broken.png" in p.stderr and "1 failed" in p.stderr
    assert sorted(f.name for f in out.iterdir()) == ["photo.sodec"]
    (out / "photo.sodec").unlink()
    rc, _, _ = run_fresh("compress", str(photo), str(broken), "-m", str(TINY), "-o", f"{out}/")
    assert p.returncode == rc != 0  # the code main() returns
