"""A CI-sized run of the atheris harness (fuzz_decoder.py): at most ~2.5 minutes.

    pytest -m fuzz tests/fuzz

The long run (>= 50,000 inputs) is the same harness from the command line; see
docs/reliability.md for the command and its last result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parent / "fuzz_decoder.py"


@pytest.mark.fuzz
def test_fuzz_ci(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "SODEC_FUZZ_CRASHES": str(tmp_path / "crashes"),
        "SODEC_FUZZ_STATS": str(tmp_path / "stats.json"),
    }
    cmd = [
        sys.executable,
        str(HARNESS),
        "-runs=20000",
        "-max_total_time=150",
        "-timeout=30",  # a single input running this long is a hang
        "-rss_limit_mb=4096",
        f"-artifact_prefix={tmp_path}/",
        str(tmp_path / "corpus"),
    ]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    tail = run.stderr[-3000:]
    assert run.returncode == 0, tail
    assert not (tmp_path / "crashes").exists(), tail
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["inputs"] >= 5000 and stats["ok"] > 0 and stats["DesyncError"] > 0, stats
